"""The static step's state: every stream's caches as one row of a batch, allocated once.

:class:`StaticRows` holds ``rows`` streams' state side by side, so that one forward steps all of
them (:mod:`voxcli.engine.static`): per stack, a ring buffer of keys and values
``(rows, kv_heads, slots, head_dim)`` (encoder: its window + 3 slots, because a step writes 4
encoder positions before attending; decoder: its window), the effective position of what every
slot holds (masks are computed from those), each row's next position and write count, both
causal convolutions' padding, the delay conditioning ``1 + ada_rms_norm(t_cond)`` per decoder
layer (two-pass rows run at different delays), each row's keyterm bias (a vocabulary-sized vector
added to its scores, :mod:`voxcli.engine.keyterms`), the last token and the step's input. A stream takes
a free row (:class:`StaticState`, a handle), resets it in place without touching the other rows,
and gives it back when it ends.

Host-side mirrors (``host_pos``, ``host_written``, per row) know every row's positions without a
device sync, because every step advances them by a fixed amount.
"""

from __future__ import annotations

from dataclasses import dataclass

EMPTY = -(1 << 40)  # the position of a slot that holds nothing: never inside any window
ENCODER_STEP = 4  # encoder positions per text token (8 mel frames, conv stride 2)


def _torch():
    import torch

    return torch


def bounded(position: int, window: int) -> int:
    """Where re-anchoring keeps ``position``: below 2 x window, lowered a window at a time."""
    if position < 2 * window:
        return position
    return window + (position - window) % window


