"""`voxcli listen` end to end, through the real audio stack and real subprocesses.

The microphone is the file-backed ALSA device from vmic.py (sounddevice -> PortAudio ->
alsa-lib); `--input FILE` replays a file through the same pipeline at real speed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from fakes import ScriptedConnection, ScriptedServer
from speech import make_speech

from voxcli.events import TokenEvent

ROOT = Path(__file__).resolve().parent.parent
HELLO = ROOT / "examples" / "hello.wav"
FIRST_CHUNK_S = 9000 / 16000  # audio the Realtime model needs for its first token (480 ms delay)
TOKEN_S = 0.08


def _env(extra: dict | None = None) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(extra or {})}
    env.pop("VOXCLI_DEBUG", None)
    return env


def _listen(args, env=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "voxcli", "listen", *map(str, args)], env=_env(env),
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def _session_files(directory: Path) -> tuple[Path, Path, Path]:
    wavs, jsonls, txts = (sorted(directory.glob(f"*.{ext}")) for ext in ("wav", "jsonl", "txt"))
    assert len(wavs) == len(jsonls) == len(txts) == 1, list(directory.iterdir())
    return wavs[0], jsonls[0], txts[0]


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _check_events(lines: list[dict]) -> list[dict]:
    assert lines[0]["type"] == "session" and lines[-1]["type"] == "summary"
    tokens = [line for line in lines if line["type"] == "token"]
    assert tokens, "no token was written"
    assert [t["index"] for t in tokens] == list(range(len(tokens)))
    times = [t["t_emitted"] for t in tokens]
    assert times == sorted(times)
    ends = [t["audio_end_s"] for t in tokens]
    assert ends == sorted(ends)
    for t in tokens:
        assert t["audio_start_s"] <= t["audio_end_s"]
        # Causality: no token is about audio the engine had not heard yet.
        assert t["audio_end_s"] <= t["audio_available_s"] + 1e-4  # JSONL rounds to 10 µs
    return tokens


def _check_subtitles(save: Path, lines: list[dict]) -> None:
    """The session's SRT and WebVTT parse with the `srt` and `webvtt-py` packages, their cues are
    monotonic and say the transcript, and they are the cues `transcribe file` would make from the
    session's events (each utterance a segment)."""
    import html

    import srt
    import webvtt

    from voxcli.output.cues import events_to_cues

    (srt_path,), (vtt_path,), (txt,) = (list(save.glob(f"*.{ext}")) for ext in ("srt", "vtt", "txt"))
    subs = list(srt.parse(srt_path.read_text(encoding="utf-8")))
    captions = webvtt.read(str(vtt_path)).captions
    fields = set(TokenEvent.__dataclass_fields__) - {"alternatives", "segment"}
    events = [TokenEvent(**{k: v for k, v in r.items() if k in fields}, segment=r["utterance"])
              for r in lines if r["type"] == "token" and r.get("stream") != "provisional"]
    expected = events_to_cues(events)
    assert expected, "the session said something"
    assert [(s.start.total_seconds(), s.end.total_seconds(), s.content) for s in subs] == \
        [(c.start_s, c.end_s, c.text.replace("-->", "->")) for c in expected]
    assert [(c.start, c.end, html.unescape(c.text)) for c in captions] == [(v.start, v.end, s.content) for v, s in
                                                                          zip(captions, subs)]
    assert all(a.end <= b.start for a, b in zip(subs, subs[1:])) and all(s.start < s.end for s in subs)
    said = "".join(txt.read_text(encoding="utf-8").split())
    assert "".join("".join(s.content for s in subs).split()) == said.replace("-->", "->")


@pytest.mark.slow
def test_virtual_mic_session_files(vmic, realtime_dir, tmp_path):
    save = tmp_path / "save"
    run = _listen(["--device", vmic.device_name, "--model", realtime_dir, "--max-seconds", 5,
                   "--save", save, "--plain"], env=vmic.env)
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    wav, jsonl, txt = _session_files(save)
    heard, rate = sf.read(wav, dtype="float32")
    assert rate == 16000
    expected = np.zeros(5 * 16000, np.float32)
    n = min(len(vmic.speech), len(expected))
    expected[:n] = vmic.speech[:n]
    assert np.array_equal(heard, expected)  # exactly the samples the device delivered
    lines = _read_jsonl(jsonl)
    _check_events(lines)
    summary = lines[-1]
    assert summary["dropped_blocks"] == 0
    assert summary["audio_s"] == pytest.approx(5.0)
    text = txt.read_bytes().decode("utf-8")
    assert text.strip() == summary["text"] and text.strip()
    # plain mode streamed the same text (text mode turns a "\r" in a random token into "\n")
    assert run.stdout.strip() == summary["text"].replace("\r", "\n")


