"""voxcli with a real vLLM server as its engine (both model kinds), through the CLI.

The servers are tests/vllm_server.py's fixtures: vLLM's CPU build serving tiny random models in
Mistral's format on 127.0.0.1. Random weights: assert structure, files and errors, not words.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from speech import make_speech
from vllm_server import start_vllm_server, vllm_offline, vllm_python, vllm_realtime  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
HELLO = ROOT / "examples" / "hello.wav"


def _env() -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("VOXCLI_DEBUG", None)
    return env


def voxcli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "voxcli", *map(str, args)], env=_env(),
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def _one_error(run) -> str:
    assert run.returncode != 0
    assert "Traceback" not in run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("voxcli: error:")]
    assert len(errors) == 1, run.stderr
    return errors[0]


def _session_files(directory: Path):
    found = [sorted(directory.glob(f"*.{ext}")) for ext in ("wav", "jsonl", "txt")]
    assert all(len(f) == 1 for f in found), list(directory.iterdir())
    return [f[0] for f in found]


@pytest.mark.parametrize("kind", ["realtime", "offline"])
def test_transcribe_file_through_the_server(kind, request):
    server = request.getfixturevalue(f"vllm_{kind}")
    extra = ["--language", "en"] if kind == "offline" else []
    run = voxcli("transcribe", "file", HELLO, "--server", server.url, "--format", "json", *extra)
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    events = doc["events"]
    assert events and doc["text"] and doc["complete"]
    assert doc["model"] == server.model  # the only served model was picked without --model
    times = [e["t_emitted"] for e in events]
    assert times == sorted(times)
    assert 0 < doc["metrics"]["ttft_ms"] <= doc["metrics"]["total_ms"]
    assert all(e["token_id"] == -1 for e in events)  # a server does not say token ids
    if kind == "realtime":
        assert all(e["audio_start_s"] is None for e in events)  # nor which audio a delta covers
    else:
        assert all(e["audio_end_s"] is not None for e in events)  # the segment, which we chose
    assert "ttft_ms" in run.stderr


@pytest.mark.parametrize("kind", ["realtime", "offline"])
def test_listen_through_the_server(kind, request, tmp_path):
    server = request.getfixturevalue(f"vllm_{kind}")
    run = voxcli("listen", "--input", HELLO, "--speed", 0 if kind == "offline" else 1, "--server", server.url,
                 "--save", tmp_path, "--plain")
    assert run.returncode == 0, run.stderr
    wav, jsonl, txt = _session_files(tmp_path)
    heard, rate = sf.read(wav, dtype="float32")
    assert len(heard) / rate == pytest.approx(sf.info(HELLO).duration, abs=0.01)
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    tokens = [line for line in lines if line["type"] == "token"]
    assert tokens and lines[-1]["type"] == "summary"
    # Random tokens can hold a "\r": compare with newlines as written, not as text mode turns them.
    saved = txt.read_bytes().decode("utf-8").strip()
    assert saved == lines[-1]["text"]
    assert saved.replace("\r", "\n") == run.stdout.replace("\r", "\n").strip()
    if kind == "realtime":
        # Latency figures that need to know which audio a delta covers are absent, not invented.
        assert all(t["emission_latency_ms"] is None for t in tokens)


def test_wrong_model_and_unreachable_server_are_one_line(vllm_offline):
    line = _one_error(voxcli("transcribe", "file", HELLO, "--server", vllm_offline.url, "--model", "no-such"))
    assert "no-such" in line and vllm_offline.model in line
    line = _one_error(voxcli("transcribe", "file", HELLO, "--server", "http://127.0.0.1:9"))
    assert "cannot reach" in line


def test_bad_language_is_one_line(vllm_offline):
    line = _one_error(voxcli("transcribe", "file", HELLO, "--server", vllm_offline.url, "--language", "xx"))
    assert "xx" in line


def test_killing_the_server_mid_listen_keeps_audio_and_text(tmp_path):
    """A server of its own, killed while `listen` streams to it: the WAV holds everything
    captured, the text received so far is saved, and one clear line says what happened."""
    # A short directory: vLLM's IPC socket paths must fit in 107 characters.
    workdir = Path(tempfile.mkdtemp(prefix="vxk-"))
    server = start_vllm_server("realtime", workdir, python=vllm_python())
    clip = make_speech(tmp_path / "clip.wav", "one two three four five six seven eight nine ten")
    audio, rate = sf.read(clip, dtype="float32")
    long = tmp_path / "long.wav"
    sf.write(long, np.tile(audio, 6), rate)
    save = tmp_path / "save"
    proc = subprocess.Popen([sys.executable, "-m", "voxcli", "listen", "--input", long, "--server", server.url,
                             "--save", save, "--plain"], env=_env(), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            txts = list(save.glob("*.txt")) if save.exists() else []
            if txts and txts[0].read_text().strip():  # text has arrived from the server
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        else:
            raise AssertionError("no text arrived from the server")
        time.sleep(0.5)
        server.kill()
        out, err = proc.communicate(timeout=120)
    finally:
        server.kill()
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        shutil.rmtree(workdir, ignore_errors=True)
    assert proc.returncode == 1, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("voxcli: error:")]
    assert len(errors) == 1 and "server" in errors[0], err
    wav, jsonl, txt = _session_files(save)
    heard, rate = sf.read(wav, dtype="float32")
    assert rate == 16000 and len(heard) > 0
    # Everything captured is in the WAV: exactly the start of the input, without gaps.
    source = np.tile(audio, 6)
    assert np.allclose(heard, source[: len(heard)], atol=1e-4)
    tokens = [json.loads(line) for line in jsonl.read_text().splitlines() if '"type": "token"' in line]
    assert tokens
    assert txt.read_bytes().decode("utf-8").strip() == "".join(t["text"] for t in tokens).strip()


def test_bench_concurrency_reports_every_session(vllm_realtime, tmp_path):
    out = tmp_path / "load.json"
    run = voxcli("bench", "--server", vllm_realtime.url, "--concurrency", 4, "--paced", "--json", out,
                 ROOT / "examples" / "short.wav")
    assert run.returncode == 0, run.stderr
    load = json.loads(out.read_text())["load"]
    sessions = load["sessions"]
    assert [s["session"] for s in sessions] == [0, 1, 2, 3]
    assert all(s["error"] is None and s["n_deltas"] > 0 for s in sessions)
    agg = load["aggregate"]
    assert agg["failed"] == 0
    from voxcli.events import summarize

    assert agg["ttft_ms"] == summarize([s["ttft_ms"] for s in sessions])  # recomputable
    assert agg["delta_interval_ms"] == summarize([x for s in sessions for x in s["delta_interval_ms"]])
    assert "ttft_ms" in run.stdout and "deltas/s" in run.stdout


def test_bench_runs_unchanged_against_a_server(vllm_offline, tmp_path):
    out = tmp_path / "bench.json"
    run = voxcli("bench", "--server", vllm_offline.url, "--runs", 2, "--warmup", 1, "--json", out,
                 ROOT / "examples" / "short.wav")
    assert run.returncode == 0, run.stderr
    report = json.loads(out.read_text())
    assert report["summary"]["all"]["ttft_ms"]["n"] == 2
    assert report["summary"]["all"]["critical_path_ms"]["n"] == 0  # not measurable through a server


def test_concurrency_needs_a_server(realtime_dir):
    line = _one_error(voxcli("bench", "--model", realtime_dir, "--concurrency", 2))
    assert "--server" in line


def test_listen_through_the_server_ends_speech_at_each_pause(vllm_realtime, tmp_path):  # noqa: F811
    """At an end of speech the finished stream's last deltas arrive while the next stream is fed
    (the final commit is not waited for in the engine thread), and nothing is lost."""
    from speech import make_paused_speech

    clip, truth = make_paused_speech(tmp_path / "paused.wav", ("one two three four five", "six seven eight nine ten"),
                                     pause_s=1.5, tail_s=1.0)
    save = tmp_path / "save"
    run = voxcli("listen", "--input", clip, "--speed", 1, "--server", vllm_realtime.url, "--save", save, "--plain")
    assert run.returncode == 0, run.stderr
    wav, jsonl, _ = _session_files(save)
    heard, rate = sf.read(wav, dtype="float32")
    assert len(heard) / rate == pytest.approx(sf.info(clip).duration, abs=0.01)
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [line["utterance"] for line in lines if line["type"] == "endpoint"] == [0, 1]
    tokens = [line for line in lines if line["type"] == "token"]
    assert {t["utterance"] for t in tokens} >= {0, 1}
    assert lines[-1]["endpoints"] == 2 and lines[-1]["notice"] is None
