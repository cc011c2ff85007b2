"""How forwards are batched: the work of one row (:class:`Job`), and who runs a forward when
several threads hand work over at once (:class:`Stepper`: one thread of its own, where CUDA graphs
live; :class:`Leader`: whoever takes the lock next). Both the static step and the hf reference
step take jobs through ``run(jobs)``."""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass


def _torch():
    import torch

    return torch


@dataclass(eq=False)
class Job:
    """One row's work in a forward: a prefill (``prompt_ids`` (1, P) and its mel (1, bins, 8P)) or
    a step (``mel`` (1, bins, 8)). The step's ``run(jobs)`` fills in the rest."""

    state: object  # the row's state: a StaticState, or the hf step's HfState
    mel: object
    prompt_ids: object = None
    keep_logits: bool = False  # copy this row's logits to the host (after the clock)
    picked: object = None  # voxcli.engine.pick.Picked: the id, the id without the bias, the alternatives
    logits: object = None
    step_ms: float = 0.0  # the forward's time, to its token ids on the host
    batch: int | None = 0  # the rows that forward stepped (or started); None: a step that does not batch
    t_done: float = 0.0  # when its token id was on the host

    @property
    def token_id(self) -> int:
        return self.picked.token_id


class ForwardClock:
    """Time spent in one step's forwards, as counters (a server reads them around each of its
    cycles: what is not forward is host work). Written by whoever runs the forward; read anywhere."""

    def __init__(self) -> None:
        self.seconds = 0.0  # in ``run(jobs)``, token ids back on the host
        self.rows = 0  # jobs those forwards made: one token each

    def add(self, seconds: float, rows: int) -> None:
        self.seconds += seconds
        self.rows += rows


class Stepper:
    """One long-lived thread that makes every forward when the step is CUDA-graphed (CUDA graph
    trees are kept per thread, torch/_inductor/cudagraph_trees.py, and every file and session runs
    in an engine thread of its own: graphs recorded at warm-up in one thread would be recorded
    again in each new one).

    ``run(jobs)`` hands work over and waits; everything handed over while the last forward ran goes
    into the next one together. A hand-off costs tens of microseconds."""

    def __init__(self, run_jobs) -> None:
        self._run_jobs = run_jobs
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._loop, name="voxcli-stepper", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        torch = _torch()
        while True:
            items = [self._queue.get()]
            while True:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            with torch.inference_mode():  # grad modes are per thread
                for item in items:
                    if item.jobs is None:
                        settle([item], item.fn, *item.args)
                runs = [item for item in items if item.jobs is not None]
                if runs:
                    settle(runs, self._run_jobs, [job for item in runs for job in item.jobs])

    def _wait(self, item):
        self._queue.put(item)
        item.event.wait()
        ok, value = item.result
        if not ok:
            raise value
        return value

    def __call__(self, fn, *args):
        if threading.current_thread() is self.thread:
            return fn(*args)
        return self._wait(Item(fn, args, None))

    def run(self, jobs: list[Job]) -> list[Job]:
        if threading.current_thread() is self.thread:
            return self._run_jobs(jobs)
        self._wait(Item(None, (), jobs))
        return jobs


class Leader:
    """Batching without a thread of its own: a caller queues its jobs, takes the lock, and runs
    everything queued by then (others' too), unless the last holder of the lock already ran its
    jobs. A lone caller (two-pass, a file) runs its own jobs at once, with no hand-off."""

    def __init__(self, run_jobs, lock) -> None:
        self._run_jobs, self._lock = run_jobs, lock
        self._queued: list[Item] = []
        self._queued_lock = threading.Lock()

    def run(self, jobs: list[Job]) -> list[Job]:
        ticket = Item(None, (), jobs)
        with self._queued_lock:
            self._queued.append(ticket)
        with self._lock:
            if not ticket.event.is_set():
                with self._queued_lock:
                    batch, self._queued = self._queued, []
                settle(batch, self._run_jobs, [job for item in batch for job in item.jobs])
        ok, value = ticket.result
        if not ok:
            raise value
        return jobs


class Item:
    def __init__(self, fn, args, jobs) -> None:
        self.fn, self.args, self.jobs = fn, args, jobs
        self.event = threading.Event()
        self.result = None


def settle(items: list[Item], fn, *args) -> None:
    """Run ``fn`` once for all ``items`` and hand each its result (or exception), waking its caller."""
    try:
        result = (True, fn(*args))
    except BaseException as exc:  # noqa: BLE001 - raised again in each caller's thread
        result = (False, exc)
    for item in items:
        item.result = result
        item.event.set()


def inline(fn, *args):
    return fn(*args)
