"""The static Realtime step: preallocated ring buffers, no allocation or shape change per step,
compilable (``torch.compile``; CUDA graphs on a GPU).

transformers' eager forward (the reference, ``model.step: hf``) grows and slices its sliding-window
caches with ``cat`` on every step and rebuilds the attention masks each time: hundreds of small
ops on a tiny model, ~3,600 on the full-size one (docs/design.md, "The Realtime step"). Here the
same weights run through a few functions shaped like gpt-fast's ``prefill`` / ``decode_one_token``:

- :class:`StaticState` holds one session's state, allocated once and reset in place: a ring
  buffer per sliding window (encoder: its window + 3 slots, because a step writes 4 encoder
  positions before attending; decoder: its window), the effective position of what every slot
  holds (the attention mask is computed from those), both causal convolutions' padding, and the
  delay conditioning ``1 + ada_rms_norm(t_cond)`` per decoder layer, computed once per delay.
- :func:`prefill` and :func:`decode_one` are the model: encoder (conv front end, 4 positions per
  token), projector, decoder, greedy argmax. They take only tensors that live in the state, so
  a compiled (graph-captured) step replays with the same addresses every time.
- Positions stay bounded (:meth:`StaticState.advance`, :meth:`StaticModel.reanchor_ring`): once
  a ring's position reaches twice its window, every position is lowered by whole windows and the
  cached keys are rotated back by the same angle. RoPE scores depend only on the difference of
  positions, so attention is unchanged, and hour 8 of a session computes with the positions of
  minute 11 (bench/soak.py).

The modules are transformers' own (norms, projections, MLPs, rotary embeddings), so weights are
shared with the loaded model and numerics match it. Not thread-safe: one thread steps a state.
"""

from __future__ import annotations

import contextlib
import math
import queue
import threading
import time
from dataclasses import dataclass

import numpy as np

EMPTY = -(1 << 40)  # the position of a slot that holds nothing: never inside any window
ENCODER_STEP = 4  # encoder positions per text token (8 mel frames, conv stride 2)
# A young session's decoder ring is mostly empty: a step attends over its first 512, 2048, ...
# slots until the ring is full (on tiny models that is most of the step: 140 us for 8192 slots,
# 12 us for 512). Each span is one compiled graph, all compiled at warm-up.
FIRST_SPAN = 512
SPAN_GROWTH = 4
_COMPILED = [0]  # compiled models made in this process (their graphs stay in dynamo's cache)
# Calls of each compiled function, per state and shape, at warm-up. In torch 2.13 the first call
# of a CUDA-graphed function only warms it up and a later one records the graph; the third
# replays it, so a session never records (nor a session's first token waits for a recording).
WARM_CALLS = 3


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


# --------------------------------------------------------------------------------------- state


@dataclass
class Ring:
    """One sliding-window KV cache for every layer of a stack, as a ring of ``size`` slots.

    ``slot_pos[i]`` is the effective position of what slot ``i`` holds (EMPTY if nothing);
    ``pos`` the effective position of the next token, ``written`` how many tokens were written
    (slot = written % size). Host-side mirrors (``host_pos``, ``host_written``) know both without a
    device sync, because every step advances them by a fixed amount."""

    k: list  # per layer (1, kv_heads, size, head_dim): one tensor each, so a write stays in place
    v: list
    slot_pos: object  # (size,) int64
    pos: object  # (1,) int64
    written: object  # (1,) int64
    window: int
    size: int
    host_pos: int = 0
    host_written: int = 0
    shifted: int = 0  # positions taken away by re-anchoring: absolute = effective + shifted

    @classmethod
    def allocate(cls, layers: int, kv_heads: int, head_dim: int, window: int, size: int, device, dtype):
        torch = _torch()

        def zeros():
            return [torch.zeros(1, kv_heads, size, head_dim, device=device, dtype=dtype) for _ in range(layers)]

        return cls(k=zeros(), v=zeros(), slot_pos=torch.full((size,), EMPTY, device=device, dtype=torch.long),
                   pos=torch.zeros(1, device=device, dtype=torch.long),
                   written=torch.zeros(1, device=device, dtype=torch.long), window=window, size=size)

    def tensors(self):
        return (*self.k, *self.v, self.slot_pos, self.pos, self.written)

    def reset(self, start: int) -> None:
        # The keys need no clearing: a slot at EMPTY is masked out.
        self.slot_pos.fill_(EMPTY)
        self.pos.fill_(start)
        self.written.zero_()
        self.host_pos, self.host_written, self.shifted = start, 0, 0


