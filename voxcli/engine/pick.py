"""Choosing a step's token, and everything the host learns about that choice in one copy.

Every decoding path (the static step, transformers' forward, the offline model's loop) ends in
:func:`pick`: the scores are the logits plus the stream's keyterm bias (zero without keyterms:
``x + 0`` is ``x``, so the ids are exactly those without the feature), the token is their argmax,
and one float32 row per stream carries what the host reads back: the id, the id the step would
have picked without the bias, and, with ``k`` alternatives asked for, the emitted token's
log-probability and the top ``k`` ids and log-probabilities (of the scores the step decoded
from). Token ids are exact in float32 (below 2**24), so one tensor, one transfer, one sync.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def pick(logits, bias, k: int):
    """(ids (r,), packed (r, 2 or 3 + 2k) float32) for logits (r, vocab) and bias (r, vocab) or (vocab,)."""
    import torch

    scores = logits + bias
    next_id = scores.argmax(-1)
    cols = [next_id[:, None].float(), logits.argmax(-1)[:, None].float()]
    if k:
        logprobs = torch.log_softmax(scores.float(), dim=-1)
        top = logprobs.topk(k, dim=-1)
        cols += [logprobs.gather(-1, next_id[:, None]), top.indices.float(), top.values]
    return next_id, torch.cat(cols, dim=-1)


@dataclass(frozen=True, slots=True)
class Picked:
    """One stream's token as the host reads it from :func:`pick`'s row."""

    token_id: int
    plain_id: int  # without the keyterm bias
    logprob: float | None = None  # of the emitted token, with k > 0
    top: tuple[tuple[int, float], ...] = ()  # the k best (id, logprob), the emitted token first

    @property
    def p(self) -> float | None:
        return None if self.logprob is None else math.exp(self.logprob)


def unpack(row: list[float], k: int) -> Picked:
    """A row of ``pick``'s packed tensor (``.tolist()``). The emitted token is put first among the
    alternatives: it is the argmax, so no other has a higher log-probability (an exact tie may
    have come first in topk's order)."""
    token_id, plain_id = int(row[0]), int(row[1])
    if not k:
        return Picked(token_id, plain_id)
    logprob = row[2]
    ids, values = row[3:3 + k], row[3 + k:3 + 2 * k]
    others = [(int(i), v) for i, v in zip(ids, values) if int(i) != token_id]
    return Picked(token_id, plain_id, logprob, ((token_id, logprob), *others[:k - 1]))
