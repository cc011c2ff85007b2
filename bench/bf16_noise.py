"""bf16 against bf16 on this machine's CPU kernels: the static step and transformers' forward, both
bfloat16, the same random weights (the tiny model and the held-out wrapping one, built here), over
examples/hello.wav and long.wav: the figures tests/bf16.py's bound is taken from (RESULTS.md 12).

    python bench/bf16_noise.py [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from voxcli.audio.decode import load_audio
from voxcli.engine.local import load_engine
from voxcli.testing.tiny import make_tiny_model

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run(engine, audio) -> tuple[list[int], list]:
    session = engine.session(keep_logits=True)
    events = []
    for i in range(0, len(audio), 1280):  # as live audio arrives: 80 ms at a time
        session.push(audio[i:i + 1280])
        events += session.steps()
    events += session.finish()
    return [e.token_id for e in events if e.token_id >= 0], [x[0].float() for x in session.logits]


def figures(run_ids, run_logits, ref_ids, ref_logits) -> dict:
    first = next((i for i, (a, b) in enumerate(zip(run_ids, ref_ids)) if a != b), len(ref_ids))
    apart = [float((a - b).abs().max()) / float(b.abs().max()) for a, b in zip(run_logits[:first], ref_logits[:first])]
    gap = None
    if first < len(ref_logits):
        top = ref_logits[first].topk(2).values
        gap = round(float(top[0] - top[1]) / float(ref_logits[first].abs().max()), 4)
    return {"agree": round(sum(a == b for a, b in zip(run_ids, ref_ids)) / len(ref_ids), 3),
            "first_difference": first, "ids": len(ref_ids),
            "apart_max": round(max(apart), 4) if apart else None,
            "apart_median": round(statistics.median(apart), 4) if apart else None, "top_two_gap": gap}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", metavar="OUT", help="write the figures here too")
    args = ap.parse_args(argv)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        models = {"tiny": make_tiny_model(Path(tmp) / "tiny", "realtime"),
                  "wrapping": make_tiny_model(Path(tmp) / "wrap", "realtime", seed=11, text_sliding_window=24,
                                              audio_sliding_window=40)}
        for name, path in models.items():
            engines = {step: load_engine(str(path), device="cpu", dtype="bfloat16", step=step, compile="off")
                       for step in ("static", "hf")}
            for clip in ("hello", "long"):
                audio = load_audio(EXAMPLES / f"{clip}.wav")
                rows[f"{name}, {clip}.wav"] = figures(*run(engines["static"], audio), *run(engines["hf"], audio))
                print(f"{name:9s} {clip:6s} {rows[f'{name}, {clip}.wav']}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