@pytest.mark.slow
def test_file_as_microphone_has_no_chunk_lag(realtime_dir, tmp_path):
    """Each token comes out before the audio of the next chunk exists (stock generate() would
    need that next chunk first: 80 ms late). Structural, so no timing can make it flaky."""
    save = tmp_path / "save"
    run = _listen(["--input", HELLO, "--model", realtime_dir, "--save", save, "--plain"])
    assert run.returncode == 0, run.stderr
    _, jsonl, _ = _session_files(save)
    lines = _read_jsonl(jsonl)
    tokens = _check_events(lines)
    live = [t for t in tokens if not t["flushed"]]
    assert len(live) >= 10
    for t in live:
        # Token k of a session covers audio ending at (k+1) x 80 ms and needs the first chunk
        # plus k x 80 ms of audio; the next token needs 80 ms more than that.
        needed_next = (t["audio_end_s"] - TOKEN_S) + FIRST_CHUNK_S + TOKEN_S
        assert t["audio_available_s"] < needed_next
        assert t["emitted_after_ready_ms"] >= 0
    assert lines[-1]["emitted_after_ready_ms"]["n"] == len(tokens)
    assert lines[-1]["audio_s"] == pytest.approx(sf.info(HELLO).duration, abs=0.01)


def _long_speech(tmp_path: Path, repeats: int = 8) -> Path:
    clip = make_speech(tmp_path / "clip.wav", "one two three four five six seven eight nine ten")
    audio, rate = sf.read(clip, dtype="float32")
    long = tmp_path / "long.wav"
    sf.write(long, np.tile(audio, repeats), rate)
    return long


