"""A Realtime stream that ends itself: end of sequence (EOS) mid-clip and in the right padding,
runs of blanks over speech, a server that says ``transcription.done`` early, and an offline model
that must never be handed silence.

Random tiny models never say EOS (their special rows are zeroed) or only blanks, so these tests
build models that do: one whose EOS row is drawn wide enough that it says EOS now and then
mid-clip, as a real checkpoint does, and the tiny model with its output forced to the blank.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
from fakes import ScriptedConnection, ScriptedLocal, ScriptedServer
from typer.testing import CliRunner

from voxcli.audio.decode import load_audio
from voxcli.cli.app import app
from voxcli.engine.local import load_engine
from voxcli.events import TokenEvent

ROOT = Path(__file__).resolve().parent.parent
LONG = str(ROOT / "examples" / "long.wav")  # 16.1 s of speech
EOS, BLANK = 2, 32


@pytest.fixture(scope="module")
def long_audio():
    return load_audio(LONG)


def streams(events) -> list[list[TokenEvent]]:
    """The events cut after each EOS that restarted its stream."""
    out = [[]]
    for e in events:
        out[-1].append(e)
        if e.restart_at_s is not None:
            out.append([])
    return out


def test_a_restart_flushes_the_ended_streams_incomplete_character(eos_dir, long_audio, monkeypatch):
    """Each stream's detokenizer is flushed when it ends, at a restart too: a character its
    last token left incomplete (here every stream leaves one, flushed as "<held>") comes out
    with the next stream's first text, not dropped."""
    from voxcli.engine.base import Detokenizer

    monkeypatch.setattr(Detokenizer, "flush", lambda self: "<held>")
    events = list(load_engine(str(eos_dir), device="cpu", compile="off").transcribe(long_audio))
    restarts = sum(e.restart_at_s is not None for e in events)
    assert restarts >= 4
    text = "".join(e.text for e in events)
    assert text.count("<held>") == restarts + 1  # every stream's, the last one's at the end
    assert not any("<held>" in e.text for e in events if e.special)  # never on a blank or an EOS


@pytest.mark.parametrize("step", ["static", "hf"])
def test_after_an_eos_a_new_stream_hears_the_rest_as_if_it_began_there(eos_dir, long_audio, step):
    engine = load_engine(str(eos_dir), device="cpu", step=step, compile="off")
    events = list(engine.transcribe(long_audio))
    parts = streams(events)
    assert len(parts) >= 4, "the EOS model should restart several times in this clip"
    for before, after in zip(parts, parts[1:]):
        eos = before[-1]
        assert eos.token_id == EOS and eos.special and eos.text == ""
        assert EOS not in [e.token_id for e in before[:-1]]  # each stream ends at its first EOS
        at = eos.restart_at_s
        assert after[0].audio_start_s == pytest.approx(at)  # the new stream starts where the old one stopped
        # Never fed back: what follows is exactly a fresh stream over the rest of the audio.
        fresh = streams(engine.transcribe(long_audio[int(round(at * 16000)):]))[0]
        assert [e.token_id for e in after] == [e.token_id for e in fresh]
        # The same text, but for a character the last stream left incomplete, flushed into this
        # one's first text token (the real clip has one, flushed as "\ufffd").
        texts, want = [e.text for e in after], [e.text for e in fresh]
        first = next((i for i, e in enumerate(fresh) if not e.special), None)
        if first is not None and texts[first] != want[first]:
            assert texts[first] == "\ufffd" + want[first]
            texts[first] = want[first]
        assert texts == want
    assert any(e.text.strip() for e in parts[-1])  # text after the last restart
    # Every stream's spans continue one another, and the last reaches the end of the clip.
    assert np.all(np.diff([e.audio_start_s for e in events]) >= -1e-9)
    assert events[-1].audio_end_s == pytest.approx(len(long_audio) / 16000, abs=0.08)


def test_both_steps_restart_at_the_same_tokens(eos_dir, long_audio):
    ids = [[(e.token_id, e.restart_at_s) for e in load_engine(str(eos_dir), device="cpu", step=step,
                                                                compile="off").transcribe(long_audio)]
           for step in ("hf", "static")]
    assert ids[0] == ids[1]


