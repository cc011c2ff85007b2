"""`voxcli serve --wyoming`: Home Assistant's protocol for local voice, tested with the `wyoming`
package's own client against a real `voxcli serve` process (the tiny model): the same text as
the local engine, streamed as it comes, and the faults the other protocols survive."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest
from wyoming.asr import Transcribe, Transcript, TranscriptChunk, TranscriptStart, TranscriptStop
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe, Info

from voxcli.audio.decode import load_audio, resample
from voxcli.audio.pcm import to_pcm16
from voxcli.testing.served import ServeProcess, free_port

ROOT = Path(__file__).resolve().parent.parent
HELLO = ROOT / "examples" / "hello.wav"
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("wyoming")]


@pytest.fixture(scope="module")
def wyoming_server(realtime_dir, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("wyoming") / "serve.log"
    with ServeProcess(realtime_dir, max_sessions=2, log=log,
                      args=("--model-device", "cpu", "--threads", "1", "--wyoming", f"127.0.0.1:{port}")) as server:
        server.wyoming_port = port
        yield server


def pcm16(samples: np.ndarray, channels: int = 1) -> bytes:
    return to_pcm16(np.repeat(samples, channels))


async def request(port: int, audio: bytes, rate: int = 16000, channels: int = 1, *, before: list | None = None,
                  leave_after: int | None = None) -> list:
    """One transcription over a fresh connection: transcribe, audio-start, 100 ms chunks, audio-stop;
    every event until the transcript (and transcript-stop, when streamed), or the error."""
    async with AsyncTcpClient("127.0.0.1", port) as client:
        for event in before or []:
            await client.write_event(event)
        await client.write_event(Transcribe(language="en").event())
        await client.write_event(AudioStart(rate=rate, width=2, channels=channels).event())
        step = rate // 10 * 2 * channels
        for k, i in enumerate(range(0, len(audio), step)):
            if leave_after is not None and k == leave_after:
                return []  # the client goes away mid-request
            await client.write_event(AudioChunk(rate=rate, width=2, channels=channels, audio=audio[i:i + step]).event())
        await client.write_event(AudioStop().event())
        events = []
        while True:
            event = await asyncio.wait_for(client.read_event(), 60)
            assert event is not None, f"the server closed the connection after {events}"
            events.append(event)
            streamed = any(TranscriptStart.is_type(e.type) for e in events)
            if Error.is_type(event.type) or TranscriptStop.is_type(event.type) or (
                    Transcript.is_type(event.type) and not streamed):
                return events


def test_describe_says_the_model_and_that_transcripts_stream(wyoming_server):
    async def describe():
        async with AsyncTcpClient("127.0.0.1", wyoming_server.wyoming_port) as client:
            await client.write_event(Describe().event())
            return Info.from_event(await asyncio.wait_for(client.read_event(), 10))

    info = asyncio.run(describe())
    (program,) = info.asr
    assert program.supports_transcript_streaming and program.models[0].installed
    assert "en" in program.models[0].languages and program.models[0].name


def test_a_transcript_streams_and_is_the_local_engines_text(wyoming_server, realtime_engine):
    audio = load_audio(HELLO)
    events = asyncio.run(request(wyoming_server.wyoming_port, pcm16(audio)))
    kinds = [e.type for e in events]
    assert kinds[0] == "transcript-start" and kinds[-2:] == ["transcript", "transcript-stop"]
    chunks = [TranscriptChunk.from_event(e).text for e in events if TranscriptChunk.is_type(e.type)]
    text = Transcript.from_event(events[-2]).text
    assert text == "".join(chunks).strip() == "".join(e.text for e in realtime_engine.transcribe(audio)).strip()
    assert TranscriptStart.from_event(events[0]).language == "en"


def test_other_rates_and_stereo_are_converted(wyoming_server):
    audio = resample(load_audio(HELLO), 16000, 44100)
    events = asyncio.run(request(wyoming_server.wyoming_port, pcm16(audio, channels=2), rate=44100, channels=2))
    assert Transcript.from_event(events[-2]).text  # 4.3 s of speech, transcribed (random weights: some text)


def test_faults_unknown_events_a_vanished_client_and_full(wyoming_server):
    port = wyoming_server.wyoming_port
    # Unknown events are ignored, as Wyoming servers do: the request goes on.
    events = asyncio.run(request(port, pcm16(load_audio(HELLO)[:16000]), before=[Event(type="not-a-thing")]))
    assert Transcript.is_type(events[-1].type) or events[-1].type == "transcript-stop"
    # A client gone mid-request frees its row.
    asyncio.run(request(port, pcm16(load_audio(HELLO)), leave_after=5))
    deadline = time.monotonic() + 20
    while wyoming_server.health()[1]["sessions"]:
        assert time.monotonic() < deadline, "the vanished client's row was never given back"
        time.sleep(0.05)

    async def full():  # both rows held (max_sessions 2): the third request gets server_full
        holders = [AsyncTcpClient("127.0.0.1", port) for _ in range(2)]
        for h in holders:
            await h.connect()
            await h.write_event(AudioStart(rate=16000, width=2, channels=1).event())
        while wyoming_server.health()[1]["sessions"] < 2:
            await asyncio.sleep(0.05)
        try:
            async with AsyncTcpClient("127.0.0.1", port) as client:
                await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
                return [await asyncio.wait_for(client.read_event(), 20)]
        finally:
            for h in holders:
                await h.disconnect()

    (error,) = asyncio.run(full())
    assert Error.from_event(error).code == "server_full"
    assert wyoming_server.health("/ready")[0] in (200, 503)  # still answering
    events = asyncio.run(request(port, pcm16(load_audio(HELLO))))  # and healthy after it all
    assert events[-1].type == "transcript-stop"


def test_malformed_lines_and_bad_audio(wyoming_server):
    """A chunk whose format cannot be audio ends its request with an error (the connection goes on
    to the next request); a line that is not an event ends the connection, as the wyoming package
    does for every server. Either way the row is given back and the server answers."""
    import socket

    port = wyoming_server.wyoming_port
    hello = pcm16(load_audio(HELLO)[:16000])

    async def bad_then_good():
        async with AsyncTcpClient("127.0.0.1", port) as client:
            await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
            await client.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=b"\x00\x01\x02").event())
            error = Error.from_event(await asyncio.wait_for(client.read_event(), 20))
            for event in (AudioStart(rate=16000, width=2, channels=1), AudioChunk(rate=16000, width=2, channels=1,
                                                                                     audio=hello), AudioStop()):
                await client.write_event(event.event())
            while True:
                event = await asyncio.wait_for(client.read_event(), 60)
                if Transcript.is_type(event.type):
                    return error, Transcript.from_event(event).text

    idle(wyoming_server)
    error, text = asyncio.run(bad_then_good())
    assert error.code == "invalid_audio" and "whole samples" in error.text and text
    for chunk in (AudioChunk(rate=0, width=2, channels=1, audio=hello), AudioChunk(rate=16000, width=3, channels=1,
                                                                                   audio=b"\x00" * 6)):
        async def one(chunk=chunk):
            async with AsyncTcpClient("127.0.0.1", port) as client:
                await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
                await client.write_event(chunk.event())
                return Error.from_event(await asyncio.wait_for(client.read_event(), 20))

        idle(wyoming_server)  # the rows of the requests before are given back (at the scheduler's next cycle)
        assert asyncio.run(one()).code == "invalid_audio"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(b'{"type": "audio-start", "data": {"rate": 16000, "width": 2, "channels": 1}}\n')
        raw.sendall(b"{this is not json\n")
        assert raw.recv(100) == b""  # closed
    idle(wyoming_server)
    assert asyncio.run(request(port, pcm16(load_audio(HELLO))))[-1].type == "transcript-stop"


def idle(server, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while server.health()[1]["sessions"]:
        assert time.monotonic() < deadline, "a row was never given back"
        time.sleep(0.05)


def test_a_client_that_never_reads_is_dropped(realtime_dir):
    """A Wyoming client that streams audio and reads nothing: once its transcript chunks fill the
    socket's buffers (made small here, so a few hundred events do it), the server's next send waits
    serve.send_timeout_s and the client is dropped, its row freed. The handler runs in this test's
    loop over a socket pair, on a real scheduler (Wyoming has no ping to find it sooner)."""
    import socket

    from serve_server import served

    from voxcli.engine.local import load_engine
    from voxcli.serve.app import ServeOptions
    from voxcli.serve.wyoming import Handler

    engine = load_engine(str(realtime_dir), device="cpu", sessions=2)
    audio = pcm16(np.tile(load_audio(HELLO), 30))  # two minutes

    def frame(event: Event) -> bytes:
        import json

        header = {"type": event.type, "data": event.data, "payload_length": len(event.payload or b"")}
        return json.dumps(header).encode() + b"\n" + (event.payload or b"")

    async def run(state) -> None:
        ours, theirs = socket.socketpair()
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        reader, writer = await asyncio.open_connection(sock=ours)
        handler = Handler(reader, writer, state)
        served_task = asyncio.create_task(handler.run())

        def client() -> None:  # sends, never reads
            try:
                theirs.sendall(frame(AudioStart(rate=16000, width=2, channels=1).event()))
                for i in range(0, len(audio), 3200):
                    theirs.sendall(frame(AudioChunk(rate=16000, width=2, channels=1, audio=audio[i:i + 3200]).event()))
            except OSError:
                pass  # dropped: the server closed it

        sender = asyncio.get_running_loop().run_in_executor(None, client)
        await asyncio.wait_for(served_task, 120)
        theirs.close()
        await sender

    with served(engine, ServeOptions(max_sessions=2, send_timeout_s=1.0, client_queue=16)) as server:
        asyncio.run(run(server.state))
        assert server.metric("voxcli_dropped_clients_total", '{reason="slow"}') == 1
        server.wait_idle()
