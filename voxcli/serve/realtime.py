"""One client's realtime WebSocket, in whichever dialect its URL chose: a
:class:`~voxcli.serve.codec.Codec` (vLLM's and OpenAI's at ``/v1/realtime``, Mistral's at
``/v1/audio/transcriptions/realtime``, Deepgram's at ``/v1/listen``) over one session.

Two tasks per connection: the reader takes the client's events (audio to the scheduler's
:class:`~voxcli.serve.scheduler.Stream`), the writer sends what the scheduler delivers. The
scheduler thread delivers onto this connection's own bounded queue (``serve.client_queue``) and
never waits on it; a client that falls that far behind, or does not take one send within
``serve.send_timeout_s``, is dropped with an ``error`` event, so it slows no one else. A client
that reads nothing at all (the kernel's socket buffers take a megabyte or so of events first) is
found by uvicorn's WebSocket ping, sent every ``send_timeout_s`` and due back within as long:
uvicorn closes it, and its row is free (``voxcli_dropped_clients{reason="lost"}``, as for a
client that vanished without closing). A client
whose audio outruns the model waits (its own socket is read no further) once
``MAX_BUFFERED_S`` of its audio is waiting for the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid

import soxr
from starlette.websockets import WebSocket, WebSocketDisconnect

from voxcli.serve.codec import BadEvent, parse
from voxcli.serve.scheduler import Done, Failed, Full
from voxcli.units import SAMPLE_RATE

log = logging.getLogger(__name__)
MAX_BUFFERED_S = 60.0
CLOSE_WAIT_S = 1.0  # a goodbye to a client that stopped reading gets this long
_STOP = object()
CLEAN_CLOSE = (1000, 1001)  # a client that closed the connection itself


class Connection:
    def __init__(self, ws: WebSocket, server, codec) -> None:
        """``codec``: the dialect's Codec class (called with this connection)."""
        self.ws = ws
        self.server = server  # voxcli.serve.app.ServerState
        self.mail = server.mailbox()
        self.id = uuid.uuid4().hex[:16]
        self.codec = codec(self)
        self.settings = self.codec.settings
        self.out: asyncio.Queue = asyncio.Queue(maxsize=server.options.client_queue)
        self.stream = None
        self.resampler = None
        self.gone = False  # dropped, or left: nothing more is sent
        self.open_utterances = 0  # ends asked for and not yet done (SIGTERM waits for them)
        self.closed_cleanly = False
        self.dropped = False  # by this server (drop())
        self.finishing = False  # the codec's last events are out: close (finish())

    # -- from the scheduler thread --

    def deliver(self, message: object) -> None:
        self.mail.put(self.put, message)

    def put(self, message: object) -> None:
        if self.gone:
            return
        try:
            self.out.put_nowait(message)
        except asyncio.QueueFull:
            self.drop("slow", f"this client fell {self.out.maxsize} events behind (serve.client_queue); dropped")

    # -- the connection's life --

    async def run(self) -> None:
        try:
            opening = self.codec.opening()
        except BadEvent as exc:  # the URL asked for what cannot be done: say why, and close
            self.server.metrics.rejected.labels(exc.code).inc()
            await self._send(self.codec.error(str(exc), exc.code))
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(code=1008, reason=str(exc)[:120]), CLOSE_WAIT_S)
            return
        for event in opening:
            await self._send(event)
        writer = asyncio.create_task(self._write())
        try:
            await self._read()
        finally:
            if self.stream is not None and not self.dropped and not self.closed_cleanly:
                # Gone without closing: vanished, or let uvicorn's ping go unanswered (read nothing).
                self.server.metrics.dropped.labels("lost").inc()
            self.gone = True
            if self.stream is not None:
                self.stream.close()  # its row is free at the scheduler's next cycle
                self.stream = None
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer

    async def _read(self) -> None:
        while not self.gone:
            try:
                message = await self.ws.receive()
            except (WebSocketDisconnect, RuntimeError):
                return
            if message["type"] == "websocket.disconnect":
                self.closed_cleanly = message.get("code") in CLEAN_CLOSE
                return
            try:
                if message.get("text") is None:
                    await self.codec.binary(message.get("bytes") or b"")
                else:
                    await self.codec.handle(parse(message["text"]))
            except BadEvent as exc:
                self._refuse(exc)
                if exc.code == "server_full":  # nothing this connection can do: say so and close
                    self.put(_STOP)
                    await self.closing()
                    return

    # -- what a codec does to the session --

    def open(self) -> None:
        """The session's stream, at the settings' endpointer, keyterms and rate (once)."""
        if self.stream is not None:
            return
        try:
            self.stream = self.server.scheduler.open(self.deliver, vad=self.settings.vad, options=self.settings.options,
                                                     delay_ms=self.settings.delay_ms)
        except Full as exc:
            raise BadEvent(str(exc), "server_full") from None  # counted by _refuse, as REST counts it
        except ValueError as exc:  # a delay this engine cannot run at
            raise BadEvent(str(exc), "invalid_delay") from None
        self.server.metrics.sessions.labels(f"realtime-{self.settings.dialect}").inc()
        self.resampler = None if self.settings.rate == SAMPLE_RATE else \
            soxr.ResampleStream(self.settings.rate, SAMPLE_RATE, 1, dtype="float32")

    def end_utterance(self) -> None:
        """The utterance so far is complete: flushed, then its Done (SIGTERM waits for it)."""
        self.open()
        self.open_utterances += 1
        self.stream.end()

    def finish(self) -> None:
        """Close the socket (1000) once the events the codec is writing now are sent."""
        self.finishing = True

    async def push(self, samples) -> None:
        """Mono float32 samples at the settings' rate: resampled to 16 kHz, to the stream."""
        self.open()
        if self.resampler is not None:
            samples = self.resampler.resample_chunk(samples)
        t = time.perf_counter()
        while self.stream.buffered > MAX_BUFFERED_S * SAMPLE_RATE and not self.gone:
            await asyncio.sleep(0.01)  # the model is behind this client: read no more of its audio for now
        self.stream.push(samples, t)

    # -- out --

    async def _write(self) -> None:
        while True:
            message = await self.out.get()
            if message is _STOP:
                return
            if isinstance(message, Done):
                self.open_utterances = max(0, self.open_utterances - 1)
            for event in [message] if isinstance(message, dict) else self.codec.outgoing(message):
                if not await self._send(event):
                    return
            if isinstance(message, Failed):
                self.stream = None  # the scheduler dropped it
            if self.finishing:
                self.gone = True
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.ws.close(code=1000), CLOSE_WAIT_S)
                return

    async def _send(self, event: dict) -> bool:
        try:
            await asyncio.wait_for(self.ws.send_json(event), self.server.options.send_timeout_s)
            return True
        except TimeoutError:
            self.drop("slow", f"a send waited {self.server.options.send_timeout_s:g} s (serve.send_timeout_s); "
                              f"this client stopped reading and is dropped")
        except (WebSocketDisconnect, RuntimeError, OSError):
            self.gone = True
        return False

    async def closing(self) -> None:
        """Let the writer send what is queued (bounded), then close."""
        for _ in range(int(CLOSE_WAIT_S / 0.01)):
            if self.out.empty():
                break
            await asyncio.sleep(0.01)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(code=1013), CLOSE_WAIT_S)

    def _refuse(self, exc: BadEvent) -> None:
        self.server.metrics.rejected.labels(exc.code).inc()
        self.put(self.codec.error(str(exc), exc.code, exc.event_id))

    def drop(self, reason: str, message: str) -> None:
        """Stop serving this client: one ``error`` event if it still reads, then the socket closes."""
        if self.gone:
            return
        self.gone = self.dropped = True
        self.server.metrics.dropped.labels(reason).inc()
        log.warning("session %s: %s", self.id, message)
        asyncio.ensure_future(self._goodbye(self.codec.error(message, f"client_{reason}")))

    async def _goodbye(self, event: dict) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.send_json(event), CLOSE_WAIT_S)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(code=1008), CLOSE_WAIT_S)
