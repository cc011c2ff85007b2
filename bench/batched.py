"""The batched static step, measured: ``python bench/steps.py --batch 1,2,4,8`` (see there).

Every figure is the forward's own time (``StaticModel.step_log``: from the step's inputs to its
token ids on the host, whatever the rows), over whole clips stepped file-mode, B streams of the
same clip at a time, so every forward steps all B rows. Prefills are not counted.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

PATHS = {"static eager": False, "static compiled": True}
FINAL_DELAY_MS = 2400  # two-pass: the final stream's delay (the provisional one runs at 480)


def _engines(model_dir: str, compiled: bool, streams: int, threads: int):
    """The base engine (480 ms) and a second delay over the same weights and batches, warmed up as
    a session's engine is: every span and bucket (so dynamo's guards are narrowed, as they are in
    use), though clips here stay inside the first span (512 tokens)."""
    import torch

    from voxcli.engine.local import RealtimeEngine, load_engine

    if threads:
        torch.set_num_threads(threads)
    base = load_engine(model_dir, device="cpu", delay_ms=480, compile="on" if compiled else "off",
                       sessions=streams, warmup=False)
    info = dataclasses.replace(base.info)
    final = RealtimeEngine(base.model, base.processor, info, delay_ms=FINAL_DELAY_MS, step="static",
                           static=base.static)
    t0 = time.perf_counter()
    base.warmup()
    final.warmup()
    return base, final, time.perf_counter() - t0


def _forwards(base, engines, active: list[int], clip: np.ndarray) -> list[float]:
    """Open one session per engine, step the ``active`` ones over the whole clip together, and
    return the times of the forwards that stepped all of them."""
    static = base.static
    sessions = [e.session() for e in engines]
    stepping = [sessions[i] for i in active]
    for s in stepping:
        s.push(clip)
    static.step_log.clear()
    for _ in base.steps_together(stepping):
        pass
    times = [ms for rows, _, ms in static.step_log if rows == len(active)]
    for s in sessions:
        s.close()
    return times


def run_batched(model_dir: str, sizes: list[int], clip: np.ndarray, *, threads: int = 1, rounds: int = 2,
                runs: int = 3) -> dict:
    from voxcli.events import summarize
    from voxcli.measure.environment import environment

    clip = clip[: 30 * 16000]  # inside the first decoder span (512 tokens = 41 s)
    top = max(sizes)
    result: dict = {"batch": {}, "two_pass": {}, "masked": {}, "warmup_s": {}, "clip_s": len(clip) / 16000}
    for name, compiled in PATHS.items():
        base, final, warm_s = _engines(model_dir, compiled, top, threads)
        result["warmup_s"][name] = round(warm_s, 2)
        samples: dict[str, list[float]] = {}
        for r in range(rounds):
            order = sizes if r % 2 == 0 else sizes[::-1]  # drift in the machine is shared
            for _ in range(runs):
                for b in order:
                    samples.setdefault(str(b), []).extend(_forwards(base, [base] * b, list(range(b)), clip))
                samples.setdefault("together", []).extend(_forwards(base, [base, final], [0, 1], clip))
                samples.setdefault("alone 480", []).extend(_forwards(base, [base], [0], clip))
                samples.setdefault(f"alone {FINAL_DELAY_MS}", []).extend(_forwards(base, [final], [0], clip))
                if top >= 2:  # the upper half of a batch stepping: the lower half's rows sit out
                    samples.setdefault("masked", []).extend(
                        _forwards(base, [base] * top, list(range(top // 2, top)), clip))
        stats = {k: summarize(v) for k, v in samples.items()}
        one = stats["1"]["p50"] if "1" in stats else None
        result["batch"][name] = {
            str(b): {"step_ms_p50": stats[str(b)]["p50"], "step_ms_p99": stats[str(b)]["p99"],
                     "per_stream_ms": stats[str(b)]["p50"] / b, "forwards": stats[str(b)]["n"],
                     "x_b_single_steps": stats[str(b)]["p50"] / (b * one) if one else None}
            for b in sizes}
        apart = stats["alone 480"]["p50"] + stats[f"alone {FINAL_DELAY_MS}"]["p50"]
        result["two_pass"][name] = {"together_ms_p50": stats["together"]["p50"], "together_ms_p99": stats["together"]["p99"],
                                    "apart_ms_p50": apart, "x_apart": stats["together"]["p50"] / apart}
        if top >= 2:
            half = str(top // 2)
            result["masked"][name] = {
                "rows": f"{top // 2} of {top}", "step_ms_p50": stats["masked"]["p50"],
                f"full_{half}_ms_p50": stats[half]["p50"] if half in stats else None}
        env = environment(base)
    result["environment"] = {k: v for k, v in env.items() if k not in ("step", "compile_s")}
    result["table"] = table(result, sizes)
    return result


def table(result: dict, sizes: list[int]) -> str:
    env = result["environment"]
    lines = [f"{env['model']}: {env['n_params'] / 1e6:.2f}M params, {env['device_name']}, {env['dtype']}, "
             f"{env['torch_threads']} thread(s), torch {env['torch']}, git {str(env['git_revision'])[:7]}; "
             f"clip {result['clip_s']:.1f} s, file mode", "",
             "| path | B | step_ms p50 / p99 | per stream ms | x B single steps |", "|---|---|---|---|---|"]
    for name, per_b in result["batch"].items():
        for b in sizes:
            e = per_b[str(b)]
            x = f"{e['x_b_single_steps']:.2f}" if e["x_b_single_steps"] is not None else "-"
            lines.append(f"| {name} | {b} | {e['step_ms_p50']:.3g} / {e['step_ms_p99']:.3g} | "
                         f"{e['per_stream_ms']:.3g} | {x} |")
    lines += ["", "| path | two-pass in one forward p50 | apart (480 + 2400 alone) p50 | x apart | "
                  "masked rows: step p50 | compacted: step p50 |", "|---|---|---|---|---|---|"]
    for name, two in result["two_pass"].items():
        m = result["masked"].get(name, {})
        full = next((v for k, v in m.items() if k.startswith("full_")), None)
        lines.append(f"| {name} | {two['together_ms_p50']:.3g} | {two['apart_ms_p50']:.3g} | {two['x_apart']:.2f} | "
                     f"{m.get('rows', '-')}: {m.get('step_ms_p50', float('nan')):.3g} | "
                     f"{full if full is None else f'{full:.3g}'} |")
    return "\n".join(lines)