def _start_listen(args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "voxcli", "listen", *map(str, args)], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def _wait_for_audio(save: Path, seconds: float, proc: subprocess.Popen) -> None:
    """Wait until the session WAV holds at least ``seconds`` of audio (capture is under way)."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        wavs = list(save.glob("*.wav")) if save.exists() else []
        if wavs and wavs[0].stat().st_size >= 44 + seconds * 16000 * 4:
            return
        time.sleep(0.05)
    raise AssertionError("listen never started capturing")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_mid_session_flushes_and_leaves_valid_files(realtime_dir, tmp_path, sig):
    save = tmp_path / "save"
    proc = _start_listen(["--input", _long_speech(tmp_path), "--model", realtime_dir, "--save", save, "--plain"])
    _wait_for_audio(save, 1.5, proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    wav, jsonl, txt = _session_files(save)
    heard, rate = sf.read(wav, dtype="float32")
    total = sf.info(_long_speech(tmp_path)).duration
    assert 1.5 <= len(heard) / rate < total  # stopped early, kept what it had
    lines = _read_jsonl(jsonl)
    tokens = _check_events(lines)
    assert tokens[-1]["flushed"]  # the stop pushed the right padding: the last words came out
    assert lines[-1]["audio_s"] == pytest.approx(len(heard) / rate)
    assert txt.read_bytes().decode("utf-8").strip() == lines[-1]["text"]


def test_a_second_ctrl_c_inside_libsndfile_is_not_lost():
    """Python code that libsndfile calls (soundfile's virtual I/O, while the WAV is written) cannot
    raise: cffi prints the exception and drops it, and a clean-clone run once lost the second
    Ctrl-C that way (the session ran on and exited 0). There the handler only marks it; anywhere
    else it raises at once."""
    import threading

    from voxcli.cli.listen import _Signals

    stop, quit_now = threading.Event(), threading.Event()
    signals = _Signals(stop, lambda line: None, quit_now)
    signals._handle(signal.SIGINT, sys._getframe())  # the first: finish what was captured
    assert stop.is_set() and not quit_now.is_set()
    scope: dict = {}
    code = "def vio_seek(handle, here):\n    return handle(signal.SIGINT, here())\n"
    exec(compile(code, "/venv/site-packages/soundfile.py", "exec"), {"signal": signal}, scope)
    scope["vio_seek"](signals._handle, sys._getframe)  # no raise inside the callback
    assert quit_now.is_set()
    with pytest.raises(KeyboardInterrupt):
        signals._handle(signal.SIGINT, sys._getframe())


def test_quit_now_ends_a_live_run_from_its_own_loop():
    """What the handler marked, the live loop raises (within a poll interval): a real-time
    input that would take seconds ends at once."""
    import threading

    from fakes import ScriptedLocal

    from voxcli.audio.capture import FileSource
    from voxcli.live.items import LiveOptions
    from voxcli.live.runner import run_live

    source = FileSource(HELLO, speed=1.0)
    source.check()
    quit_now = threading.Event()
    tokens = []

    def token(event, stream):
        tokens.append(event)
        quit_now.set()  # Ctrl-C twice, as the first token is drawn

    with pytest.raises(KeyboardInterrupt):
        run_live(ScriptedLocal(), source, on_token=token, stop=threading.Event(), quit_now=quit_now,
                 options=LiveOptions(flush_after_ms=0))
    assert len(tokens) == 1 and source.captured_samples < sf.info(HELLO).frames


@pytest.mark.slow
def test_second_ctrl_c_quits_with_valid_files(realtime_dir, tmp_path):
    save = tmp_path / "save"
    # Two minutes of speech read as fast as possible: at the first Ctrl-C most of it is captured
    # and still to be transcribed, so the second one comes while that goes on.
    proc = _start_listen(["--input", _long_speech(tmp_path, 36), "--speed", 0, "--model", realtime_dir,
                          "--save", save, "--plain"])
    _wait_for_audio(save, 1.0, proc)
    proc.send_signal(signal.SIGINT)
    # Two signals sent back to back may reach the process as one: the second goes once the first
    # has been handled.
    for line in iter(proc.stderr.readline, ""):
        if line.startswith("stopping:"):
            break
    else:
        raise AssertionError("the first Ctrl-C was never acknowledged")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "stopped at once" in err and "Traceback" not in err
    wav, jsonl, _ = _session_files(save)
    heard, rate = sf.read(wav, dtype="float32")
    assert rate == 16000 and len(heard) >= 16000
    for line in jsonl.read_text(encoding="utf-8").splitlines():
        json.loads(line)  # every line written is whole
    import srt
    import webvtt

    # The subtitles as far as they were written: whole cues, each file valid.
    (srt_path,), (vtt_path,) = save.glob("*.srt"), save.glob("*.vtt")
    subs = list(srt.parse(srt_path.read_text(encoding="utf-8")))
    assert [(c.start, c.end) for c in webvtt.read(str(vtt_path)).captions] == \
        [(srt.timedelta_to_srt_timestamp(s.start).replace(",", "."),
          srt.timedelta_to_srt_timestamp(s.end).replace(",", ".")) for s in subs]


def test_devices_lists_the_virtual_mic_once(vmic):
    run = subprocess.run([sys.executable, "-m", "voxcli", "devices"], env=_env(vmic.env),
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    names = [line.split(None, 2)[-1] for line in run.stdout.splitlines()]
    assert sum(1 for n in names if n.startswith(vmic.device_name + " ")) == 1


def _assert_one_error(run) -> str:
    assert run.returncode != 0
    assert "Traceback" not in run.stderr
    assert "loaded in" not in run.stderr  # failed before loading a model
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("voxcli: error:"), run.stderr
    return lines[0]


def test_unknown_device_is_one_line(vmic, realtime_dir):
    line = _assert_one_error(_listen(["--device", "no-such-mic", "--model", realtime_dir], env=vmic.env))
    assert "no-such-mic" in line and vmic.device_name in line


def test_no_input_device_is_one_line(no_mic, realtime_dir):
    line = _assert_one_error(_listen(["--model", realtime_dir], env=no_mic.env))
    assert "no audio input device" in line


def test_bad_input_file_is_one_line(realtime_dir, tmp_path):
    line = _assert_one_error(_listen(["--input", tmp_path / "missing.wav", "--model", realtime_dir]))
    assert "missing.wav" in line


@pytest.mark.slow
def test_offline_model_transcribes_utterances(offline_dir, tmp_path):
    save = tmp_path / "save"
    run = _listen(["--input", HELLO, "--speed", 0, "--model", offline_dir, "--save", save, "--plain"])
    assert run.returncode == 0, run.stderr
    _, jsonl, _ = _session_files(save)
    tokens = _check_events(_read_jsonl(jsonl))
    assert all(t["flushed"] is False for t in tokens)
    assert {t["segment"] for t in tokens} == {0}  # one session-relative segment per utterance


@pytest.mark.parametrize("where", ["/proc/voxcli-nope", "file"])
def test_unwritable_save_directory_is_one_line_before_the_model_loads(realtime_dir, tmp_path, where):
    save = tmp_path / "a-file" if where == "file" else Path(where)
    if where == "file":
        save.write_text("not a directory")
    run = _listen(["--input", HELLO, "--model", realtime_dir, "--save", save, "--speed", 0])
    assert run.returncode == 2, run.stderr
    line = _assert_one_error(run)
    assert str(save) in line and "cannot be written" in line


@pytest.fixture
def small_disk(tmp_path):
    """A 320 KB tmpfs: about 5 s of float WAV, so a session fills it part way through."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=320k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        if os.environ.get("CI") == "true":  # CI runs as root: the full-disk path must be tested there
            pytest.fail(f"cannot mount a tmpfs for the full-disk test: {done.stderr.strip()}")
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@pytest.mark.slow
def test_full_disk_mid_session_is_one_line_valid_files_and_a_whole_transcript(realtime_dir, tmp_path, small_disk):
    long = _long_speech(tmp_path)
    total_s = sf.info(long).duration
    reference = _listen(["--input", long, "--model", realtime_dir, "--speed", 0, "--plain"])
    assert reference.returncode == 0, reference.stderr
    run = _listen(["--input", long, "--model", realtime_dir, "--speed", 0, "--plain", "--save", small_disk])
    assert run.returncode == 1, run.stderr  # saving failed: the exit status says so
    assert "Traceback" not in run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("voxcli: error:")]
    assert len(errors) == 1, run.stderr
    assert "No space left on device" in errors[0] and "saving stopped with" in errors[0]
    assert run.stdout == reference.stdout  # the transcript went on to the screen, whole
    wav, jsonl, txt = _session_files(small_disk)
    heard, rate = sf.read(wav, dtype="float32")  # a valid WAV, shorter than the input
    assert rate == 16000 and 0 < len(heard) / rate < total_s
    saved_s = float(errors[0].split("saving stopped with ")[1].split(" s")[0])
    assert len(heard) / rate == pytest.approx(saved_s, abs=0.05)
    lines = _read_jsonl(jsonl)  # every line whole (no summary: the disk was full)
    assert lines[0]["type"] == "session"
    text = txt.read_bytes().decode("utf-8")
    assert reference.stdout.strip().startswith(text.strip().replace("\r", "\n"))