def _force(engine, token_id: int, from_call: int = 0):
    """Make the model's output ``token_id`` from its ``from_call``-th step on (a forward hook on
    the head, which both steps call)."""
    calls = [0]

    def hook(module, args, output):
        calls[0] += 1
        if calls[0] > from_call:
            output = output.clone()
            output[..., token_id] = output.max() + 10.0
        return output

    return engine.model.lm_head.register_forward_hook(hook)


@pytest.mark.parametrize("step", ["static", "hf"])
def test_an_eos_in_the_right_padding_simply_ends_the_session(realtime_dir, step):
    engine = load_engine(str(realtime_dir), device="cpu", step=step, compile="off")
    clip = load_audio(str(ROOT / "examples" / "short.wav"))
    plain = list(engine.transcribe(clip))
    # The last 17 tokens come from the right padding (480 ms delay: (6 + 1) + 10 tokens); say EOS
    # from 3 before the end on.
    handle = _force(engine, EOS, from_call=len(plain) - 3)
    try:
        events = list(engine.transcribe(clip))
    finally:
        handle.remove()
    assert [e.token_id for e in events[:-1]] == [e.token_id for e in plain[:len(events) - 1]]
    assert events[-1].token_id == EOS and events[-1].restart_at_s is None
    assert len(events) == len(plain) - 2  # nothing after it: no restart, no more padding steps