@dataclass
class Ring:
    """One sliding-window KV cache for every layer of a stack and every row, as rings of ``size``
    slots. ``slot_pos[r, i]``: the effective position of what slot ``i`` of row ``r`` holds (EMPTY
    if nothing); ``pos[r]`` the effective position of row r's next token, ``written[r]`` how many
    tokens it wrote (slot = written % size)."""

    k: list  # per layer (rows, kv_heads, size, head_dim): one tensor each, so a write stays in place
    v: list
    slot_pos: object  # (rows, size) int64
    pos: object  # (rows,) int64
    written: object  # (rows,) int64
    window: int
    size: int
    host_pos: list
    host_written: list
    shifted: list  # per row, positions taken away by re-anchoring: absolute = effective + shifted

    @classmethod
    def allocate(cls, layers: int, kv_heads: int, head_dim: int, window: int, size: int, rows: int, device, dtype):
        torch = _torch()

        def zeros():
            return [torch.zeros(rows, kv_heads, size, head_dim, device=device, dtype=dtype) for _ in range(layers)]

        return cls(k=zeros(), v=zeros(), slot_pos=torch.full((rows, size), EMPTY, device=device, dtype=torch.long),
                   pos=torch.zeros(rows, device=device, dtype=torch.long),
                   written=torch.zeros(rows, device=device, dtype=torch.long), window=window, size=size,
                   host_pos=[0] * rows, host_written=[0] * rows, shifted=[0] * rows)

    def tensors(self):
        return (*self.k, *self.v, self.slot_pos, self.pos, self.written)

    def reanchor(self, row: int, shift: int, cos, sin) -> None:
        """Lower every position of row ``row`` by ``shift``, rotating its cached keys by the angle
        of -shift (``cos``, ``sin``: float32, per rotary dimension)."""
        torch = _torch()
        with torch.inference_mode():
            for k in self.k:
                # In float32, rounded to the cache's dtype once: in bf16, cos and sin rounded to 8
                # bits and a bf16 product and sum made hour 8 worse than no re-anchoring at all.
                x = k[row].float()
                half = x.shape[-1] // 2
                rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
                k[row].copy_(x * cos + rotated * sin)
            slot_pos = self.slot_pos[row]
            slot_pos.sub_(torch.where(slot_pos > EMPTY // 2, shift, 0))
            self.pos[row].sub_(shift)
        self.host_pos[row] -= shift
        self.shifted[row] += shift

    def reset(self, row: int, start: int) -> None:
        # The keys need no clearing: a slot at EMPTY is masked out.
        self.slot_pos[row].fill_(EMPTY)
        self.pos[row].fill_(start)
        self.written[row].zero_()
        self.host_pos[row], self.host_written[row], self.shifted[row] = start, 0, 0


class RingRow:
    """One row of a :class:`Ring`, read the way a single stream's ring reads (tests, soak)."""

    def __init__(self, ring: Ring, row: int) -> None:
        self.ring, self.row = ring, row
        self.window, self.size = ring.window, ring.size

    @property
    def k(self) -> list:
        return [t[self.row] for t in self.ring.k]

    @property
    def v(self) -> list:
        return [t[self.row] for t in self.ring.v]

    @property
    def slot_pos(self):
        return self.ring.slot_pos[self.row]

    @property
    def pos(self):
        return self.ring.pos[self.row]

    @property
    def host_pos(self) -> int:
        return self.ring.host_pos[self.row]

    @property
    def host_written(self) -> int:
        return self.ring.host_written[self.row]

    @property
    def shifted(self) -> int:
        return self.ring.shifted[self.row]


class StaticRows:
    """``rows`` streams' whole state, allocated once (by :class:`voxcli.engine.static.StaticModel`)
    and reset in place, a row at a time, for every stream that uses it."""

    def __init__(self, model, rows: int) -> None:
        torch = _torch()
        m = model
        dev, dt = m.device, m.dtype
        self.rows = rows
        self.enc = Ring.allocate(m.enc_layers, m.enc_kv_heads, m.enc_head_dim, m.enc_window,
                                 m.enc_window + ENCODER_STEP - 1, rows, dev, dt)
        self.dec = Ring.allocate(m.dec_layers, m.dec_kv_heads, m.dec_head_dim, m.dec_window, m.dec_window, rows,
                                 dev, dt)
        self.conv1_pad = torch.zeros(rows, m.mel_bins, m.conv1_left, device=dev, dtype=dt)
        self.conv2_pad = torch.zeros(rows, m.enc_hidden, m.conv2_left, device=dev, dtype=dt)
        self.ada = torch.zeros(m.dec_layers, rows, 1, m.dec_hidden, device=dev, dtype=dt)
        self.token = torch.zeros(rows, 1, device=dev, dtype=torch.long)  # the last token, fed to the next step
        self.bias = torch.zeros(rows, m.vocab, device=dev, dtype=dt)  # added to each row's scores (keyterms)
        self.mel = torch.zeros(rows, m.mel_bins, m.frames_per_token, device=dev, dtype=torch.float32)  # a step's input
        # A step's convolution inputs, padding and new frames side by side (no cat per step).
        self.conv1_in = torch.zeros(rows, m.mel_bins, m.conv1_left + m.frames_per_token, device=dev, dtype=dt)
        self.conv2_in = torch.zeros(rows, m.enc_hidden, m.conv2_left + m.frames_per_token, device=dev, dtype=dt)
        self.active = torch.zeros(rows, device=dev, dtype=torch.bool)  # the rows a step advances
        self.prefill_rows = torch.zeros(rows, device=dev, dtype=torch.long)  # the rows a prefill starts
        self.delay_tokens: list[int | None] = [None] * rows
        self.free = list(range(rows))  # lowest first: the rows in use stay in the smallest bucket
        self.states = [StaticState(self, r) for r in range(rows)]
        buffers = (self.conv1_pad, self.conv2_pad, self.conv1_in, self.conv2_in, self.ada, self.token, self.bias, self.mel,
                   self.active, self.prefill_rows)
        for t in (*self.enc.tensors(), *self.dec.tensors(), *buffers):
            _mark_static(t)

    def take(self) -> StaticState | None:
        if not self.free:
            return None
        self.free.sort()
        return self.states[self.free.pop(0)]

    def give_back(self, row: int) -> None:
        if row not in self.free:
            self.free.append(row)

    def in_use(self) -> int:
        return self.rows - len(self.free)


class StaticState:
    """One stream's row of a :class:`StaticRows`: what a session holds while it runs."""

    def __init__(self, rows: StaticRows, row: int) -> None:
        self.rows, self.row = rows, row
        self.dec = RingRow(rows.dec, row)
        self.enc = RingRow(rows.enc, row)

    @property
    def conv1_pad(self):
        return self.rows.conv1_pad[self.row]

    @property
    def conv2_pad(self):
        return self.rows.conv2_pad[self.row]

    def reset(self, model, num_delay_tokens: int, *, position_offset: int = 0) -> None:
        """A new stream in this row: its buffers cleared in place, nothing allocated (but the first
        use of a delay computes its conditioning once), the other rows untouched.
        ``position_offset``: start as if the stream had already run that many tokens (bench/soak.py's
        8-hour check). Called with the model's lock held: no forward runs meanwhile."""
        b, r = self.rows, self.row
        b.conv1_pad[r].zero_()
        b.conv2_pad[r].zero_()
        b.token[r].zero_()
        b.bias[r].zero_()  # no keyterm of the last stream here; the new one's walk writes its own
        if b.delay_tokens[r] != num_delay_tokens:
            b.ada[:, r].copy_(model.ada_scale(num_delay_tokens)[:, 0])
            b.delay_tokens[r] = num_delay_tokens
        for ring, absolute in ((b.dec, position_offset), (b.enc, position_offset * ENCODER_STEP)):
            # Where an unbroken stream would stand after that many positions of re-anchoring (or,
            # with re-anchoring off, the positions as they come: the case it avoids).
            start = bounded(absolute, ring.window) if model.reanchor else absolute
            ring.reset(r, start)
            ring.shifted[r] = absolute - start

    def advance(self, model, enc_tokens: int, dec_tokens: int) -> None:
        """Host-side bookkeeping after a forward, then re-anchor a ring whose positions reached
        twice its window (a separate, rare operation: once per window of tokens)."""
        for ring, n in ((self.rows.enc, enc_tokens), (self.rows.dec, dec_tokens)):
            r = self.row
            ring.host_pos[r] += n
            ring.host_written[r] += n
            if model.reanchor and ring.host_pos[r] >= 2 * ring.window:
                windows = (ring.host_pos[r] - ring.window) // ring.window  # back into [window, 2 x window)
                model.reanchor_row(ring, r, ring is self.rows.enc, windows * ring.window)


def _mark_static(t) -> None:
    """The tensor keeps its address for the state's life: a CUDA graph reads it in place. No
    guard on the address (older torch guards by default, which would compile again for every
    state); each state's graphs are recorded at warm-up instead."""
    torch = _torch()
    torch._dynamo.mark_static_address(t, guard=False)