class _FlakyConnection(ScriptedConnection):
    """The first connection to this scripted server drops after a quarter of a second of audio."""

    def push(self, samples) -> None:
        super().push(samples)
        if self.engine.opened[0] is self and self.pushed_samples > 4000:
            from voxcli.errors import ServerError

            raise ServerError("the vLLM server closed the connection")


class _FlakyServer(ScriptedServer):
    connection = _FlakyConnection


def test_a_lost_server_is_reconnected_with_a_row_and_notices(tmp_path, capsys):
    import io

    from voxcli.cli.listen import ListenJob, run_listen
    from voxcli.config import load_config

    engine = _FlakyServer()
    cfg = load_config(None, {"output.plain": True, "listen.save_dir": str(tmp_path / "save")})
    code = run_listen(ListenJob(cfg=cfg, input_path=HELLO, speed=0), load_engine=lambda cfg, err: engine.configured(cfg),
                      stdout=io.StringIO())
    assert code == 0 and engine.sessions >= 2  # one more per end of speech
    err = capsys.readouterr().err
    assert "voxcli: the vLLM server closed the connection; reconnecting for up to 120 s, the audio is kept" in err
    assert "voxcli: reconnected after " in err
    _, jsonl, _ = _session_files(tmp_path / "save")
    rows = _read_jsonl(jsonl)
    (reconnect,) = [r for r in rows if r["type"] == "reconnect"]
    assert reconnect["error"] == "the vLLM server closed the connection" and reconnect["attempts"] == 1
    # The first session had answered 3 tokens (3840 samples): less the 480 ms delay, that is
    # nothing, so everything heard before the drop went to the new session again.
    assert reconnect["replayed_s"] >= reconnect["lost_at_s"] > 0.25
    # Everything heard since the replay point went to the server again (in the connections after
    # the drop: one per stream, a new stream after each end of speech).
    assert sum(c.pushed_samples for c in engine.opened[1:]) >= reconnect["replayed_s"] * 16000 - 2  # rounded to 0.1 ms
    summary = rows[-1]
    assert summary["reconnects"] == 1 and summary["notice"].startswith("reconnected after ")
    assert summary["input_overflows"] == 0 and summary["dropped_blocks"] == 0


class _GoneServer(_FlakyServer):
    """A server that drops the first connection and never answers again."""

    def connect(self):
        if self.opened:
            from voxcli.errors import ServerError

            self.refused += 1
            raise ServerError("cannot reach the vLLM server at http://scripted (Connection refused)")
        return super().connect()

    refused = 0


def test_a_server_gone_for_good_fails_in_one_line_after_the_window_with_every_sample_saved(tmp_path):
    import io

    import soundfile as sf

    from voxcli.cli.listen import ListenJob, run_listen
    from voxcli.config import load_config
    from voxcli.errors import ServerError

    engine = _GoneServer()
    save = tmp_path / "save"
    cfg = load_config(None, {"output.plain": True, "listen.save_dir": str(save), "model.reconnect_s": 1.0})
    with pytest.raises(ServerError) as caught:
        run_listen(ListenJob(cfg=cfg, input_path=HELLO, speed=0), load_engine=lambda cfg, err: engine.configured(cfg),
                   stdout=io.StringIO())
    line = str(caught.value)
    assert line.startswith("lost the vLLM server (the vLLM server closed the connection), and it did not "
                           "come back within 1 s (last try: cannot reach")
    assert "\n" not in line and str(save) in line
    assert engine.refused >= 2  # it kept trying, backing off
    wav, jsonl, _ = _session_files(save)
    heard, rate = sf.read(wav, dtype="float32")
    source, _ = sf.read(HELLO, dtype="float32")
    assert rate == 16000 and np.allclose(heard, source, atol=1e-4)  # all of the input


