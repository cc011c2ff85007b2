"""The FULL-size Voxtral Mini 4B Realtime on a GPU, with random weights built on the device: no
download, no hub, so it runs on a machine without network (bench/README.md lists the wheels).

For each step path (transformers' eager forward ``hf``, voxcli's ``static`` step eager, and
``compiled``: the static step under torch.compile with CUDA graphs), on the same model object:

- ``step_ms`` p50/p99: one Realtime step (80 ms of audio), flat out, ended by the host reading the id;
- ``ttft_ms``: the whole clip handed to the engine -> first token id on the host (any id:
  random weights seldom make text), and
  ``critical_path_ms``: the prefill alone (features, encoder, decoder, first id);
- ``compile_s`` (compiled only, apart from every step figure) and ``peak_mem_gib`` (allocated);
- then, for the fastest path, ``sessions``: how many sessions stepped in turn by one thread keep
  real time (every session's 80 ms step done within 80 ms of wall clock, p95 over the rounds);
- ``batched`` (the compiled path if it ran, else static eager): B streams stepped together in one
  forward, B = 1, 2, 4, ... up to ``--max-sessions`` or what memory holds, each B's step p50/p99
  and peak memory as a phase line of its own, the memory one stream's row costs, and the
  largest B whose step p99 stays under 40 ms (half the 80 ms budget).

- for the compiled path also: ``compile_warm_s`` (a second engine over the same weights: the
  compile caches are warm), ``graphs_after_warmup`` (CUDA graphs recorded, and cudagraph skips,
  while sessions ran after warm-up: both must be 0), ``long_session`` (steps 505-520 and
  2040-2055 of one session, around the decoder spans 512 and 2048) and ``two_pass`` (a 480 ms and
  a 960 ms stream on the same audio, in one forward). Every path's phase names what warm-up
  compiled and recorded (``graphs``) and why compiling failed if it did (``compile_fallback``).
- ``static_vs_hf``: the static step's logits against transformers' forward in bf16, the prefill
  and 20 steps (max and mean |difference| against the scale; ids that agree).
- ``eos_ab``: ``transcription.on_eos`` restart against pad over a 30 s clip, the model made to say
  end of sequence every 60 steps: wall time, step p50/p99, restarts.

Random weights make meaningless tokens; the step's work does not depend on them. The bandwidth
floor (weights read once a step) is printed beside the figures. A GPU machine is lent for
minutes: every phase runs under a hard deadline (what is left of ``--budget-s``), and with
``--json F`` each finished phase is one JSON line in F, flushed at once, so a kill keeps what was
done; the last line is the whole result. The same whole result goes to stdout.

    python bench/gpu.py                                   # cuda, bfloat16, all three paths (< 8 min on one H200)
    python bench/gpu.py --paths compiled,static --json gpu.jsonl
    python bench/gpu.py --tiny --device cpu --budget-s 60 --json F   # smoke test of this script (seconds)
    bash bench/gpu.sh                                     # on a lent GPU machine: wheels, then the phases
"""

from __future__ import annotations

import time

T_PROCESS = time.perf_counter()  # --budget-s counts from here, imports included

import argparse
import contextlib
import json
import platform
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

from voxcli.events import percentile
from voxcli.measure.environment import host

ROOT = Path(__file__).resolve().parent.parent

PATHS = {"hf": ("hf", False), "static": ("static", False), "compiled": ("static", True)}
BANDWIDTH_TB_S = {"H200": 4.8, "H100": 3.35, "A100": 2.0, "L40S": 0.864, "RTX 4090": 1.0}
STEP_BUDGET_MS = 80.0


