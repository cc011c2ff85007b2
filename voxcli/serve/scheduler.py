"""One thread owns the engine; asyncio owns the network.

Every client's audio reaches the model through a :class:`Stream`: the network side (any thread)
calls ``push``, ``end`` and ``close``, which only append to the stream's inbox and wake the
scheduler; the scheduler thread alone touches the engine. Each stream is one
:class:`voxcli.live.driver.StreamDriver` (the session cycle listen runs: endpointer, flushes,
restarts), and the scheduler is N drivers plus one batched step: each cycle it hands every
driver the audio that has come, then :func:`voxcli.live.driver.cycle` steps all of them in one
forward per step (each stream is a row of the batched step) and flushes those whose utterance
ended in shared forwards. What comes out goes to each stream's ``deliver`` callable as
:class:`Token`, :class:`Speech`, :class:`Done` or :class:`Failed`; ``deliver`` must not block
(the network side puts it on the client's own bounded queue).

A failing step fails the streams in it (``Failed``), never the thread; a stream whose client
left gives its row back at the next cycle.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from voxcli.audio.vad import EndpointOptions
from voxcli.delays import check_delay_ms
from voxcli.errors import EngineFull, first_line
from voxcli.events import TokenEvent
from voxcli.live.driver import StreamDriver, cycle, endpoints_together
from voxcli.live.items import LiveOptions, LiveToken, Speech, UtteranceDone

log = logging.getLogger(__name__)
IDLE_WAKE_S = 0.5  # the loop looks at its streams at least this often (a client that left)
# The most audio one stream hands the model per cycle: a file pushed whole steps 8 tokens at a time,
# and every other stream's new audio joins the forwards between those rounds.
CYCLE_SAMPLES = 8 * 1280
PIECE_SAMPLES = 1280  # push() splits what it is given into pieces this long (80 ms)
_END = object()  # in a stream's inbox: the utterance ends here (a final commit)
__all__ = ["CycleTime", "Done", "Failed", "Full", "Scheduler", "Speech", "Stream", "Token"]


@dataclass(frozen=True)
class Token:
    event: TokenEvent
    utterance: int
    latency_ms: float | None  # emitted - when the audio that let it step arrived (None: a flush)


@dataclass(frozen=True)
class Done:
    utterance: int
    text: str
    audio_s: float  # how much audio the utterance had


@dataclass(frozen=True)
class Failed:
    message: str
    code: str = "engine_error"


@dataclass(frozen=True)
class CycleTime:
    """One scheduler cycle, split: the forwards (a Realtime engine's ``forward_clock``) and the host
    work around them (feeding, endpointers, features, events, delivery)."""

    rows: int  # rows the forwards stepped: one token each (a stream's 80 ms of work)
    seconds: float
    forward_s: float

    @property
    def host_s(self) -> float:
        return max(0.0, self.seconds - self.forward_s)


class Full(Exception):
    """Every session the server allows is taken."""


class Stream:
    """One client's audio on its way to the model. ``push``/``end``/``close`` may be called from
    any thread; the rest belongs to the scheduler thread."""

    def __init__(self, scheduler: Scheduler, deliver: Callable[[object], None], sid: int,
                 vad: EndpointOptions | None, options: dict | None = None, engine=None) -> None:
        self.id = sid
        self.options = options or {}  # the engine's session / transcribe arguments (keyterms)
        self.deliver = deliver
        self._scheduler = scheduler
        self._lock = threading.Lock()
        self._inbox: deque = deque()  # (arrival time, samples) and _END, in order
        self.buffered = 0  # samples pushed and not yet handed to the model (the network side's backpressure)
        self.closed = False
        # The scheduler thread's own: the session's cycle, and what this cycle made of it.
        live = LiveOptions(flush_after_ms=0, endpoint_options=vad, max_utterance_s=float("inf") if vad is None
                           else LiveOptions.max_utterance_s)  # no endpointer: the caller's end cuts
        self.driver = StreamDriver(engine or scheduler.engine, self._item, live, session_options=self.options)
        self.text: list[str] = []
        self.arrived: float | None = None  # when the audio handed over in this cycle arrived
        self.tokens: list[Token] = []  # made in this cycle (the metrics')

    def push(self, samples: np.ndarray, t_arrived: float | None = None) -> None:
        t = t_arrived or time.perf_counter()
        with self._lock:
            for i in range(0, len(samples), PIECE_SAMPLES):
                self._inbox.append((t, samples[i:i + PIECE_SAMPLES]))
            self.buffered += len(samples)
        self._scheduler.wake()

    def end(self) -> None:
        """The utterance so far is complete: flush it (its last words), then ``Done``."""
        with self._lock:
            self._inbox.append(_END)
        self._scheduler.wake()

    def close(self) -> None:
        """The client is gone: drop the stream unfinished; its row is free at the next cycle."""
        self.closed = True
        self._scheduler.wake()

    def take(self) -> deque:
        """What came since the last cycle, at most ``CYCLE_SAMPLES`` of it, up to and including
        the first end (what follows an end belongs to the next utterance: the next cycle's)."""
        taken, n = deque(), 0
        with self._lock:
            while self._inbox and n < CYCLE_SAMPLES:
                item = self._inbox.popleft()
                taken.append(item)
                if item is _END:
                    break
                self.buffered -= len(item[1])
                n += len(item[1])
        return taken

    def untake(self, items: deque) -> None:
        """Taken and not heard (the cycle's feeding stopped at an end of speech): back to the
        front of the inbox, in order, for the next cycle."""
        with self._lock:
            for item in reversed(items):
                self._inbox.appendleft(item)
                if item is not _END:
                    self.buffered += len(item[1])

    @property
    def waiting(self) -> bool:
        return bool(self._inbox)

    def _item(self, item: object) -> None:
        """What the driver made, as this server's messages."""
        if isinstance(item, LiveToken):
            t = None if item.flushed else self.arrived
            token = Token(item.event, item.utterance, None if t is None else (item.event.t_emitted - t) * 1000.0)
            self.text.append(item.event.text)
            self.tokens.append(token)
            self.deliver(token)
        elif isinstance(item, Speech):
            self.deliver(item)
        elif isinstance(item, UtteranceDone):
            self.deliver(Done(item.utterance, "".join(self.text).strip(), item.audio_s))
            self.text = []


class Scheduler:
    """The engine's one thread. ``open(deliver)`` makes a stream (``Full`` past ``max_sessions``)."""

    def __init__(self, engine, *, max_sessions: int,
                 on_step: Callable[[list[Token], CycleTime | None], None] | None = None) -> None:
        self.engine = engine
        self.max_sessions = max_sessions
        self.on_step = on_step or (lambda tokens, cycle: None)  # None: an engine with no forward clock
        self._streams: dict[int, Stream] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._next_id = 0
        self._delays: dict[int, object] = {}  # at_delay's engines
        self.error: str | None = None  # set if the thread itself ever stops unexpectedly
        self._thread = threading.Thread(target=self._run, name="voxcli-scheduler", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def active(self) -> int:
        with self._lock:
            return len(self._streams)

    def wake(self) -> None:
        self._wake.set()

    def open(self, deliver: Callable[[object], None], *, vad: EndpointOptions | None = None,
             options: dict | None = None, delay_ms: int | None = None) -> Stream:
        """``options``: arguments of the engine's ``session()`` / ``transcribe()`` for this stream
        (``keyterms``); ``delay_ms``: its own delay (``ValueError`` where the engine has one only)."""
        engine = self.at_delay(delay_ms)
        with self._lock:
            if self._stopping:
                raise Full("the server is shutting down")
            if len(self._streams) >= self.max_sessions:
                raise Full(f"all {self.max_sessions} sessions are in use (serve.max_sessions)")
            self._next_id += 1
            stream = Stream(self, deliver, self._next_id, vad, options, engine)
            self._streams[stream.id] = stream
        return stream

    def at_delay(self, delay_ms: int | None):
        """The engine at ``delay_ms``: the same weights, its streams rows of the same forwards
        (one engine per delay, made once)."""
        if delay_ms is None or delay_ms == self.engine.info.delay_ms:
            return self.engine
        if not self.engine.info.other_delays:
            raise ValueError(f"this server's engine runs at {self.engine.info.delay_ms} ms only")
        check_delay_ms(delay_ms)
        with self._lock:
            if delay_ms not in self._delays:
                self._delays[delay_ms] = self.engine.with_delay(delay_ms, prepare=False)
            return self._delays[delay_ms]

    def stop(self, timeout_s: float) -> None:
        """Open streams end now: each flushes and gets ``Done``; then the thread stops."""
        with self._lock:
            self._stopping = True
            streams = list(self._streams.values())
        for stream in streams:
            stream.end()
        self._thread.join(timeout_s)

    # -- the thread --

    def _run(self) -> None:
        try:
            while True:
                self._wake.wait(IDLE_WAKE_S)
                self._wake.clear()
                with self._lock:
                    streams = list(self._streams.values())
                    stopping = self._stopping
                if stopping and not any(s.waiting for s in streams):  # (dropping takes the lock)
                    for s in streams:
                        self._drop(s)
                    return
                self._cycle(streams)
                if any(s.waiting for s in streams):
                    self._wake.set()  # more audio than one cycle takes: go round again at once
        except BaseException as exc:  # noqa: BLE001 - said, in /health and the log, never silent
            self.error = first_line(exc)
            log.exception("the scheduler thread stopped")
            with self._lock:
                streams = list(self._streams.values())
            for s in streams:
                s.deliver(Failed(f"the engine stopped: {self.error}", "server_error"))

    def _cycle(self, streams: list[Stream]) -> None:
        clock = self.engine.forward_clock
        t0 = time.perf_counter()
        before = (clock.seconds, clock.rows) if clock is not None else None
        live = self._feed(streams)
        if not live:
            return
        try:
            for s in live:
                s.driver.draining.collect()
            cycle(self.engine, [s.driver for s in live])
        except Exception as exc:  # noqa: BLE001 - a failed forward fails its streams, not the server
            self._fail(live, exc)
        tokens = [t for s in live for t in s.tokens]
        for s in live:
            s.tokens = []
        split = None
        if before is not None:
            split = CycleTime(clock.rows - before[1], time.perf_counter() - t0, clock.seconds - before[0])
        self.on_step(tokens, split)

    def _feed(self, streams: list[Stream]) -> list[Stream]:
        """Hand every driver the audio that has come, a piece per stream per round, the
        endpointers of each round scored together (one Silero call per window for all streams).
        A stream's feeding stops at an end (of speech, or the client's): what it had taken after
        it goes back for the next cycle. Returns the streams still open."""
        live, taken = [], {}
        for s in streams:
            if s.closed:
                self._drop(s)
                continue
            s.arrived = None
            taken[s.id] = s.take()
            live.append(s)
        feeding = [s for s in live if taken[s.id]]
        while feeding:
            hearing = []
            for s in feeding:
                item = taken[s.id].popleft()
                if item is _END:
                    s.driver.end_utterance()
                else:
                    hearing.append((s, item))
            try:
                events = endpoints_together([s.driver for s, _ in hearing], [x for _, (_, x) in hearing])
            except Exception as exc:  # noqa: BLE001 - the endpointers failed: the streams in this round fail
                self._fail([s for s, _ in hearing], exc)
                events = None
            for (s, (t, x)), heard in zip(hearing, events or []):
                s.arrived = t
                try:
                    s.driver.hear(x, t, heard)
                except EngineFull as exc:  # every row the model allocated at load is taken
                    s.deliver(Failed(str(exc), "server_full"))
                    self._drop(s)
                except Exception as exc:  # noqa: BLE001 - this stream fails, the others go on
                    self._fail([s], exc)
            live = [s for s in live if s.id in self._streams]
            for s in feeding:
                if s.driver.ending and taken[s.id]:
                    s.untake(taken.pop(s.id))
            feeding = [s for s in live if taken.get(s.id) and not s.driver.ending]
        return live

    def _fail(self, streams: list[Stream], exc: BaseException) -> None:
        log.exception("a step failed for %d stream(s)", len(streams))
        for s in streams:
            s.deliver(Failed(f"the engine failed: {first_line(exc)}"))
            self._drop(s)

    def _drop(self, s: Stream) -> None:
        s.driver.drop()
        with self._lock:
            self._streams.pop(s.id, None)