class _DropAtTheEnd(ScriptedConnection):
    def commit(self) -> None:  # the final commit: the server goes as the last words are due
        from voxcli.errors import ServerError

        raise ServerError("the vLLM server closed the connection")


class _GoneAtTheEnd(_GoneServer):
    connection = _DropAtTheEnd


def test_a_server_lost_while_the_last_words_are_due_is_said_before_the_failure(tmp_path, capsys):
    """The whole input is heard and the session waits for its last words when the server goes:
    that it went (and that listen waits for it) is said, not lost when the wait fails (a CI run
    once ended with the error line alone). That it is said during the wait, not after it, this
    test does not time."""
    import io

    from voxcli.cli.listen import ListenJob, run_listen
    from voxcli.config import load_config
    from voxcli.errors import ServerError

    engine = _GoneAtTheEnd()
    cfg = load_config(None, {"output.plain": True, "listen.save_dir": str(tmp_path / "save"),
                             "model.reconnect_s": 1.0, "listen.flush_after_ms": 0})  # one stream, one commit
    with pytest.raises(ServerError) as caught:
        run_listen(ListenJob(cfg=cfg, input_path=HELLO, speed=0), load_engine=lambda cfg, err: engine.configured(cfg),
                   stdout=io.StringIO())
    assert "did not come back within 1 s" in str(caught.value)
    assert engine.refused >= 1
    err = capsys.readouterr().err
    assert "voxcli: the vLLM server closed the connection; reconnecting for up to 1 s, the audio is kept" in err


# Held out: not the sentences the endpointer's default was chosen on (tests/speech.py SENTENCES).
HELD_OUT = ("Turn left at the second light and park behind the old library.",
            "My sister bought three green apples and a loaf of bread.",
            "The train to the airport leaves every twenty minutes on weekdays.")


@pytest.mark.parametrize("condition", [{}, {"snr_db": 20}, {"snr_db": 10}, {"speech_dbfs": -50, "noise_dbfs": -80}],
                         ids=["clean", "20dB", "10dB", "quiet"])
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["realtime", "offline"])
def test_one_endpoint_per_pause_and_none_inside_speech(realtime_dir, offline_dir, tmp_path, kind, condition):
    from speech import make_paused_speech

    clip, truth = make_paused_speech(tmp_path / "paused.wav", HELD_OUT, tail_s=1.0, **condition)
    save = tmp_path / "save"
    model = realtime_dir if kind == "realtime" else offline_dir
    run = _listen(["--input", clip, "--speed", 0, "--model", model, "--save", save, "--plain"])
    assert run.returncode == 0, run.stderr
    _, jsonl, _ = _session_files(save)
    lines = _read_jsonl(jsonl)
    endpoints = [line for line in lines if line["type"] == "endpoint"]
    assert [e["utterance"] for e in endpoints] == list(range(len(truth)))
    for (a, b), nxt, e in zip(truth, [t[0] for t in truth[1:]] + [None], endpoints):
        # Each end of speech lies in the pause after its sentence (or the silence after the last).
        assert b / 16000 - 0.2 <= e["speech_end_s"] <= e["decided_s"]
        if nxt is not None:
            assert e["decided_s"] < nxt / 16000
    tokens = [line for line in lines if line["type"] == "token"]
    assert all("utterance" in t for t in tokens)
    assert lines[-1]["endpoints"] == len(truth)
    _check_subtitles(save, lines)
    if kind == "offline":  # one transcription per sentence, each within its own sentence's audio
        by_utterance = {}
        for t in tokens:
            by_utterance.setdefault(t["utterance"], set()).add((t["audio_start_s"], t["audio_end_s"]))
        assert sorted(by_utterance) == list(range(len(truth)))
        for u, spans in by_utterance.items():
            (start, end), = spans
            assert start <= truth[u][0] / 16000 and truth[u][1] / 16000 <= end + 0.1