def build(device: str, dtype_name: str, tiny: bool, delay_ms: int):
    """The full-size (or tiny) Realtime model, random weights made directly on ``device``, and
    its processor over a full 131072-id tokenizer with the real special-token layout."""
    import torch
    from transformers import VoxtralRealtimeForConditionalGeneration

    from voxcli.testing.tiny import (
        FULL_NUM_TEXT_TOKENS,
        NUM_SPECIAL_TOKENS,
        TINY_SIZES,
        realtime_config,
        realtime_processor,
        tekken,
    )

    tmp = Path(tempfile.mkdtemp(prefix="voxcli-gpu-"))
    n_text = 1900 if tiny else FULL_NUM_TEXT_TOKENS
    (tmp / "tekken.json").write_text(json.dumps(tekken("realtime", delay_ms, num_text_tokens=n_text)))
    processor = realtime_processor(tmp)
    if tiny:
        config = realtime_config(vocab_size=NUM_SPECIAL_TOKENS + n_text, hidden_size=64, num_layers=2,
                                 num_heads=TINY_SIZES["num_heads"], num_kv_heads=TINY_SIZES["num_kv_heads"])
    else:
        config = realtime_config()  # transformers' defaults: the real checkpoint's figures
    dtype = getattr(torch, dtype_name)
    t0 = time.perf_counter()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = VoxtralRealtimeForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    model = model.to(device=device, dtype=dtype).eval()
    _sync(device)
    return model, processor, time.perf_counter() - t0


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def clip(seconds: float) -> np.ndarray:
    from voxcli.audio.decode import load_audio

    audio = load_audio(ROOT / "examples" / "hello.wav")
    reps = int(np.ceil(seconds * 16000 / len(audio)))
    return np.tile(audio, reps)[: int(seconds * 16000)]


def pct(values, q: float):
    value = percentile(values, q)
    return None if value is None else round(value, 3)