def invoke(*args) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_transcribe_file_lists_the_restarts_and_covers_the_clip(eos_dir, long_audio, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    doc = json.loads(invoke("transcribe", "file", LONG, "--model", eos_dir, "--format", "json"))
    events = doc["events"]
    restarts = doc["restarts"]
    eos_events = [e for e in events if e["token_id"] == EOS]
    assert len(restarts) == len(eos_events) >= 4
    assert restarts == [{"type": "restart", "reason": "eos", "at_s": round(e["restart_at_s"], 4)} for e in eos_events]
    for r in restarts:  # text after each, from the position it names
        after = [e for e in events if e["audio_start_s"] >= r["at_s"] - 1e-6 and e["text"].strip()]
        assert after
    assert max(e["audio_end_s"] for e in events) == pytest.approx(len(long_audio) / 16000, abs=0.08)
    rows = [json.loads(line) for line in invoke("transcribe", "file", LONG, "--model", eos_dir, "-f", "jsonl")
            .splitlines()]
    assert [r for r in rows if r["type"] == "restart"] == [{**r, "source": LONG} for r in restarts]


def test_listen_writes_a_restart_row_at_each_eos_and_goes_on(eos_dir, long_audio, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    save = tmp_path / "save"
    out = invoke("listen", "--input", LONG, "--speed", "0", "--model", eos_dir, "--format", "jsonl",
                 "--flush-after-ms", "0", "--plain", "--save", save)
    rows = [json.loads(line) for line in out.splitlines()]
    restarts = [i for i, r in enumerate(rows) if r["type"] == "restart"]
    assert len(restarts) >= 4 and all(rows[i]["reason"] == "eos" for i in restarts)
    for i in restarts:
        eos = rows[i - 1]
        assert eos["type"] == "token" and eos["token_id"] == EOS and eos["restart_at_s"] == rows[i]["at_s"]
        nxt = next(r for r in rows[i + 1:] if r["type"] == "token")
        assert nxt["audio_start_s"] == pytest.approx(rows[i]["at_s"])
    tokens = [r for r in rows if r["type"] == "token"]
    assert any(t["text"].strip() for t in tokens[tokens.index(rows[restarts[-1] - 1]) + 1:])
    assert max(t["audio_end_s"] for t in tokens) == pytest.approx(len(long_audio) / 16000, abs=0.08)
    assert rows[-1]["type"] == "summary" and rows[-1]["restarts"] == len(restarts)
    (jsonl,) = save.glob("*.jsonl")
    saved = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [r for r in saved if r["type"] == "restart"] == [rows[i] for i in restarts]
    # The same tokens as transcribe file: a live stream restarts exactly where a file's does.
    doc = json.loads(invoke("transcribe", "file", LONG, "--model", eos_dir, "--format", "json"))
    assert [t["token_id"] for t in tokens] == [e["token_id"] for e in doc["events"]]


# ------------------------------------------------------------------------------------ blank runs


class _BlankSession(ScriptedConnection):
    """A scripted session that hears and never speaks: one blank per 80 ms pushed."""

    def event(self, k: int) -> TokenEvent:
        return TokenEvent(k, BLANK, "", time.perf_counter(), k * 0.08, (k + 1) * 0.08, special=True)


class _BlankEngine(ScriptedLocal):
    connection = _BlankSession


def _listen_rows(engine, tmp_path, capsys, input_path=LONG, **settings) -> tuple[list[dict], str]:
    from voxcli.cli.listen import ListenJob, run_listen
    from voxcli.config import load_config

    cfg = load_config(None, {"output.plain": True, **settings})
    out = io.StringIO()
    code = run_listen(ListenJob(cfg=cfg, input_path=Path(input_path), speed=0, format="jsonl"),
                      load_engine=lambda cfg, err: engine, stdout=out)
    assert code == 0
    return [json.loads(line) for line in out.getvalue().splitlines()], capsys.readouterr().err


def test_a_scripted_session_that_only_hears_restarts_a_bounded_number_of_times(tmp_path, capsys):
    engine = _BlankEngine()
    rows, err = _listen_rows(engine, tmp_path, capsys, **{"listen.blank_run_s": 0.5})
    restarts = [r for r in rows if r["type"] == "restart"]
    assert [r["reason"] for r in restarts] == ["blank_run"] * 3  # then it gives up
    assert rows[-1]["restarts"] == 3
    lines = [line for line in err.splitlines() if "gave no text" in line]
    assert len(lines) == 1 and "after 3 restarts; not restarting again" in lines[0]
    # Backing off: the run before restart k is 0.5 s x 2^k of speech; each restart's new session
    # was handed the run's audio again (a replay), and the old one was dropped.
    for k, i in enumerate(i for i, r in enumerate(rows) if r["type"] == "restart"):
        heard = next(r for r in reversed(rows[:i]) if r["type"] == "token")["audio_available_s"]
        assert heard - rows[i]["at_s"] >= 0.5 * 2 ** k - 0.1
    replayed = [s for s in engine.opened if s.pushed_samples and s.closed]
    assert len(replayed) == 3


def test_blank_runs_off_and_text_never_restart(realtime_dir, tmp_path, capsys):
    rows, _ = _listen_rows(_BlankEngine(), tmp_path, capsys, **{"listen.blank_run_s": 0})
    assert not [r for r in rows if r["type"] == "restart"]
    engine = load_engine(str(realtime_dir), device="cpu")
    rows, _ = _listen_rows(engine, tmp_path, capsys)  # the default, 3 s
    assert not [r for r in rows if r["type"] == "restart"]  # a model that speaks is left alone


def test_a_model_that_only_emits_the_blank_is_restarted_then_left_with_one_line(realtime_dir, tmp_path, capsys):
    engine = load_engine(str(realtime_dir), device="cpu", compile="off")
    handle = _force(engine, BLANK)
    try:
        rows, err = _listen_rows(engine, tmp_path, capsys, **{"listen.blank_run_s": 0.5})
    finally:
        handle.remove()
    tokens = [r for r in rows if r["type"] == "token"]
    assert tokens and all(t["token_id"] == BLANK for t in tokens)
    assert [r["reason"] for r in rows if r["type"] == "restart"] == ["blank_run"] * 3
    assert sum("gave no text" in line for line in err.splitlines()) == 1


def test_a_model_that_says_only_word_markers_and_blanks_is_a_run_without_text(realtime_dir, tmp_path, capsys):
    """Word markers ([STREAMING_WORD]) are special tokens, never text: a stream that says nothing
    else over speech is restarted as a run of blanks is."""
    engine = load_engine(str(realtime_dir), device="cpu", compile="off")
    calls = [0]

    def markers_and_blanks(module, args, output):
        calls[0] += 1
        output = output.clone()
        output[..., 33 if calls[0] % 2 else BLANK] = output.max() + 10.0
        return output

    handle = engine.model.lm_head.register_forward_hook(markers_and_blanks)
    try:
        rows, err = _listen_rows(engine, tmp_path, capsys, **{"listen.blank_run_s": 0.5})
    finally:
        handle.remove()
    tokens = [r for r in rows if r["type"] == "token"]
    assert {t["token_id"] for t in tokens} == {33, BLANK} and not "".join(t["text"] for t in tokens)
    assert [r["reason"] for r in rows if r["type"] == "restart"] == ["blank_run"] * 3
    assert sum("gave no text" in line for line in err.splitlines()) == 1


@pytest.fixture(scope="module")
def short_utterances(tmp_path_factory) -> Path:
    """Thirty utterances of about a second each, 0.8 s apart: every one shorter than the blank-run
    limit, so only speech counted across streams (each end of speech starts one) can reach it."""
    import soundfile as sf
    from speech import make_speech

    tmp = tmp_path_factory.mktemp("short-utterances")
    gap = np.zeros(int(0.8 * 16000), np.float32)
    words = ["hello there", "one two", "good morning", "thank you", "see you soon"]
    parts = []
    for i in range(30):
        parts += [load_audio(str(make_speech(tmp / f"{i % 5}.wav", words[i % 5]))), gap]
    path = tmp / "short.wav"
    sf.write(path, np.concatenate(parts), 16000)
    return path


def test_blank_runs_count_speech_across_utterances_shorter_than_the_limit(realtime_dir, tmp_path, capsys,
                                                                          short_utterances):
    from voxcli.audio.vad import Endpointer, EndpointOptions

    audio = load_audio(str(short_utterances))
    ends = [e.sample for e in Endpointer(EndpointOptions()).feed(audio) if e.kind == "end"]
    starts = [e.sample for e in Endpointer(EndpointOptions()).feed(audio) if e.kind == "start"]
    assert len(ends) >= 25 and max(b - a for a, b in zip(starts, ends)) < 1.0 * 16000  # every one under the limit
    engine = load_engine(str(realtime_dir), device="cpu", compile="off")
    handle = _force(engine, BLANK)
    try:
        rows, err = _listen_rows(engine, tmp_path, capsys, short_utterances, **{"listen.blank_run_s": 1.0})
    finally:
        handle.remove()
    restarts = [r for r in rows if r["type"] == "restart"]
    assert [r["reason"] for r in restarts] == ["blank_run"] * 3
    lines = [line for line in err.splitlines() if "gave no text" in line]
    assert len(lines) == 1
    # The 4th run: 1 s x 2^3 = 8 s of speech, said as such (whole seconds).
    assert 8 <= int(lines[0].split("over ")[1].split(" s")[0]) <= 9


# ------------------------------------------------------------------------- a server's early done


class _EndingConnection(ScriptedConnection):
    """A scripted server: a word per 80 ms; the first connection says ``transcription.done``
    (end of sequence) after two seconds of audio, long before the input ends."""

    def steps(self):
        from voxcli.errors import StreamEnded

        yield from super().steps()
        if self.engine.opened[0] is self and self.pushed_samples >= 32000:
            raise StreamEnded("the vLLM server at http://scripted ended the stream (end of sequence) "
                              "before the audio did")


class _EndingServer(ScriptedServer):
    connection = _EndingConnection


def test_a_server_that_ends_the_stream_early_gets_a_new_session_for_the_rest(tmp_path, capsys):
    from voxcli.events import restart_sample

    engine = _EndingServer()
    rows, err = _listen_rows(engine, tmp_path, capsys, **{"listen.flush_after_ms": 0})
    (restart,) = [r for r in rows if r["type"] == "restart"]
    assert restart["reason"] == "eos" and not [r for r in rows if r["type"] == "reconnect"]
    first, second = engine.opened[:2]
    at = restart_sample(0, first.answered_samples, 480 * 16)
    assert restart["at_s"] == pytest.approx(at / 16000)
    heard = len(load_audio(LONG))
    assert second.pushed_samples == heard - at  # the rest, from where the first stopped answering
    assert "reconnecting" not in err and rows[-1]["restarts"] == 1


# ------------------------------------------------------------------ no silence to an offline model


def test_an_offline_final_pass_is_never_handed_the_trailing_silence(realtime_dir, offline_dir, tmp_path, monkeypatch):
    """Three sentences and 2 s of silence after the last: three final passes, one per utterance
    the endpointer heard, each starting at its speech (less the preroll), none over the silence
    (Voxtral 3B invents text there). It made four before."""
    from speech import make_paused_speech

    from voxcli.engine.local import OfflineEngine

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    path, truth = make_paused_speech(tmp_path / "three.wav", tail_s=2.0)
    clips: list[int] = []
    real = OfflineEngine.transcribe

    def transcribe(self, audio, **kw):
        if np.any(audio):  # not the warm-up's silent clip
            clips.append(len(audio))
        return real(self, audio, **kw)

    monkeypatch.setattr(OfflineEngine, "transcribe", transcribe)
    out = invoke("listen", "--input", path, "--speed", "0", "--model", realtime_dir, "--final-model", offline_dir,
                 "--format", "jsonl", "--plain")
    rows = [json.loads(line) for line in out.splitlines()]
    endpoints = [r for r in rows if r["type"] == "endpoint"]
    assert len(endpoints) == len(truth) == 3
    assert len(clips) == 3  # one pass per utterance; the trailing silence gets none
    for n, (a, b), end in zip(clips, truth, endpoints):
        # From its speech (less the 0.2 s preroll) to where its end was decided: not the silence
        # before it (1.2 s pauses), only the endpointer's wait after it.
        assert n <= end["decided_s"] * 16000 - a + 0.2 * 16000 + 0.1 * 16000, (n, a, b, end)


@pytest.mark.parametrize("step", ["static", "hf"])
def test_on_eos_pad_feeds_the_blank_and_keeps_the_stream(eos_dir, long_audio, step):
    """on_eos="pad" (voxtral.c's way): an EOS with audio left starts nothing new; the next step is
    fed the blank, the caches kept, one token per 80 ms to the end of the clip. Both steps agree,
    and the stream goes on differently from one restarted there."""
    engine = load_engine(str(eos_dir), device="cpu", step=step, compile="off", on_eos="pad")
    events = list(engine.transcribe(long_audio))
    eos = [e for e in events if e.token_id == EOS]
    assert len(eos) >= 3 and not any(e.restart_at_s is not None for e in events)
    end_s = len(long_audio) / 16000
    starts = [e.audio_start_s for e in events if e.audio_end_s < end_s]  # (spans past the audio are clamped)
    assert len(starts) > 190 and starts == pytest.approx([0.08 * k for k in range(len(starts))], abs=1e-6)
    assert "".join(e.text for e in events).strip()
    restarted = list(load_engine(str(eos_dir), device="cpu", step=step, compile="off").transcribe(long_audio))
    first = next(i for i, e in enumerate(restarted) if e.token_id == EOS)
    assert [e.token_id for e in events[:first + 1]] == [e.token_id for e in restarted[:first + 1]]
    assert [e.token_id for e in events] != [e.token_id for e in restarted]


def test_on_eos_pad_is_the_same_on_both_steps_and_a_setting(eos_dir, long_audio):
    from voxcli.config import load_config
    from voxcli.errors import ConfigError

    ids = [[e.token_id for e in load_engine(str(eos_dir), device="cpu", step=step, compile="off",
                                            on_eos="pad").transcribe(long_audio)] for step in ("hf", "static")]
    assert ids[0] == ids[1]
    assert load_config(None, {"transcription.on_eos": "pad"}).transcription.on_eos == "pad"
    with pytest.raises(ConfigError, match="restart, pad"):
        load_config(None, {"transcription.on_eos": "stop"})
