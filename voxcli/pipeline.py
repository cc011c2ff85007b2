"""Producer/consumer plumbing: the engine runs in its own thread, the main thread draws.

The worker puts each TokenEvent on a bounded queue the moment the engine yields it; the main
thread takes them off (every ``get`` has a timeout, so Ctrl-C is seen promptly) and hands them to
the renderer. A worker's exception travels through the queue and is re-raised in the main thread:
no thread dies silently. Ctrl-C sets the stop event, the worker ends after its current step, and
what was produced so far is returned, marked incomplete.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from voxcli.capture import level_db
from voxcli.errors import ServerError
from voxcli.events import TokenEvent, Transcript, TranscriptMetrics, clamp_span

QUEUE_SIZE = 256
POLL_S = 0.05
LIVE_STEPS_KEEP = 65536  # step times a live session keeps for its figures (about 87 minutes)


@dataclass(frozen=True)
class _Done:
    t_start: float


@dataclass(frozen=True)
class _Failed:
    error: BaseException


class EngineThread(threading.Thread):
    """Runs ``produce()`` (an iterator of events) and forwards every item to a bounded queue."""

    def __init__(self, produce: Callable[[], Iterator[TokenEvent]], out: queue.Queue,
                 stop: threading.Event) -> None:
        super().__init__(name="voxcli-engine", daemon=True)
        self._produce = produce
        self._out = out
        self._stop_event = stop
        self.t_start: float | None = None

    def run(self) -> None:
        try:
            self.t_start = time.perf_counter()
            for item in self._produce():
                if not self._put(item):
                    break
                if self._stop_event.is_set():
                    break
            self._put(_Done(self.t_start), force=True)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            self._put(_Failed(exc), force=True)

    def _put(self, item, force: bool = False) -> bool:
        # The queue is bounded: if the consumer stalls, the engine waits rather than piling up
        # memory; a stop request (or the final sentinel) must still get through.
        while True:
            try:
                self._out.put(item, timeout=POLL_S)
                return True
            except queue.Full:
                if self._stop_event.is_set() and not force:
                    return False


def consume(produce: Callable[[], Iterator[TokenEvent]], on_event: Callable[[TokenEvent], None],
            *, stop: threading.Event | None = None) -> tuple[list[TokenEvent], float, bool]:
    """Run ``produce`` in an engine thread; call ``on_event`` in this thread for every event.

    Returns (events, t_start, complete). ``complete`` is False after Ctrl-C.
    """
    stop = stop or threading.Event()
    q: queue.Queue = queue.Queue(maxsize=QUEUE_SIZE)
    worker = EngineThread(produce, q, stop)
    events: list[TokenEvent] = []
    complete = True
    worker.start()
    try:
        while True:
            try:
                item = q.get(timeout=POLL_S)
            except queue.Empty:
                if not worker.is_alive() and q.empty():
                    raise RuntimeError("engine thread ended without a result") from None
                continue
            if isinstance(item, _Done):
                break
            if isinstance(item, _Failed):
                raise item.error
            events.append(item)
            on_event(item)
    except KeyboardInterrupt:
        complete = False
        stop.set()
        _drain_until_done(q, worker)
    finally:
        stop.set()
        worker.join(timeout=5.0)
    return events, worker.t_start or time.perf_counter(), complete


def _drain_until_done(q: queue.Queue, worker: EngineThread) -> None:
    """After Ctrl-C: let the worker finish its step and exit; nothing more is drawn."""
    deadline = time.monotonic() + 10.0
    while worker.is_alive() and time.monotonic() < deadline:
        try:
            q.get(timeout=POLL_S)
        except queue.Empty:
            pass


def transcribe_audio(engine, audio: np.ndarray, *, source: str, on_event: Callable[[TokenEvent], None],
                     language: str | None = None, stop: threading.Event | None = None) -> Transcript:
    """Transcribe decoded audio with the engine in its own thread; time it as docs/design.md defines:
    ``ttft_ms`` from handing the audio to the warm engine to the first non-special token id,
    ``total_ms`` to the last token."""
    events, t_start, complete = consume(lambda: engine.transcribe(audio, language=language), on_event,
                                        stop=stop)
    metrics = TranscriptMetrics(audio_s=len(audio) / 16000, n_tokens=len(events),
                                step_ms=[e.step_ms for e in events if e.step_ms is not None])
    first = next((e for e in events if not e.special), None)
    if first is not None:
        metrics.ttft_ms = (first.t_emitted - t_start) * 1000.0
    if events:
        metrics.total_ms = (events[-1].t_emitted - t_start) * 1000.0
    return Transcript(source=source, model=engine.info.model, events=events, metrics=metrics,
                      complete=complete)


# ------------------------------------------------------------------------------------------ live


@dataclass(frozen=True)
class LiveToken:
    """A token on its way to the screen, with the two moments its latency is measured from.

    ``t_ready``: when the audio block that let the model take this step was captured (the chunk
    became available). ``t_audio``: when the last sample of the audio the token covers was
    captured. Emission latency = time drawn - ``t_audio``. Both are ``None`` when unknown: a
    remote server says neither which audio a delta covers nor which chunk produced it.
    """

    event: TokenEvent
    t_ready: float | None
    t_audio: float | None
    audio_available_s: float  # audio handed to the engine when the token came out
    flushed: bool = False  # made from the right padding pushed at end of speech
    utterance: int = 0  # which stretch of speech (0-based; a new one after each endpoint)


@dataclass(frozen=True)
class Endpoint:
    """An end of speech, as positions in the session's audio: where the speech ended, and how
    much audio had been heard when the endpointer knew it."""

    speech_end_s: float
    decided_s: float
    utterance: int

    def to_dict(self) -> dict:
        return {"type": "endpoint", "speech_end_s": round(self.speech_end_s, 4),
                "decided_s": round(self.decided_s, 4), "utterance": self.utterance}


@dataclass(frozen=True)
class AudioIn:
    """16 kHz samples exactly as handed to the engine (for the WAV), with their level."""

    samples: np.ndarray
    level_db: float
    backlog_blocks: int


@dataclass
class LiveOptions:
    flush_after_ms: int = 320  # this much non-speech ends speech: flush / cut there (0: never)
    vad: str = "silero"  # the endpointer's detector: silero, or the energy fallback
    silence_db: float = -45.0  # energy only: a window below this level is silence
    max_utterance_s: float = 30.0  # offline models: longest utterance transcribed at once
    preroll_s: float = 0.2  # offline models: audio kept before a speech start, so onsets are whole
    tail_s: float = 0.1  # offline models: audio kept after a speech end


class _Tape:
    """The recent 16 kHz audio, addressable by absolute sample position (offline utterances).
    Whole blocks are dropped from the front as they fall out of use; nothing is copied per block."""

    def __init__(self) -> None:
        self.start = 0  # absolute position of the first sample kept
        self.end = 0
        self._blocks: deque[np.ndarray] = deque()

    def append(self, x: np.ndarray) -> None:
        self._blocks.append(x)
        self.end += len(x)

    def slice(self, a: int, b: int) -> np.ndarray:
        whole = np.concatenate(self._blocks) if self._blocks else np.zeros(0, np.float32)
        a, b = (min(max(v, self.start), self.end) - self.start for v in (a, b))
        return whole[a:b]

    def keep_from(self, a: int) -> None:
        while self._blocks and self.start + len(self._blocks[0]) <= a:
            self.start += len(self._blocks.popleft())


class _CaptureClock:
    """Maps a 16 kHz sample position to the moment it was captured (for latency figures).

    Only recent blocks are remembered (bounded for sessions of any length); older positions map
    to the oldest time kept.
    """

    def __init__(self, keep_blocks: int = 30000) -> None:
        self._ends: deque[int] = deque(maxlen=keep_blocks)
        self._times: deque[float] = deque(maxlen=keep_blocks)

    def add(self, end_sample: int, t_captured: float) -> None:
        self._ends.append(end_sample)
        self._times.append(t_captured)

    def at(self, sample: int) -> float:
        import bisect

        if not self._times:
            return time.perf_counter()
        i = bisect.bisect_left(self._ends, sample)
        return self._times[min(i, len(self._times) - 1)]


class LiveEngineWorker(threading.Thread):
    """The consumer of captured audio: resample, feed the engine, forward tokens and audio.

    Realtime model: one session step per 80 ms chunk; when the endpointer says speech has ended,
    the session is finished at once (the right padding is pushed, so the last words come out
    without waiting out the delay) and a new one starts at the same sample, so no audio is skipped.
    Offline models: the endpointer cuts speech into utterances, each transcribed when it ends.
    On stop, what was captured is drained and flushed before the worker says it is done.
    """

    def __init__(self, engine, source, out: queue.Queue, stop: threading.Event,
                 options: LiveOptions | None = None) -> None:
        super().__init__(name="voxcli-engine", daemon=True)
        self.engine = engine
        self.source = source
        self.out = out
        self.stop_event = stop
        self.options = options or LiveOptions()
        self.heard = 0  # 16 kHz samples handed to the engine
        self.clock = _CaptureClock()
        self.n_tokens = 0
        self.flushes = 0
        self.utterance = 0
        self.endpoints = 0
        self._draining: list[tuple] = []  # (session, offset, utterance) finishing on a server
        opts = self.options
        self.endpointer = None
        if opts.flush_after_ms:
            from voxcli.vad import EndpointOptions, Endpointer

            self.endpointer = Endpointer(EndpointOptions(detector=opts.vad, min_silence_ms=opts.flush_after_ms,
                                                         silence_db=opts.silence_db))
        self.reconnects = 0
        self.notice: str | None = None  # the latest problem worth showing (e.g. a reconnect)
        self.step_ms: deque[float] = deque(maxlen=LIVE_STEPS_KEEP)

    def run(self) -> None:
        try:
            self._run()
            self._put(_Done(0.0))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            self._put(_Failed(exc))

    def _put(self, item) -> None:
        # The out queue is large; if the main thread stalls the engine waits, and capture (which
        # never waits) counts what it has to drop.
        self.out.put(item)

    def _blocks(self):
        """Captured blocks, resampled to 16 kHz, until the source ends or we are told to stop.

        Yields ``(None, None)`` when no block came within the poll interval, so a remote engine's
        deltas, which arrive on their own schedule, are still drawn between blocks.
        """
        import soxr

        rate = self.source.sample_rate
        stream = soxr.ResampleStream(rate, 16000, 1, dtype="float32") if rate != 16000 else None
        while True:
            if self.stop_event.is_set():
                self.source.stop()  # stop capturing; what is already queued is still heard
            try:
                t_cap, block = self.source.blocks.get(timeout=POLL_S)
            except queue.Empty:
                if self.source.finished.is_set() and self.source.blocks.empty():
                    break
                yield None, None
                continue
            x = stream.resample_chunk(block) if stream is not None else block
            if len(x):
                yield t_cap, x
        if stream is not None:
            tail = stream.resample_chunk(np.zeros(0, np.float32), last=True)
            if len(tail):
                yield time.perf_counter(), tail

    def _hear(self, t_cap: float, x: np.ndarray) -> list:
        """Account for a block and hand it to the WAV; the endpointer's events for it."""
        self.heard += len(x)
        self.clock.add(self.heard, t_cap)
        self._put(AudioIn(x, level_db(x), self.source.blocks.qsize()))
        return self.endpointer.feed(x) if self.endpointer is not None else []

    def _endpoint(self, event) -> None:
        self._put(Endpoint(event.sample / 16000, event.decided_sample / 16000, self.utterance))
        self.endpoints += 1
        self.utterance += 1

    def _emit(self, event: TokenEvent, offset: int, t_ready: float, flushed: bool = False,
              utterance: int | None = None) -> None:
        shift = offset / 16000
        start = None if event.audio_start_s is None else event.audio_start_s + shift
        end = None if event.audio_end_s is None else event.audio_end_s + shift
        event = dataclasses.replace(event, index=self.n_tokens, audio_start_s=start, audio_end_s=end)
        self.n_tokens += 1
        if event.step_ms is not None:
            self.step_ms.append(event.step_ms)
        t_audio = None
        if end is not None:
            t_audio = self.clock.at(min(self.heard, int(round(end * 16000))))
        if self.engine.remote:
            t_ready = None
        self._put(LiveToken(event, t_ready, t_audio, self.heard / 16000, flushed,
                            self.utterance if utterance is None else utterance))

    def _run(self) -> None:
        if self.engine.kind == "realtime":
            self._run_realtime()
        else:
            self._run_offline()

    def _run_realtime(self) -> None:
        session = self.engine.session()
        offset = 0
        blocks = self._blocks()
        for t_cap, x in blocks:
            try:
                self._drain()
                if x is None:
                    for event in session.steps():  # a remote engine's deltas between blocks
                        self._emit(event, offset, event.t_emitted)
                    continue
                vad_events = self._hear(t_cap, x)
                session.push(x)
                for event in session.steps():
                    self._emit(event, offset, t_cap)
                for vad in vad_events:
                    if vad.kind == "end":
                        if session.finish_waits:
                            # A server finishes on its own time: capture must not wait for it.
                            session.commit()
                            self._draining.append((session, offset, self.utterance))
                        else:
                            self._finish(session, offset)
                        self._endpoint(vad)
                        session, offset = self.engine.session(), self.heard
            except ServerError as exc:
                session, offset = self._reconnect_once(exc, blocks), self.heard
        try:
            self._finish(session, offset)
        except ServerError as exc:
            self.notice = str(exc)
            raise
        while self._draining:  # the input is over: now waiting is fine
            self._drain()
            time.sleep(POLL_S if self._draining else 0)
        for vad in self.endpointer.flush() if self.endpointer is not None else []:
            self._endpoint(vad)  # the input ended inside speech: that is its end

    def _drain(self) -> None:
        """Deltas of streams that ended at a pause and are still finishing on a server."""
        for item in list(self._draining):
            session, offset, utterance = item
            try:
                for event in session.pending():
                    self._emit(event, offset, event.t_emitted, flushed=True, utterance=utterance)
            except ServerError as exc:
                self.notice = f"{exc} (at the end of utterance {utterance})"
            if session.finished:
                self._draining.remove(item)
                self.flushes += 1

    def _reconnect_once(self, exc: ServerError, blocks):
        """A remote engine failed mid-session: try one new session at the current sample. If that
        is not possible, stop capture, hand every block already captured to the WAV, and fail."""
        if self.engine.remote and self.reconnects == 0:
            self.reconnects += 1
            self.notice = f"{exc}; reconnected"
            try:
                return self.engine.session()
            except ServerError as again:
                exc = again
        self.notice = str(exc)
        self.stop_event.set()
        for t_cap, x in blocks:
            if x is not None:
                self._hear(t_cap, x)
        raise exc

    def _finish(self, session, offset: int) -> None:
        # Padding chunks exist the moment the flush starts; each is ready once the step before it
        # is done, so that is what a flushed token's latency counts from.
        t_ready = time.perf_counter()
        end_s = session.pushed_samples / 16000
        for event in session.finish():
            event = clamp_span(event, end_s)
            self._emit(event, offset, t_ready, flushed=True)
            t_ready = event.t_emitted
        self.flushes += 1

    def _run_offline(self) -> None:
        opts = self.options
        tape = _Tape()
        preroll, tail = int(opts.preroll_s * 16000), int(opts.tail_s * 16000)
        longest = int(opts.max_utterance_s * 16000)
        start = 0 if self.endpointer is None else None  # where the open utterance begins
        for t_cap, x in self._blocks():
            if x is None:
                continue
            vad_events = self._hear(t_cap, x)
            tape.append(x)
            for vad in vad_events:
                if vad.kind == "start":
                    start = max(vad.sample - preroll, tape.start)
                elif start is not None:
                    self._transcribe_utterance(tape.slice(start, vad.sample + tail), start)
                    self._endpoint(vad)
                    start = None
            if start is not None and self.heard - start >= longest:
                self._transcribe_utterance(tape.slice(start, self.heard), start)  # too long to wait
                start = self.heard
            tape.keep_from(start if start is not None else self.heard - preroll)
        ends = self.endpointer.flush() if self.endpointer is not None else []
        if start is not None and self.heard > start:
            self._transcribe_utterance(tape.slice(start, self.heard), start)
        for vad in ends:
            self._endpoint(vad)

    def _transcribe_utterance(self, audio: np.ndarray, start: int) -> None:
        t_ready = time.perf_counter()
        for event in self.engine.transcribe(audio, segments=[(0, len(audio))]):
            self._emit(event, start, t_ready)
        self.flushes += 1


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
    capture_time: Callable[[int], float] | None = None  # 16 kHz sample -> when it was captured


