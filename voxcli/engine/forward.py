"""The compilable functions of the static step: the Realtime model over rows of a batch.

:func:`prefill` starts the rows in ``b.prefill_rows[:r]`` (all with the same prompt), and
:func:`decode_rows` steps rows ``[:n]`` of the batch (a bucket), advancing only those marked
``active``: a row with nothing to do this tick computes along (its results are not kept, and it
writes only into the slots its own next step overwrites first), so the graph is the same whichever
rows step. Both read and write only tensors that live in :class:`voxcli.engine.rows.StaticRows`
(and the weights), so a compiled graph (a CUDA graph) replays with the same addresses every time.
Shaped like gpt-fast's ``prefill`` / ``decode_one_token``; the modules are transformers' own, so
the numerics match it.
"""

from __future__ import annotations

from voxcli.engine.pick import pick
from voxcli.engine.rows import Ring, StaticRows


def _torch():
    import torch

    return torch


def _attend(q, k, v, mask, scale: float, groups: int):
    """SDPA over a ring with a boolean mask; a single query per head is packed across its KV group
    (as transformers does) so no key is repeated."""
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
    """(R, 1, T, K): key visible to query iff q - window < k <= q (transformers' sliding window);
    ``q_pos`` (R, T), ``key_pos`` (R, K)."""
    diff = q_pos[:, :, None] - key_pos[:, None, :]
    return ((diff >= 0) & (diff < window))[:, None]


