"""Wyoming (Home Assistant's protocol for local voice) beside HTTP: ``voxcli serve --wyoming PORT``.

A JSON-lines header and a binary payload per event over TCP (the ``wyoming`` package reads and
writes them). One connection may carry many requests, each a session of the same scheduler and
rows as the HTTP APIs:

| event in | what the session does | events out |
|---|---|---|
| ``describe`` | nothing | ``info``: the model, the languages it knows, transcript streaming |
| ``transcribe`` | the next request's language and phrases (``transcript_names`` and ``transcript_terms``: keyterms) | nothing |
| ``audio-start`` | a stream opens (a row taken; full: ``error`` ``server_full``) | nothing |
| ``audio-chunk`` | its PCM (any rate, width, channels) made 16 kHz mono, pushed | ``transcript-start`` at the first text, then a ``transcript-chunk`` per text token (Realtime models) |
| ``audio-stop`` | the stream ends: flushed, its last words | ``transcript`` (the whole text), then ``transcript-stop`` |
| anything else | ignored (as Wyoming servers do) | nothing |

A failing step, or a chunk whose format cannot be audio (rate outside 8-48 kHz, width not 1, 2 or
4, a partial sample), ends the request with an ``error`` event; the connection stays for the next.
A line that is not an event ends the connection (the ``wyoming`` package reads no further, as every
Wyoming server); a client that goes away, or reads nothing for ``serve.send_timeout_s`` while its
events wait, is dropped and its row freed. Wyoming has no key: with ``serve.api_key`` set, bind it
to a trusted address (``--wyoming 127.0.0.1:10300``, the default host).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import soxr
from wyoming.asr import Transcribe, Transcript, TranscriptChunk, TranscriptStart, TranscriptStop
from wyoming.audio import AudioChunk, AudioChunkConverter, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import AsrModel, AsrProgram, Attribution, Describe, Info
from wyoming.server import AsyncEventHandler, AsyncTcpServer

import voxcli
from voxcli.audio.pcm import from_pcm16
from voxcli.engine.keyterms import Keyterms
from voxcli.serve.realtime import MAX_BUFFERED_S
from voxcli.serve.scheduler import Done, Failed, Full, Token
from voxcli.units import SAMPLE_RATE

log = logging.getLogger(__name__)
# Voxtral's languages (the model card): what `info` says the model knows.
LANGUAGES = ["en", "zh", "hi", "es", "ar", "fr", "pt", "ru", "de", "ja", "ko", "it", "nl"]


def parse_address(value: str) -> tuple[str, int]:
    """``PORT`` or ``HOST:PORT`` (loopback when no host is given)."""
    host, _, port = value.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--wyoming {value!r}: PORT or HOST:PORT, e.g. 10300 or 0.0.0.0:10300")
    return host.strip("[]") or "127.0.0.1", int(port)


async def start(server, address: str) -> AsyncTcpServer:
    """The Wyoming server on ``address``, sharing ``server`` (the app's ServerState)."""
    host, port = parse_address(address)
    if server.options.api_key and host not in ("127.0.0.1", "::1", "localhost"):
        log.warning("Wyoming on %s has no API key (the protocol has none): anyone who can reach it may use "
                    "this server", address)
    tcp = AsyncTcpServer(host, port)
    await tcp.start(lambda reader, writer: Handler(reader, writer, server))
    return tcp


def _bad_audio(chunk: AudioChunk) -> str | None:
    """What is wrong with a chunk's format, if anything (the converter would fail on it, or worse)."""
    if not 8000 <= (chunk.rate or 0) <= 48000:
        return f"audio-chunk rate {chunk.rate}: 8000 to 48000 Hz"
    if chunk.width not in (1, 2, 4) or not 1 <= (chunk.channels or 0) <= 8:
        return f"audio-chunk width {chunk.width}, channels {chunk.channels}: width 1, 2 or 4 bytes, 1 to 8 channels"
    if len(chunk.audio or b"") % (chunk.width * chunk.channels):
        return f"audio-chunk of {len(chunk.audio)} bytes: not whole samples of {chunk.width * chunk.channels} bytes"
    return None


class Handler(AsyncEventHandler):
    """One client connection; requests one after the other."""

    def __init__(self, reader, writer, server) -> None:
        super().__init__(reader, writer)
        self.server = server  # voxcli.serve.app.ServerState
        self.mail = server.mailbox()
        self.request = Transcribe()
        self.stream = None
        self.out: asyncio.Queue = asyncio.Queue(maxsize=server.options.client_queue)
        self.writer_task = asyncio.create_task(self._write())
        self.converter = AudioChunkConverter(width=2, channels=1)  # the package's own: 16-bit mono
        self.resampler = None
        self.started = False  # transcript-start sent for this request
        self.stopped = False  # audio-stop came for this request

    async def handle_event(self, event: Event) -> bool:
        if Describe.is_type(event.type):
            await self.write_event(self._info().event())
        elif Transcribe.is_type(event.type):
            self.request = Transcribe.from_event(event)
        elif AudioStart.is_type(event.type):
            return await self._open()
        elif AudioChunk.is_type(event.type):
            await self._push(AudioChunk.from_event(event))
        elif AudioStop.is_type(event.type) and self.stream is not None and not self.stopped:
            self.stream.end()  # its transcript comes when the flush is done
            self.stopped = True
        return True

    def _info(self) -> Info:
        model = self.server.model_name
        mistral = Attribution("Mistral AI", "https://huggingface.co/mistralai")
        return Info(asr=[AsrProgram(
            name="voxcli", attribution=Attribution("voxcli", "https://github.com/voxcli/voxcli"), installed=True,
            description="Live, local speech-to-text with Voxtral", version=voxcli.__version__,
            models=[AsrModel(name=model, attribution=mistral, installed=True, description=f"{model} "
                             f"({self.server.engine.kind})", version=None, languages=LANGUAGES)],
            supports_transcript_streaming=self.server.engine.kind == "realtime")])

    async def _open(self) -> bool:
        if self.stream is not None and not self.stopped:  # the last request never said audio-stop
            self.stream.close()
        if self.server.draining:
            await self.write_event(Error("the server is shutting down", "shutting_down").event())
            return False
        phrases = [*(self.request.transcript_names or []), *(self.request.transcript_terms or [])]
        options = {"keyterms": Keyterms.of(phrases)} if phrases else {}
        mine: list = []  # the stream, for its messages (a request's Done may come after the next began)
        try:
            self.stream = self.server.scheduler.open(lambda m: self.mail.put(self._put, (mine[0], m)),
                                                     options=options)
            mine.append(self.stream)
        except Full as exc:
            self.server.metrics.rejected.labels("server_full").inc()
            await self.write_event(Error(str(exc), "server_full").event())
            return False
        self.server.metrics.sessions.labels("wyoming").inc()
        self.resampler, self.started, self.stopped = None, False, False
        return True

    async def _push(self, chunk: AudioChunk) -> None:
        if self.stream is None:
            return  # audio with no audio-start: nothing to put it in (as Wyoming servers do)
        problem = _bad_audio(chunk)
        if problem:  # the request ends here, said; the connection stays for the next one
            self.server.metrics.rejected.labels("invalid_audio").inc()
            self.stream.close()
            self.stream = None
            await self.write_event(Error(problem, "invalid_audio").event())
            return
        chunk = self.converter.convert(chunk)
        samples = from_pcm16(chunk.audio)
        if chunk.rate != SAMPLE_RATE:
            if self.resampler is None:
                self.resampler = soxr.ResampleStream(chunk.rate, SAMPLE_RATE, 1, dtype="float32")
            samples = self.resampler.resample_chunk(samples)
        stream = self.stream
        while stream.buffered > MAX_BUFFERED_S * SAMPLE_RATE and stream is self.stream:
            await asyncio.sleep(0.01)  # the model is behind this client: read no more of its audio for now
        stream.push(samples)

    def _put(self, message: object) -> None:
        with contextlib.suppress(asyncio.QueueFull):  # a client that reads nothing: dropped below
            self.out.put_nowait(message)

    async def _write(self) -> None:
        while True:
            stream, message = await self.out.get()
            try:
                for event in self._events(stream, message):
                    await asyncio.wait_for(self.write_event(event.event()), self.server.options.send_timeout_s)
            except (OSError, TimeoutError) as exc:
                if isinstance(exc, TimeoutError):  # it reads nothing: its row is not held for it
                    self.server.metrics.dropped.labels("slow").inc()
                    log.warning("a Wyoming client took no event for %g s (serve.send_timeout_s); dropped",
                                self.server.options.send_timeout_s)
                await self.stop()
                return

    def _events(self, stream, message: object) -> list:
        streaming = self.server.engine.kind == "realtime"
        if isinstance(message, Token) and message.event.text and streaming:
            first = [] if self.started else [TranscriptStart(language=self.request.language)]
            self.started = True
            return [*first, TranscriptChunk(message.event.text)]
        if isinstance(message, (Done, Failed)):  # the request is over: its row back
            stream.close()
            if stream is self.stream:
                self.stream = None
        if isinstance(message, Done):
            end = [TranscriptStop()] if self.started else []
            return [Transcript(message.text, language=self.request.language), *end]
        if isinstance(message, Failed):
            return [Error(message.message, message.code)]
        return []

    async def disconnect(self) -> None:
        if self.stream is not None:
            self.stream.close()  # its row is free at the scheduler's next cycle
            self.stream = None
        self.writer_task.cancel()
