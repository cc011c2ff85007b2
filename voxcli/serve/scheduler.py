"""One thread owns the engine; asyncio owns the network.

Every client's audio reaches the model through a :class:`Stream`: the network side (any thread)
calls ``push``, ``end`` and ``close``, which only append to the stream's inbox and wake the
scheduler; the scheduler thread alone touches the engine. Each cycle it hands every stream the
audio that has come, runs each stream's endpointer, then steps all streams that can step in one
forward per step (``steps_together``: each stream is a row of the batched step) and flushes the
streams whose utterance ended (``finish_together``). What comes out goes to each stream's
``deliver`` callable as :class:`Token`, :class:`Speech`, :class:`Done` or :class:`Failed`;
``deliver`` must not block (the network side puts it on the client's own bounded queue).

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

from voxcli.audio.vad import Endpointer, EndpointOptions
from voxcli.errors import EngineFull, first_line
from voxcli.events import TokenEvent
from voxcli.units import SAMPLE_RATE

log = logging.getLogger(__name__)
IDLE_WAKE_S = 0.5  # the loop looks at its streams at least this often (a client that left)
# The most audio one stream hands the model per cycle: a file pushed whole steps 8 tokens at a time,
# and every other stream's new audio joins the forwards between those rounds.
CYCLE_SAMPLES = 8 * 1280
PIECE_SAMPLES = 1280  # push() splits what it is given into pieces this long (80 ms)
_END = object()  # in a stream's inbox: the utterance ends here (a final commit)


@dataclass(frozen=True)
class Token:
    event: TokenEvent
    utterance: int
    latency_ms: float | None  # emitted - when the audio that let it step arrived (None: a flush)


@dataclass(frozen=True)
class Speech:
    kind: str  # "start" or "end", from the stream's own endpointer
    at_ms: int  # in the stream's audio
    utterance: int


@dataclass(frozen=True)
class Done:
    utterance: int
    text: str
    audio_s: float  # how much audio the utterance had


@dataclass(frozen=True)
class Failed:
    message: str
    code: str = "engine_error"


class Full(Exception):
    """Every session the server allows is taken."""


class Stream:
    """One client's audio on its way to the model. ``push``/``end``/``close`` may be called from
    any thread; the rest belongs to the scheduler thread."""

    def __init__(self, scheduler: Scheduler, deliver: Callable[[object], None], sid: int,
                 vad: EndpointOptions | None, options: dict | None = None) -> None:
        self.id = sid
        self.options = options or {}  # the engine's session / transcribe arguments (keyterms)
        self.deliver = deliver
        self._scheduler = scheduler
        self._lock = threading.Lock()
        self._inbox: deque = deque()  # (arrival time, samples) and _END, in order
        self.buffered = 0  # samples pushed and not yet handed to the model (the network side's backpressure)
        self.closed = False
        # The scheduler thread's own:
        self.session = None
        self.utterance = 0
        self.text: list[str] = []
        self.heard = 0  # samples handed to the model, over all utterances
        self.utterance_from = 0
        self.ending = False
        self.endpointer = Endpointer(vad) if vad is not None else None
        self.offline_audio: list[np.ndarray] = []  # an offline engine hears an utterance whole

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

    def _take(self) -> list:
        """What came since the last cycle, at most ``CYCLE_SAMPLES`` of it, up to and including
        the first end (what follows an end belongs to the next utterance: the next cycle's)."""
        taken, n = [], 0
        with self._lock:
            while self._inbox and n < CYCLE_SAMPLES:
                item = self._inbox.popleft()
                taken.append(item)
                if item is _END:
                    break
                self.buffered -= len(item[1])
                n += len(item[1])
        return taken

    @property
    def waiting(self) -> bool:
        return bool(self._inbox)


class Scheduler:
    """The engine's one thread. ``open(deliver)`` makes a stream (``Full`` past ``max_sessions``)."""

    def __init__(self, engine, *, max_sessions: int, on_step: Callable[[list[Token]], None] | None = None) -> None:
        self.engine = engine
        self.max_sessions = max_sessions
        self.on_step = on_step or (lambda tokens: None)
        self.together = engine.kind == "realtime" and engine.info.other_delays  # has steps_together
        self._streams: dict[int, Stream] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._next_id = 0
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
             options: dict | None = None) -> Stream:
        """``options``: arguments of the engine's ``session()`` / ``transcribe()`` for this stream
        (``keyterms``)."""
        with self._lock:
            if self._stopping:
                raise Full("the server is shutting down")
            if len(self._streams) >= self.max_sessions:
                raise Full(f"all {self.max_sessions} sessions are in use (serve.max_sessions)")
            self._next_id += 1
            stream = Stream(self, deliver, self._next_id, vad, options)
            self._streams[stream.id] = stream
        return stream

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
                    if self._stopping and not any(s.waiting for s in streams):
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
        latest: dict[int, float] = {}
        for s in streams:
            if s.closed:
                self._drop(s)
                continue
            try:
                self._feed(s, latest)
            except EngineFull as exc:  # every row the model allocated at load is taken
                s.deliver(Failed(str(exc), "server_full"))
                self._drop(s)
            except Exception as exc:  # noqa: BLE001 - this stream fails, the others go on
                self._fail([s], exc)
        live = [s for s in streams if not s.closed and s.id in self._streams]
        ending = [s for s in live if s.ending]
        running = [s for s in live if s.session is not None and not s.ending]
        if ending:
            self._guarded(ending, lambda: self._finish(ending))
        if running:
            self._guarded(running, lambda: self._step(running, latest))

    def _guarded(self, streams: list[Stream], call) -> None:
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - a failed forward fails its streams, not the server
            self._fail(streams, exc)

    def _fail(self, streams: list[Stream], exc: BaseException) -> None:
        log.exception("a step failed for %d stream(s)", len(streams))
        for s in streams:
            s.deliver(Failed(f"the engine failed: {first_line(exc)}"))
            self._drop(s)

    def _drop(self, s: Stream) -> None:
        if s.session is not None:
            s.session.close()
            s.session = None
        with self._lock:
            self._streams.pop(s.id, None)

    def _feed(self, s: Stream, latest: dict[int, float]) -> None:
        """Hand the stream's new audio to its session (opened at its first audio) and its
        endpointer; an end of speech, or the client's end, marks the utterance as ending."""
        for item in s._take():
            if item is _END:
                s.ending = True
                return
            t, samples = item
            latest[s.id] = t
            if self.engine.kind != "realtime":
                s.offline_audio.append(samples)
            else:
                if s.session is None:
                    s.session = self.engine.session(**s.options)
                s.session.push(samples)
            s.heard += len(samples)
            for vad in s.endpointer.feed(samples) if s.endpointer is not None else []:
                s.deliver(Speech(vad.kind, vad.sample * 1000 // SAMPLE_RATE, s.utterance))
                if vad.kind == "end":
                    s.ending = True
            if s.ending:
                return  # the rest is the next utterance's

    def _step(self, running: list[Stream], latest: dict[int, float]) -> None:
        tokens: list[Token] = []
        if self.together:
            pairs = self.engine.steps_together([s.session for s in running])
        else:
            pairs = ((i, e) for i, s in enumerate(running) for e in s.session.steps())
        for i, event in pairs:
            t = latest.get(running[i].id)
            tokens.append(_emit(running[i], event, None if t is None else (event.t_emitted - t) * 1000.0))
        self.on_step(tokens)

    def _finish(self, ending: list[Stream]) -> None:
        realtime = [s for s in ending if s.session is not None]
        if self.together and realtime:
            pairs = self.engine.finish_together([s.session for s in realtime])
        else:
            pairs = ((i, e) for i, s in enumerate(realtime) for e in s.session.finish())
        tokens = [_emit(realtime[i], event, None) for i, event in pairs]
        for s in ending:
            if s.offline_audio:
                audio = np.concatenate(s.offline_audio)
                s.offline_audio = []
                tokens += [_emit(s, event, None) for event in self.engine.transcribe(audio, **s.options)]
        self.on_step(tokens)
        for s in ending:
            if s.session is not None:
                s.session.close()  # finished: its row is back already; closing twice is harmless
                s.session = None
            audio_s = (s.heard - s.utterance_from) / SAMPLE_RATE
            s.deliver(Done(s.utterance, "".join(s.text).strip(), audio_s))
            s.text, s.ending, s.utterance_from = [], False, s.heard
            s.utterance += 1


def _emit(s: Stream, event: TokenEvent, latency_ms: float | None) -> Token:
    """A token of ``s``'s open utterance: kept for its done event, handed to its client."""
    token = Token(event, s.utterance, latency_ms)
    s.text.append(event.text)
    s.deliver(token)
    return token
