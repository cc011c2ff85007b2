"""Every realtime dialect voxcli serve speaks, under the same faults: vLLM's, OpenAI's, Mistral's
and Deepgram's WebSockets (a small raw-socket client each, speaking the dialect as its users'
clients do), and Wyoming over TCP (the ``wyoming`` package's client). Malformed input, bad audio,
unknown events, a vanished or non-reading client, a wrong key, a full server and SIGTERM: each
dialect answers in its own words, and the server stays healthy. Then Mistral's per-session delay
(rows at different delays in one forward) and its turn detection, with the ``mistralai`` SDK."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from serve_server import NeverReads, served
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from voxcli.audio.decode import load_audio
from voxcli.audio.pcm import to_pcm16
from voxcli.engine.server import pcm16_base64
from voxcli.serve.app import ServeOptions
from voxcli.testing.served import ServeProcess, free_port

ROOT = Path(__file__).resolve().parent.parent
HELLO = ROOT / "examples" / "hello.wav"
LONG = ROOT / "examples" / "long.wav"
KEY = "dialects-test-key-0b3a"
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("dialects")]


pcm16 = to_pcm16


b64 = pcm16_base64


class Dialect:
    """One dialect as its clients speak it: the URL, the setup, audio, the end, and which event
    carries the final text or an error."""

    name: str
    path: str
    final: str
    error: str = "error"

    def setup(self, ws) -> None:
        assert json.loads(ws.recv(10))["type"] == "session.created"

    def audio(self, samples: np.ndarray) -> str | bytes:
        return json.dumps({"type": "input_audio_buffer.append", "audio": b64(samples)})

    def end(self) -> str:
        return json.dumps({"type": "input_audio_buffer.commit", "final": True})

    def text(self, event: dict) -> str | None:
        """The final text, if ``event`` carries it."""
        return event.get("text") if event["type"] == self.final else None

    def bad_audio(self) -> str | bytes:
        return json.dumps({"type": "input_audio_buffer.append", "audio": "***"})

    def __repr__(self) -> str:
        return self.name


class VLLM(Dialect):
    name, path, final = "vllm", "/v1/realtime", "transcription.done"

    def setup(self, ws) -> None:
        super().setup(ws)
        ws.send(json.dumps({"type": "session.update"}))  # the served model


class OpenAI(Dialect):
    name, path, final = "openai", "/v1/realtime?intent=transcription", \
        "conversation.item.input_audio_transcription.completed"

    def setup(self, ws) -> None:
        super().setup(ws)
        ws.send(json.dumps({"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": 16000}, "turn_detection": None}}}}))
        assert json.loads(ws.recv(10))["type"] == "session.updated"

    def end(self) -> str:
        return json.dumps({"type": "input_audio_buffer.commit"})

    def text(self, event: dict) -> str | None:
        return event.get("transcript") if event["type"] == self.final else None


class Mistral(Dialect):
    name, path, final = "mistral", "/v1/audio/transcriptions/realtime?model=voxtral-mini-2602", "transcription.done"

    def audio(self, samples: np.ndarray) -> str:
        return json.dumps({"type": "input_audio.append", "audio": b64(samples)})

    def end(self) -> str:
        return json.dumps({"type": "input_audio.end"})

    def bad_audio(self) -> str:
        return json.dumps({"type": "input_audio.append", "audio": "***"})


class Deepgram(Dialect):
    name, path, final, error = "deepgram", "/v1/listen?encoding=linear16&sample_rate=16000&endpointing=false", \
        "Results", "Error"

    def setup(self, ws) -> None:
        pass  # Deepgram's server says nothing until there is text

    def audio(self, samples: np.ndarray) -> bytes:
        return pcm16(samples)

    def end(self) -> str:
        return json.dumps({"type": "CloseStream"})

    def text(self, event: dict) -> str | None:
        if event["type"] == "Results" and event["is_final"]:
            return event["channel"]["alternatives"][0]["transcript"]
        return None



DIALECTS = [VLLM(), OpenAI(), Mistral(), Deepgram()]


@pytest.fixture(scope="module")
def engine(realtime_dir):
    from voxcli.engine.local import load_engine

    return load_engine(str(realtime_dir), device="cpu", sessions=4)


@pytest.fixture(scope="module")
def server(engine):
    with served(engine, ServeOptions(max_sessions=4, api_key=KEY)) as s:
        yield s


def open_ws(server, dialect: Dialect, key: str = KEY, **kw):
    ws = connect(server.ws_url + dialect.path, additional_headers={"Authorization": f"Bearer {key}"},
                 open_timeout=10, **kw)
    dialect.setup(ws)
    return ws


def final_text(ws, dialect: Dialect, timeout_s: float = 60.0) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        event = json.loads(ws.recv(max(0.1, deadline - time.monotonic())))
        text = dialect.text(event)
        if text is not None:
            return text


def transcribe(ws, dialect: Dialect, audio: np.ndarray) -> str:
    for i in range(0, len(audio), 1280):
        ws.send(dialect.audio(audio[i:i + 1280]))
    ws.send(dialect.end())
    return final_text(ws, dialect)


def local_text(engine, audio) -> str:
    return "".join(e.text for e in engine.transcribe(audio)).strip()


@pytest.mark.parametrize("dialect", DIALECTS, ids=repr)
def test_malformed_input_unknown_events_and_bad_audio_get_the_dialects_error_and_the_session_goes_on(
        server, engine, dialect):
    """Each fault gets one error event in the dialect's shape; the same connection then transcribes
    as if nothing had happened. Deepgram's bad audio is a URL it cannot take (test_deepgram.py);
    here its audio comes in frames that split samples, which must change nothing."""
    audio = load_audio(HELLO)[:48000]
    faults = ["{not json", json.dumps({"type": "no.such.event"})]
    if dialect.name != "deepgram":
        faults += [dialect.bad_audio(), b"\x00\x01"]  # bad base64; a binary frame where JSON is spoken
    with open_ws(server, dialect) as ws:
        for bad in faults:
            ws.send(bad)
            error = json.loads(ws.recv(10))
            assert error["type"] == dialect.error, error
        if dialect.name == "deepgram":
            raw = pcm16(audio)
            for i in range(0, len(raw), 1001):  # odd frames: every other one ends mid-sample
                ws.send(raw[i:i + 1001])
            ws.send(dialect.end())
            text = final_text(ws, dialect)
        else:
            text = transcribe(ws, dialect, audio)
    assert text == local_text(engine, audio)
    server.wait_idle()


@pytest.mark.parametrize("dialect", DIALECTS, ids=repr)
def test_a_wrong_key_is_refused(server, dialect):
    with pytest.raises(InvalidStatus) as refused:
        open_ws(server, dialect, key="wrong")
    assert refused.value.response.status_code == 401


@pytest.mark.parametrize("dialect", DIALECTS, ids=repr)
def test_a_client_that_vanishes_frees_its_row(server, engine, dialect):
    before = server.metric("voxcli_dropped_clients_total", '{reason="lost"}')
    ws = open_ws(server, dialect)
    audio = load_audio(LONG)
    for i in range(0, 8 * 16000, 1280):
        ws.send(dialect.audio(audio[i:i + 1280]))
    time.sleep(0.5)
    ws.socket.shutdown(socket.SHUT_RDWR)  # gone, without a closing handshake
    ws.socket.close()
    server.wait_idle()
    assert server.metric("voxcli_dropped_clients_total", '{reason="lost"}') == before + 1
    with open_ws(server, dialect) as again:  # and the server goes on
        assert transcribe(again, dialect, audio[:32000]) == local_text(engine, audio[:32000])


@pytest.mark.parametrize("dialect", DIALECTS, ids=repr)
def test_a_full_server_says_so_in_the_dialect_and_closes(server, dialect, monkeypatch):
    monkeypatch.setattr(server.state.scheduler, "max_sessions", 1)
    with open_ws(server, VLLM()) as holder:
        holder.send(VLLM().audio(np.zeros(1280, np.float32)))
        while server.state.scheduler.active < 1:
            time.sleep(0.02)
        ws = connect(server.ws_url + dialect.path, additional_headers={"Authorization": f"Bearer {KEY}"},
                     open_timeout=10)
        events = []
        with pytest.raises(ConnectionClosed):  # the setup or the first audio is refused: then the server closes
            with contextlib.suppress(ConnectionClosed):  # Deepgram's is refused before the client says a word
                if dialect.name == "openai":
                    ws.send(json.dumps({"type": "session.update", "session": {"type": "transcription"}}))
                elif dialect.name == "vllm":
                    ws.send(json.dumps({"type": "session.update"}))
                ws.send(dialect.audio(np.zeros(1280, np.float32)))
            while True:
                events.append(json.loads(ws.recv(10)))
        assert events[-1]["type"] == dialect.error and "sessions are in use" in json.dumps(events[-1]), events
    server.wait_idle()


@pytest.mark.parametrize("dialect", DIALECTS, ids=repr)
def test_a_client_that_never_reads_is_dropped(engine, dialect):
    with served(engine, ServeOptions(max_sessions=2, client_queue=16, send_timeout_s=1.0)) as slow:
        path = dialect.path + ("&interim_results=true" if dialect.name == "deepgram" else "")
        client = NeverReads(slow.ws_url + path, slow.port)
        if dialect.name in ("vllm", "openai"):
            client.send(json.dumps({"type": "session.update"}))
        audio = np.tile(load_audio(LONG), 8)
        client.flood(dialect.audio(audio[i:i + 16000]) for i in range(0, len(audio), 16000))
        deadline = time.monotonic() + 60
        while slow.metric("voxcli_dropped_clients_total", '{reason="lost"}') + \
                slow.metric("voxcli_dropped_clients_total", '{reason="slow"}') < 1:
            assert time.monotonic() < deadline, "the client that never reads was not dropped"
            time.sleep(0.1)
        client.close()
        slow.wait_idle()
        assert slow.health()["status"] == "ok"


def test_sigterm_gives_every_dialect_its_final_text_and_exits(realtime_dir, realtime_engine, tmp_path):
    """One session per dialect (and one Wyoming request) open, mid-audio, when SIGTERM comes: each
    gets its final text in its own words, flushed, and the process exits 0."""
    from wyoming.asr import Transcript
    from wyoming.audio import AudioChunk, AudioStart
    from wyoming.client import AsyncTcpClient

    audio = load_audio(HELLO)
    port = free_port()
    server = ServeProcess(realtime_dir, max_sessions=8, log=tmp_path / "serve.log",
                          args=("--model-device", "cpu", "--threads", "1", "--wyoming", f"127.0.0.1:{port}"))
    try:
        sockets = []
        for dialect in DIALECTS:
            ws = connect(server.ws_url + dialect.path, open_timeout=10)
            dialect.setup(ws)
            for i in range(0, len(audio), 1280):
                ws.send(dialect.audio(audio[i:i + 1280]))
            sockets.append((dialect, ws))

        async def wyoming_request() -> str:
            async with AsyncTcpClient("127.0.0.1", port) as client:
                await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
                await client.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=pcm16(audio)).event())
                while server.metrics().get("voxcli_sessions_active", 0) < len(DIALECTS) + 1:
                    await asyncio.sleep(0.05)
                await asyncio.sleep(1.0)  # every stream well into its audio
                server.proc.send_signal(signal.SIGTERM)
                while True:
                    event = await asyncio.wait_for(client.read_event(), 20)
                    assert event is not None, "the Wyoming client got no transcript"
                    if Transcript.is_type(event.type):
                        return Transcript.from_event(event).text

        wyoming_text = asyncio.run(wyoming_request())
        local = local_text(realtime_engine, audio)
        assert wyoming_text == local
        for dialect, ws in sockets:
            assert final_text(ws, dialect, 20) == local, dialect
        assert server.proc.wait(30) == 0
    finally:
        server.stop()


async def mistral_stream(url: str, audio: np.ndarray, speed: float = 4.0, **kw) -> list:
    """The mistralai SDK's realtime transcription of ``audio``, paced at ``speed`` times real time."""
    from mistralai.client import Mistral
    from mistralai.client.models import AudioFormat

    async def paced():
        for i in range(0, len(audio), 1280):
            await asyncio.sleep(0.08 / speed)
            yield pcm16(audio[i:i + 1280])

    client = Mistral(api_key=KEY, server_url=url)
    return [e async for e in client.audio.realtime.transcribe_stream(
        audio_stream=paced(), model="voxtral-mini-2602", audio_format=AudioFormat(encoding="pcm_s16le",
                                                                                 sample_rate=16000), **kw)]