def run_live(engine, source, *, on_token: Callable[[TokenEvent], None],
             on_audio: Callable[[AudioIn], None], on_tick: Callable[[LiveEngineWorker], None],
             stop: threading.Event, options: LiveOptions | None = None,
             on_latency: Callable[[LiveToken, float | None, float | None], None] | None = None,
             on_endpoint: Callable[[Endpoint], None] | None = None) -> LiveResult:
    """Capture (``source``, already configured) -> engine thread -> this thread.

    ``on_token`` draws a token; right after it returns, the emission latency (now - when the
    token's audio was captured) is recorded, so the figure includes our own drawing. ``on_tick``
    gets the engine worker about every 100 ms, for status updates. Setting ``stop`` ends capture; everything
    captured is still transcribed and flushed before this returns.
    """
    out: queue.Queue = queue.Queue(maxsize=8192)
    worker = LiveEngineWorker(engine, source, out, stop, options)
    events: list[TokenEvent] = []
    latency: list[float] = []
    after_ready: list[float] = []
    source.start()
    worker.start()
    next_tick = time.perf_counter()
    try:
        while True:
            try:
                item = out.get(timeout=POLL_S)
            except queue.Empty:
                item = None
                if not worker.is_alive() and out.empty():
                    raise RuntimeError("engine thread ended without a result")
            if isinstance(item, LiveToken):
                on_token(item.event)
                t_drawn = time.perf_counter()
                events.append(item.event)
                emission_ms = after_ms = None
                if item.t_audio is not None:
                    emission_ms = (t_drawn - item.t_audio) * 1000.0
                    latency.append(emission_ms)
                if item.t_ready is not None:
                    after_ms = (item.event.t_emitted - item.t_ready) * 1000.0
                    after_ready.append(after_ms)
                if on_latency is not None:
                    on_latency(item, emission_ms, after_ms)
            elif isinstance(item, AudioIn):
                on_audio(item)
            elif isinstance(item, Endpoint):
                if on_endpoint is not None:
                    on_endpoint(item)
            elif isinstance(item, _Done):
                break
            elif isinstance(item, _Failed):
                raise item.error
            if source.error and not stop.is_set():
                stop.set()  # the device is gone: finish with what was captured
            if time.perf_counter() >= next_tick:
                on_tick(worker)
                next_tick = time.perf_counter() + 0.1
    finally:
        stop.set()
        source.stop()
        worker.join(timeout=10.0)
    return LiveResult(events=events, audio_s=worker.heard / 16000, emission_latency_ms=latency,
                      emit_after_ready_ms=after_ready, step_ms=list(worker.step_ms),
                      dropped_blocks=source.dropped_blocks, flushes=worker.flushes, error=source.error,
                      capture_time=worker.clock.at, input_overflows=source.input_overflows,
                      endpoints=worker.endpoints,
                      notice=worker.notice)
