"""The three Realtime step paths side by side, in one run, on one loaded model.

``hf eager`` (transformers' forward, the reference), ``static eager`` and ``static compiled``
(voxcli/static.py) each go through ``voxcli bench``'s own machinery (``run_bench``: warm-up runs
discarded, file mode, and with ``--paced`` the live pipeline at real speed), on the same model
object, clips and process, path after path, then round after round (``--rounds``) so drift in
the machine is shared. Compile time is reported apart from every step figure.

    python bench/steps.py --model DIR                       # a local Realtime checkpoint
    python bench/steps.py --model DIR --paced --json steps.json
    python bench/steps.py --tiny                            # builds the tiny model (hidden 64, 2 layers)
    python bench/steps.py --tiny --hidden-size 256 --layers 4   # the "mid" model
    python bench/steps.py --tiny --batch 1,2,4,8 --json batch.json   # many streams, one forward

Prints a markdown table (bench/RESULTS.md's section 5 was pasted from it) and, with
``--json``, every raw sample per path.

``--batch 1,2,4,8`` measures instead the batched step (voxcli/engine/static.py) on the static
eager and compiled paths, in one run: B streams of the same clip stepped together, forward after
forward, for each B; two-pass (two streams at 480 and 2400 ms) in one forward and apart; and B/2
streams masked into a batch of B (what compacting the batch would save). Its JSON holds
``{"batch": {PATH: {"B": {"step_ms_p50", "step_ms_p99", "per_stream_ms"}}}, "two_pass": ...,
"masked": ...}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PATHS = {"hf eager": ("hf", False), "static eager": ("static", False), "static compiled": ("static", True)}
FIGURES = ("engine_step_ms", "step_ms", "ttft_ms", "critical_path_ms", "emitted_after_ready_ms", "live_step_ms")


def engines(model_dir: str, threads: int, delay_ms: int | None):
    """One loaded model, one engine per path over it (weights shared)."""
    import torch

    from voxcli.engine.local import RealtimeEngine, load_engine

    if threads:
        torch.set_num_threads(threads)
    base = load_engine(model_dir, device="cpu", delay_ms=delay_ms, step="hf", warmup=False)
    out = {}
    for name, (step, compiled) in PATHS.items():
        info = dataclasses.replace(base.info)
        engine = RealtimeEngine(base.model, base.processor, info, delay_ms=base.delay_ms, step=step,
                                compile=compiled)
        t0 = time.perf_counter()
        engine.warmup()
        out[name] = (engine, time.perf_counter() - t0)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="a local Realtime checkpoint directory")
    p.add_argument("--tiny", action="store_true", help="build a tiny random model instead")
    p.add_argument("--hidden-size", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is steadier on 2 cores)")
    p.add_argument("--delay-ms", type=int)
    p.add_argument("--runs", type=int, default=10, help="measured runs per clip and round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--paced", action="store_true", help="also the live pipeline at real speed")
    p.add_argument("--json")
    p.add_argument("--batch", help="comma-separated batch sizes: measure the batched step instead")
    p.add_argument("clips", nargs="*", type=Path, help="default: examples/*.wav")
    args = p.parse_args(argv)

    from voxcli.audio.decode import load_audio
    from voxcli.cli.bench import default_clips
    from voxcli.events import pool, summarize
    from voxcli.measure.environment import environment
    from voxcli.measure.runs import BenchOptions, Clip, run_bench

    model_dir = args.model
    if args.tiny:
        from voxcli.testing.tiny import make_tiny_model

        model_dir = str(make_tiny_model(tempfile.mkdtemp(prefix="voxcli-steps-"), "realtime",
                                        hidden_size=args.hidden_size, num_layers=args.layers))
    if not model_dir:
        p.error("give --model DIR or --tiny")
    if args.batch:
        from batched import run_batched

        sizes = sorted({int(b) for b in args.batch.split(",")})
        clip = load_audio(args.clips[0] if args.clips else ROOT / "examples" / "long.wav")
        result = run_batched(model_dir, sizes, clip, threads=args.threads, rounds=args.rounds, runs=args.runs)
        print(result.pop("table"))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1, default=float))
            print(f"raw samples -> {args.json}", file=sys.stderr)
        return 0
    clips = [Clip(path.stem, path, load_audio(path)) for path in (args.clips or default_clips())]
    paths = engines(model_dir, args.threads, args.delay_ms)
    runs: dict[str, list[dict]] = {name: [] for name in paths}
    for _ in range(args.rounds):
        for name, (engine, _) in paths.items():
            report = run_bench(engine, clips, BenchOptions(runs=args.runs, warmup=1, paced=args.paced))
            runs[name] += report.runs
            runs[name] += [{"engine_step_ms": engine_steps(engine, clip.audio)} for clip in clips
                           for _ in range(args.runs)]
    first = next(iter(paths.values()))[0]
    env = {k: v for k, v in environment(first).items() if k not in ("step", "compile_s")}
    result = {"environment": env, "model_dir": model_dir, "rounds": args.rounds, "runs": args.runs,
              "paced": args.paced, "paths": {}}
    for name, (engine, warm_s) in paths.items():
        result["paths"][name] = {
            "warmup_s": round(warm_s, 3), "compile_s": engine.info.compile_s,
            "summary": {f: summarize(pool(r.get(f) for r in runs[name])) for f in FIGURES},
            "runs": runs[name],
        }
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=float))
        print(f"raw samples -> {args.json}", file=sys.stderr)
    return 0


def engine_steps(engine, audio) -> list[float]:
    """The engine's own step times (``session.step_ms``): a session fed the whole clip, no
    pipeline, no display thread taking turns with it for the interpreter."""
    session = engine.session()
    session.push(audio)
    for _ in session.steps():
        pass
    for _ in session.finish():
        pass
    return list(session.step_ms)


def table(result: dict) -> str:
    env = result["environment"]
    hf = result["paths"]["hf eager"]["summary"]["engine_step_ms"]["p50"]
    lines = [f"{env['model']}: {env['n_params'] / 1e6:.2f}M params, {env['device_name']}, {env['dtype']}, "
             f"{env['torch_threads']} thread(s), torch {env['torch']}, git {str(env['git_revision'])[:7]}",
             "", "| path | engine step_ms p50 / p99 | x hf eager | bench step_ms p50 / p99 | ttft_ms p50 | "
             "critical_path_ms p50 | emitted_after_ready_ms p50 / p95 | compile_s |",
             "|---|---|---|---|---|---|---|---|"]
    for name, entry in result["paths"].items():
        s = entry["summary"]

        def f(metric: str, q: str = "p50") -> str:
            v = s[metric].get(q)
            return f"{v:.3g}" if v is not None else "-"

        live = f"{f('emitted_after_ready_ms')} / {f('emitted_after_ready_ms', 'p95')}" if result["paced"] else "-"
        ratio = s["engine_step_ms"]["p50"] / hf if hf else float("nan")
        compile_s = entry["compile_s"] if entry["compile_s"] is not None else "-"
        lines.append(f"| {name} | {f('engine_step_ms')} / {f('engine_step_ms', 'p99')} | {ratio:.2f} | "
                     f"{f('step_ms')} / {f('step_ms', 'p99')} | {f('ttft_ms')} | "
                     f"{f('critical_path_ms')} | {live} | {compile_s} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
