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

import logging
import threading
import time
from collections import deque

import numpy as np

from voxcli.engine.batching import ForwardClock, Job, Leader, Stepper, inline
from voxcli.engine.compiling import Compilation, check_compilable, raise_recompile_limit
from voxcli.engine.pick import unpack
from voxcli.engine.rows import ENCODER_STEP, Ring, StaticRows, StaticState, bounded
from voxcli.engine.tables import Tables

__all__ = ["BUCKETS", "DeviceLogMel", "Job", "StaticModel", "StaticState", "bounded", "check_compilable"]

log = logging.getLogger(__name__)

# A young stream's decoder ring is mostly empty: a step attends over its first 512, 2048, ...
# slots until the ring is full (on tiny models that is most of the step: 140 us for 8192 slots,
# 12 us for 512). Each span is one compiled graph, all compiled at warm-up.
FIRST_SPAN = 512
SPAN_GROWTH = 4
# Batch sizes a forward runs at (rows [:n]); one compiled graph each, up to the model's streams.
BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
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
        """(1, bins, frames) for one clip; (B, bins, frames) for B clips of one length (B, n), each
        as if alone (a clip's own maximum, where the checkpoint fixes none) to float32 rounding: the
        filter bank is one matrix product for all clips (17x faster than B products at B = 128)."""
        torch = _torch()
        wave = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32)).to(self.device, non_blocking=True)
        stft = torch.stft(wave, self.n_fft, self.hop, window=self.window, return_complex=True, center=center)
        magnitudes = stft[..., :-1].abs() ** 2
        if magnitudes.dim() == 3:  # B clips: one (bins, freqs) x (freqs, B * frames) product, not B small ones
            b, f, t = magnitudes.shape
            mel = (self.filters_t @ magnitudes.permute(1, 0, 2).reshape(f, b * t)).reshape(-1, b, t).permute(1, 0, 2)
        else:
            mel = self.filters_t @ magnitudes
        log_spec = torch.clamp(mel, min=1e-10).log10()
        top = log_spec.amax(dim=(-2, -1), keepdim=True) if self.max is None else torch.tensor(self.max, device=self.device)
        log_spec = torch.maximum(log_spec, top - 8.0)
        out = (log_spec + 4.0) / 4.0
        return out if wave.dim() == 2 else out[None]


# --------------------------------------------------------------------------------------- model


