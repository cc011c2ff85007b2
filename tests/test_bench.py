"""`voxcli bench`: every reported percentile must be recomputable from the raw samples."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from voxcli.events import TokenEvent, summarize
from voxcli.measure.runs import FILE_METRICS, PACED_METRICS, first_batch_ms

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def _bench(args, tmp_path):
    out = tmp_path / "out.json"
    run = subprocess.run([sys.executable, "-m", "voxcli", "bench", *map(str, args), "--json", out],
                         capture_output=True, text=True, timeout=600, cwd=ROOT,
                         env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "XDG_CONFIG_HOME": os.environ["XDG_CONFIG_HOME"], "COLUMNS": "120"})
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    return run, json.loads(out.read_text())


def _recompute(report: dict, metric: str, clip: str | None = None) -> dict:
    values = []
    for run in report["runs"]:
        if clip is not None and run["clip"] != clip:
            continue
        value = run.get(metric)
        if isinstance(value, list):
            values.extend(value)
        elif value is not None:
            values.append(value)
    return summarize(values)


RUNS = 5


@pytest.mark.slow
def test_done_when_command_runs(realtime_dir, tmp_path):
    """The issue's own command, `voxcli bench --model <tiny dir> --runs 20 --json out.json`, with
    5 runs (20 took 52 s of the suite, and 5 per clip already give percentiles between runs)."""
    run, report = _bench(["--model", realtime_dir, "--runs", RUNS], tmp_path)
    clips = {p.stem for p in EXAMPLES.glob("*.wav")}
    assert set(report["options"]["clips"]) == clips
    assert len(report["runs"]) == RUNS * len(clips)  # warm-up runs are not in the report
    for metric in FILE_METRICS:
        assert report["summary"]["all"][metric] == _recompute(report, metric), metric
        for clip in clips:
            assert report["summary"]["per_clip"][clip][metric] == _recompute(report, metric, clip)
    assert report["summary"]["all"]["ttft_ms"]["n"] == RUNS * len(clips)
    for run_ in report["runs"]:
        assert 0 < run_["ttft_ms"] <= run_["total_ms"]
        assert run_["first_chunk_ms"] >= run_["ttft_ms"]  # batching can only show text later
        assert len(run_["display_lag_ms"]) == run_["n_tokens"]
    env = report["environment"]
    for key in ("model", "n_params", "device", "device_name", "dtype", "torch_threads", "torch",
                "transformers", "git_revision"):
        assert key in env
    assert env["n_params"] > 0 and env["kind"] == "realtime"
    for metric in ("ttft_ms", "total_ms", "display_lag_ms", "first_chunk_ms", "step_ms"):
        assert metric in run.stdout  # the table names every figure


@pytest.mark.slow
def test_paced_adds_live_figures(realtime_dir, tmp_path):
    _, report = _bench(["--model", realtime_dir, "--runs", 1, "--warmup", 0, "--paced",
                        EXAMPLES / "short.wav"], tmp_path)
    paced = [r for r in report["runs"] if r["mode"] == "paced"]
    assert len(paced) == 1
    for metric in PACED_METRICS:
        assert report["summary"]["all"][metric] == _recompute(report, metric)
    assert report["summary"]["all"]["emission_latency_ms"]["n"] == paced[0]["n_tokens"]
    assert paced[0]["first_word_ms"] is not None and paced[0]["finalize_ms"] is not None
    assert paced[0]["dropped_blocks"] == 0


@pytest.mark.slow
def test_offline_model_bench(offline_dir, tmp_path):
    _, report = _bench(["--model", offline_dir, "--runs", 2, "--warmup", 1, EXAMPLES / "short.wav"], tmp_path)
    assert report["environment"]["kind"] == "offline"
    assert report["summary"]["all"]["ttft_ms"]["n"] == 2


def _ev(i: int, text: str, t: float) -> TokenEvent:
    return TokenEvent(index=i, token_id=100 + i, text=text, t_emitted=t)


def test_first_batch_is_released_when_the_word_after_the_batch_starts():
    pieces = [" one", " two", " thr", "ee", " four", " five", " six", " sev", "en"]
    events = [_ev(i, p, 10.0 + i) for i, p in enumerate(pieces)]
    # Six words are complete only when the seventh (" sev") starts, at t = 17.
    assert first_batch_ms(events, 10.0, 6) == pytest.approx(7000.0)
    assert first_batch_ms(events, 10.0, 1) == pytest.approx(1000.0)  # " two" completes "one"
    # Fewer words than a batch: the end of the stream releases them.
    assert first_batch_ms(events[:3], 10.0, 6) == pytest.approx(2000.0)
    assert first_batch_ms([_ev(0, "", 10.5)], 10.0, 6) is None


def test_percentiles_are_the_textbook_ones():
    """Checked against figures worked out by hand (linear interpolation between closest ranks,
    numpy's default), not against numpy itself."""
    s = summarize(list(range(100, 0, -1)))  # 1..100, unsorted
    assert s == pytest.approx({"n": 100, "p50": 50.5, "p90": 90.1, "p95": 95.05, "p99": 99.01, "mean": 50.5,
                               "min": 1.0, "max": 100.0}, abs=1e-9)
    two = summarize([10.0, 20.0])
    assert (two["p50"], two["p90"], two["p99"]) == (15.0, 19.0, pytest.approx(19.9))
    assert summarize([7.0])["p99"] == 7.0 and summarize([]) == {"n": 0}
