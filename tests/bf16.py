"""Comparing two bfloat16 runs of the same weights by their logits, not their token ids.

Two bf16 computations of one step that sum in another order (another kernel, another batch
shape, CUDA graphs or not) differ by bf16's own rounding, and on a random model, where the top two
tokens are often near ties, that turns some ids. Measured on this project's CPUs (bench/RESULTS.md 12, ``python bench/bf16_noise.py``: the static
step against transformers' forward, both bf16, the same weights, tiny models over hello.wav and
long.wav): until their ids first differ, the logits differ by at most 3.3% of the logit scale per
step on an Intel Xeon VM and 7.5% on an AMD EPYC one (other bf16 kernels: the noise depends on the
CPU); the first differing id comes where the top two are within 1.3% of the scale; 89-99% of the
ids agree over a clip. The bound below is that noise with room: 10% of the scale, and 85% of the ids.
"""

from __future__ import annotations

BF16_LOGIT_BOUND = 0.10  # of the largest |logit| of the step
BF16_AGREEMENT = 0.85


def assert_bf16_close(run_ids, run_logits, ref_ids, ref_logits, *, bound: float = BF16_LOGIT_BOUND,
                      agreement: float = BF16_AGREEMENT) -> dict:
    """``run`` against ``ref`` (ids and per-step logits, float): while the ids agree, each step's
    logits within ``bound`` of the scale; where they first differ, a near tie in ``ref`` (its top
    two within ``bound``); over the clip, at least ``agreement`` of the ids the same. Returns the
    figures."""
    assert len(run_ids) == len(ref_ids) and len(run_logits) == len(ref_logits) > 0
    first = next((i for i, (a, b) in enumerate(zip(run_ids, ref_ids)) if a != b), len(ref_ids))
    worst = 0.0
    for a, b in zip(run_logits[:first], ref_logits[:first]):
        scale = float(b.abs().max())
        worst = max(worst, float((a.float() - b.float()).abs().max()) / scale)
    assert worst <= bound, f"logits differ by {worst:.4f} of the scale before any id does (bound {bound})"
    if first < len(ref_logits):
        top = ref_logits[first].float().topk(2).values
        gap = float(top[0] - top[1]) / float(ref_logits[first].abs().max())
        assert gap <= bound, f"id {first} differs where the reference was sure (top-2 gap {gap:.4f} of the scale)"
    rate = sum(a == b for a, b in zip(run_ids, ref_ids)) / len(ref_ids)
    assert rate >= agreement, f"{rate:.3f} of the ids agree (at least {agreement})"
    return {"first_difference": first, "worst": worst, "agreement": rate}