class StaticModel:
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
        self.streams = max(1, streams)  # rows per batch: streams that step in one forward
        self.tables = Tables(self.tower, self.lm, self.time_embedding, self.device, self.dtype)
        self.lock = threading.RLock()
        self.step_log: deque[tuple[int, int, float]] = deque(maxlen=STEP_LOG_KEEP)  # (rows, bucket, ms)
        self.clock = ForwardClock()  # every forward sessions asked for (session.compute)
        graphs = compile and self.device.type == "cuda"
        threads = graphs if one_thread is None else one_thread
        # CUDA-graphed forwards run in one thread of their own, where the graphs live (batching.Stepper);
        # elsewhere, whichever thread takes the lock runs the work handed over meanwhile (batching.Leader).
        self._batcher = Stepper(self._run) if threads else Leader(self._run, self.lock)
        self.call = self._batcher if threads else inline
        self.compilation = Compilation(self, compile, graphs)
        spans, span = [], FIRST_SPAN
        while span < self.dec_window:
            spans.append(span)
            span *= SPAN_GROWTH
        self._spans = (*spans, self.dec_window)
        # Every row this model will ever step, allocated now: a CUDA graph reads them in place, so
        # they never move (a new address would record the graphs again, inside a session).
        self.batch = StaticRows(self, self.streams)

    @property
    def name(self) -> str:
        return "static compiled" if self.compilation.compiled else "static eager"

    # Rows ---------------------------------------------------------------------------------------

    def acquire(self, num_delay_tokens: int, *, position_offset: int = 0) -> StaticState:
        """A reset row; :class:`voxcli.errors.EngineFull` when every row is in use (no row is
        ever allocated after the model is made)."""
        from voxcli.errors import EngineFull, setting

        with self.lock:
            state = self.batch.take()
            if state is None:
                raise EngineFull(f"all {self.streams} streams of the loaded model are in use "
                                 f"({setting('model.max_streams')} sets how many it allocates at load)",
                                 streams=self.streams)
            state.reset(self, num_delay_tokens, position_offset=position_offset)
            return state

    def release(self, state: StaticState) -> None:
        with self.lock:
            state.rows.give_back(state.row)

    def restart(self, state: StaticState, num_delay_tokens: int) -> StaticState:
        """A new stream in a row already held (an end of sequence with audio left)."""
        with self.lock:
            state.reset(self, num_delay_tokens)
        return state

    def bias(self, state: StaticState):
        """The row's keyterm bias (zeroed by every reset)."""
        return state.rows.bias[state.row]

    def set_token(self, state: StaticState, token_id: int) -> None:
        """The token a row's next step is fed (its last one, written by each step): another."""
        with self.lock:
            state.rows.token[state.row].fill_(token_id)

    def free_rows(self) -> int:
        """Rows allocated and not in use."""
        return len(self.batch.free)

    def reserve(self, streams: int) -> None:
        """Make the batch at least ``streams`` rows (two-pass: 2), before any session holds a row;
        a compiled model's warm-up must follow (its graphs read the new rows). Loading with enough
        streams (``sessions=``) makes this a no-op."""
        with self.lock:
            if streams <= self.streams:
                return
            if self.batch.in_use():
                raise RuntimeError(f"cannot grow the static batch to {streams} rows while a session holds one")
            self.streams = streams
            self.batch = StaticRows(self, streams)
            self.compilation.forget()

    def ada_scale(self, num_delay_tokens: int):
        return self.tables.ada_scale(num_delay_tokens)

    # Shapes -------------------------------------------------------------------------------------

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

    # Forward ------------------------------------------------------------------------------------

    def run(self, jobs: list[Job]) -> list[Job]:
        """Do every job, in as few forwards as possible, and fill in their results; jobs that other
        threads hand over meanwhile join the forward (continuous batching)."""
        return self._batcher.run(jobs)

    def _run(self, jobs: list[Job]) -> list[Job]:
        if self.compilation.compiled:
            raise_recompile_limit()  # in the thread that may compile: the one running the forward
        with self.lock, _torch().inference_mode():
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
        packed, logits = self.compilation.forward(("prefill", prompt.shape[-1], r), b, prompt, mel, r)
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
        packed, logits = self.compilation.forward(("step", span, n), b, span, n)
        picks = packed.tolist()
        ms = self._finish(jobs, picks, logits, t0, ("step", span, n))
        self.step_log.append((len(jobs), n, ms))
        for job in jobs:
            job.state.advance(self, ENCODER_STEP, 1)

    def _finish(self, jobs: list[Job], picks: list[list[float]], logits, t0: float, key: tuple) -> float:
        ms = (time.perf_counter() - t0) * 1000.0
        self.compilation.note(key, t0)
        prefill = key[0] == "prefill"
        for i, job in enumerate(jobs):
            at = i if prefill else job.state.row
            job.picked, job.step_ms, job.batch = unpack(picks[at], self.top_k), ms, len(jobs)
            # After the clock: a comparison's copy is not the step's time.
            job.logits = logits[at:at + 1].float().cpu().clone() if job.keep_logits else None
        return ms

    # Positions ----------------------------------------------------------------------------------

    def reanchor_row(self, ring: Ring, row: int, encoder: bool, shift: int) -> None:
        """Lower every position of ``ring``'s row ``row`` by ``shift``: rotate its cached keys by -shift."""
        ring.reanchor(row, shift, *self.tables.rotation(encoder, shift))
