"""Deepgram's live API at ``WS /v1/listen``, tested with ``deepgram-sdk`` itself pointed at
``voxcli serve`` (the tiny Realtime model): the local engine's text, interim and final
``Results``, ``SpeechStarted`` and ``UtteranceEnd``, word timings from the token spans, the
probabilities as confidence where the server computes them, and Deepgram's own faults."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import numpy as np
import pytest
from serve_server import served

from voxcli.audio.decode import load_audio
from voxcli.audio.pcm import to_pcm16
from voxcli.choices import KEYTERM_BIAS
from voxcli.serve.app import ServeOptions

ROOT = Path(__file__).resolve().parent.parent
HELLO = ROOT / "examples" / "hello.wav"
KEY = "deepgram-test-key-51e0"
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("deepgram")]


@pytest.fixture(scope="module")
def server(realtime_dir):
    from voxcli.engine.local import load_engine

    engine = load_engine(str(realtime_dir), device="cpu", sessions=4, alternatives=2)
    with served(engine, ServeOptions(max_sessions=4, api_key=KEY)) as s:
        yield s


@pytest.fixture(scope="module")
def talk():
    """hello.wav, 1.5 s of silence, hello.wav: two ends of speech, and a long pause between."""
    hello = load_audio(HELLO)
    return np.concatenate([hello, np.zeros(24000, np.float32), hello, np.zeros(8000, np.float32)])


def client(server, key: str = KEY):
    from deepgram import AsyncDeepgramClient
    from deepgram.environment import DeepgramClientEnvironment

    env = DeepgramClientEnvironment(base=server.url, production=server.ws_url, agent=server.ws_url,
                                    agent_rest=server.url)
    return AsyncDeepgramClient(api_key=key, environment=env)


linear16 = to_pcm16


async def stream(server, audio: np.ndarray, *, speed: float = 4.0, finalize_at: float | None = None,
                 **params) -> list:
    """The SDK's socket: the audio in 80 ms frames at ``speed`` times real time, CloseStream, and
    every message until the server closes."""
    messages = []
    async with client(server).listen.v1.connect(model="nova-3", encoding="linear16", sample_rate=16000,
                                                **params) as socket:
        async def receive():
            async for message in socket:
                messages.append(message)

        reader = asyncio.create_task(receive())
        for i in range(0, len(audio), 1280):
            await socket.send_media(linear16(audio[i:i + 1280]))
            if finalize_at is not None and i <= finalize_at * 16000 < i + 1280:
                await socket.send_finalize()
            await asyncio.sleep(0.08 / speed)
        await socket.send_close_stream()
        await asyncio.wait_for(reader, 60)
    return messages


def kind(message) -> str:
    return getattr(message, "type", None)


def test_the_deepgram_sdk_gets_the_local_text_with_word_timings_from_the_spans(server, realtime_engine):
    """No endpointing: one segment, finished by CloseStream. Its final Results is the local
    engine's text for the same audio (with the keyterm in both); each word's start and end are
    the spans of its tokens; the server computes probabilities, so each word has a confidence;
    Metadata comes last, then the socket closes."""
    from voxcli.engine.keyterms import Keyterms

    audio = load_audio(HELLO)
    messages = asyncio.run(stream(server, audio, endpointing="false", interim_results="true", keyterm=["Voxtral"]))
    kinds = [kind(m) for m in messages]
    assert kinds[-1] == "Metadata" and kinds.count("Metadata") == 1
    results = [m for m in messages if kind(m) == "Results"]
    finals = [r for r in results if r.is_final]
    assert len(finals) == 1 and finals[0].from_finalize and not finals[0].speech_final
    events = [e for e in realtime_engine.transcribe(audio, keyterms=Keyterms.of(["Voxtral"], KEYTERM_BIAS))]
    final = finals[0].channel.alternatives[0]
    assert final.transcript == "".join(e.text for e in events).strip() != ""
    interims = [r.channel.alternatives[0].transcript for r in results if not r.is_final]
    assert interims and interims[-1] == final.transcript  # each text token's Results, the last one complete
    owner = [e for e in events if not e.special for _ in e.text]  # the token each character came from
    text = "".join(e.text for e in events if not e.special)
    firsts = [m.start() for m in re.finditer(r"\S+", text)]
    lasts = [m.end() - 1 for m in re.finditer(r"\S+", text)]
    assert [w.punctuated_word for w in final.words] == final.transcript.split()
    assert [w.start for w in final.words] == [round(owner[i].audio_start_s, 3) for i in firsts]
    assert [w.end for w in final.words] == [round(owner[i].audio_end_s, 3) for i in lasts]
    assert all(0 <= w.start <= w.end <= len(audio) / 16000 + 1e-3 for w in final.words)  # the flush: at the end
    assert all(0 < w.confidence <= 1 for w in final.words) and 0 < final.confidence <= 1
    assert finals[0].start == 0 and finals[0].duration == pytest.approx(len(audio) / 16000, abs=0.01)


@pytest.fixture(scope="module")
def quiet_server(realtime_dir):
    """A server whose model goes quiet over a pause, as a real one does (a random model says text
    at every step, silence or not): it says the blank for its steps 50 to 80 (4.0 to 6.4 s of
    ``talk``, with the flush's padding steps), text otherwise."""
    import torch

    from voxcli.engine.local import load_engine

    engine = load_engine(str(realtime_dir), device="cpu", sessions=2, compile="off")
    calls = [0]

    def quiet(module, args, output):
        calls[0] += 1
        if 50 <= calls[0] < 80:
            output = output.clone()
            output[..., engine.blank_id] = output.max() + 10.0
        return output

    handle = engine.model.lm_head.register_forward_hook(quiet)
    with torch.no_grad(), served(engine, ServeOptions(max_sessions=2, api_key=KEY)) as s:
        yield s
    handle.remove()


def test_endpointing_gives_speech_final_results_speech_started_and_utterance_end(quiet_server, talk):
    """The endpointer's ends of speech: a final Results with speech_final for each; SpeechStarted
    (vad_events) at each start; UtteranceEnd once the model's audio is utterance_end_ms past the
    last word (the model is quiet over the pause); interim Results in between. Segments are
    contiguous and cover the audio."""
    messages = asyncio.run(stream(quiet_server, talk, interim_results="true", vad_events="true",
                                  utterance_end_ms="1000", endpointing="300"))
    kinds = [kind(m) for m in messages]
    assert kinds.count("SpeechStarted") >= 2 and "UtteranceEnd" in kinds
    finals = [m for m in messages if kind(m) == "Results" and m.is_final]
    assert sum(f.speech_final for f in finals) >= 2
    assert any(not m.is_final for m in messages if kind(m) == "Results")
    assert [f.start for f in finals[1:]] == [pytest.approx(f.start + f.duration, abs=0.002) for f in finals[:-1]]
    assert finals[-1].start + finals[-1].duration == pytest.approx(len(talk) / 16000, abs=0.01)
    ends = [m for m in messages if kind(m) == "UtteranceEnd"]
    words = [w for f in finals for w in f.channel.alternatives[0].words]
    assert all(any(u.last_word_end == w.end for w in words) for u in ends)
    assert all(u.last_word_end < 4.5 for u in ends)  # in the pause, the quiet model's
    started = [m.timestamp for m in messages if kind(m) == "SpeechStarted"]
    second = (len(talk) - 8000) / 16000 - 4.3235625  # where the second hello.wav begins
    assert started == sorted(started) and started[0] < 0.2 and any(second <= t < second + 0.2 for t in started)


def test_deepgram_faults_the_session_survives_and_urls_it_cannot_take(server):
    """Deepgram's faults: an unknown parameter is named in Metadata's warnings and the stream goes
    on; a text frame that is not JSON, or an unknown message, gets an Error and the stream goes
    on; an encoding the server cannot take closes with 1008 and the reason; a wrong key is 401."""
    import json

    from websockets.exceptions import ConnectionClosed, InvalidStatus
    from websockets.sync.client import connect

    headers = {"Authorization": f"Token {KEY}"}
    url = server.ws_url + "/v1/listen?encoding=linear16&sample_rate=16000&endpointing=false&diarize=true&shiny=1"
    with connect(url, additional_headers=headers, open_timeout=10) as ws:
        metadata = json.loads(ws.recv(10))
        assert metadata["type"] == "Metadata"
        assert [w["parameter"] for w in metadata["warnings"]] == ["diarize", "shiny"]
        for bad in ("not json", json.dumps({"type": "Shout"})):
            ws.send(bad)
            error = json.loads(ws.recv(10))
            assert error["type"] == "Error" and error["description"]
        ws.send(linear16(load_audio(HELLO)))
        ws.send(json.dumps({"type": "CloseStream"}))
        final = json.loads(ws.recv(30))
        assert final["type"] == "Results" and final["is_final"] and final["channel"]["alternatives"][0]["transcript"]
        assert json.loads(ws.recv(10))["type"] == "Metadata"
    for query in ("encoding=opus&sample_rate=48000", "encoding=linear16", "sample_rate=16000",
                  "encoding=linear16&sample_rate=16000&interim_results=maybe"):
        with connect(server.ws_url + "/v1/listen?" + query, additional_headers=headers, open_timeout=10) as ws:
            error = json.loads(ws.recv(10))
            assert error["type"] == "Error"
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(10)
            assert closed.value.rcvd.code == 1008 and closed.value.rcvd.reason == error["description"][:120]
    with pytest.raises(InvalidStatus) as refused:
        connect(server.ws_url + "/v1/listen?encoding=linear16&sample_rate=16000",
                additional_headers={"Authorization": "Token wrong"}, open_timeout=10)
    assert refused.value.response.status_code == 401
    # A browser cannot set headers: Deepgram's clients there offer the subprotocols "token" and the key.
    with connect(server.ws_url + "/v1/listen?encoding=linear16&sample_rate=16000", subprotocols=["token", KEY],
                 open_timeout=10) as ws:
        assert ws.subprotocol == "token"
    server.wait_idle()


def test_livekits_deepgram_plugin_transcribes_through_serve(realtime_dir, realtime_engine):
    """LiveKit Agents' Deepgram STT plugin, its base_url pointed here, driven as an agent drives it
    (a stream of rtc.AudioFrames, end_input) with no room: start and end of speech, and one final
    transcript, the local engine's text (endpointing off: one segment). The server computes no probabilities here: the transcript's confidence is null, which the
    plugin takes (it reads the key)."""
    import aiohttp
    from livekit import rtc
    from livekit.agents.stt import SpeechEventType
    from livekit.plugins import deepgram

    from voxcli.engine.local import load_engine

    audio = load_audio(HELLO)
    pcm = np.frombuffer(to_pcm16(audio), "<i2")

    async def run(url: str) -> list:
        async with aiohttp.ClientSession() as http:
            stt = deepgram.STT(base_url=url + "/v1/listen", api_key=KEY, http_session=http, sample_rate=16000,
                               endpointing_ms=0)
            stream = stt.stream()
            for i in range(0, len(pcm), 1600):
                stream.push_frame(rtc.AudioFrame(pcm[i:i + 1600].tobytes(), 16000, 1, len(pcm[i:i + 1600])))
                await asyncio.sleep(0.01)
            stream.end_input()
            return [event async for event in stream]

    engine = load_engine(str(realtime_dir), device="cpu", sessions=2)
    with served(engine, ServeOptions(max_sessions=2, api_key=KEY)) as server:
        events = asyncio.run(asyncio.wait_for(run(server.url), 120))
    kinds = [e.type for e in events]
    assert SpeechEventType.START_OF_SPEECH in kinds and SpeechEventType.INTERIM_TRANSCRIPT in kinds
    (final,) = [e for e in events if e.type == SpeechEventType.FINAL_TRANSCRIPT]
    assert final.alternatives[0].text == "".join(e.text for e in realtime_engine.transcribe(audio)).strip() != ""
    assert final.alternatives[0].confidence is None
