"""Producer/consumer plumbing: the engine runs in its own thread, the main thread draws.

One ``Runner`` serves files and live sessions alike. Its thread runs ``work(put)``; ``put`` hands
an item to a bounded queue, waiting a poll interval at a time, so an engine that outruns the screen
waits instead of piling up memory, and gives up once the consumer has gone. The consumer takes
items off with timed gets (Ctrl-C is seen promptly). An exception in the work travels through the
queue and is raised again in the consumer's thread: no thread dies silently.

- ``transcribe_audio``: decoded audio -> engine thread -> ``on_event`` for each token, timed.
- ``run_live``: a capture source -> ``voxcli.live.LiveWorker`` in the engine thread -> callbacks
  here for tokens, audio (the WAV), endpoints, reconnects, notices and the status line.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice

import numpy as np

from voxcli.events import (
    LiveStatus,
    Notice,
    Reconnect,
    Restart,
    StreamRole,
    TokenEvent,
    Transcript,
    TranscriptMetrics,
    summarize,
)
from voxcli.live.items import AudioIn, Endpoint, LiveOptions, LiveToken
from voxcli.live.twopass import shares_step
from voxcli.live.worker import LiveWorker
from voxcli.units import seconds

QUEUE_SIZE = 256  # tokens of a file in flight between the engine and the screen
LIVE_QUEUE_SIZE = 8192  # a live session's tokens and audio blocks in flight (minutes of them)
POLL_S = 0.05
LIVE_STEPS_KEEP = 65536  # step times a live session keeps for its figures (about 87 minutes)
STATUS_EVERY_S = 0.1


@dataclass(frozen=True)
class _Done:
    pass


@dataclass(frozen=True)
class _Failed:
    error: BaseException


class _Abandoned(Exception):
    """Raised inside the work by ``put`` once nobody will take its items any more."""


class Runner:
    """``work(put)`` in a thread of its own, its items taken off in the consumer's thread::

        with Runner(work, maxsize=256) as runner:
            for item in runner.items():   # None: nothing came within the poll interval
                ...

    Leaving the ``with`` block, for whatever reason, abandons the work (its next ``put`` ends it)
    and waits up to ``join_s`` for the thread.
    """

    def __init__(self, work: Callable[[Callable[[object], None]], None], *, maxsize: int,
                 join_s: float = 5.0, name: str = "voxcli-engine") -> None:
        self._work = work
        self._queue: queue.Queue = queue.Queue(maxsize=maxsize)
        self._abandoned = threading.Event()
        self._join_s = join_s
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def __enter__(self) -> Runner:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._abandoned.set()
        self._thread.join(timeout=self._join_s)

    def put(self, item: object) -> None:
        """Hand ``item`` to the consumer; waits while the queue is full, ends the work if abandoned."""
        while not self._abandoned.is_set():
            try:
                self._queue.put(item, timeout=POLL_S)
                return
            except queue.Full:
                continue
        raise _Abandoned

    def _run(self) -> None:
        try:
            self._work(self.put)
            self.put(_Done())
        except _Abandoned:
            pass
        except BaseException as exc:  # noqa: BLE001 - raised again in the consumer's thread
            try:
                self.put(_Failed(exc))
            except _Abandoned:
                pass

    def items(self) -> Iterator[object | None]:
        """Every item the work puts, in order; ``None`` each time nothing came within the poll
        interval. Ends when the work returns; raises what the work raised."""
        while True:
            try:
                item = self._queue.get(timeout=POLL_S)
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise RuntimeError("engine thread ended without a result") from None
                yield None
                continue
            if isinstance(item, _Done):
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item


def consume(produce: Callable[[], Iterator[TokenEvent]], on_event: Callable[[TokenEvent], None],
            *, stop: threading.Event | None = None,
            on_idle: Callable[[], None] | None = None) -> tuple[list[TokenEvent], float, bool]:
    """Run ``produce`` in an engine thread; call ``on_event`` in this thread for every event, and
    ``on_idle`` each time no event came within the poll interval, and at the end (a view that
    draws at most so often draws what is left there).

    Returns (events, t_start, complete), ``t_start`` being when ``produce`` was called.
    ``complete`` is False after Ctrl-C: the engine stops after its current step.
    """
    stop = stop or threading.Event()
    started: list[float] = []

    def work(put: Callable[[object], None]) -> None:
        started.append(time.perf_counter())
        for event in produce():
            put(event)
            if stop.is_set():
                break

    events: list[TokenEvent] = []
    complete = True
    with Runner(work, maxsize=QUEUE_SIZE, join_s=10.0) as runner:
        try:
            for item in runner.items():
                if item is not None:
                    events.append(item)
                    on_event(item)
                elif on_idle is not None:
                    on_idle()
        except KeyboardInterrupt:
            complete = False
        finally:
            stop.set()
            if on_idle is not None:
                on_idle()
    return events, started[0] if started else time.perf_counter(), complete


def transcribe_audio(engine, audio: np.ndarray, *, source: str, on_event: Callable[[TokenEvent], None],
                     language: str | None = None, stop: threading.Event | None = None,
                     on_idle: Callable[[], None] | None = None) -> Transcript:
    """Transcribe decoded audio with the engine in its own thread, timed from the moment the audio
    is handed to the warm engine (``TranscriptMetrics.measure``). ``on_idle``: as in
    :func:`consume`."""
    events, t_start, complete = consume(lambda: engine.transcribe(audio, language=language), on_event,
                                        stop=stop, on_idle=on_idle)
    metrics = TranscriptMetrics.measure(events, t_start, audio_s=seconds(len(audio)))
    return Transcript(source=source, model=engine.info.model, events=events, metrics=metrics,
                      complete=complete, t_start=t_start)


# ------------------------------------------------------------------------------------------ live


@dataclass
class LiveResult:
    events: list[TokenEvent]
    audio_s: float
    emission_latency_ms: list[float]
    emit_after_ready_ms: list[float]
    step_ms: list[float]
    dropped_blocks: int
    flushes: int
    error: str | None
    endpoints: int = 0
    input_overflows: int = 0
    notice: str | None = None  # the latest problem shown while running (e.g. a reconnect)
    reconnects: int = 0  # times a lost server was found again
    restarts: int = 0  # streams that ended themselves (end of sequence) or gave only blanks, started again
    capture_time: Callable[[int], float] | None = None  # 16 kHz sample -> when it was captured


class _Tally:
    """What the main thread counts of a live session, for its status line and its result."""

    def __init__(self) -> None:
        self.events: list[TokenEvent] = []
        self.latency: list[float] = []  # emission latency, ms
        self.after_ready: list[float] = []  # token out - its chunk captured, ms
        self.steps: deque[float] = deque(maxlen=LIVE_STEPS_KEEP)
        self.final_steps: deque[float] = deque(maxlen=LIVE_STEPS_KEEP)  # two-pass: the final stream's
        self.heard = 0
        self.level_db = -120.0
        self.backlog = 0
        self.endpoints = 0
        self.reconnects = 0
        self.restarts = 0
        self.notice: str | None = None

    def token(self, item: LiveToken, t_drawn: float) -> tuple[float | None, float | None]:
        """Count a token just drawn; its emission latency and its time after its chunk was ready."""
        self.events.append(item.event)
        if item.event.step_ms is not None and not shares_step(item.stream, item.event):
            (self.final_steps if item.stream == StreamRole.FINAL else self.steps).append(item.event.step_ms)
        emission_ms = after_ms = None
        if item.t_audio is not None:
            emission_ms = (t_drawn - item.t_audio) * 1000.0
            self.latency.append(emission_ms)
        if item.t_ready is not None:
            after_ms = (item.event.t_emitted - item.t_ready) * 1000.0
            self.after_ready.append(after_ms)
        return emission_ms, after_ms

    def status(self, source) -> LiveStatus:
        recent = summarize(self.latency[-200:])
        step = summarize(list(islice(reversed(self.steps), 50)))
        final_step = summarize(list(islice(reversed(self.final_steps), 50)))
        return LiveStatus(
            heard_s=seconds(self.heard), level_db=self.level_db,
            latency_ms=(recent["p50"], recent["p95"]) if recent["n"] else None,
            step_ms=step.get("p50"), final_step_ms=final_step.get("p50"), backlog_blocks=self.backlog,
            dropped_blocks=source.dropped_blocks, input_overflows=source.input_overflows,
            endpoints=self.endpoints, notice=self.notice)


@dataclass
class LiveCallbacks:
    """What ``run_live`` calls in the main thread, each optional but ``token``."""

    token: Callable[[TokenEvent, str], None]
    latency: Callable[[LiveToken, float | None, float | None], None] | None = None
    audio: Callable[[AudioIn], None] | None = None
    endpoint: Callable[[Endpoint], None] | None = None
    notice: Callable[[str], None] | None = None
    reconnect: Callable[[Reconnect], None] | None = None
    restart: Callable[[Restart], None] | None = None
    status: Callable[[LiveStatus], None] | None = None


def _handle(item, tally: _Tally, calls: LiveCallbacks) -> None:
    """One item from the engine thread: counted, then handed to its callback."""
    if isinstance(item, LiveToken):
        calls.token(item.event, item.stream)
        emission_ms, after_ms = tally.token(item, time.perf_counter())  # after drawing: our own cost counts
        if calls.latency is not None:
            calls.latency(item, emission_ms, after_ms)
        return
    if isinstance(item, AudioIn):
        tally.heard += len(item.samples)
        tally.level_db, tally.backlog = item.level_db, item.backlog_blocks
        call = calls.audio
    elif isinstance(item, Endpoint):
        tally.endpoints += 1
        call = calls.endpoint
    elif isinstance(item, Reconnect):
        tally.reconnects += 1
        call = calls.reconnect
    elif isinstance(item, Restart):
        tally.restarts += 1
        call = calls.restart
    elif isinstance(item, Notice):
        tally.notice = item = item.text
        call = calls.notice
    else:
        return
    if call is not None:
        call(item)


def run_live(engine, source, *, on_token: Callable[[TokenEvent, str], None], stop: threading.Event,
             quit_now: threading.Event | None = None, options: LiveOptions | None = None,
             on_audio: Callable[[AudioIn], None] | None = None,
             on_latency: Callable[[LiveToken, float | None, float | None], None] | None = None,
             on_endpoint: Callable[[Endpoint], None] | None = None,
             on_notice: Callable[[str], None] | None = None,
             on_reconnect: Callable[[Reconnect], None] | None = None,
             on_restart: Callable[[Restart], None] | None = None,
             on_status: Callable[[LiveStatus], None] | None = None,
             final_engine=None) -> LiveResult:
    """Capture (``source``, checked, not started) -> engine thread -> this thread.

    ``on_token(event, stream)`` draws a token; right after it returns, the emission latency (now - when the
    token's audio was captured) is recorded and passed to ``on_latency``, so the figure includes
    our own drawing. ``final_engine``: two-pass, a second Realtime stream at a longer delay
    (tokens come with ``stream`` "provisional" / "final"). ``on_status`` gets a fresh ``LiveStatus``
    about every 100 ms. Setting ``stop`` ends capture; everything captured is still transcribed
    and flushed before this returns. Setting ``quit_now`` ends it at once: KeyboardInterrupt from this
    loop within a poll interval (50 ms).
    """
    calls = LiveCallbacks(token=on_token, latency=on_latency, audio=on_audio, endpoint=on_endpoint,
                          notice=on_notice, reconnect=on_reconnect, restart=on_restart, status=on_status)
    worker = LiveWorker(engine, source, stop, options, final_engine=final_engine)
    tally = _Tally()
    source.start()
    next_status = time.perf_counter()
    with Runner(worker.run, maxsize=LIVE_QUEUE_SIZE, join_s=10.0) as runner:
        try:
            for item in runner.items():
                if quit_now is not None and quit_now.is_set():
                    raise KeyboardInterrupt
                _handle(item, tally, calls)
                if source.error and not stop.is_set():
                    stop.set()  # the device is gone: finish with what was captured
                if calls.status is not None and time.perf_counter() >= next_status:
                    calls.status(tally.status(source))
                    next_status = time.perf_counter() + STATUS_EVERY_S
        finally:
            stop.set()
            source.stop()
    return LiveResult(events=tally.events, audio_s=seconds(tally.heard), emission_latency_ms=tally.latency,
                      emit_after_ready_ms=tally.after_ready, step_ms=list(tally.steps),
                      dropped_blocks=source.dropped_blocks, flushes=worker.flushes, error=source.error,
                      capture_time=worker.clock.at, input_overflows=source.input_overflows,
                      endpoints=tally.endpoints, notice=tally.notice, reconnects=tally.reconnects,
                      restarts=tally.restarts)