def measure_path(engine, audio: np.ndarray, runs: int, device: str) -> dict:
    import torch

    from voxcli.engine.timing import critical_path_ms

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    if engine.static is not None:
        # Only the decoder spans these sessions reach: compiling all of them costs minutes at full size.
        tokens = len(engine.prompt_ids) + len(audio) // 1280 + engine.num_right_pad_tokens + 2
        engine.warmup(spans=[s for s in engine.static.spans() if s <= engine.static.span(tokens)])
    else:
        engine.warmup()
    warm_s = time.perf_counter() - t0
    steps, ttft, crit = [], [], []
    for _ in range(runs):
        _sync(device)
        t_start = time.perf_counter()
        session = engine.session()
        session.push(audio)  # the whole clip at once: ttft as `voxcli bench` defines it
        events = list(session.steps()) + list(session.finish())
        # The first id, special or not: random weights seldom make text.
        ttft.append((events[0].t_emitted - t_start) * 1000.0 if events else None)
        steps += list(session.step_ms)
        crit.append(critical_path_ms(engine, audio))
    out = {
        "step": engine.step_name, "warmup_s": round(warm_s, 2),
        "compile_s": engine.info.compile_s,
        # What warm-up compiled and recorded; why compiling failed, if it did (the step then runs eagerly).
        "graphs": engine.info.graphs, "compile_fallback": engine.info.compile_fallback,
        "step_ms": {"n": len(steps), "p50": pct(steps, 50), "p99": pct(steps, 99)},
        "ttft_ms": {"n": len(ttft), "p50": pct([t for t in ttft if t is not None], 50)},
        "critical_path_ms": {"n": len(crit), "p50": pct(crit, 50)},
    }
    if device.startswith("cuda"):
        out["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out


def sessions_in_real_time(engine, audio: np.ndarray, max_sessions: int, deadline: float) -> dict:
    """Double the number of sessions stepped in turn by one thread until a round of 80 ms steps
    (one per session) no longer fits into 80 ms (p95 over the rounds after the prefill). A static
    engine has the rows it was made with and no more (its rows never move: the ``batched`` phase
    steps many streams together); transformers' forward keeps caches of its own per session."""
    tried = {}
    n, best = 1, 0
    if engine.static is not None:
        max_sessions = min(max_sessions, engine.static.streams)
    while n <= max_sessions and time.perf_counter() < deadline:
        sessions = [engine.session() for _ in range(n)]
        rounds = []
        hop = 1280
        for i in range(0, len(audio), hop):
            t0 = time.perf_counter()
            for s in sessions:
                s.push(audio[i:i + hop])
                for _ in s.steps():
                    pass
            rounds.append((time.perf_counter() - t0) * 1000.0)
        for s in sessions:
            list(s.finish())
        steady = rounds[len(rounds) // 4:]
        p95 = pct(steady, 95)
        tried[n] = {"round_ms_p50": pct(steady, 50), "round_ms_p95": p95}
        if p95 is None or p95 > STEP_BUDGET_MS:
            break
        best = n
        n *= 2
    return {"keep_real_time": best, "tried": tried}


class Deadline(Exception):
    """A phase ran past what was left of the budget."""


@contextlib.contextmanager
def deadline_at(t_end: float):
    """A hard deadline for the phase inside: SIGALRM raises Deadline in the main thread (a
    Python loop stops at once; a running GPU kernel first finishes)."""
    left = t_end - time.perf_counter()
    if left <= 0:
        raise Deadline("no time left")
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def alarm(signum, frame):
        raise Deadline(f"past the budget ({left:.0f} s were left)")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, left)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Phases:
    """Each finished phase: one JSON line, written and flushed at once."""

    def __init__(self, path: str | None) -> None:
        self.file = open(path, "w", encoding="utf-8") if path else None  # noqa: SIM115 - kept open for the run

    def write(self, phase: str, data: dict) -> None:
        line = json.dumps({"phase": phase, **data})
        print(f"gpu.py: {line}", file=sys.stderr, flush=True)
        if self.file is not None:
            self.file.write(line + "\n")
            self.file.flush()


def versions(device: str) -> dict:

    out = {**host(), "driver": None}
    if device.startswith("cuda"):
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10)
            out["driver"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 and smi.stdout.strip() else None
        except (OSError, subprocess.SubprocessError):
            pass
    return out


@contextlib.contextmanager
def count_recordings():
    """CUDA graphs recorded (and cudagraph skips) while the block runs."""
    import torch
    from torch._dynamo.utils import counters

    seen = {"recorded": 0}
    skips = counters["inductor"]["cudagraph_skips"]
    graph_cls = getattr(torch.cuda, "CUDAGraph", None)
    original = getattr(graph_cls, "capture_begin", None)
    if original is not None:
        def capture_begin(self, *a, **kw):
            seen["recorded"] += 1
            return original(self, *a, **kw)

        graph_cls.capture_begin = capture_begin
    try:
        yield seen
    finally:
        if original is not None:
            graph_cls.capture_begin = original
        seen["skips"] = counters["inductor"]["cudagraph_skips"] - skips


def compiled_extras(engine, engine_again, audio: np.ndarray, device: str, phases: Phases, t_end: float) -> None:
    """The compiled path's own phases, each written as it finishes."""
    if engine_again is not None:
        phases.write("compile_warm", {"compile_s": engine_again.info.compile_s})
    engine.static.compilation.graphs.settle()  # the counts are the process's: engine_again's compile is not this engine's
    with deadline_at(t_end), count_recordings() as seen:
        for _ in range(2):  # sessions after warm-up, in new engine threads, as files and listen run them
            from voxcli.live.runner import transcribe_audio

            transcribe_audio(engine, audio, source="clip", on_event=lambda e: None)
    phases.write("graphs_after_warmup", {**seen, "counted": engine.static.compilation.graphs.after_warmup.to_dict()})
    with deadline_at(t_end):
        long_audio = np.tile(audio, int(np.ceil(2100 * 1280 / len(audio))))[: 2100 * 1280]
        session = engine.session()
        session.push(long_audio)
        for _ in session.steps():
            pass
        steps = list(session.step_ms)
        session.close()
    phases.write("long_session", {"steps_505_520_ms": [round(x, 3) for x in steps[504:520]],
                                  "steps_2040_2055_ms": [round(x, 3) for x in steps[2039:2055]],
                                  "step_ms_p50": pct(steps, 50), "step_ms_p99": pct(steps, 99)})
    with deadline_at(t_end):
        final = engine.with_delay(960)
        a, b = engine.session(), final.session()
        both = []
        for i in range(0, len(audio), 1280):
            _sync(device)
            t0 = time.perf_counter()
            for s in (a, b):
                s.push(audio[i:i + 1280])
            for _ in engine.steps_together([a, b]):  # one forward for both streams
                pass
            both.append((time.perf_counter() - t0) * 1000.0)
        list(a.finish()), list(b.finish())
    phases.write("two_pass", {"step_ms_p50": pct(both[10:], 50), "step_ms_p99": pct(both[10:], 99),
                              "provisional_ms_p50": pct(list(a.step_ms), 50), "final_ms_p50": pct(list(b.step_ms), 50)})


def static_vs_hf(static_engine, hf_engine, audio: np.ndarray, steps: int = 20) -> dict:
    """The static step against transformers' forward on the same weights (bf16 on a GPU): each
    step's logits apart (max and mean |difference|, and the scale), and whether the ids agree, over
    the prefill and ``steps`` steps (bench/full_size.py does the same on the CPU)."""
    runs = []
    for engine in (static_engine, hf_engine):
        session = engine.session(keep_logits=True)
        session.push(audio[:engine.first_chunk_samples + steps * engine.hop_samples + engine.window_samples])
        ids = [e.token_id for _, e in zip(range(steps + 1), session.steps())]
        runs.append((ids, [x[0] for x in session.logits[:steps + 1]]))
        session.close()
    (a_ids, a), (b_ids, b) = runs
    apart = [float((x - y).abs().max()) for x, y in zip(a, b)]
    return {"steps": len(apart), "ids_agree": sum(x == y for x, y in zip(a_ids, b_ids)),
            "max_abs": round(max(apart), 4), "median_max_abs": round(float(np.median(apart)), 4),
            "mean_abs": round(float(np.mean([float((x - y).abs().mean()) for x, y in zip(a, b)])), 5),
            "scale": round(max(float(y.abs().max()) for y in b), 3)}


def eos_ab(model, processor, info, *, compiled: bool, delay_ms: int, audio: np.ndarray, every: int = 60) -> dict:
    """transcription.on_eos, restart against pad, on a long clip: the model is made to say end of
    sequence every ``every`` steps (random weights seldom do); the session's wall time, its steps'
    p50/p99, and the restarts each policy made."""
    from voxcli.engine.local import RealtimeEngine

    out = {"every": every, "clip_s": round(len(audio) / 16000, 1)}
    for policy in ("restart", "pad"):
        engine = RealtimeEngine(model, processor, info, delay_ms=delay_ms, step="static", compile=compiled,
                                on_eos=policy)
        engine.warmup(spans=[engine.static.spans()[0]])
        calls = [0]

        def say_eos(module, args, output, calls=calls, eos=engine.eos_id):
            calls[0] += 1
            if calls[0] % every == 0:
                output = output.clone()
                output[..., eos] = output.max() + 10.0
            return output

        handle = model.lm_head.register_forward_hook(say_eos)
        try:
            t0 = time.perf_counter()
            events = list(engine.transcribe(audio))
            wall = time.perf_counter() - t0
        finally:
            handle.remove()
        steps = [e.step_ms for e in events if e.step_ms]
        out[policy] = {"wall_s": round(wall, 2), "tokens": len(events), "eos": sum(e.token_id == engine.eos_id for e in events),
                       "restarts": sum(e.restart_at_s is not None for e in events),
                       "step_ms_p50": pct(steps, 50), "step_ms_p99": pct(steps, 99)}
    return out


def batched(model, processor, info, *, compiled: bool, delay_ms: int, audio: np.ndarray, max_streams: int,
            device: str, phases: Phases, t_end: float) -> dict:
    """Many streams, one forward: B streams of the clip stepped together, for every bucket up to
    ``max_streams`` (or what memory holds), each B's step p50/p99 written as its own phase; the
    largest B whose p99 is under half the budget."""
    import torch

    from voxcli.engine.local import RealtimeEngine
    from voxcli.engine.rows import StaticRows
    from voxcli.engine.static import StaticModel

    probe = StaticModel(model, streams=1)
    row_bytes = sum(t.numel() * t.element_size() for t in (*StaticRows(probe, 1).enc.tensors(),
                                                           *StaticRows(probe, 1).dec.tensors()))
    streams = max_streams
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        # Leave room for the activations of the widest forward (a few GiB at 64 rows).
        streams = max(1, min(max_streams, int((free - 8 * 2**30) // row_bytes)))
    static = StaticModel(model, compile=compiled, streams=streams)
    engine = RealtimeEngine(model, processor, info, delay_ms=delay_ms, step="static", static=static)
    t0 = time.perf_counter()
    with deadline_at(t_end):
        engine.warmup(spans=static.spans()[:1])  # clips here stay inside the first decoder span
    out = {"path": "compiled" if compiled else "static", "rows": streams, "row_gib": round(row_bytes / 2**30, 3),
           "warmup_s": round(time.perf_counter() - t0, 1), "by_batch": {}}
    phases.write("batched_setup", dict(out))
    for b in static.buckets():
        try:
            with deadline_at(t_end):
                sessions = [engine.session() for _ in range(b)]
                for s in sessions:
                    s.push(audio)
                static.step_log.clear()
                for _ in engine.steps_together(sessions):
                    pass
                times = [ms for rows, _, ms in static.step_log if rows == b]
                for s in sessions:
                    s.close()
        except Deadline as exc:
            phases.write(f"batched_{b}", {"error": str(exc)})
            break
        entry = {"step_ms_p50": pct(times, 50), "step_ms_p99": pct(times, 99), "n": len(times),
                 "per_stream_ms": (pct(times, 50) or 0.0) / b}
        if device.startswith("cuda"):
            entry["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        out["by_batch"][str(b)] = entry
        phases.write(f"batched_{b}", entry)
    fits = [int(b) for b, v in out["by_batch"].items() if v["step_ms_p99"] is not None
            and v["step_ms_p99"] < STEP_BUDGET_MS / 2]
    out["largest_under_40_ms"] = max(fits) if fits else None
    return out


def floor_ms(n_params: int, dtype_bytes: int, device_name: str) -> dict | None:
    for key, tb_s in BANDWIDTH_TB_S.items():
        if key in device_name:
            return {"bandwidth_tb_s": tb_s, "weights_gib": round(n_params * dtype_bytes / 2**30, 2),
                    "floor_ms": round(n_params * dtype_bytes / (tb_s * 1e12) * 1000.0, 2)}
    return None


class _Run:
    """One run of this script: the arguments, the model built once, the figures so far."""

    def __init__(self, args, model, processor, build_s: float, audio: np.ndarray, deadline: float, phases) -> None:
        self.args, self.model, self.processor, self.build_s = args, model, processor, build_s
        self.n_params = sum(t.numel() for t in model.parameters())
        self.audio, self.deadline, self.phases = audio, deadline, phases
        self.engines: dict = {}
        self.result: dict = {"paths": {}}

    def info(self):
        from voxcli.engine.contract import EngineInfo

        return EngineInfo(model="random", kind="realtime", device=self.args.device, dtype=self.args.dtype,
                          n_params=self.n_params, load_s=self.build_s)

    def engine(self, step: str, compiled: bool):
        from voxcli.engine.realtime import RealtimeEngine

        return RealtimeEngine(self.model, self.processor, self.info(), delay_ms=self.args.delay_ms, step=step,
                              compile=compiled)

    def phase(self, name: str, measure) -> None:
        """``measure()`` within the deadline, its figures (or its error) written as phase ``name``."""
        try:
            with deadline_at(self.deadline):
                self.result[name] = measure()
            self.phases.write(name, self.result[name])
        except Exception as exc:  # noqa: BLE001 - the figures before it stand
            self.phases.write(name, {"error": f"{type(exc).__name__}: {first_line(exc)}"})


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    p.add_argument("--paths", default="hf,static,compiled", help="comma-separated: hf, static, compiled")
    p.add_argument("--delay-ms", type=int, default=480)
    p.add_argument("--clip-s", type=float, default=8.0, help="audio per run (examples/hello.wav looped)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--max-sessions", type=int, default=64)
    p.add_argument("--budget-s", type=float, default=420.0, help="stop starting new measurements after this")
    p.add_argument("--tiny", action="store_true", help="a tiny model instead of the full size (smoke test)")
    p.add_argument("--json", help="write one JSON line per finished phase here (flushed as it finishes)")
    p.add_argument("--save-checkpoint", metavar="DIR",
                   help="only write the model (random weights) and its processor to DIR, for voxcli serve "
                        "(gpu.sh's server phase), and stop")
    args = p.parse_args(argv)
    args.paths = [x for x in args.paths.split(",") if x]
    unknown = set(args.paths) - set(PATHS)
    if unknown:
        p.error(f"unknown path(s) {', '.join(sorted(unknown))}; choose from {', '.join(PATHS)}")
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("CUDA is not available here (use --device cpu --tiny for a smoke test)")
    return args


def _measure_paths(run: _Run) -> None:
    """Each step path's figures (one failing must not hide the others'); the compiled one's extras."""
    args, result = run.args, run.result
    for name in args.paths:
        if time.perf_counter() > run.deadline:
            result["paths"][name] = {"skipped": "over the time budget"}
            continue
        step, compiled = PATHS[name]
        try:
            with deadline_at(run.deadline):
                engine = run.engine(step, compiled)
                result["paths"][name] = measure_path(engine, run.audio, args.runs, args.device)
            run.engines[name] = engine
        except Exception as exc:  # noqa: BLE001 - one path failing must not hide the others' figures
            result["paths"][name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
        run.phases.write(name, result["paths"][name])
        if name == "compiled" and name in run.engines:
            try:
                with deadline_at(run.deadline):
                    again = run.engine(step, True)
                    again.warmup(spans=[engine.static.spans()[0]])
                compiled_extras(run.engines[name], again, run.audio, args.device, run.phases, run.deadline)
            except Exception as exc:  # noqa: BLE001
                run.phases.write("compiled_extras", {"error": f"{type(exc).__name__}: {first_line(exc)}"})


def _measure_beyond(run: _Run) -> None:
    """static against hf, sessions in real time, the batched step, EOS with and without restarts."""
    args, result, engines = run.args, run.result, run.engines
    if "static" in engines and "hf" in engines:
        run.phase("static_vs_hf", lambda: static_vs_hf(engines["static"], engines["hf"], run.audio))
    timed = {k: v for k, v in result["paths"].items() if v.get("step_ms", {}).get("p50")}
    if not timed:
        return
    fastest = min(timed, key=lambda k: timed[k]["step_ms"]["p50"])
    result["fastest"] = fastest
    if "hf" in timed:
        result["speedup_vs_hf"] = {k: round(timed["hf"]["step_ms"]["p50"] / v["step_ms"]["p50"], 2)
                                   for k, v in timed.items()}
    short = clip(min(args.clip_s, 4.0))
    run.phase("sessions", lambda: {"path": fastest, **sessions_in_real_time(engines[fastest], short,
                                                                            args.max_sessions, run.deadline)})
    batched_path = "compiled" if "compiled" in timed else "static" if "static" in timed else None
    if batched_path is not None:
        run.phase("batched", lambda: batched(run.model, run.processor, run.info(),
                                             compiled=batched_path == "compiled", delay_ms=args.delay_ms,
                                             audio=short, max_streams=args.max_sessions, device=args.device,
                                             phases=run.phases, t_end=run.deadline))
    long_clip = np.tile(run.audio, int(np.ceil(30 * 16000 / len(run.audio))))[:30 * 16000]
    run.phase("eos_ab", lambda: eos_ab(run.model, run.processor, run.info(), compiled="compiled" in timed,
                                       delay_ms=args.delay_ms, audio=long_clip))


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    t_begin = T_PROCESS
    deadline = t_begin + args.budget_s - 1.0  # the last second: the summary line
    import torch

    model, processor, build_s = build(args.device, args.dtype, args.tiny, args.delay_ms)
    if args.save_checkpoint:
        model.save_pretrained(args.save_checkpoint)
        processor.save_pretrained(args.save_checkpoint)
        print(json.dumps({"checkpoint": args.save_checkpoint, "build_s": round(build_s, 1),
                          "save_s": round(time.perf_counter() - t_begin - build_s, 1)}))
        return 0
    run = _Run(args, model, processor, build_s, clip(args.clip_s), deadline, Phases(args.json))
    device_name = (torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda")
                   else platform.processor() or "cpu")
    run.result["environment"] = {
        "device": args.device, "device_name": device_name, "dtype": args.dtype,
        "model": "tiny random" if args.tiny else "full-size random Voxtral Mini 4B Realtime",
        "n_params": run.n_params, "build_s": round(build_s, 1), "delay_ms": args.delay_ms,
        "clip_s": args.clip_s, "runs": args.runs}
    run.result["floor"] = floor_ms(run.n_params, torch.finfo(getattr(torch, args.dtype)).bits // 8, device_name)
    run.phases.write("environment", {**run.result["environment"], "versions": versions(args.device),
                                     "floor": run.result["floor"]})
    _measure_paths(run)
    _measure_beyond(run)
    result = run.result
    result["wall_s"] = round(time.perf_counter() - t_begin, 1)
    run.phases.write("summary", result)
    print(json.dumps(result, indent=1))
    return 0


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


if __name__ == "__main__":
    sys.exit(main())
