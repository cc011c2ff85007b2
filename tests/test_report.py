"""`voxcli report`, `bench --plot`, `listen --report`: pictures drawn from real session and bench
files (made here by the CLI with the tiny model). The drawn data is checked against the files, not
the pixels; the images only for size and for not being blank."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")  # the test extra installs it; without it, the one-line error is tested below

from voxcli.output.report import ReportError, draw_bench, draw_session, read_bench, read_session  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
HELLO = ROOT / "examples" / "hello.wav"
SHORT = ROOT / "examples" / "short.wav"


def _voxcli(*args, timeout=600):
    run = subprocess.run([sys.executable, "-m", "voxcli", *map(str, args)], capture_output=True, text=True,
                         timeout=timeout, cwd=ROOT, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "XDG_CONFIG_HOME": os.environ["XDG_CONFIG_HOME"]})
    return run


@pytest.fixture(scope="module")
def session(realtime_dir, tmp_path_factory):
    """A `listen --input --save` session, drawn at its end by `listen --report`."""
    d = tmp_path_factory.mktemp("session")
    run = _voxcli("listen", "--input", HELLO, "--speed", 0, "--model", realtime_dir, "--save", d / "save",
                  "--report", d / "listen.png", "--plain")
    assert run.returncode == 0, run.stderr
    return d


@pytest.fixture(scope="module")
def bench(realtime_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    run = _voxcli("bench", "--model", realtime_dir, "--runs", 2, "--warmup", 0, "--paced", "--json",
                  d / "bench.json", "--plot", d / "plot.png", SHORT, HELLO)
    assert run.returncode == 0, run.stderr
    return d


def _image(path: Path) -> np.ndarray:
    import matplotlib.image

    return matplotlib.image.imread(str(path))


def _assert_picture(path: Path) -> None:
    pixels = _image(path)
    height, width = pixels.shape[:2]
    assert width >= 800 and height >= 400
    assert pixels[..., :3].std() > 0.05  # not blank


@pytest.mark.slow
def test_a_session_picture_draws_what_the_files_hold(session):
    save = session / "save"
    out = session / "s.png"
    run = _voxcli("report", save, "-o", out)
    assert run.returncode == 0, run.stderr
    _assert_picture(out)
    _assert_picture(session / "listen.png")  # the same picture, from `listen --report`

    (jsonl,) = save.glob("*.jsonl")
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    tokens = [r for r in rows if r["type"] == "token"]
    data = read_session(save)
    assert list(data.token_audio_s) == [t["audio_end_s"] for t in tokens]
    assert list(data.token_heard_s) == [t["audio_available_s"] for t in tokens]
    assert list(data.token_flushed) == [t["flushed"] for t in tokens]
    assert data.token_flushed.any()  # hello.wav ends its speech: a flush
    assert sorted(data.latency_ms) == sorted(t["emission_latency_ms"] for t in tokens)
    assert data.endpoints == [(r["speech_end_s"], r["decided_s"]) for r in rows if r["type"] == "endpoint"]
    assert data.endpoints and data.speech
    import soundfile

    assert len(data.audio) == soundfile.info(str(next(save.glob("*.wav")))).frames

    fig = draw_session(data)
    wave, timeline, cdf, steps = fig.axes
    # The token panel: one marker per token, flushed ones apart, at (audio covered, audio heard).
    drawn = np.concatenate([c.get_offsets() for c in timeline.collections])
    expected = np.concatenate([np.c_[data.token_audio_s[~data.token_flushed], data.token_heard_s[~data.token_flushed]],
                               np.c_[data.token_audio_s[data.token_flushed], data.token_heard_s[data.token_flushed]]])
    assert np.allclose(drawn, expected)
    # The CDF ends at 1 over every latency; p50 and p95 are marked.
    x, y = cdf.lines[0].get_data()
    assert np.allclose(np.sort(x), np.sort(data.latency_ms)) and y[-1] == pytest.approx(1.0)
    assert {t.get_text().split()[0] for t in cdf.get_legend().get_texts()} == {"p50", "p95"}
    # Steps against the budget; the endpoints on the waveform.
    assert np.allclose(steps.lines[0].get_ydata(), data.step_ms)
    assert steps.lines[1].get_ydata()[0] == 80.0
    assert sorted(line.get_xdata()[0] for line in wave.lines) == sorted(v for pair in data.endpoints for v in pair)
    assert "delay 480 ms" in fig._suptitle.get_text()
    for ax in fig.axes:
        assert ax.get_xlabel() and ax.get_ylabel()  # every axis labelled, with units


@pytest.mark.slow
def test_a_bench_picture_and_two_compared(bench):
    _assert_picture(bench / "plot.png")  # from `bench --plot`
    out = bench / "cmp.png"
    run = _voxcli("report", bench / "bench.json", bench / "bench.json", "-o", out)
    assert run.returncode == 0, run.stderr
    _assert_picture(out)

    report = read_bench(bench / "bench.json")
    per_clip = report["summary"]["per_clip"]
    fig = draw_bench([report, report])
    axes = {ax.get_title().split(" (")[0]: ax for ax in fig.axes if ax.get_title()}
    assert set(axes) >= {"ttft_ms", "first_chunk_ms", "total_ms", "display_lag_ms", "emission_latency_ms",
                         "Step headroom"}
    clips = sorted(per_clip)
    ttft = axes["ttft_ms"]
    bars = [p.get_height() for p in ttft.patches]
    assert bars == [per_clip[c]["ttft_ms"]["p50"] for c in clips] * 2  # the same file twice, side by side
    p99 = np.concatenate([c.get_offsets()[:, 1] for c in ttft.collections[1::2]])
    assert np.allclose(p99, [per_clip[c]["ttft_ms"]["p99"] for c in clips] * 2)
    headroom = [p.get_height() for p in axes["Step headroom"].patches][: len(clips)]
    assert np.allclose(headroom, [80.0 / per_clip[c]["step_ms"]["p50"] for c in clips])


def test_missing_empty_and_foreign_files_are_one_line(tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text("")
    foreign = tmp_path / "foreign.json"
    foreign.write_text('{"hello": 1}')
    not_a_session = tmp_path / "x.jsonl"
    not_a_session.write_text('{"type": "token"}\n')
    for path, words in ((tmp_path / "nope.json", "no such file"), (empty, "is empty"),
                        (foreign, "neither a session"), (not_a_session, "does not start with a session row"),
                        (tmp_path, "no session here")):
        run = _voxcli("report", path, "-o", tmp_path / "out.png")
        lines = run.stderr.strip().splitlines()
        assert run.returncode == 1 and len(lines) == 1 and words in lines[0], run.stderr
        assert lines[0].startswith("voxcli: error: report ")
    run = _voxcli("report", foreign, "-o", tmp_path / "out.gif")
    assert run.returncode == 1 and "must end in .png or .svg" in run.stderr


def test_without_matplotlib_one_line_says_how_to_install_it(monkeypatch, tmp_path):
    from voxcli.output.report import check_output

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    with pytest.raises(ReportError, match=r"needs matplotlib: pip install 'voxcli\[report\]'"):
        check_output(tmp_path / "x.png")