class StaticState:
    """One Realtime session's whole state, allocated once (by :meth:`StaticModel.acquire`, when
    the pool is empty) and reset in place for every session that uses it."""

    def __init__(self, model: "StaticModel") -> None:
        torch = _torch()
        m = model
        dev, dt = m.device, m.dtype
        self.model = model
        self.enc = Ring.allocate(m.enc_layers, m.enc_kv_heads, m.enc_head_dim, m.enc_window,
                                 m.enc_window + ENCODER_STEP - 1, dev, dt)
        self.dec = Ring.allocate(m.dec_layers, m.dec_kv_heads, m.dec_head_dim, m.dec_window, m.dec_window, dev, dt)
        self.conv1_pad = torch.zeros(1, m.mel_bins, m.conv1_left, device=dev, dtype=dt)
        self.conv2_pad = torch.zeros(1, m.enc_hidden, m.conv2_left, device=dev, dtype=dt)
        self.ada = torch.zeros(m.dec_layers, 1, 1, m.dec_hidden, device=dev, dtype=dt)
        self.token = torch.zeros(1, 1, device=dev, dtype=torch.long)  # the last token, fed to the next step
        self.mel = torch.zeros(1, m.mel_bins, m.frames_per_token, device=dev, dtype=torch.float32)  # a step's input
        # A step's convolution inputs, padding and new frames side by side (no cat per step).
        self.conv1_in = torch.zeros(1, m.mel_bins, m.conv1_left + m.frames_per_token, device=dev, dtype=dt)
        self.conv2_in = torch.zeros(1, m.enc_hidden, m.conv2_left + m.frames_per_token, device=dev, dtype=dt)
        self.delay_tokens: int | None = None
        buffers = (self.conv1_pad, self.conv2_pad, self.conv1_in, self.conv2_in, self.ada, self.token, self.mel)
        for t in (*self.enc.tensors(), *self.dec.tensors(), *buffers):
            _mark_static(t)

    def reset(self, num_delay_tokens: int, *, position_offset: int = 0) -> None:
        """A new session: every buffer cleared in place, nothing allocated (but the first use of
        a delay computes its conditioning once). ``position_offset``: start as if the session had
        already run that many tokens (bench/soak.py's 8-hour check)."""
        m = self.model
        self.conv1_pad.zero_()
        self.conv2_pad.zero_()
        self.token.zero_()
        if self.delay_tokens != num_delay_tokens:
            self.ada.copy_(m.ada_scale(num_delay_tokens))
            self.delay_tokens = num_delay_tokens
        for ring, absolute in ((self.dec, position_offset), (self.enc, position_offset * ENCODER_STEP)):
            # Where an unbroken session would stand after that many positions of re-anchoring (or,
            # with re-anchoring off, the positions as they come: the case it avoids).
            start = bounded(absolute, ring.window) if m.reanchor else absolute
            ring.reset(start)
            ring.shifted = absolute - start

    def advance(self, enc_tokens: int, dec_tokens: int) -> None:
        """Host-side bookkeeping after a forward, then re-anchor a ring whose positions reached
        twice its window (a separate, rare operation: once per window of tokens)."""
        for ring, n in ((self.enc, enc_tokens), (self.dec, dec_tokens)):
            ring.host_pos += n
            ring.host_written += n
            if self.model.reanchor and ring.host_pos >= 2 * ring.window:
                windows = (ring.host_pos - ring.window) // ring.window  # back into [window, 2 x window)
                self.model.reanchor_ring(ring, ring is self.enc, windows * ring.window)