@pytest.mark.slow
def test_listen_jsonl_streams_parseable_events(realtime_dir, tmp_path):
    from speech import make_paused_speech

    clip, truth = make_paused_speech(tmp_path / "paused.wav", HELD_OUT[:2], tail_s=1.0)
    run = _listen(["--input", clip, "--speed", 0, "--model", realtime_dir, "--format", "jsonl"])
    assert run.returncode == 0, run.stderr
    rows = [json.loads(line) for line in run.stdout.splitlines()]
    kinds = [r["type"] for r in rows]
    assert kinds[-1] == "summary" and kinds.count("endpoint") == len(truth) and "token" in kinds
    token = next(r for r in rows if r["type"] == "token")
    for key in ("text", "t_emitted", "audio_start_s", "audio_end_s", "utterance", "emission_latency_ms"):
        assert key in token
    assert rows[-1]["endpoints"] == len(truth)


def test_listen_rejects_a_format_it_cannot_stream(realtime_dir):
    run = _listen(["--input", HELLO, "--model", realtime_dir, "--format", "srt"])
    assert run.returncode == 2
    assert "text, jsonl" in run.stderr and "Traceback" not in run.stderr


class _SlowConnection(ScriptedConnection):
    """A server that answers the final commit of a stream only once the next stream has been
    sent a second of audio: anything that waited for the answer at a pause would never see it."""

    def commit(self) -> None:
        super().commit()
        self.t_commit = time.monotonic()

    def pending(self):
        later = self.engine.opened[-1]
        if later is self:
            # The input's end (no next stream came within a second): nothing to wait for.
            self.finished = time.monotonic() - self.t_commit > 1.0
        elif later.pushed_samples >= 16000 or later.committed:
            self.finished = True
            yield TokenEvent(0, -1, " LAST", time.perf_counter())


class _SlowServer(ScriptedServer):
    connection = _SlowConnection


def test_a_pause_never_waits_for_the_server(tmp_path):
    import io

    from speech import make_paused_speech

    from voxcli.cli.listen import ListenJob, run_listen
    from voxcli.config import load_config

    clip, truth = make_paused_speech(tmp_path / "paused.wav", HELD_OUT[:2], pause_s=2.0, tail_s=1.0)
    engine = _SlowServer()
    out = io.StringIO()
    cfg = load_config(None, {"listen.save_dir": str(tmp_path / "save")})
    code = run_listen(ListenJob(cfg=cfg, input_path=clip, speed=0, format="jsonl"),
                      load_engine=lambda cfg, err: engine, stdout=out)
    assert code == 0
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    tokens = [r for r in rows if r["type"] == "token"]
    last_of_first = next(i for i, t in enumerate(tokens) if t["text"] == " LAST" and t["utterance"] == 0)
    # The first stream's answer came while the second stream was already being fed and transcribed.
    assert any(t["utterance"] == 1 for t in tokens[:last_of_first])
    assert tokens[last_of_first]["flushed"]
    assert sum(r["type"] == "endpoint" for r in rows) == len(truth)


def test_the_engines_and_sessions_satisfy_the_written_contract(realtime_engine, offline_engine):
    from voxcli.engine import contract
    from voxcli.engine.reconnect import ReconnectingSession
    from voxcli.engine.remote import RemoteOfflineEngine, RemoteRealtimeEngine
    from voxcli.engine.server import Server as _Server

    assert isinstance(realtime_engine, contract.RealtimeEngine) and realtime_engine.info.step_times
    assert isinstance(offline_engine, contract.Engine) and realtime_engine.info.audio_spans
    session = realtime_engine.session()
    assert isinstance(session, contract.Session) and not session.finish_waits and session.incidents() == []
    server = _Server("http://127.0.0.1:9")  # nothing is contacted until a session is opened
    realtime = RemoteRealtimeEngine(server, "m", "realtime", 0.0, 10)
    offline = RemoteOfflineEngine(server, "m", "offline", 0.0, 10)
    assert isinstance(realtime, contract.RealtimeEngine) and isinstance(offline, contract.Engine)
    assert not (realtime.info.token_ids or realtime.info.audio_spans or realtime.info.step_times)
    assert offline.info.audio_spans and realtime.critical_path_ms(np.zeros(16000)) is None
    scripted = _SlowServer().session()
    assert isinstance(scripted, ReconnectingSession) and isinstance(scripted, contract.WaitingSession)
    scripted.close()


