"""`voxcli bench` glue: pick clips, load the engine, run, show a table, write JSON."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.progress import Progress

from voxcli.config import Config
from voxcli.errors import AudioError, VoxcliError
from voxcli.events import STEP_BUDGET_MS, summarize
from voxcli.measure.runs import BenchOptions, Clip, run_bench
from voxcli.output.tables import metrics_table, step_words

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def default_clips() -> list[Path]:
    clips = sorted(EXAMPLES.glob("*.wav"), key=lambda p: p.stat().st_size)
    if not clips:
        raise VoxcliError("no clips given and none found in examples/; pass audio files to bench")
    return clips


def run_bench_command(cfg: Config, paths: list[Path], *, runs: int, warmup: int, paced: bool,
                      batch_words: int, json_path: Path | None, load_engine, concurrency: int = 0,
                      plot_path: Path | None = None, final_delay_ms: int | None = None, dictate: bool = False,
                      live_correct: bool = False) -> int:
    from voxcli.audio.decode import load_audio

    err = Console(stderr=True, highlight=False, soft_wrap=True)
    out = Console(highlight=False)
    clips = []
    for path in paths or default_clips():
        try:
            clips.append(Clip(path.stem, path, load_audio(path)))
        except AudioError as exc:
            raise VoxcliError(str(exc)) from None
    if concurrency:  # a local model: every session is a row of one batched step (a server's own are its)
        cfg.model.max_streams = max(cfg.model.max_streams, concurrency)
    if json_path is not None and not json_path.parent.exists():
        raise VoxcliError(f"--json {json_path}: directory {json_path.parent} does not exist")
    if plot_path is not None:
        if concurrency:
            raise VoxcliError("--plot draws bench runs, not a load test (--concurrency)")
        from voxcli.output.report import check_output

        check_output(plot_path)  # before the model loads
    engine = load_engine(cfg, err)
    if concurrency and engine.kind != "realtime" and engine.info.here:
        raise VoxcliError("--concurrency on a local model needs a Realtime model (sessions step together); "
                          "an offline model is measured one file at a time")
    if concurrency:
        return _load_command(engine, clips, concurrency, paced, json_path, out, err)
    if dictate:
        return _dictate_command(engine, clips, runs, json_path, out, err, final_delay_ms, live_correct)
    if live_correct:
        raise VoxcliError("--live-correct measures dictation: it needs --dictate (and --final-delay-ms)")
    from voxcli.live.items import LiveOptions

    live = LiveOptions.from_config(cfg)  # as listen runs: the same endpointer, the same restarts
    if final_delay_ms is not None:
        if not paced or engine.kind != "realtime" or not engine.info.other_delays:
            raise VoxcliError("--final-delay-ms measures two-pass live transcription: it needs --paced and a local "
                              "Realtime model")
        if final_delay_ms <= engine.info.delay_ms:
            raise VoxcliError(f"--final-delay-ms {final_delay_ms} must be longer than --delay-ms "
                              f"({engine.info.delay_ms})")
    opts = BenchOptions(runs=runs, warmup=warmup, paced=paced, batch_words=batch_words, live=live,
                        final_delay_ms=final_delay_ms)
    with Progress(console=err, transient=True) as bar:
        task = bar.add_task("bench", total=None)
        report = run_bench(engine, clips, opts, progress=lambda text: bar.update(task, description=text))
    summary = report.summary()["all"]
    env = report.environment
    if "n_params" in env:
        step = step_words(env.get("step"), env.get("compile_s"), graphs=env.get("graphs"),
                          fallback=env.get("compile_fallback"))
        title = (f"{env['model']} ({env['kind']}, {env['n_params'] / 1e6:.1f}M params) on {env['device_name']}, "
                 f"{env['dtype']}, {env['torch_threads']} threads{_comma(step)}; {runs} runs x {len(clips)} clips")
    else:
        title = f"{env['model']} ({env['kind']}) on {env['device']}; {runs} runs x {len(clips)} clips"
    out.print(metrics_table(title, {k: v for k, v in summary.items() if v.get("n")}))
    out.print(_verdicts(summary, batch_words))
    if json_path is not None:
        json_path.write_text(json.dumps(report.to_dict(), indent=1, default=float))
        err.print(f"raw samples, summary and environment -> {json_path}")
    if plot_path is not None:
        from voxcli.output.report import draw_bench, save

        save(draw_bench([{"source": json_path or plot_path, **report.to_dict()}]), plot_path)
        err.print(f"picture -> {plot_path}")
    return 0


def _comma(words: str) -> str:
    return f", {words}" if words else ""


def _verdicts(summary: dict, batch_words: int) -> str:
    lines = []
    ttft, chunk = summary["ttft_ms"], summary["first_chunk_ms"]
    if ttft.get("n") and chunk.get("n"):
        lines.append(f"{batch_words}-word batching would show text {chunk['p50'] - ttft['p50']:.1f} ms later "
                     f"(first_chunk_ms p50 / ttft_ms p50 = {chunk['p50'] / ttft['p50']:.2f}x)")
    crit = summary["critical_path_ms"]
    if ttft.get("n") and crit.get("n"):
        lines.append(f"pipeline overhead: ttft_ms p50 - critical_path_ms p50 = {ttft['p50'] - crit['p50']:.2f} ms")
    step = summary["step_ms"]
    if step.get("n") and crit.get("n"):  # local engines only: through a server these are delta gaps
        lines.append(f"step_ms p50 {step['p50']:.1f} vs {STEP_BUDGET_MS:.0f} ms budget: "
                     f"{STEP_BUDGET_MS / step['p50']:.1f}x headroom" if step["p50"] > 0 else "")
    return "\n".join(lines)


def _dictate_command(engine, clips, runs: int, json_path, out: Console, err: Console, final_delay_ms: int | None,
                     live_correct: bool) -> int:
    from voxcli.measure.dictation import measure_dictation
    from voxcli.measure.environment import environment

    if engine.kind != "realtime":
        raise VoxcliError("--dictate measures dictation, which needs a Realtime model")
    if live_correct and final_delay_ms is None:
        raise VoxcliError("--live-correct corrects two-pass's provisional words: give --final-delay-ms too")
    if final_delay_ms is not None and (not engine.info.other_delays or final_delay_ms <= engine.info.delay_ms):
        raise VoxcliError(f"--final-delay-ms {final_delay_ms}: two-pass needs a local Realtime model and a delay "
                          f"longer than its {engine.info.delay_ms} ms")
    final_engine = engine.with_delay(final_delay_ms) if final_delay_ms is not None else None
    with err.status(f"dictating {len(clips)} clip(s) x {runs} presses into an Xvfb window ..."):
        samples = measure_dictation(engine, [c.path for c in clips], runs, final_engine=final_engine,
                                    live_correct=live_correct)
    rows = {k: summarize(v) for k, v in samples.items()}
    mode = "" if final_engine is None else f", two-pass at {final_delay_ms} ms" + (
        ", --live-correct" if live_correct else " (final words only)")
    out.print(metrics_table(f"{engine.info.model} on {engine.info.device}: dictation{mode}, {runs} press(es) per "
                            f"clip (hotkey held while the clip plays at real speed)", rows))
    if json_path is not None:
        json_path.write_text(json.dumps({"environment": environment(engine), "dictation": {"samples": samples,
                                                                                          "summary": rows}}, indent=1))
    return 0


def _load_command(engine, clips, concurrency: int, paced: bool, json_path, out: Console, err: Console) -> int:
    from voxcli.measure.environment import environment
    from voxcli.measure.runs import run_load

    clip = clips[len(clips) // 2] if len(clips) > 2 else clips[0]
    with err.status(f"{concurrency} sessions of {clip.name} ({'paced' if paced else 'as fast as possible'}) ..."):
        load = run_load(engine, clip, concurrency=concurrency, paced=paced)
    agg = load["aggregate"]
    title = (f"{engine.info.model} on {engine.info.device}: {concurrency} simultaneous sessions of {clip.name}, "
             f"{'paced at real speed' if paced else 'as fast as possible'}")
    rows = {k: agg[k] for k in ("ttft_ms", "total_ms", "finalize_ms", "delta_interval_ms") if agg[k].get("n")}
    out.print(metrics_table(title, rows))
    rate = agg["deltas_per_s"]
    out.print(f"deltas/s (all sessions): {rate:.1f}; sessions failed: {agg['failed']}; "
              f"fell behind real time: {agg['behind']}" if rate is not None else "no session finished")
    split = load["server_split"]
    if split and split["rows"]:
        out.print(f"the server's scheduler, per row stepped (a stream's 80 ms): host {split['host_ms_per_row']:.3f} ms, "
                  f"forward {split['forward_ms_per_row']:.3f} ms ({split['rows']} rows in {split['cycles']} cycles)")
    for s in load["sessions"]:
        if s.get("error"):
            out.print(f"session {s['session']}: failed: {s['error']}")
    steps = load["batched_steps"]
    if steps["by_batch"]:
        out.print(metrics_table("the batched step (ms) by streams in one forward",
                                {f"{b} stream(s)": v for b, v in steps["by_batch"].items()}))
        fits = steps["largest_within_budget"]
        out.print(f"largest batch with step p99 under the {STEP_BUDGET_MS:.0f} ms budget: "
                  f"{fits if fits is not None else 'none'}")
    if json_path is not None:
        json_path.write_text(json.dumps({"environment": environment(engine), "load": load}, indent=1))
        err.print(f"raw samples, summary and environment -> {json_path}")
    return 1 if agg["failed"] else 0
