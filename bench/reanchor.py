"""Encoder re-anchoring in bfloat16: how far the logits drift with it and without it.

    python bench/reanchor.py [--minutes 5] [--json FILE]

The static step keeps positions bounded: once a row's encoder position reaches twice the
encoder's window (1,500 positions, about 27 s of audio), its cached keys are rotated back by a
whole window, again every window (15 s). In bfloat16 that rotation rounds 753 cached keys once
more each time, which neither transformers nor vLLM does. This measures what that costs: the
tiny model with the real windows (encoder 750, decoder 8192) over ``--minutes`` of speech (long.wav
over and over), static eager step, in bf16 with re-anchoring and without, against a float32
reference (without: positions as they come, exact enough in float32 at these sizes).

Every run is teacher-forced to the reference's tokens (a hook on the head records the step's own
scores, then makes the reference's token win), so all runs hear and say the same: the difference
of the recorded scores is the drift of the caches, not of a transcript that took another turn.
Reported per stretch of the session: the largest and the mean absolute logit difference against
the reference, as a fraction of the reference's logit scale.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

from voxcli.audio.decode import load_audio  # noqa: E402

STRETCHES = [(0, 300), (300, 400), (1000, 1100), (2000, 2100), (3600, 3700)]  # tokens (80 ms each)


def forced_run(engine, audio, ref_ids=None):
    """(ids, raw scores per step) of one session over ``audio``; with ``ref_ids``, each step's
    token is forced to the reference's after its own scores are recorded."""
    import torch

    scores, calls = [], [0]

    def hook(module, args, output):
        raw = output[:, -1].float()
        scores.append(raw[0].clone())
        if ref_ids is not None and calls[0] < len(ref_ids):
            output = output.clone()
            output[:, -1, ref_ids[calls[0]]] = output.max() + 100.0
        calls[0] += 1
        return output

    handle = engine.model.lm_head.register_forward_hook(hook)
    try:
        session = engine.session()
        ids = []
        with torch.inference_mode():
            for i in range(0, len(audio), 1280 * 16):
                session.push(audio[i:i + 1280 * 16])
                ids += [e.token_id for e in session.steps()]
        session.close()
    finally:
        handle.remove()
    return ids, scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--model")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    import torch

    from voxcli.engine.local import load_engine
    from voxcli.engine.timing import cpu_name

    model = args.model
    if model is None:
        from voxcli.testing.tiny import make_tiny_model

        model = str(make_tiny_model(Path(tempfile.mkdtemp(prefix="voxcli-ra-")), "realtime"))
    clip = load_audio(ROOT / "examples" / "long.wav")
    audio = np.tile(clip, int(np.ceil(args.minutes * 60 * 16000 / len(clip))))[: int(args.minutes * 60 * 16000)]
    ref_engine = load_engine(model, device="cpu", dtype="float32", compile="off")
    ref_engine.static.reanchor = False
    ref_ids, ref = forced_run(ref_engine, audio)
    result = {"machine": cpu_name(), "torch": torch.__version__, "tokens": len(ref), "minutes": args.minutes,
              "encoder_window": ref_engine.static.enc_window, "stretches": []}
    runs = {}
    for name, reanchor in (("bf16, re-anchored", True), ("bf16, not re-anchored", False)):
        engine = load_engine(model, device="cpu", dtype="bfloat16", compile="off")
        engine.static.reanchor = reanchor
        ids, scores = forced_run(engine, audio, ref_ids)
        assert ids == ref_ids[:len(ids)]
        runs[name] = scores
        state = engine.static.batch.enc
        result[f"{name}: encoder shifted"] = int(max(state.shifted))
    for lo, hi in STRETCHES:
        if hi > len(ref):
            continue
        row = {"tokens": f"{lo}-{hi}", "encoder_positions": f"{4 * (lo + 39)}-{4 * (hi + 39)}"}
        for name, scores in runs.items():
            rel = [float((s - r).abs().max() / r.abs().max()) for s, r in zip(scores[lo:hi], ref[lo:hi])]
            mean = [float((s - r).abs().mean() / r.abs().max()) for s, r in zip(scores[lo:hi], ref[lo:hi])]
            row[name] = {"max": round(max(rel), 4), "mean": round(float(np.mean(mean)), 5)}
        result["stretches"].append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