@pytest.mark.slow
def test_two_pass_streams_each_equal_a_single_session_at_its_delay(realtime_dir, tmp_path):
    save = tmp_path / "save"
    run = _listen(["--input", HELLO, "--speed", 0, "--model", realtime_dir, "--flush-after-ms", 0,
                   "--delay-ms", 240, "--final-delay-ms", 960, "--save", save, "--format", "jsonl"])
    assert run.returncode == 0, run.stderr
    rows = [json.loads(line) for line in run.stdout.splitlines()]
    streams = {name: [r["token_id"] for r in rows if r["type"] == "token" and r.get("stream") == name]
               for name in ("provisional", "final")}
    for name, delay in (("provisional", 240), ("final", 960)):
        single = subprocess.run([sys.executable, "-m", "voxcli", "transcribe", "file", str(HELLO), "--model", str(realtime_dir),
                                 "--delay-ms", str(delay), "--format", "json"], env=_env(), cwd=ROOT,
                                capture_output=True, text=True, timeout=300)
        assert single.returncode == 0, single.stderr
        assert streams[name] == [e["token_id"] for e in json.loads(single.stdout)["events"]], name
    summary = rows[-1]
    final_text = "".join(r["text"] for r in rows if r.get("stream") == "final")
    assert summary["text"] == final_text.strip()
    figures = summary["two_pass"]
    assert figures["final_word_latency_ms"]["n"] > 0 and figures["provisional_word_latency_ms"]["n"] > 0
    assert figures["replacements"] == sum(r["type"] == "replacement" for r in rows) > 0
    # One forward for both: once the final stream has begun, its tokens come from forwards of two
    # streams (it flushes alone at the end), whose time is the summary's one step_ms.
    final_rows = [r for r in rows if r["type"] == "token" and r.get("stream") == "final"]
    shared = [r for r in final_rows if r["batch"] == 2]
    assert len(shared) > len(final_rows) // 2
    assert any(r["flushed"] for r in shared)  # the end of the input: both flush in shared forwards too
    assert figures["step_ms"]["n"] > 0 and figures["final_step_ms"]["n"] == 0
    assert 0 <= figures["revision_rate"] <= 1
    # The transcript file holds the final text; the session file both streams and the replacements.
    _, jsonl, txt = _session_files(save)
    assert txt.read_bytes().decode("utf-8").strip() == final_text.strip()
    assert sum('"stream": "provisional"' in line for line in jsonl.read_text().splitlines()) == len(streams["provisional"])


@pytest.mark.slow
def test_two_pass_needs_a_longer_final_delay(realtime_dir):
    run = _listen(["--input", HELLO, "--model", realtime_dir, "--delay-ms", 480, "--final-delay-ms", 480])
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1] == ("voxcli: error: --final-delay-ms 480 must be longer than the "
                                                   "provisional stream's delay (480 ms, --delay-ms)")


@pytest.mark.slow
def test_an_offline_final_pass_covers_every_utterance_once(realtime_dir, offline_dir, tmp_path):
    run = _listen(["--input", HELLO, "--speed", 0, "--model", realtime_dir, "--final-model", offline_dir,
                   "--format", "jsonl"], timeout=300)
    assert run.returncode == 0, run.stderr
    rows = [json.loads(line) for line in run.stdout.splitlines()]
    endpoints = [r["utterance"] for r in rows if r["type"] == "endpoint"]
    assert endpoints == list(range(len(endpoints))) and endpoints
    final = [r for r in rows if r["type"] == "token" and r.get("stream") == "final"]
    # One pass per utterance, each whole (its tokens together, in order), none twice.
    runs = [u for i, u in enumerate(r["utterance"] for r in final) if i == 0 or final[i - 1]["utterance"] != u]
    assert runs == endpoints
    # Each pass comes once its utterance has ended: after its endpoint row.
    for u in endpoints:
        first = next(i for i, r in enumerate(rows) if r.get("stream") == "final" and r["utterance"] == u)
        assert rows.index(next(r for r in rows if r["type"] == "endpoint" and r["utterance"] == u)) < first
    assert rows[-1]["two_pass"]["final_word_latency_ms"]["n"] > 0
    assert any(r["type"] == "replacement" for r in rows)


def test_a_final_model_that_will_not_fit_beside_the_realtime_one_says_so(realtime_engine, monkeypatch, tmp_path):
    from voxcli.cli.listen import _final_engine
    from voxcli.config import load_config
    from voxcli.errors import ModelError

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    cfg = load_config(None, {"transcription.final_model": "mistralai/Voxtral-Mini-3B-2507"})

    def load(cfg, err):  # what the memory check raises once the Realtime model has taken its share
        raise ModelError("mistralai/Voxtral-Mini-3B-2507 needs about 9.0 GiB, but only 2.0 GiB is free",
                         needed_bytes=9, free_bytes=2)

    with pytest.raises(ModelError) as caught:
        _final_engine(realtime_engine, cfg, load, None)
    assert str(caught.value).endswith(f"beside {realtime_engine.info.model}, already loaded on cpu")
    assert caught.value.data["needed_bytes"] == 9