def _stack(layers, x, ring: Ring, rows, rotary, heads: tuple[int, int, int], *, active=None, ada=None,
           span: int | None = None):
    """The layers of one stack over ``x`` (R, T, hidden), reading and writing ``ring`` at ``rows``.

    A prefill (``active`` None; ``rows`` an index tensor; the rows' rings are empty) attends over
    its own keys only, then stores the last ``size``. A step (``rows`` the slice ``[:n]``) writes
    its T keys into each row's ring first, then attends over the first ``span`` slots of it (the
    ring is T - 1 slots longer than the window, so the oldest query still sees its whole window).
    A row not ``active`` writes its keys into the slots its next step writes first, keeps its
    positions, and attends everywhere (a mask with nothing visible would give NaN)."""
    from transformers.models.voxtral_realtime.modeling_voxtral_realtime import apply_rotary_pos_emb

    torch = _torch()
    n_heads, n_kv, head_dim = heads
    r, t = x.shape[0], x.shape[1]
    q_pos = ring.pos[rows][:, None] + torch.arange(t, device=x.device)  # (R, T)
    cos, sin = rotary(x, q_pos)
    keep = min(t, ring.size)
    slots = (ring.written[rows][:, None] + torch.arange(t - keep, t, device=x.device)) % ring.size  # (R, keep)
    index = rows[:, None] if active is None else torch.arange(r, device=x.device)[:, None]
    new_pos = q_pos[:, t - keep:]
    if active is not None:
        new_pos = torch.where(active[:, None], new_pos, ring.slot_pos[rows].gather(1, slots))
    # Index assignment (index_put_), which the compiler keeps in place; index_copy_ it would not.
    ring.slot_pos[index, slots] = new_pos
    if active is None:
        mask = _window_mask(q_pos, q_pos, ring.window)
    else:
        mask = _window_mask(q_pos, ring.slot_pos[rows, :span], ring.window) | ~active[:, None, None, None]
    groups = n_heads // n_kv
    for i, layer in enumerate(layers):
        attn = layer.self_attn
        residual = x
        h = (layer.input_layernorm if ada is not None else layer.self_attn_layer_norm)(x)
        q = attn.q_proj(h).view(r, t, n_heads, head_dim).transpose(1, 2)
        k = attn.k_proj(h).view(r, t, n_kv, head_dim).transpose(1, 2)
        v = attn.v_proj(h).view(r, t, n_kv, head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        ring.k[i][index, :, slots] = k.transpose(1, 2)[:, t - keep:]
        ring.v[i][index, :, slots] = v.transpose(1, 2)[:, t - keep:]
        if active is None:
            o = _attend(q, k, v, mask, attn.scaling, groups)
        else:
            o = _attend(q, ring.k[i][rows, :, :span], ring.v[i][rows, :, :span], mask, attn.scaling, groups)
        x = residual + attn.o_proj(o.transpose(1, 2).reshape(r, t, n_heads * head_dim))
        residual = x
        h = layer.final_layer_norm(x) if ada is None else layer.post_attention_layernorm(x) * ada[i]
        x = residual + layer.mlp(h)
    moved = t if active is None else t * active
    ring.pos[index[:, 0]] = ring.pos[rows] + moved
    ring.written[index[:, 0]] = ring.written[rows] + moved
    return x


def _conv(conv, x, pad, rows, active=None, buf=None):
    """A causal convolution continuing from each row's ``pad`` (its last inputs), updated in place
    for the rows that advance. A step assembles its input in ``buf`` (the state's); a prefill, once
    a stream, concatenates."""
    torch = _torch()
    left = pad.shape[-1]
    if buf is None:
        full = torch.cat([pad[rows], x], dim=-1)
        pad[rows] = full[..., full.shape[-1] - left:]
    else:
        buf = buf[rows]
        buf[..., :left].copy_(pad[rows])
        buf[..., left:].copy_(x)
        full = buf
        pad[rows] = torch.where(active[:, None, None], full[..., full.shape[-1] - left:], pad[rows])
    return torch.nn.functional.conv1d(full, conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups)


def _audio_embeds(m, b: StaticRows, rows, mel, active=None):
    torch = _torch()
    gelu = torch.nn.functional.gelu
    step = active is not None
    mel = mel.to(m.dtype)
    x = gelu(_conv(m.tower.embedder.conv1, mel, b.conv1_pad, rows, active, b.conv1_in if step else None))
    x = gelu(_conv(m.tower.embedder.conv2, x, b.conv2_pad, rows, active, b.conv2_in if step else None))
    x = _stack(m.tower.layers, x.permute(0, 2, 1), b.enc, rows, m.tower.rotary_emb,
               (m.enc_heads, m.enc_kv_heads, m.enc_head_dim), active=active)
    x = m.tower.norm(x)
    x = x.reshape(x.shape[0], -1, m.enc_hidden * m.downsample)
    return m.projector(x)


def _logits(m, b: StaticRows, rows, embeds, active=None, span: int | None = None):
    x = _stack(m.lm.layers, embeds, b.dec, rows, m.lm.rotary_emb, (m.dec_heads, m.dec_kv_heads, m.dec_head_dim),
               active=active, ada=b.ada[:, rows], span=span)
    x = m.lm.norm(x[:, -1:])
    logits = m.lm_head(x)[:, -1]
    next_id, packed = pick(logits, b.bias[rows], m.top_k)
    return next_id, packed, logits


def prefill(m, b: StaticRows, prompt_ids, mel, r: int):
    """The prompt (r, P) with its P x 8 mel frames (r, bins, 8P), for the rows in
    ``b.prefill_rows[:r]``: their first tokens, as :func:`voxcli.engine.pick.pick` packs them
    (r, ...), and logits (r, vocab)."""
    rows = b.prefill_rows[:r]
    embeds = m.lm.embed_tokens(prompt_ids) + _audio_embeds(m, b, rows, mel)
    next_id, packed, logits = _logits(m, b, rows, embeds)
    b.token[rows] = next_id[:, None]
    return packed, logits


def decode_rows(m, b: StaticRows, span: int, n: int):
    """One step of rows ``[:n]``: 8 mel frames and the last token of each (both in the state) ->
    the next tokens (packed, (n, ...)) and logits (n, vocab), attending over the first ``span`` decoder slots.
    The rows marked active advance; their next token is written back into the state, so the host
    reads it only to print it."""
    torch = _torch()
    rows = slice(0, n)
    active = b.active[:n]
    embeds = m.lm.embed_tokens(b.token[:n]) + _audio_embeds(m, b, rows, b.mel[:n], active)
    next_id, packed, logits = _logits(m, b, rows, embeds, active, span)
    b.token[:n] = torch.where(active[:, None], next_id[:, None], b.token[:n])
    return packed, logits
