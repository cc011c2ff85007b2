"""The static step's two functions, compiled or eager, and what is known of their compiling:
the shapes called so far, the time each first call took, why compiling failed (if it did) and
the graphs dynamo and CUDA made (:class:`voxcli.engine.graphs.GraphWatch`). Owned by
:class:`voxcli.engine.static.StaticModel`."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import traceback
from collections import Counter

from voxcli.engine.forward import decode_rows, prefill
from voxcli.engine.graphs import GraphWatch

log = logging.getLogger(__name__)
_COMPILED = [0]  # compiled models made in this process (their graphs stay in dynamo's cache)
# Calls of each compiled function, per shape, at warm-up. In torch 2.13 the first call of a
# CUDA-graphed function only warms it up and a later one records the graph; the third replays it,
# so a session never records (nor a session's first token waits for a recording).
WARM_CALLS = 3


def _torch():
    import torch

    return torch


def check_compilable() -> None:
    """Refuse, in one line, a torch that lacks what the compiled step relies on."""
    import inspect

    from voxcli.errors import ModelError

    torch = _torch()
    mark = getattr(getattr(torch, "_dynamo", None), "mark_static_address", None)
    if mark is None or "guard" not in inspect.signature(mark).parameters or not hasattr(torch, "compiler") \
            or not hasattr(torch.compiler, "set_stance"):
        raise ModelError(f"the compiled Realtime step needs torch 2.6 or later (this is {torch.__version__}); "
                         "upgrade torch, or use model.compile=off")


class Compilation:
    """The prefill and step: ``torch.compile``d (CUDA graphs with ``graphs``) or eager, and what is
    counted of them. ``compiled`` turns False for good if compiling fails (:meth:`fall_back`)."""

    def __init__(self, model, compile: bool, graphs: bool) -> None:
        self.model = model  # the StaticModel whose rows and lock the forwards use
        self.prefill, self.step = prefill, decode_rows
        self.compiled = compile
        if compile:
            check_compilable()
            torch = _torch()
            mode = "reduce-overhead" if graphs else None  # CUDA graphs on a GPU
            self.prefill = torch.compile(prefill, fullgraph=True, dynamic=False, mode=mode)
            self.step = torch.compile(decode_rows, fullgraph=True, dynamic=False, mode=mode)
            _COMPILED[0] += 1
        self.calls: Counter = Counter()  # calls of each compiled function, per shape
        self.compile_s: dict[str, float] = {}  # first call of each compiled function, per shape
        self.fallback: str | None = None  # why compiling failed, if it did (the eager step runs)
        self.fallback_traceback: str | None = None
        self.graphs = GraphWatch()
        self.all_steps = False  # every step graph exists (set by note)

    def warm(self, key) -> bool:
        """Is ``key``'s shape past warm-up (or is nothing compiled)? A failure there is no compile's."""
        return not self.compiled or self.calls[key] >= WARM_CALLS

    def note(self, key, t0: float) -> None:
        """A call of ``key`` that began at ``t0`` is done."""
        if not self.compiled:
            return
        self.calls[key] += 1
        name = " ".join(map(str, key))
        if name not in self.compile_s:
            self.compile_s[name] = time.perf_counter() - t0
            m = self.model
            self.all_steps = all(("step", s, n) in self.calls for s in m.spans() for n in m.buckets())

    def forget(self) -> None:
        """The batch changed shape: every graph is made again at the next warm-up."""
        self.calls.clear()
        self.compile_s.clear()
        self.all_steps = False

    def guards(self):
        """Once every graph exists, dynamo's guard checks are ~90 us a call (measured on the tiny
        model: its whole compiled step is ~700 us); with one compiled model in the process, the
        only things that tell its step graphs apart are ``span`` and the bucket, so only those
        guards are checked (for the step only: a prefill at a new delay must still compile). Once a
        process has compiled a second model (graphs of both share one code object, and a constant
        such as a window size may tell them apart), every guard is checked."""
        if self.compiled and self.all_steps and _COMPILED[0] == 1:
            return _torch().compiler.set_stance("default", skip_guard_eval_unsafe=True)
        return contextlib.nullcontext()

    def fall_back(self, exc: BaseException) -> None:
        """Compiling, recording a graph or a first compiled call failed: run the eager static step
        from now on (the same operations, so the same tokens), and say why in ``fallback``."""
        from voxcli.errors import first_line

        self.compiled = False
        self.prefill, self.step = prefill, decode_rows
        self.fallback = f"{type(exc).__name__}: {first_line(exc)}"
        self.fallback_traceback = "".join(traceback.format_exception(exc))
        log.info("torch.compile failed; the static step runs eagerly", exc_info=exc)

    def precompile(self, num_delay_tokens: int, *, spans: list[int] | None = None, prompt_ids=None,
                   mel=None) -> None:
        """Compile now, at warm-up, so that no session meets a compile or a graph recording: the
        prefill at this delay (given ``prompt_ids`` and ``mel``) and the step for every span (or
        those given), for every bucket, each called WARM_CALLS times, in the thread that will step
        them. The batch's rows are reset afterwards. If compiling or recording fails, the model
        falls back to the eager step (:meth:`fall_back`); the counts of what was made are the
        baseline :attr:`graphs` compares later forwards with."""
        if self.compiled:
            # The lock is taken in the thread that warms (the stepper's with CUDA graphs): held here
            # while waiting for that thread, it would deadlock with a forward queued there first.
            try:
                self.model.call(self._warm, num_delay_tokens, spans, prompt_ids, mel)
            except Exception as exc:  # noqa: BLE001 - any failure to compile: the eager step computes the same
                self.fall_back(exc)
        if self.compiled:
            self.graphs.settle()

    def _warm(self, num_delay_tokens: int, spans, prompt_ids, mel) -> None:
        torch = _torch()
        m = self.model
        raise_recompile_limit()
        with m.lock, torch.inference_mode():
            b = m.batch
            if b.in_use():
                return  # a session is running in it: its graphs exist already
            for state in b.states:
                state.reset(m, num_delay_tokens)
            for n in m.buckets():
                b.prefill_rows[:n].copy_(torch.arange(n))
                b.active.copy_(torch.arange(b.rows) < n)
                for _ in range(WARM_CALLS) if prompt_ids is not None else ():
                    t0 = time.perf_counter()
                    self.prefill(m, b, prompt_ids.expand(n, -1), mel.expand(n, -1, -1), n)
                    self.note(("prefill", prompt_ids.shape[-1], n), t0)
                for span in spans or m.spans():
                    for _ in range(WARM_CALLS):
                        t0 = time.perf_counter()
                        self.step(m, b, span, n)
                        self.note(("step", span, n), t0)
            for state in b.states:
                state.reset(m, num_delay_tokens)

    def _guarded_step(self, b, span: int, n: int):
        with self.guards():
            return self.step(self.model, b, span, n)

    def forward(self, key, *args):
        """A forward of the batch ``args[0]`` (``key``: ("prefill", ...) or ("step", span, n)). While
        ``key``'s shape is not yet past warm-up (compiled and its graph recorded), a failure there
        falls back to the eager step, which runs it again (a compile or a capture fails before the
        call computes anything)."""
        def call():
            if key[0] == "prefill":
                return self.model.call(self.prefill, self.model, *args)
            return self.model.call(self._guarded_step, *args)

        if self.warm(key):
            out = call()
        else:
            try:
                out = call()
            except Exception as exc:  # noqa: BLE001 - see fall_back
                self.fall_back(exc)
                out = call()
        if self.compiled:
            self.graphs.check()
        return out


_LIMIT_RAISED = threading.local()


def raise_recompile_limit() -> None:
    """One graph per (function, shape, span, bucket): more than dynamo's default of 8 per function.
    Dynamo's settings are per thread (torch 2.13: set in one thread, another still reads 8), and a
    compiled call may be made in any thread that runs a forward: done once in each."""
    if getattr(_LIMIT_RAISED, "done", False):
        return
    import torch

    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):  # the name since torch 2.7, and before
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), 256))
    _LIMIT_RAISED.done = True