def _mark_static(t) -> None:
    """The tensor keeps its address for the state's life: a CUDA graph reads it in place. No
    guard on the address (older torch guards by default, which would compile again for every
    state); each state's graphs are recorded at warm-up instead."""
    torch = _torch()
    torch._dynamo.mark_static_address(t, guard=False)


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


class _Stepper:
    """One long-lived thread that makes every compiled call. CUDA graph trees are kept per thread
    (torch/_inductor/cudagraph_trees.py), and every file and session runs in an engine thread of
    its own: graphs recorded at warm-up in one thread would be recorded again in each new one.
    A call's hand-off costs tens of microseconds; a graph recording inside a session costs a step."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="voxcli-stepper", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        torch = _torch()
        while True:
            fn, args, done = self._jobs.get()
            try:
                with torch.inference_mode():  # grad modes are per thread
                    done.append((True, fn(*args)))
            except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
                done.append((False, exc))
            finally:
                done.event.set()

    def __call__(self, fn, *args):
        if threading.current_thread() is self.thread:
            return fn(*args)
        done = _Result()
        self._jobs.put((fn, args, done))
        done.event.wait()
        ok, value = done[0]
        if not ok:
            raise value
        return value


class _Result(list):
    def __init__(self) -> None:
        super().__init__()
        self.event = threading.Event()


# --------------------------------------------------------------------------------------- model


def bounded(position: int, window: int) -> int:
    """Where re-anchoring keeps ``position``: below 2 x window, lowered a window at a time."""
    if position < 2 * window:
        return position
    return window + (position - window) % window


class StaticModel:
    """The Realtime model's weights (transformers' modules, shared, not copied) with the static
    prefill and step, eager or compiled, and a pool of reusable session states."""

    def __init__(self, hf_model, *, compile: bool = False, reanchor: bool = True, states: int = 1,
                 one_thread: bool | None = None) -> None:
        torch = _torch()
        inner = hf_model.model
        self.tower = inner.audio_tower
        self.lm = inner.language_model
        self.projector = inner.multi_modal_projector
        self.time_embedding = inner.time_embedding
        self.lm_head = hf_model.lm_head
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
        self._ada: dict[int, object] = {}
        self._rotations: dict[tuple[bool, int], tuple] = {}
        self._free: list[StaticState] = []
        self._all: list[StaticState] = []  # every state made: warm-up records each one's graphs
        self.states = states  # states warm-up prepares: sessions open at once (two-pass: 2)
        self.compile_s: dict[str, float] = {}  # first call of each compiled function, per shape
        self._prefill, self._step = prefill, decode_one
        graphs = compile and self.device.type == "cuda"
        # Compiled calls run in one thread of their own where their CUDA graphs live (_Stepper).
        self._call = _Stepper() if (graphs if one_thread is None else one_thread) else _inline
        if compile:
            check_compilable()
            # One graph per (function, shape, span): more than dynamo's default of 8.
            torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
            mode = "reduce-overhead" if graphs else None  # CUDA graphs on a GPU
            self._prefill = torch.compile(prefill, fullgraph=True, dynamic=False, mode=mode)
            self._step = torch.compile(decode_one, fullgraph=True, dynamic=False, mode=mode)
            _COMPILED[0] += 1
        self._seen: set = set()
        spans, span = [], FIRST_SPAN
        while span < self.dec_window:
            spans.append(span)
            span *= SPAN_GROWTH
        self._spans = (*spans, self.dec_window)
        self._all_steps_compiled = False  # every span's step graph exists (set by _note_compile)

    @property
    def name(self) -> str:
        return "static compiled" if self.compiled else "static eager"

    # States -------------------------------------------------------------------------------------

    def acquire(self, num_delay_tokens: int, *, position_offset: int = 0) -> StaticState:
        """A reset state from the pool (allocated only when every state is in use)."""
        state = self._free.pop() if self._free else self._new_state()
        state.reset(num_delay_tokens, position_offset=position_offset)
        return state

    def _new_state(self) -> StaticState:
        state = StaticState(self)
        self._all.append(state)
        return state

    def release(self, state: StaticState) -> None:
        if state not in self._free:
            self._free.append(state)

    def ada_scale(self, num_delay_tokens: int):
        """``1 + ada_rms_norm(t_cond)`` for every decoder layer, as transformers computes it."""
        torch = _torch()
        if num_delay_tokens not in self._ada:
            with torch.inference_mode():
                time_tensor = torch.full((1,), num_delay_tokens, device=self.device, dtype=self.dtype)
                t_cond = self.time_embedding(time_tensor)[None, ...]
                scales = [1 + layer.ada_rms_norm(t_cond) for layer in self.lm.layers]
                self._ada[num_delay_tokens] = torch.stack(scales)[:, None].clone()
        return self._ada[num_delay_tokens]

    # Forward ------------------------------------------------------------------------------------

    def prefill(self, state: StaticState, prompt_ids, mel):
        """The prompt and its audio (mel frames: 8 per prompt token). Returns (next id, logits)."""
        t0 = time.perf_counter()
        key = ("prefill", tuple(prompt_ids.shape))
        out = self._call(self._prefill, self, state, prompt_ids, mel)
        self._note_compile(key, t0)
        state.advance(mel.shape[-1] // 2, prompt_ids.shape[-1])
        state.token.copy_(out[0].view(1, 1))
        return out

    def step(self, state: StaticState, mel):
        """One token from 8 mel frames and the last token. Returns (next id, logits)."""
        t0 = time.perf_counter()
        state.mel.copy_(mel)  # one static input: the compiled step (a CUDA graph) reads it in place
        span = self.span(state.dec.host_written + 1)
        out = self._call(self._guarded_step, state, span)
        self._note_compile(("step", span), t0)
        state.advance(ENCODER_STEP, 1)
        return out

    def spans(self) -> list[int]:
        """Every decoder span a session can use, smallest first."""
        return list(self._spans)

    def span(self, written: int) -> int:
        """The decoder slots a step attends over once ``written`` tokens are in the ring."""
        return next(s for s in self._spans if s >= min(written, self.dec_window))

    def precompile(self, num_delay_tokens: int, *, spans: list[int] | None = None, prompt_ids=None,
                   mel=None) -> None:
        """Compile now, at warm-up, so that no session meets a compile or a graph recording: for
        every state a session will use (``states`` of them), the prefill at this delay (given
        ``prompt_ids`` and ``mel``) and the step for every span (or those given), each called
        WARM_CALLS times, in the thread that will step them. The states are reset afterwards."""
        if not self.compiled:
            return
        while len(self._all) < self.states:
            self._free.append(self._new_state())
        with _torch().inference_mode():
            self._warm_states(num_delay_tokens, spans, prompt_ids, mel)

    def _warm_states(self, num_delay_tokens: int, spans, prompt_ids, mel) -> None:
        for state in list(self._all):
            state.reset(num_delay_tokens)
            if prompt_ids is not None:
                key = ("prefill", tuple(prompt_ids.shape))
                for _ in range(WARM_CALLS):
                    t0 = time.perf_counter()
                    self._call(self._prefill, self, state, prompt_ids, mel)
                    self._note_compile(key, t0)
            for span in spans or self.spans():
                for _ in range(WARM_CALLS):
                    t0 = time.perf_counter()
                    self._call(self._step, self, state, span)
                    self._note_compile(("step", span), t0)
            state.reset(num_delay_tokens)

    def _guarded_step(self, state: StaticState, span: int):
        with self._guards():
            return self._step(self, state, span)

    def _guards(self):
        """Once every graph exists, dynamo's guard checks are ~90 us a call (measured on the tiny
        model: its whole compiled step is ~700 us); with one compiled model in the process, the
        only thing that tells its step graphs apart is ``span``, so only those guards are checked
        (for the step only: a prefill at a new delay must still compile). Once a process has
        compiled a second model (graphs of both share one code object, and a constant such as a
        window size may tell them apart), every guard is checked."""
        torch = _torch()
        if self._all_steps_compiled and _COMPILED[0] == 1:
            return torch.compiler.set_stance("default", skip_guard_eval_unsafe=True)
        return contextlib.nullcontext()

    def _note_compile(self, key, t0: float) -> None:
        if self.compiled and key not in self._seen:
            self._seen.add(key)
            self.compile_s[" ".join(map(str, key))] = time.perf_counter() - t0
            self._all_steps_compiled = all(("step", n) in self._seen for n in self._spans)

    # Positions ----------------------------------------------------------------------------------

    def reanchor_ring(self, ring: Ring, encoder: bool, shift: int) -> None:
        """Lower every position of ``ring`` by ``shift``: rotate the cached keys by -shift (the
        angle reduced mod 2 pi in float64, so the shift adds no error of its own)."""
        torch = _torch()
        if (encoder, shift) not in self._rotations:  # made once: no device sync in a session
            rotary = (self.tower if encoder else self.lm).rotary_emb
            angle = torch.remainder(-float(shift) * rotary.inv_freq.detach().double().cpu(), 2 * math.pi)
            emb = torch.cat([angle, angle])
            # No attention_scaling here: the cached keys carry it once already, from their own
            # rotation; a rotation by a pure angle keeps it once.
            self._rotations[(encoder, shift)] = (emb.cos().to(self.device, torch.float32),
                                                 emb.sin().to(self.device, torch.float32))
        cos, sin = self._rotations[(encoder, shift)]
        with torch.inference_mode():
            for k in ring.k:
                # In float32, rounded to the cache's dtype once: in bf16, cos and sin rounded to 8
                # bits and a bf16 product and sum made hour 8 worse than no re-anchoring at all.
                x = k.float()
                half = x.shape[-1] // 2
                rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
                k.copy_(x * cos + rotated * sin)
            ring.slot_pos.sub_(torch.where(ring.slot_pos > EMPTY // 2, shift, 0))
            ring.pos.sub_(shift)
        ring.host_pos -= shift
        ring.shifted += shift


def _inline(fn, *args):
    return fn(*args)


# ------------------------------------------------------------------------- the compilable functions


def _attend(q, k, v, mask, scale: float, groups: int):
    """SDPA over a whole ring with a boolean mask; a single query per head is packed across its
    KV group (as transformers does) so no key is repeated."""
    import torch.nn.functional as F

    b, heads, t, d = q.shape
    if t == 1 and groups > 1:
        out = F.scaled_dot_product_attention(q.reshape(b, heads // groups, groups, d), k, v,
                                             attn_mask=mask, scale=scale)
        return out.reshape(b, heads, 1, d)
    if groups > 1:
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def _window_mask(q_pos, key_pos, window: int):
    """(1, 1, T, K): key visible to query iff q - window < k <= q (transformers' sliding window)."""
    diff = q_pos[:, None] - key_pos[None, :]
    return ((diff >= 0) & (diff < window))[None, None]


def _stack(layers, x, ring: Ring, rotary, n_heads: int, n_kv: int, head_dim: int, prefill: bool,
           ada=None, span: int | None = None):
    """The layers of one stack over ``x`` (1, T, hidden), reading and writing ``ring``.

    A step writes its T keys into the ring first, then attends over the whole ring (the ring is
    T - 1 slots longer than the window, so the oldest query still sees its whole window). A
    prefill (the ring is empty) attends over its own keys only, then stores the last ``size``.
    ``span``: attend over the first ``span`` slots only (the rest are still empty)."""
    from transformers.models.voxtral_realtime.modeling_voxtral_realtime import apply_rotary_pos_emb

    torch = _torch()
    t = x.shape[1]
    q_pos = ring.pos + torch.arange(t, device=x.device)
    cos, sin = rotary(x, q_pos[None])
    keep = min(t, ring.size)
    slots = (ring.written + torch.arange(t - keep, t, device=x.device)) % ring.size
    # Index assignment (index_put_), which the compiler keeps in place; index_copy_ it would not.
    ring.slot_pos[slots] = q_pos[t - keep:]
    span = span or ring.size
    mask = _window_mask(q_pos, q_pos if prefill else ring.slot_pos[:span], ring.window)
    groups = n_heads // n_kv
    for i, layer in enumerate(layers):
        attn = layer.self_attn
        residual = x
        h = (layer.input_layernorm if ada is not None else layer.self_attn_layer_norm)(x)
        q = attn.q_proj(h).view(1, t, n_heads, head_dim).transpose(1, 2)
        k = attn.k_proj(h).view(1, t, n_kv, head_dim).transpose(1, 2)
        v = attn.v_proj(h).view(1, t, n_kv, head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        ring.k[i][:, :, slots] = k[:, :, t - keep:]
        ring.v[i][:, :, slots] = v[:, :, t - keep:]
        if prefill:
            o = _attend(q, k, v, mask, attn.scaling, groups)
        else:
            o = _attend(q, ring.k[i][:, :, :span], ring.v[i][:, :, :span], mask, attn.scaling, groups)
        x = residual + attn.o_proj(o.transpose(1, 2).reshape(1, t, n_heads * head_dim))
        residual = x
        if ada is not None:
            h = layer.post_attention_layernorm(x) * ada[i]
        else:
            h = layer.final_layer_norm(x)
        x = residual + layer.mlp(h)
    ring.pos.add_(t)
    ring.written.add_(t)
    return x


def _conv(conv, x, pad, buf=None):
    """A causal convolution continuing from ``pad`` (its last inputs); updates ``pad`` in place.
    A step assembles its input in ``buf`` (the state's); the prefill, once a session, concatenates."""
    torch = _torch()
    left = pad.shape[-1]
    if buf is None:
        full = torch.cat([pad, x], dim=-1)
    else:
        buf[..., :left].copy_(pad)
        buf[..., left:].copy_(x)
        full = buf
    pad.copy_(full[..., full.shape[-1] - left:])
    return torch.nn.functional.conv1d(full, conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups)


def _audio_embeds(m: StaticModel, s: StaticState, mel, prefill: bool):
    torch = _torch()
    gelu = torch.nn.functional.gelu
    mel = mel.to(m.dtype)
    x = gelu(_conv(m.tower.embedder.conv1, mel, s.conv1_pad, None if prefill else s.conv1_in))
    x = gelu(_conv(m.tower.embedder.conv2, x, s.conv2_pad, None if prefill else s.conv2_in)).permute(0, 2, 1)
    x = _stack(m.tower.layers, x, s.enc, m.tower.rotary_emb, m.enc_heads, m.enc_kv_heads, m.enc_head_dim, prefill)
    x = m.tower.norm(x)
    x = x.reshape(1, -1, m.enc_hidden * m.downsample)
    return m.projector(x)


def _logits(m: StaticModel, s: StaticState, embeds, prefill: bool, span: int | None = None):
    x = _stack(m.lm.layers, embeds, s.dec, m.lm.rotary_emb, m.dec_heads, m.dec_kv_heads, m.dec_head_dim, prefill,
               ada=s.ada, span=span)
    x = m.lm.norm(x[:, -1:])
    logits = m.lm_head(x)[:, -1]
    return logits.argmax(-1), logits


def prefill(m: StaticModel, s: StaticState, prompt_ids, mel):
    """The prompt (1, P) with its P x 8 mel frames: the session's first token."""
    embeds = m.lm.embed_tokens(prompt_ids) + _audio_embeds(m, s, mel, True)
    return _logits(m, s, embeds, True)


def decode_one(m: StaticModel, s: StaticState, span: int):
    """One step: 8 mel frames and the last token (both in the state) -> the next token and logits,
    attending over the first ``span`` decoder slots. The next token is written back into the
    state, so the host reads it only to print it."""
    embeds = m.lm.embed_tokens(s.token) + _audio_embeds(m, s, s.mel, False)
    next_id, logits = _logits(m, s, embeds, False, span)
    s.token.copy_(next_id.view(1, 1))
    return next_id, logits
