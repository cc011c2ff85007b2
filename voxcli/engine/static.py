"""The static Realtime step: preallocated ring buffers, no allocation or shape change per step,
many streams in one forward, compilable (``torch.compile``; CUDA graphs on a GPU).

transformers' eager forward (the reference, ``model.step: hf``) grows and slices its sliding-window
caches with ``cat`` on every step and rebuilds the attention masks each time: hundreds of small
ops on a tiny model, ~3,600 on the full-size one (docs/design.md, "The Realtime step"). Here the
same weights run through :mod:`voxcli.engine.forward`, over the rows of a
:class:`voxcli.engine.rows.StaticRows`:

- Every stream is a row of a batch, allocated once and reset in place. :meth:`StaticModel.run`
  takes the work of any number of rows (:class:`Job`: a prefill or a step) and does it in as few
  forwards as it can: every step in one forward per batch (rows ``[:n]``, ``n`` the smallest
  bucket that holds them: 1, 2, 4, 8, ...; a row with nothing to do computes along, unkept), and
  the prefills of rows that start together with the same prompt in one. Two-pass steps both of
  its streams this way; sessions in threads of their own (``bench --concurrency``) are batched
  as they come: whoever takes the lock next runs everything handed over while the last forward
  ran (continuous batching, as vLLM does; with CUDA graphs, the stepper thread does).
- One step costs one read of the weights, whatever the rows: on a GPU a Realtime step is bound by
  that read, so more streams cost little more than one.
- Positions stay bounded (:meth:`voxcli.engine.rows.StaticState.advance`,
  :meth:`StaticModel.reanchor_row`): once a row's position reaches twice its window, its
  positions are lowered by whole windows and its cached keys rotated back by the same angle.
  RoPE scores depend only on the difference of positions, so attention is unchanged, and hour 8
  of a session computes with the positions of minute 11 (bench/soak.py).

Thread-safe: every forward and every row's reset runs under one lock (in the stepper thread when
there is one).
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import threading
import time
import traceback
from collections import Counter, deque
from dataclasses import dataclass

import numpy as np

from voxcli.engine.forward import decode_rows, prefill
from voxcli.engine.graphs import GraphWatch
from voxcli.engine.pick import unpack
from voxcli.engine.rows import ENCODER_STEP, Ring, StaticRows, StaticState, bounded

__all__ = ["BUCKETS", "DeviceLogMel", "Job", "StaticModel", "StaticState", "bounded", "check_compilable"]

log = logging.getLogger(__name__)

# A young stream's decoder ring is mostly empty: a step attends over its first 512, 2048, ...
# slots until the ring is full (on tiny models that is most of the step: 140 us for 8192 slots,
# 12 us for 512). Each span is one compiled graph, all compiled at warm-up.
FIRST_SPAN = 512
SPAN_GROWTH = 4
# Batch sizes a forward runs at (rows [:n]); one compiled graph each, up to the model's streams.
BUCKETS = (1, 2, 4, 8, 16, 32, 64)
_COMPILED = [0]  # compiled models made in this process (their graphs stay in dynamo's cache)
# Calls of each compiled function, per shape, at warm-up. In torch 2.13 the first call of a
# CUDA-graphed function only warms it up and a later one records the graph; the third replays it,
# so a session never records (nor a session's first token waits for a recording).
WARM_CALLS = 3
STEP_LOG_KEEP = 4096  # recent forwards kept for bench: (rows stepped, bucket, ms)


def _torch():
    import torch

    return torch


# ------------------------------------------------------------------------------------- log-mel


class DeviceLogMel:
    """The Realtime feature extractor's log-mel, computed on the model's device (transformers'
    copies its result back to the CPU). Same operations as ``_torch_extract_fbank_features``, so
    on the CPU the features are bit-identical; the window and filters are made once."""

    def __init__(self, frontend, device) -> None:
        torch = _torch()
        self.device = torch.device(device)
        self.n_fft = int(frontend.n_fft)
        self.hop = int(frontend.hop_length)
        self.window = torch.hann_window(self.n_fft, device=self.device)
        self.filters_t = torch.from_numpy(np.asarray(frontend.mel_filters)).to(self.device, torch.float32).T
        self.max = frontend.global_log_mel_max

    def __call__(self, samples: np.ndarray, *, center: bool):
        torch = _torch()
        wave = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32)).to(self.device, non_blocking=True)
        stft = torch.stft(wave, self.n_fft, self.hop, window=self.window, return_complex=True, center=center)
        magnitudes = stft[..., :-1].abs() ** 2
        log_spec = torch.clamp(self.filters_t @ magnitudes, min=1e-10).log10()
        top = log_spec.max() if self.max is None else torch.tensor(self.max, device=self.device)
        log_spec = torch.maximum(log_spec, top - 8.0)
        return ((log_spec + 4.0) / 4.0)[None]


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




@dataclass(eq=False)
class Job:
    """One row's work in a forward: a prefill (``prompt_ids`` (1, P) and its mel (1, bins, 8P)) or
    a step (``mel`` (1, bins, 8)). :meth:`StaticModel.run` fills in the rest."""

    state: StaticState
    mel: object
    prompt_ids: object = None
    keep_logits: bool = False  # copy this row's logits to the host (after the clock)
    picked: object = None  # voxcli.engine.pick.Picked: the id, the id without the bias, the alternatives
    logits: object = None
    step_ms: float = 0.0  # the forward's time, to its token ids on the host
    batch: int = 0  # the rows that forward stepped (or started)

    @property
    def token_id(self) -> int:
        return self.picked.token_id


class _Stepper:
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
                        _settle([item], item.fn, *item.args)
                runs = [item for item in items if item.jobs is not None]
                if runs:
                    _settle(runs, self._run_jobs, [job for item in runs for job in item.jobs])

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
        return self._wait(_Item(fn, args, None))

    def run(self, jobs: list[Job]) -> list[Job]:
        if threading.current_thread() is self.thread:
            return self._run_jobs(jobs)
        self._wait(_Item(None, (), jobs))
        return jobs


class _Leader:
    """Batching without a thread of its own: a caller queues its jobs, takes the lock, and runs
    everything queued by then (others' too), unless the last holder of the lock already ran its
    jobs. A lone caller (two-pass, a file) runs its own jobs at once, with no hand-off."""

    def __init__(self, run_jobs, lock) -> None:
        self._run_jobs, self._lock = run_jobs, lock
        self._queued: list[_Item] = []
        self._queued_lock = threading.Lock()

    def run(self, jobs: list[Job]) -> list[Job]:
        ticket = _Item(None, (), jobs)
        with self._queued_lock:
            self._queued.append(ticket)
        with self._lock:
            if not ticket.event.is_set():
                with self._queued_lock:
                    batch, self._queued = self._queued, []
                _settle(batch, self._run_jobs, [job for item in batch for job in item.jobs])
        ok, value = ticket.result
        if not ok:
            raise value
        return jobs


class _Item:
    def __init__(self, fn, args, jobs) -> None:
        self.fn, self.args, self.jobs = fn, args, jobs
        self.event = threading.Event()
        self.result = None


def _settle(items: list[_Item], fn, *args) -> None:
    """Run ``fn`` once for all ``items`` and hand each its result (or exception), waking its caller."""
    try:
        result = (True, fn(*args))
    except BaseException as exc:  # noqa: BLE001 - raised again in each caller's thread
        result = (False, exc)
    for item in items:
        item.result = result
        item.event.set()


_LIMIT_RAISED = threading.local()


def _raise_recompile_limit() -> None:
    """One graph per (function, shape, span, bucket): more than dynamo's default of 8 per function.
    Dynamo's settings are per thread (torch 2.13: set in one thread, another still reads 8), and a
    compiled call may be made in any thread that runs a forward: done once in each."""
    if getattr(_LIMIT_RAISED, "done", False):
        return
    config = _torch()._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):  # the name since torch 2.7, and before
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), 256))
    _LIMIT_RAISED.done = True


def _inline(fn, *args):
    return fn(*args)


# --------------------------------------------------------------------------------------- model


class _Compiled:
    """The shapes a forward runs at (decoder spans, batch buckets) and their compilation, mixed
    into :class:`StaticModel`: every graph made at warm-up, and guards checked only where they
    tell graphs apart."""

    def _make_functions(self, compile: bool, graphs: bool) -> None:
        """The prefill and step: ``torch.compile``d (CUDA graphs with ``graphs``) or eager; what is
        counted of them, and the decoder spans a step runs at."""
        self._prefill, self._step = prefill, decode_rows
        if compile:
            check_compilable()
            torch = _torch()
            mode = "reduce-overhead" if graphs else None  # CUDA graphs on a GPU
            self._prefill = torch.compile(prefill, fullgraph=True, dynamic=False, mode=mode)
            self._step = torch.compile(decode_rows, fullgraph=True, dynamic=False, mode=mode)
            _COMPILED[0] += 1
        self._calls: Counter = Counter()  # calls of each compiled function, per shape
        self.fallback: str | None = None  # why compiling failed, if it did (the eager step runs)
        self.fallback_traceback: str | None = None
        self.graphs = GraphWatch()
        spans, span = [], FIRST_SPAN
        while span < self.dec_window:
            spans.append(span)
            span *= SPAN_GROWTH
        self._spans = (*spans, self.dec_window)
        self._all_steps_compiled = False  # every step graph exists (set by _note_compile)

    def spans(self) -> list[int]:
        """Every decoder span a stream can use, smallest first."""
        return list(self._spans)

    def span(self, written: int) -> int:
        """The decoder slots a step attends over once ``written`` tokens are in the ring."""
        return next(s for s in self._spans if s >= min(written, self.dec_window))

    def buckets(self) -> list[int]:
        """Every batch size a forward runs at, smallest first."""
        return [b for b in BUCKETS if b < self.streams] + [self.streams]

    def bucket(self, rows: int) -> int:
        return next(b for b in self.buckets() if b >= rows)

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
                self._call(self._warm, num_delay_tokens, spans, prompt_ids, mel)
            except Exception as exc:  # noqa: BLE001 - any failure to compile: the eager step computes the same
                self.fall_back(exc)
        if self.compiled:
            self.graphs.settle()

    def fall_back(self, exc: BaseException) -> None:
        """Compiling, recording a graph or a first compiled call failed: run the eager static step
        from now on (the same operations, so the same tokens), and say why in ``fallback``."""
        from voxcli.errors import first_line

        self.compiled = False
        self._prefill, self._step = prefill, decode_rows
        self.fallback = f"{type(exc).__name__}: {first_line(exc)}"
        self.fallback_traceback = "".join(traceback.format_exception(exc))
        log.info("torch.compile failed; the static step runs eagerly", exc_info=exc)

    def _warm(self, num_delay_tokens: int, spans, prompt_ids, mel) -> None:
        torch = _torch()
        _raise_recompile_limit()
        with self._lock, torch.inference_mode():
            b = self.batch
            if b.in_use():
                return  # a session is running in it: its graphs exist already
            for state in b.states:
                state.reset(self, num_delay_tokens)
            for n in self.buckets():
                b.prefill_rows[:n].copy_(torch.arange(n))
                b.active.copy_(torch.arange(b.rows) < n)
                for _ in range(WARM_CALLS) if prompt_ids is not None else ():
                    t0 = time.perf_counter()
                    self._prefill(self, b, prompt_ids.expand(n, -1), mel.expand(n, -1, -1), n)
                    self._note_compile(("prefill", prompt_ids.shape[-1], n), t0)
                for span in spans or self.spans():
                    for _ in range(WARM_CALLS):
                        t0 = time.perf_counter()
                        self._step(self, b, span, n)
                        self._note_compile(("step", span, n), t0)
            for state in b.states:
                state.reset(self, num_delay_tokens)

    def _guarded_step(self, b: StaticRows, span: int, n: int):
        with self._guards():
            return self._step(self, b, span, n)

    def _guards(self):
        """Once every graph exists, dynamo's guard checks are ~90 us a call (measured on the tiny
        model: its whole compiled step is ~700 us); with one compiled model in the process, the
        only things that tell its step graphs apart are ``span`` and the bucket, so only those
        guards are checked (for the step only: a prefill at a new delay must still compile). Once a
        process has compiled a second model (graphs of both share one code object, and a constant
        such as a window size may tell them apart), every guard is checked."""
        torch = _torch()
        if self.compiled and self._all_steps_compiled and _COMPILED[0] == 1:
            return torch.compiler.set_stance("default", skip_guard_eval_unsafe=True)
        return contextlib.nullcontext()

    def _note_compile(self, key, t0: float) -> None:
        if not self.compiled:
            return
        self._calls[key] += 1
        name = " ".join(map(str, key))
        if name not in self.compile_s:
            self.compile_s[name] = time.perf_counter() - t0
            self._all_steps_compiled = all(("step", s, n) in self._calls for s in self._spans for n in self.buckets())

    def _forward(self, key, *args):
        """A forward of the batch ``args[0]`` (``key``: ("prefill", ...) or ("step", span, n)). While
        ``key``'s shape is not yet past warm-up (compiled and its graph recorded), a failure there
        falls back to the eager step, which runs it again (a compile or a capture fails before the
        call computes anything)."""
        def call():
            if key[0] == "prefill":
                return self._call(self._prefill, self, *args)
            return self._call(self._guarded_step, *args)

        if not self.compiled or self._calls[key] >= WARM_CALLS:
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


class StaticModel(_Compiled):
    """The Realtime model's weights (transformers' modules, shared, not copied) with the static
    prefill and step, eager or compiled, over batches of ``streams`` rows."""

    def __init__(self, hf_model, *, compile: bool = False, reanchor: bool = True, streams: int = 1,
                 one_thread: bool | None = None, top_k: int = 0) -> None:
        inner = hf_model.model
        self.tower = inner.audio_tower
        self.lm = inner.language_model
        self.projector = inner.multi_modal_projector
        self.time_embedding = inner.time_embedding
        self.lm_head = hf_model.lm_head
        self.vocab = hf_model.lm_head.weight.shape[0]
        self.top_k = top_k  # alternatives every step reads back (a constant of its graphs)
        cfg = hf_model.config
        a, t = cfg.audio_config, cfg.text_config
        self.device, self.dtype = hf_model.device, hf_model.dtype
        self.mel_bins = a.num_mel_bins
        self.conv1_left = self.tower.embedder.conv1.left_pad
        self.conv2_left = self.tower.embedder.conv2.left_pad
        self.enc_layers, self.enc_hidden = a.num_hidden_layers, a.hidden_size
        self.enc_heads, self.enc_kv_heads = a.num_attention_heads, a.num_key_value_heads
        self.enc_head_dim, self.enc_window = a.head_dim, a.sliding_window
        self.dec_layers, self.dec_hidden = t.num_hidden_layers, t.hidden_size
        self.dec_heads, self.dec_kv_heads = t.num_attention_heads, t.num_key_value_heads
        self.dec_head_dim, self.dec_window = t.head_dim, t.sliding_window
        self.downsample = cfg.downsample_factor
        self.frames_per_token = cfg.audio_length_per_tok
        self.reanchor = reanchor
        self.compiled = compile
        self.streams = max(1, streams)  # rows per batch: streams that step in one forward
        self._ada: dict[int, object] = {}
        self._rotations: dict[tuple[bool, int], tuple] = {}
        self._lock = threading.RLock()
        self.compile_s: dict[str, float] = {}  # first call of each compiled function, per shape
        self.step_log: deque[tuple[int, int, float]] = deque(maxlen=STEP_LOG_KEEP)  # (rows, bucket, ms)
        graphs = compile and self.device.type == "cuda"
        threads = graphs if one_thread is None else one_thread
        # CUDA-graphed forwards run in one thread of their own, where the graphs live (_Stepper);
        # elsewhere, whichever thread takes the lock runs the work handed over meanwhile (_Leader).
        self._batcher = _Stepper(self._run) if threads else _Leader(self._run, self._lock)
        self._call = self._batcher if threads else _inline
        self._make_functions(compile, graphs)
        # Every row this model will ever step, allocated now: a CUDA graph reads them in place, so
        # they never move (a new address would record the graphs again, inside a session).
        self.batch = StaticRows(self, self.streams)

    @property
    def name(self) -> str:
        return "static compiled" if self.compiled else "static eager"

    # Rows ---------------------------------------------------------------------------------------

    def acquire(self, num_delay_tokens: int, *, position_offset: int = 0) -> StaticState:
        """A reset row; :class:`voxcli.errors.EngineFull` when every row is in use (no row is
        ever allocated after the model is made)."""
        from voxcli.errors import EngineFull, setting

        with self._lock:
            state = self.batch.take()
            if state is None:
                raise EngineFull(f"all {self.streams} streams of the loaded model are in use "
                                 f"({setting('model.max_streams')} sets how many it allocates at load)",
                                 streams=self.streams)
            state.reset(self, num_delay_tokens, position_offset=position_offset)
            return state

    def release(self, state: StaticState) -> None:
        with self._lock:
            state.rows.give_back(state.row)

    def restart(self, state: StaticState, num_delay_tokens: int) -> None:
        """A new stream in a row already held (an end of sequence with audio left)."""
        with self._lock:
            state.reset(self, num_delay_tokens)

    def set_token(self, state: StaticState, token_id: int) -> None:
        """The token a row's next step is fed (its last one, written by each step): another."""
        with self._lock:
            state.rows.token[state.row].fill_(token_id)

    def free_rows(self) -> int:
        """Rows allocated and not in use."""
        return len(self.batch.free)

    def reserve(self, streams: int) -> None:
        """Make the batch at least ``streams`` rows (two-pass: 2), before any session holds a row;
        a compiled model's warm-up must follow (its graphs read the new rows). Loading with enough
        streams (``sessions=``) makes this a no-op."""
        with self._lock:
            if streams <= self.streams:
                return
            if self.batch.in_use():
                raise RuntimeError(f"cannot grow the static batch to {streams} rows while a session holds one")
            self.streams = streams
            self.batch = StaticRows(self, streams)
            self._calls.clear()
            self.compile_s.clear()
            self._all_steps_compiled = False

    def ada_scale(self, num_delay_tokens: int):
        """``1 + ada_rms_norm(t_cond)`` for every decoder layer, as transformers computes it:
        (layers, 1, 1, hidden)."""
        torch = _torch()
        if num_delay_tokens not in self._ada:
            with torch.inference_mode():
                time_tensor = torch.full((1,), num_delay_tokens, device=self.device, dtype=self.dtype)
                t_cond = self.time_embedding(time_tensor)[None, ...]
                scales = [1 + layer.ada_rms_norm(t_cond) for layer in self.lm.layers]
                self._ada[num_delay_tokens] = torch.stack(scales)[:, None].clone()
        return self._ada[num_delay_tokens]

    # Forward ------------------------------------------------------------------------------------

    def run(self, jobs: list[Job]) -> list[Job]:
        """Do every job, in as few forwards as possible, and fill in their results; jobs that other
        threads hand over meanwhile join the forward (continuous batching)."""
        return self._batcher.run(jobs)

    def _run(self, jobs: list[Job]) -> list[Job]:
        if self.compiled:
            _raise_recompile_limit()  # in the thread that may compile: the one running the forward
        with self._lock, _torch().inference_mode():
            groups: dict[tuple, list[Job]] = {}
            for job in jobs:
                key = (id(job.state.rows),) + (("prefill", tuple(job.prompt_ids.shape), tuple(job.mel.shape))
                                              if job.prompt_ids is not None else ("step",))
                groups.setdefault(key, []).append(job)
            for key, group in groups.items():
                if key[1] == "prefill":
                    while group:  # in bucket-sized groups: one graph per bucket
                        n = max(b for b in self.buckets() if b <= len(group))
                        self._prefill_rows(group[:n])
                        group = group[n:]
                else:
                    self._step_rows(group)
        return jobs

    def _prefill_rows(self, jobs: list[Job]) -> None:
        torch = _torch()
        t0 = time.perf_counter()
        b, r = jobs[0].state.rows, len(jobs)
        b.prefill_rows[:r].copy_(torch.tensor([j.state.row for j in jobs]))
        prompt = torch.cat([j.prompt_ids for j in jobs])
        mel = torch.cat([j.mel for j in jobs])
        packed, logits = self._forward(("prefill", prompt.shape[-1], r), b, prompt, mel, r)
        picks = packed.tolist()  # the one sync: every row's token on the host
        self._finish(jobs, picks, logits, t0, ("prefill", prompt.shape[-1], r))
        for job in jobs:
            job.state.advance(self, mel.shape[-1] // 2, prompt.shape[-1])

    def _step_rows(self, jobs: list[Job]) -> None:
        torch = _torch()
        t0 = time.perf_counter()
        b = jobs[0].state.rows
        active = [False] * b.rows
        for job in jobs:
            b.mel[job.state.row].copy_(job.mel[0])  # static inputs: a compiled step reads them in place
            active[job.state.row] = True
        b.active.copy_(torch.tensor(active))
        n = self.bucket(max(j.state.row for j in jobs) + 1)
        span = self.span(max(b.dec.host_written[j.state.row] for j in jobs) + 1)
        packed, logits = self._forward(("step", span, n), b, span, n)
        picks = packed.tolist()
        ms = self._finish(jobs, picks, logits, t0, ("step", span, n))
        self.step_log.append((len(jobs), n, ms))
        for job in jobs:
            job.state.advance(self, ENCODER_STEP, 1)

    def _finish(self, jobs: list[Job], picks: list[list[float]], logits, t0: float, key: tuple) -> float:
        ms = (time.perf_counter() - t0) * 1000.0
        self._note_compile(key, t0)
        prefill = key[0] == "prefill"
        for i, job in enumerate(jobs):
            at = i if prefill else job.state.row
            job.picked, job.step_ms, job.batch = unpack(picks[at], self.top_k), ms, len(jobs)
            # After the clock: a comparison's copy is not the step's time.
            job.logits = logits[at:at + 1].float().cpu().clone() if job.keep_logits else None
        return ms

    # Positions ----------------------------------------------------------------------------------

    def reanchor_row(self, ring: Ring, row: int, encoder: bool, shift: int) -> None:
        """Lower every position of ``ring``'s row ``row`` by ``shift``: rotate its cached keys by
        -shift (the angle reduced mod 2 pi in float64, so the shift adds no error of its own)."""
        torch = _torch()
        if (encoder, shift) not in self._rotations:  # made once: no device sync in a session
            rotary = (self.tower if encoder else self.lm).rotary_emb
            angle = torch.remainder(-float(shift) * rotary.inv_freq.detach().double().cpu(), 2 * math.pi)
            emb = torch.cat([angle, angle])
            # No attention_scaling here: the cached keys carry it once already, from their own
            # rotation; a rotation by a pure angle keeps it once.
            self._rotations[(encoder, shift)] = (emb.cos().to(self.device, torch.float32),
                                                 emb.sin().to(self.device, torch.float32))
        ring.reanchor(row, shift, *self._rotations[(encoder, shift)])
