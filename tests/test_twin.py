"""voxcli against vLLM on the same weights: the strongest check a CPU gives that voxcli's prompt,
mel, padding, delay and chunking are the reference's.

The servers are tests/vllm_server.py's (vLLM's CPU build, float32); :func:`voxcli.testing.twin.mistral_to_hf`
writes the weights each one serves in the layout voxcli loads, and voxcli's local engine runs them
in float32 too. The server hears PCM16 (``/ 32768``): voxcli is handed the same samples.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from relay import Relay

from voxcli.audio.decode import load_audio
from voxcli.engine.connect import connect_engine
from voxcli.engine.local import load_engine
from voxcli.testing.twin import (
    as_served,
    first_difference,
    hear_as_vllm,
    mistral_to_hf,
    quiet_where_the_first_step_begins,
)
from voxcli.units import SAMPLE_RATE, TOKEN_SAMPLES

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def hello() -> np.ndarray:
    return load_audio(str(ROOT / "examples" / "hello.wav"))


def _twin(server, tmp_path_factory) -> Path:
    return mistral_to_hf(server.model_dir, tmp_path_factory.mktemp("twin") / "hf")


def _text(events) -> str:
    return "".join(e.text for e in events)


@pytest.mark.parametrize("server_name, delay_ms", [("vllm_realtime", 480), ("vllm_realtime_960", 960)])
def test_realtime_twins_say_what_vllm_says(server_name, delay_ms, request, tmp_path_factory, hello):
    """vLLM's server and voxcli's static and hf steps, same weights, same samples: the same text,
    once voxcli's windows sit on vLLM's grid (hear_as_vllm) and the first step's context is
    silence on both grids, but for the step over the right padding's last token, which vLLM does
    not make. The delay is learnt from the server (usage.prompt_tokens)."""
    server = request.getfixturevalue(server_name)
    remote = connect_engine(server.url)
    assert remote.info.delay_ms == delay_ms
    audio = as_served(quiet_where_the_first_step_begins(hello, delay_ms))
    theirs = _text(remote.transcribe(audio))
    assert len(theirs) > 40
    hf_dir = _twin(server, tmp_path_factory)
    for step in ("static", "hf"):
        engine = load_engine(str(hf_dir), device="cpu", dtype="float32", step=step, compile="off")
        assert engine.delay_ms == delay_ms
        assert hear_as_vllm(engine) == 40  # 2.5 ms: the tokenizer's streaming_look_ahead_ms
        events = list(engine.transcribe(audio))
        # vLLM cuts a step's frame 2.5 ms past its 80 ms, which the right padding's last token
        # lacks: it makes one step fewer (a step over padding: silence).
        last = max(i for i, e in enumerate(events) if e.token_id >= 0)
        assert _text(events[:last] + events[last + 1:]) == theirs, step


def test_offline_twins_say_what_vllm_says_up_to_float32_noise(vllm_offline, tmp_path_factory, hello):
    """The offline kind through vLLM's transcription endpoint and voxcli's offline engine, the
    whole clip as one segment: the same 200 tokens; over the 500 they may go to, the same text
    until the first token whose top two scores are closer than float32 kernels can tell apart
    (if any), after at least 100 tokens (bench/RESULTS.md 11: token 285, a gap of 0.0009)."""
    audio = as_served(hello)
    whole = [(0, len(audio))]
    remote = connect_engine(vllm_offline.url)
    hf_dir = _twin(vllm_offline, tmp_path_factory)
    # The first 200 tokens, on both sides: identical (this clip's first float32 near tie comes later).
    first = load_engine(str(hf_dir), device="cpu", dtype="float32", max_new_tokens=200)
    assert _text(remote.transcribe(audio, segments=whole, max_new_tokens=200)) == \
        _text(first.transcribe(audio, segments=whole))
    theirs = _text(remote.transcribe(audio, segments=whole))
    engine = load_engine(str(hf_dir), device="cpu", dtype="float32", alternatives=2)
    events = list(engine.transcribe(audio, segments=whole))
    same, at = first_difference(theirs, events)
    if at is None:
        return  # identical
    assert at >= 100, (at, theirs[:same + 20], _text(events)[:same + 20])
    first, second = events[at].alternatives[:2]
    assert first["logprob"] - second["logprob"] < 0.01, (at, first, second)


def test_a_replay_reaches_back_the_servers_delay(vllm_realtime_960):
    """A server at 960 ms that goes away: the replay starts where its text stopped, 960 ms and a
    little more before the audio it had been sent (the audio it had heard without its text yet,
    not 480 ms of it), so no token's audio is skipped; the audio meanwhile is all kept."""
    relay = Relay(vllm_realtime_960.host, vllm_realtime_960.port)
    try:
        engine = connect_engine(relay.url, reconnect_s=60)
        assert engine.info.delay_ms == 960
        audio = load_audio(str(ROOT / "examples" / "long.wav"))
        session = engine.session()
        head = 4 * SAMPLE_RATE
        # The tokens 4 s allows at 960 ms: the first needs the delay's 12 tokens and one more of mel
        # frames (8 each, 160 samples apart) plus half a 400-sample window; each next one 80 ms more.
        tokens = (head - ((12 + 1) * 8 - 1) * 160 - 200) // TOKEN_SAMPLES + 1
        text = tokens * TOKEN_SAMPLES  # 37 tokens: 2.96 s of text, the server having heard all 4 s
        heard = text + 960 * SAMPLE_RATE // 1000
        for i in range(0, head, TOKEN_SAMPLES):
            session.push(audio[i:i + TOKEN_SAMPLES])
        deadline = time.monotonic() + 60
        while session.answered_samples < heard and time.monotonic() < deadline:  # every step answered
            list(session.steps())
            time.sleep(0.02)
        assert session.answered_samples == heard
        relay.cut()
        session.push(audio[head:head + 2 * SAMPLE_RATE])  # captured while the server is away
        time.sleep(1.5)
        relay.restore()
        events = list(session.finish())
        rows = [r for r in session.incidents() if type(r).__name__ == "Reconnect"]
    finally:
        relay.close()
    assert len(rows) == 1
    assert rows[0].replay_from_s == pytest.approx(text / SAMPLE_RATE)  # where the text stopped
    # what came while it was away, the delay before it, and the 40 ms short of a 38th token
    assert rows[0].replayed_s == pytest.approx(2.0 + (head - text) / SAMPLE_RATE)
    assert any(e.text for e in events)
