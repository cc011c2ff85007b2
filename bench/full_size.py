"""The FULL-size Realtime model on the CPU, random bfloat16 weights: what the GPU path will compile,
and how far the static step's logits are from transformers' in bf16.

    python bench/full_size.py [--steps 20] [--json FILE] [--skip-trace]

1. Trace: ``torch._dynamo.explain`` of the static prefill and of ``decode_rows`` for every span a
   warm-up compiles (one row: the bucket a lone stream runs at): graphs, graph breaks (must be 0,
   as ``fullgraph=True`` demands), ops in the graph, and the seconds it took.
2. Logits: one clip (examples/hello.wav) through the static eager step and through transformers'
   forward (``step="hf"``), both bf16, for the prefill and ``--steps`` steps: per step, the largest
   and the mean absolute difference of the logits, against the logits' own scale, and whether
   the two picked the same token.

Needs about 11 GiB of memory and several minutes on two cores (a step of the full model takes
seconds on a CPU); nothing here is a GPU figure. The weights are random (transformers' own
initialisation), the configuration and the vocabulary are the real checkpoint's.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from voxcli.audio.decode import load_audio  # noqa: E402


def full_model():
    import torch
    from transformers import VoxtralRealtimeForConditionalGeneration

    from voxcli.testing.tiny import realtime_config

    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # made in bf16 from the start: 8.9 GB, never 17.7
    try:
        model = VoxtralRealtimeForConditionalGeneration(realtime_config())
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def engine_of(model, processor, step: str):
    from voxcli.engine.local import EngineInfo, RealtimeEngine

    info = EngineInfo(model="full-size random", kind="realtime", device="cpu", dtype="bfloat16",
                      n_params=0, load_s=0.0)
    return RealtimeEngine(model, processor, info, step=step)


def trace(engine) -> list[dict]:
    """explain() each function a warm-up compiles, at one row."""
    import torch

    from voxcli.engine.forward import decode_rows, prefill

    static = engine.static
    rows = static.batch
    prompt = torch.tensor([engine.prompt_ids])
    import numpy as np

    mel = engine.log_mel(np.zeros(len(engine.left_pad) + engine.first_chunk_samples, np.float32), center=True)
    out = []
    with torch.inference_mode():
        rows.prefill_rows[:1].copy_(torch.arange(1))
        rows.active.copy_(torch.arange(rows.rows) < 1)
        jobs = [("prefill", prefill, (static, rows, prompt, mel, 1))]
        jobs += [(f"step span {span}", decode_rows, (static, rows, span, 1)) for span in static.spans()]
        for name, fn, args in jobs:
            torch._dynamo.reset()
            t0 = time.perf_counter()
            explained = torch._dynamo.explain(fn)(*args)
            seconds = time.perf_counter() - t0
            ops = sum(len([n for n in g.graph.nodes if n.op == "call_function"]) for g in explained.graphs)
            out.append({"function": name, "graphs": explained.graph_count, "breaks": explained.graph_break_count,
                        "ops": ops, "seconds": round(seconds, 1),
                        "break_reasons": [str(b.reason)[:200] for b in explained.break_reasons]})
            print(json.dumps(out[-1]), flush=True)
    return out


def logits(engine, audio, steps: int):
    """The prefill's and ``steps`` steps' logits (float32 copies) and ids, and each step's seconds."""
    session = engine.session(keep_logits=True)
    session.push(audio[:engine.first_chunk_samples + steps * engine.hop_samples + engine.window_samples])
    events, seconds = [], []
    for event in session.steps():
        events.append(event)
        seconds.append(time.perf_counter())
        if len(events) > steps:
            break
    session.close()
    return [x[0] for x in session.logits[:steps + 1]], [e.token_id for e in events[:steps + 1]], seconds


def compare(model, processor, audio, steps: int) -> dict:
    import numpy as np

    t0 = time.perf_counter()
    static_logits, static_ids, _ = logits(engine_of(model, processor, "static"), audio, steps)
    static_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    hf_logits, hf_ids, _ = logits(engine_of(model, processor, "hf"), audio, steps)
    hf_s = time.perf_counter() - t0
    rows = []
    for k, (a, b) in enumerate(zip(static_logits, hf_logits)):
        diff = (a - b).abs()
        top2 = b.topk(2).values
        rows.append({"step": k, "max_abs": float(diff.max()), "mean_abs": float(diff.mean()),
                     "scale": float(b.abs().max()), "std": float(b.std()), "same_id": static_ids[k] == hf_ids[k],
                     "top2_gap": float(top2[0] - top2[1])})
        print(json.dumps(rows[-1]), flush=True)
    return {"steps": rows, "static_s": round(static_s, 1), "hf_s": round(hf_s, 1),
            "agree": f"{sum(r['same_id'] for r in rows)} of {len(rows)}",
            "max_abs": max(r["max_abs"] for r in rows), "median_max_abs": float(np.median([r["max_abs"] for r in rows])),
            "scale": max(r["scale"] for r in rows)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--skip-trace", action="store_true")
    args = ap.parse_args()
    import torch

    from voxcli.engine.timing import cpu_name
    from voxcli.testing.tiny import FULL_NUM_TEXT_TOKENS, realtime_processor, tekken

    t0 = time.perf_counter()
    model = full_model()
    made_s = time.perf_counter() - t0
    path = Path(tempfile.mkdtemp(prefix="voxcli-full-"))
    (path / "tekken.json").write_text(json.dumps(tekken("realtime", 480, num_text_tokens=FULL_NUM_TEXT_TOKENS)))
    processor = realtime_processor(path)
    result = {"machine": cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__,
              "params": sum(p.numel() for p in model.parameters()), "made_s": round(made_s, 1)}
    print(json.dumps(result), flush=True)
    if not args.skip_trace:
        result["trace"] = trace(engine_of(model, processor, "static"))
    audio = load_audio(ROOT / "examples" / "hello.wav")
    result["logits"] = compare(model, processor, audio, args.steps)
    print(json.dumps({k: v for k, v in result["logits"].items() if k != "steps"}), flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
