"""Producer/consumer plumbing: the engine runs in its own thread, the main thread draws.

The worker puts each TokenEvent on a bounded queue the moment the engine yields it; the main
thread takes them off (every ``get`` has a timeout, so Ctrl-C is seen promptly) and hands them to
the renderer. A worker's exception travels through the queue and is re-raised in the main thread:
no thread dies silently. Ctrl-C sets the stop event, the worker ends after its current step, and
what was produced so far is returned, marked incomplete.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from voxcli.events import TokenEvent, Transcript, TranscriptMetrics

QUEUE_SIZE = 256
POLL_S = 0.05


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
    """Transcribe decoded audio with the engine in its own thread; time it as DESIGN.md defines:
    ``ttft_ms`` from handing the audio to the warm engine to the first non-special token id,
    ``total_ms`` to the last token."""
    events, t_start, complete = consume(lambda: engine.transcribe(audio, language=language), on_event,
                                        stop=stop)
    metrics = TranscriptMetrics(audio_s=len(audio) / 16000, n_tokens=len(events))
    first = next((e for e in events if not e.special), None)
    if first is not None:
        metrics.ttft_ms = (first.t_emitted - t_start) * 1000.0
    if events:
        metrics.total_ms = (events[-1].t_emitted - t_start) * 1000.0
    return Transcript(source=source, model=engine.info.model, events=events, metrics=metrics,
                      complete=complete)