class _FrozenServer(ScriptedServer):
    """A server that freezes for ``down_s`` (wall time) once the first connection has had 2 s of
    audio: a write waits until the freeze ends and then fails (as a write timeout does), and no
    connection opens meanwhile. Then it is back."""

    down_s = 2.5

    def __init__(self) -> None:
        super().__init__()
        self.down_from: float | None = None

    def frozen(self) -> bool:
        return self.down_from is not None and time.monotonic() < self.down_from + self.down_s

    def connect(self):
        if self.frozen():
            time.sleep(0.2)
            from voxcli.errors import ServerError

            raise ServerError("cannot reach the vLLM server at http://scripted (Connection refused)")
        return super().connect()

    class connection(ScriptedConnection):
        def push(self, samples) -> None:
            server = self.engine
            if server.down_from is None and self.pushed_samples >= 32000:
                server.down_from = time.monotonic()
            if server.frozen():
                while server.frozen():
                    time.sleep(0.05)
                from voxcli.errors import ServerError

                raise ServerError("the vLLM server stopped reading: a write waited 30 s")
            super().push(samples)


def test_an_outage_longer_than_the_capture_queue_loses_no_sample(tmp_path):
    """The server freezes for 20 s of audio (2.5 s at 8x speed), twice what the capture queue holds
    (10 s): capture goes on into the session's audio, nothing is dropped, the WAV is the whole
    input, and the audio heard during the outage reaches the server once it is back. (Before, a
    write to the frozen server held the worker, and a restarted vLLM server cost 48.6 s of audio
    of a 131.7 s session: dropped_blocks 2430.)"""
    import io

    from voxcli.cli.listen import ListenJob, run_listen
    from voxcli.config import load_config

    source = np.tile(sf.read(ROOT / "examples" / "long.wav", dtype="float32")[0], 3)  # 48 s
    clip = tmp_path / "long3.wav"
    sf.write(clip, source, 16000, subtype="FLOAT")
    engine = _FrozenServer()
    save = tmp_path / "save"
    cfg = load_config(None, {"listen.save_dir": str(save), "listen.flush_after_ms": 0})
    out = io.StringIO()
    code = run_listen(ListenJob(cfg=cfg, input_path=clip, speed=8, format="jsonl"),
                      load_engine=lambda cfg, err: engine.configured(cfg), stdout=out)
    assert code == 0
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    summary = rows[-1]
    assert summary["dropped_blocks"] == 0 and summary["input_overflows"] == 0
    (reconnect,) = [r for r in rows if r["type"] == "reconnect"]
    # Lost when the stalled write failed, at the freeze's end; what was heard meanwhile (20 s of
    # audio at 8x) was kept and replayed.
    assert reconnect["replayed_s"] >= engine.down_s * 8 - 2 and reconnect["lost_at_s"] >= engine.down_s * 8
    wav, _, _ = _session_files(save)
    heard, rate = sf.read(wav, dtype="float32")
    assert rate == 16000 and len(heard) == len(source) and np.array_equal(heard, source)
    # Every sample went to the server: the first connection up to the freeze, the second from the
    # replay point (less the delay) to the end.
    first, second = engine.opened[:2]
    assert len(engine.opened) == 2
    replay_from = first.answered_samples - 480 * 16  # where it last answered, less the model's delay
    assert 0 < replay_from <= first.pushed_samples  # no hole
    assert second.pushed_samples == len(source) - replay_from


def test_listen_and_bench_count_the_same_two_pass_revisions(realtime_engine, tmp_path):
    """One two-pass recorder for both: bench seals the provisional words at each end of speech as
    listen does, so on the same clip both give the same replacements and revision rate (bench
    never sealed before, and counted fewer)."""
    import io

    from speech import make_paused_speech

    from voxcli.audio.decode import load_audio
    from voxcli.cli.listen import ListenJob, run_listen
    from voxcli.config import load_config
    from voxcli.live.items import LiveOptions
    from voxcli.measure.runs import BenchOptions, Clip, run_bench

    clip, truth = make_paused_speech(tmp_path / "paused.wav", HELD_OUT, tail_s=1.0)
    cfg = load_config(None, {"transcription.final_delay_ms": 960})
    out = io.StringIO()
    code = run_listen(ListenJob(cfg=cfg, input_path=clip, speed=0, format="jsonl"),
                      load_engine=lambda cfg, err: realtime_engine, stdout=out)
    assert code == 0
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    listen = rows[-1]["two_pass"]
    assert rows[-1]["endpoints"] == len(truth) and listen["replacements"] > 0
    opts = BenchOptions(runs=1, warmup=0, paced=True, speed=0, live=LiveOptions.from_config(cfg), final_delay_ms=960)
    report = run_bench(realtime_engine, [Clip("paused", clip, load_audio(clip))], opts)
    (paced,) = [r for r in report.runs if r["mode"] == "paced"]
    assert paced["replacements"] == listen["replacements"]
    assert paced["revision_rate"] == listen["revision_rate"]