def test_mistral_sessions_at_their_own_delays_step_in_one_forward(server, engine):
    """target_streaming_delay_ms per session: two sessions at once, at 960 ms and at the server's
    480, each the local engine's text at its own delay, and their rows stepped in shared forwards
    (the batch size the vLLM-dialect session's tokens report). A delay the model card does not
    allow is refused."""
    audio = load_audio(LONG)[:6 * 16000]
    slow_local = "".join(e.text for e in engine.with_delay(960, prepare=False).transcribe(audio)).strip()
    batches = []

    def vllm_session():
        with open_ws(server, VLLM()) as ws:
            for i in range(0, len(audio), 1280):  # at real speed: it outlasts the Mistral session (4x)
                ws.send(VLLM().audio(audio[i:i + 1280]))
                time.sleep(0.08)
            ws.send(VLLM().end())
            while True:
                event = json.loads(ws.recv(60))
                if event["type"] == "transcription.delta":
                    batches.append(event["voxcli"]["batch"])
                elif event["type"] == "transcription.done":
                    return event["text"]

    other = threading.Thread(target=lambda: batches.append(("text", vllm_session())))
    other.start()
    time.sleep(1.0)  # the real-speed session is under way; the Mistral one's audio comes at once, so the
    # model works through it for several cycles, each taking in what the other session sent meanwhile
    events = asyncio.run(mistral_stream(server.url, audio, speed=1000.0, target_streaming_delay_ms=960))
    other.join(60)
    kinds = [getattr(e, "type", None) for e in events]
    assert kinds[-1] == "transcription.done" and events[1].session.target_streaming_delay_ms == 960
    assert events[-1].text == slow_local != local_text(engine, audio)
    assert ("text", local_text(engine, audio)) in batches
    assert max(b for b in batches if isinstance(b, int)) >= 2, "the two delays never shared a forward"
    bad = asyncio.run(mistral_stream(server.url, audio[:16000], target_streaming_delay_ms=500))
    assert getattr(bad[-1], "type", None) == "error" and "multiple of 80" in bad[-1].error.message


def test_mistral_turn_detection_is_the_endpointer(server, engine):
    """turn_detection: turn.start and turn.end from the endpointer at each pause, a
    transcription.segment per turn (contiguous, with the turn's text), and transcription.done
    with the whole text at the end."""
    from mistralai.client.models import TurnDetectionConfig

    hello = load_audio(HELLO)
    audio = np.concatenate([hello, np.zeros(24000, np.float32), hello])
    events = asyncio.run(mistral_stream(server.url, audio, turn_detection=TurnDetectionConfig(min_silence_ms=300)))
    kinds = [getattr(e, "type", None) for e in events]
    assert kinds.count("turn.start") >= 2 and kinds.count("turn.end") >= 2 and kinds[-1] == "transcription.done"
    assert events[1].session.turn_detection.min_silence_ms == 300
    segments = [e for e in events if getattr(e, "type", None) == "transcription.segment"]
    assert len(segments) == kinds.count("turn.end")
    assert [s.start for s in segments[1:]] == [pytest.approx(s.end, abs=0.002) for s in segments[:-1]]
    deltas = "".join(e.text for e in events if getattr(e, "type", None) == "transcription.text.delta")
    assert all(s.text in deltas for s in segments) and events[-1].text
