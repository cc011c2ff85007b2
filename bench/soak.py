"""Soak test: does the cost of one Realtime session stay flat as the work grows?

Streams ``--minutes`` of audio (default 60) through ONE :class:`voxcli.engine.RealtimeSession`
as fast as the machine allows, in 80 ms pushes, and every ``--every-s`` seconds of audio
(default 30) records: step time p50/p95 over that window, resident memory (VmRSS), the length
and position counter of the language-model and encoder KV caches, the session's own buffers
(``step_ms``, the numpy sample buffer) and, cheaply, the number of GC-tracked Python objects.
At the end it prints minute 1, the first "steady" minute (both sliding-window caches full) and
the last minute side by side, with ratios, and a verdict.

The audio is examples/hello.wav looped with gaps of silence (some digital zeros, some faint
noise) and varying gain, so the encoder sees speech, pauses and room noise, not zeros only.

    python bench/soak.py                              # tiny random model (hidden 64, 2 layers), 60 min
    python bench/soak.py --minutes 5 --json /tmp/soak.json --csv /tmp/soak.csv
    python bench/soak.py --model DIR                  # any local Realtime checkpoint
    python bench/soak.py --offset-hours 8 --minutes 1 # hour 8 vs a fresh session (tokens, logits)

The session runs voxcli's default step (``--step static``: fixed ring buffers, positions
re-anchored); ``--step hf`` runs transformers' forward.

Diagnostics, off by default:

    --tracemalloc                Python allocation diff (steady minute -> end), slow

(The demo monkeypatches this script once carried, a bounded ``step_ms`` and re-anchored RoPE
positions, landed in voxcli itself and were removed from here.)
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import gc
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from voxcli.events import percentile
from voxcli.measure.environment import host

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_RATE = 16000
PUSH_SAMPLES = 1280  # 80 ms
STEP_MS_KEEP = 4096  # what the bounded step_ms keeps (~5.5 min of steps)


# ------------------------------------------------------------------------------------ measuring


def rss_mb() -> dict[str, float]:
    """VmRSS and VmHWM of this process from /proc/self/status, in MiB (NaN where unavailable)."""
    out = {"rss_mb": math.nan, "hwm_mb": math.nan}
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    out["rss_mb"] = int(line.split()[1]) / 1024
                elif line.startswith("VmHWM:"):
                    out["hwm_mb"] = int(line.split()[1]) / 1024
    except OSError:
        try:
            import psutil  # optional fallback

            out["rss_mb"] = psutil.Process().memory_info().rss / 2**20
        except ImportError:
            pass
    return out


def malloc_trim() -> bool:
    """Give freed heap back to the OS (glibc only), to tell fragmentation from live memory."""
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


def cache_state(session) -> dict:
    """Length (what is stored), position counter (what RoPE and the mask see) and bytes of every
    cache the session owns."""
    e = session.engine
    state = session.cache_state()
    if hasattr(state, "dec"):  # the static step: ring buffers of fixed size
        out = {}
        for label, ring in (("text", state.dec), ("encoder", state.enc)):
            out[label] = {"kv_len": min(ring.host_written, ring.size), "pos": ring.host_pos,
                          "bytes": sum(t.numel() * t.element_size() for t in (*ring.k, *ring.v)),
                          "layer_types": ["ring"], "sliding_window": [ring.window]}
        out["padding_bytes"] = sum(t.numel() * t.element_size() for t in (state.conv1_pad, state.conv2_pad))
        return out
    out = {}
    names = {"text": e.cache_kwargs["cache"], "encoder": e.cache_kwargs["encoder_cache"]}
    for label, key in names.items():
        cache = state.caches[key]
        layers = getattr(cache, "layers", [])
        lens, pos, nbytes, kinds, windows = [], [], 0, set(), set()
        for layer in layers:
            kinds.add(type(layer).__name__)
            keys = getattr(layer, "keys", None)
            values = getattr(layer, "values", None)
            lens.append(0 if keys is None or keys.dim() < 3 else int(keys.shape[-2]))
            cum = getattr(layer, "cumulative_length", None)
            pos.append(int(cum) if cum is not None else int(layer.get_seq_length()))
            for t in (keys, values):
                if t is not None:
                    nbytes += t.numel() * t.element_size()
            if getattr(layer, "sliding_window", None) is not None:
                windows.add(int(layer.sliding_window))
        out[label] = {
            "kv_len": max(lens) if lens else 0,
            "pos": max(pos) if pos else 0,
            "bytes": nbytes,
            "layer_types": sorted(kinds),
            "sliding_window": sorted(windows),
        }
    pad = state.caches.get("padding_cache")
    pad_bytes = 0
    for layer in getattr(pad, "layers", {}).values():
        if getattr(layer, "cache", None) is not None:
            pad_bytes += layer.cache.numel() * layer.cache.element_size()
    out["padding_bytes"] = pad_bytes
    return out


def pct(values: np.ndarray, q: float) -> float:
    value = percentile(values, q)
    return math.nan if value is None else value


# --------------------------------------------------------------------------------------- audio


def audio_track(seconds: float = 90.0, seed: int = 0) -> np.ndarray:
    """hello.wav looped with silence between repetitions: gains 0.5-1.0, gaps 0.3-3 s, every other
    gap digital zeros, the rest faint noise (-60 dBFS) like a quiet room."""
    from voxcli.audio.decode import load_audio

    hello = load_audio(ROOT / "examples" / "hello.wav").astype(np.float32)
    rng = np.random.default_rng(seed)
    parts, total, k = [], 0, 0
    while total < seconds * SAMPLE_RATE:
        speech = hello * rng.uniform(0.5, 1.0)
        gap = int(rng.uniform(0.3, 3.0) * SAMPLE_RATE)
        if k % 2:
            silence = np.zeros(gap, np.float32)
        else:
            silence = (rng.standard_normal(gap) * 1e-3).astype(np.float32)
        parts += [speech, silence]
        total += len(speech) + gap
        k += 1
    return np.concatenate(parts)


def pushes(track: np.ndarray, n: int):
    """n consecutive 80 ms blocks from the looped track (its length is not a multiple of 80 ms,
    so every loop lands on a different phase)."""
    pos = 0
    L = len(track)
    for _ in range(n):
        end = pos + PUSH_SAMPLES
        if end <= L:
            block = track[pos:end]
        else:
            block = np.concatenate([track[pos:], track[: end - L]])
        pos = end % L
        yield block.copy()


# ------------------------------------------------------------------------------ rope precision


def rope_precision(positions: dict[str, int]) -> dict:
    """How far RoPE scores drift from the same relative offsets at position 0, in float32 (what
    transformers computes: position * inv_freq in float32), at the positions this run reached and
    at the real checkpoint's scale. Unit-variance q/k, scores scaled by 1/sqrt(head_dim)."""
    import torch
    from transformers import VoxtralRealtimeConfig
    from transformers.models.voxtral_realtime.modeling_voxtral_realtime import (
        VoxtralRealtimeRotaryEmbedding,
        apply_rotary_pos_emb,
    )

    real = VoxtralRealtimeConfig()
    out = {}
    for label, cfg in (("text", real.text_config), ("encoder", real.audio_config)):
        rot = VoxtralRealtimeRotaryEmbedding(cfg)
        g = torch.Generator().manual_seed(0)
        hd = cfg.head_dim
        q = torch.randn(1, 8, 1, hd, generator=g)
        k = torch.randn(1, 8, 64, hd, generator=g)
        dist = torch.arange(64) * max(1, cfg.sliding_window // 64)

        def scores(p0: int):
            pq = torch.tensor([[p0 + int(dist.max())]])
            pk = (pq[0, 0] - dist)[None]
            cq, sq = rot(q, pq)
            ck, sk = rot(k, pk)
            qe, _ = apply_rotary_pos_emb(q, q, cq, sq)
            _, ke = apply_rotary_pos_emb(k, k, ck, sk)
            return (qe @ ke.transpose(-1, -2)) / hd ** 0.5

        ref = scores(0)
        reached = positions.get(label, 0)
        probe = sorted({cfg.sliding_window, cfg.max_position_embeddings, reached, 10 * reached} - {0})
        out[label] = {
            "real_config": {"head_dim": hd, "rope": dict(cfg.rope_parameters),
                            "max_position_embeddings": cfg.max_position_embeddings,
                            "sliding_window": cfg.sliding_window},
            "position_reached": reached,
            "max_abs_score_error": {str(p): float((scores(p) - ref).abs().max()) for p in probe},
            "mean_abs_score": float(ref.abs().mean()),
        }
    return out


# ------------------------------------------------------------------------------------- the run


def build_model(args, tmp: Path) -> str:
    if args.model:
        return args.model
    from voxcli.testing.tiny import make_tiny_model

    path = tmp / "tiny-realtime"
    make_tiny_model(path, "realtime", hidden_size=args.hidden_size, num_layers=args.layers)
    return str(path)


def _load(args):
    """The model (built tiny unless ``--model``), loaded with two rows: the interleave check runs a
    fresh session beside the long one (rows are all made at load)."""
    from voxcli.engine.local import load_engine

    tmp = Path(tempfile.mkdtemp(prefix="voxcli-soak-"))
    try:
        model_path = build_model(args, tmp)
        t0 = time.perf_counter()
        engine = load_engine(model_path, device=args.device, dtype=args.dtype, threads=args.threads,
                             step=args.step, compile="off", sessions=2)
        load_s = time.perf_counter() - t0
    finally:
        if not args.model and not args.keep_model:
            shutil.rmtree(tmp, ignore_errors=True)
    if engine.kind != "realtime":
        raise SystemExit(f"soak needs a Realtime checkpoint, {model_path} is {engine.kind}")
    return engine, model_path, load_s


def _header(model_path, cfg, n_push: int) -> None:
    import torch

    print(f"# {model_path}: text window {cfg.text_config.sliding_window} "
          f"(max_position_embeddings {cfg.text_config.max_position_embeddings}), encoder window "
          f"{cfg.audio_config.sliding_window} (max_position_embeddings "
          f"{cfg.audio_config.max_position_embeddings}); {n_push} pushes of 80 ms; "
          f"torch threads {torch.get_num_threads()}",
          flush=True)
    print(f"{'audio_min':>9} {'wall_s':>7} {'steps':>6} {'p50_ms':>7} {'p95_ms':>7} {'rss_mb':>7} "
          f"{'text_kv':>7} {'text_pos':>8} {'enc_kv':>6} {'enc_pos':>8} {'step_ms_len':>11} {'objects':>8}",
          flush=True)


def _window_row(args, session, steps: np.ndarray, chunks: np.ndarray, t_start: float, win_t0: float,
                caches: dict) -> dict:
    """One window's figures: its steps' and pushes' times, memory, the caches, what the session keeps."""
    mem = rss_mb()
    t_obj = time.perf_counter()
    objects = len(gc.get_objects()) if args.objects else None
    obj_ms = (time.perf_counter() - t_obj) * 1000.0
    return {
        "audio_s": session.pushed_samples / SAMPLE_RATE,
        "wall_s": time.perf_counter() - t_start,
        "window_wall_s": time.perf_counter() - win_t0,
        "steps": int(len(steps)),
        "step_p50_ms": pct(steps, 50), "step_p95_ms": pct(steps, 95),
        "step_max_ms": float(steps.max()) if len(steps) else math.nan,
        "chunk_p50_ms": pct(chunks, 50),
        **mem,
        "text_kv_len": caches["text"]["kv_len"], "text_pos": caches["text"]["pos"],
        "encoder_kv_len": caches["encoder"]["kv_len"], "encoder_pos": caches["encoder"]["pos"],
        "cache_mb": (caches["text"]["bytes"] + caches["encoder"]["bytes"] + caches["padding_bytes"]) / 2**20,
        "step_ms_len": len(session.step_ms),
        "step_ms_bytes": sys.getsizeof(session.step_ms) + 24 * len(session.step_ms),
        "buffer_samples": session.window.held,
        "py_objects": objects, "objects_ms": obj_ms if args.objects else None,
        "n_tokens": session.n_tokens,
    }


def _print_row(row: dict) -> None:
    objects = row["py_objects"]
    print(f"{row['audio_s'] / 60:9.2f} {row['wall_s']:7.1f} {row['steps']:6d} {row['step_p50_ms']:7.2f} "
          f"{row['step_p95_ms']:7.2f} {row['rss_mb']:7.1f} {row['text_kv_len']:7d} {row['text_pos']:8d} "
          f"{row['encoder_kv_len']:6d} {row['encoder_pos']:8d} {row['step_ms_len']:11d} "
          f"{objects if objects is not None else '-':>8}", flush=True)


def _end(args, session, snap_steady) -> dict:
    """The session finished: its flush, caches and memory after it (and after malloc_trim), and
    what tracemalloc saw grow since the caches were full."""
    t0 = time.perf_counter()
    n_flush = sum(1 for _ in session.finish())
    finish_ms = (time.perf_counter() - t0) * 1000.0
    end_caches = cache_state(session)
    end_mem = rss_mb()
    gc.collect()
    trimmed = malloc_trim()
    trim_mem = rss_mb()
    tm_top = None
    if args.tracemalloc:
        import tracemalloc

        snap_end = tracemalloc.take_snapshot()
        if snap_steady is not None:
            tm_top = [str(s) for s in snap_end.compare_to(snap_steady, "lineno")[:15]]
        tracemalloc.stop()
    return {"finish": {"tokens": n_flush, "ms": finish_ms},
            "end": {"caches": end_caches, **end_mem, "rss_after_malloc_trim_mb": trim_mem["rss_mb"],
                    "malloc_trim_released": trimmed},
            "tracemalloc_top": tm_top}


def run(args) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    engine, model_path, load_s = _load(args)
    if args.offset_hours:
        return {"offset_check": offset_check(engine, audio_track(), args.offset_hours, args.minutes * 60)}
    cfg = engine.model.config
    n_push = int(round(args.minutes * 60 * SAMPLE_RATE / PUSH_SAMPLES))
    per_window = max(1, int(round(args.every_s * SAMPLE_RATE / PUSH_SAMPLES)))
    track = audio_track()
    session = engine.session()
    # Preallocated so the recorder itself does not grow during the run.
    step_ms = np.full(n_push + 64, np.nan)
    step_audio_s = np.full(n_push + 64, np.nan)
    chunk_ms = np.empty(n_push)
    n_steps = 0
    windows: list[dict] = []
    base_mem = rss_mb()
    gc.collect()
    base_objects = len(gc.get_objects()) if args.objects else None
    if args.tracemalloc:
        import tracemalloc

        tracemalloc.start(10)
    snap_steady = None
    t_start = win_t0 = time.perf_counter()
    win_first_step = 0
    if not args.quiet:
        _header(model_path, cfg, n_push)
    for i, block in enumerate(pushes(track, n_push)):
        c0 = time.perf_counter()
        session.push(block)
        for event in session.steps():
            step_ms[n_steps] = np.nan if event.step_ms is None else event.step_ms  # None: the prefill
            step_audio_s[n_steps] = session.pushed_samples / SAMPLE_RATE
            n_steps += 1
        chunk_ms[i] = (time.perf_counter() - c0) * 1000.0
        if (i + 1) % per_window == 0 or i + 1 == n_push:
            sl = step_ms[win_first_step:n_steps]
            sl = sl[~np.isnan(sl)]
            if win_first_step == 0 and len(sl) > 1:
                sl = sl[1:]  # the prefill (prompt + first 0.56 s) is not a decode step
            caches = cache_state(session)
            row = _window_row(args, session, sl, chunk_ms[max(0, i + 1 - per_window): i + 1], t_start, win_t0, caches)
            windows.append(row)
            if args.tracemalloc and snap_steady is None and _caches_full(caches):
                import tracemalloc

                snap_steady = tracemalloc.take_snapshot()
            if not args.quiet:
                _print_row(row)
            win_first_step = n_steps
            win_t0 = time.perf_counter()
    run_wall = time.perf_counter() - t_start
    interleave = interleave_check(engine, session, track, args.interleave_s) if args.interleave_s else None
    end = _end(args, session, snap_steady)
    end_caches = end["end"]["caches"]
    result = {
        "args": {k: v for k, v in vars(args).items()},
        "env": {**host(), "numpy": np.__version__},
        "model": {"path": model_path if args.model else f"tiny (hidden {args.hidden_size}, {args.layers} layers)",
                  "n_params": engine.info.n_params, "load_s": load_s, "warmup_s": engine.info.warmup_s,
                  "delay_ms": engine.delay_ms,
                  "text": {"sliding_window": cfg.text_config.sliding_window,
                           "max_position_embeddings": cfg.text_config.max_position_embeddings,
                           "layer_types": end_caches["text"]["layer_types"]},
                  "encoder": {"sliding_window": cfg.audio_config.sliding_window,
                              "max_position_embeddings": cfg.audio_config.max_position_embeddings,
                              "layer_types": end_caches["encoder"]["layer_types"]}},
        "baseline_mem": base_mem, "baseline_py_objects": base_objects,
        "run_wall_s": run_wall, "audio_s": n_push * PUSH_SAMPLES / SAMPLE_RATE,
        "n_steps": n_steps, **end, "windows": windows, "interleave": interleave,
    }
    result["minutes"] = minute_summary(result, step_ms[:n_steps], step_audio_s[:n_steps])
    result["rope_precision"] = rope_precision({"text": end_caches["text"]["pos"],
                                               "encoder": end_caches["encoder"]["pos"]})
    result["verdict"] = verdict(result)
    return result


def offset_check(engine, track: np.ndarray, hours: float, seconds: float) -> dict:
    """A session that starts at a position offset worth ``hours`` of audio (as if it had run that
    long, re-anchoring all the way) against a fresh one, on the same ``seconds`` of audio: token
    ids and logits. For contrast, the same offset with re-anchoring off (RoPE positions as they
    come, beyond the 131072 the text model was built for)."""
    offset = int(hours * 3600 * 1000 / 80)
    n = int(round(seconds * SAMPLE_RATE / PUSH_SAMPLES))

    def run_one(**kw):
        session = engine.session(keep_logits=True, **kw)
        ids = []
        for block in pushes(track, n):
            session.push(block)
            ids += [ev.token_id for ev in session.steps()]
        ids += [ev.token_id for ev in session.finish() if ev.token_id >= 0]
        state = session.cache_state()
        return ids, session.logits, {"text_pos": state.dec.host_pos, "text_shifted": state.dec.shifted,
                                     "encoder_pos": state.enc.host_pos, "encoder_shifted": state.enc.shifted}

    def compare(a, b) -> dict:
        diff = max(float((x - y).abs().max()) for x, y in zip(a[1], b[1]))
        scale = max(float(x.abs().max()) for x in a[1])
        mismatches = sum(x != y for x, y in zip(a[0], b[0])) + abs(len(a[0]) - len(b[0]))
        first = next((i for i, (x, y) in enumerate(zip(a[0], b[0])) if x != y), None)
        out = {"tokens": len(a[0]), "same_tokens": mismatches == 0, "token_mismatches": mismatches,
               "max_logit_diff": diff, "max_abs_logit_diff": diff, "largest_logit": scale,
               "positions_at_end": b[2]}
        # After the first different token the two runs are fed different tokens: their logits
        # then part for that reason, not for precision. The difference before it is precision.
        upto = first if first is not None else len(a[1])
        out["max_logit_diff_before_first_difference"] = max(
            (float((x - y).abs().max()) for x, y in zip(a[1][:upto], b[1][:upto])), default=0.0)
        if first is not None:  # how close the fresh session's own choice was there: its top-2 margin
            top2 = a[1][first].float().flatten().topk(2).values
            out["first_difference"] = {"token": first, "fresh_id": a[0][first], "late_id": b[0][first],
                                       "fresh_top2_margin": float(top2[0] - top2[1])}
        return out

    fresh = run_one()
    late = run_one(position_offset=offset)
    static = engine.static
    static.reanchor = False
    try:
        raw = run_one(position_offset=offset)
    finally:
        static.reanchor = True
    return {"hours": hours, "offset_tokens": offset, "seconds": seconds, "fresh_positions_at_end": fresh[2],
            "reanchored": compare(fresh, late), "not_reanchored": compare(fresh, raw)}


def interleave_check(engine, session, track: np.ndarray, seconds: float) -> dict:
    """Step cost with full caches vs a fresh session under the SAME machine load: after the soak,
    alternate 80 ms pushes between the long session (caches at their windows) and a new one
    (caches growing from empty, i.e. minute-1 conditions), swapping which goes first each push.
    Noise from other processes hits both alike, so the ratio isolates what cache length costs."""
    fresh = engine.session()
    long_ms, fresh_ms = [], []
    for i, block in enumerate(pushes(track, int(round(seconds * SAMPLE_RATE / PUSH_SAMPLES)))):
        order = ((session, long_ms), (fresh, fresh_ms)) if i % 2 == 0 else ((fresh, fresh_ms), (session, long_ms))
        for sess, out in order:
            sess.push(block)
            out += [event.step_ms for event in sess.steps() if event.step_ms is not None]  # not the prefill
    fresh_ms = fresh_ms[1:]  # prefill
    n = min(len(long_ms), len(fresh_ms))
    a, b = np.array(long_ms[-n:]), np.array(fresh_ms[-n:])
    pair = a / b
    return {"seconds": seconds, "steps": n,
            "full_p50_ms": pct(a, 50), "full_p95_ms": pct(a, 95),
            "fresh_p50_ms": pct(b, 50), "fresh_p95_ms": pct(b, 95),
            "p50_ratio": pct(a, 50) / pct(b, 50), "paired_ratio_median": float(np.median(pair)),
            "full_caches": cache_state(session), "fresh_caches": cache_state(fresh)}


def _caches_full(caches: dict) -> bool:
    return all(caches[k]["sliding_window"] and caches[k]["kv_len"] >= caches[k]["sliding_window"][0] - 1
               for k in ("text", "encoder"))


def minute_summary(result: dict, step_ms: np.ndarray, step_audio_s: np.ndarray) -> dict:
    """Step percentiles per whole minute of audio (prefill excluded), with the window record that
    ends that minute (memory, caches)."""
    windows = result["windows"]
    n_min = int(result["audio_s"] // 60)

    def minute(m: int) -> dict | None:
        if m < 1 or m > n_min:
            return None
        sel = (step_audio_s > (m - 1) * 60) & (step_audio_s <= m * 60)
        sel[0] = False  # prefill
        vals = step_ms[sel]
        rec = min(windows, key=lambda w: abs(w["audio_s"] - m * 60))
        return {"minute": m, "steps": int(len(vals)), "step_p50_ms": pct(vals, 50), "step_p95_ms": pct(vals, 95),
                "step_mean_ms": float(vals.mean()) if len(vals) else math.nan,
                **{k: rec[k] for k in ("audio_s", "rss_mb", "hwm_mb", "text_kv_len", "text_pos", "encoder_kv_len",
                                       "encoder_pos", "cache_mb", "step_ms_len", "step_ms_bytes", "buffer_samples",
                                       "py_objects", "chunk_p50_ms")}}

    steady = None
    for w in windows:
        if w["text_kv_len"] >= result["model"]["text"]["sliding_window"] - 1 and \
                w["encoder_kv_len"] >= result["model"]["encoder"]["sliding_window"] - 1:
            steady = int(math.floor(w["audio_s"] / 60)) + 1
            break
    # RSS slope over the steady part (least squares, MiB per hour of audio).
    slope = None
    if steady is not None:
        pts = [(w["audio_s"], w["rss_mb"]) for w in windows if w["audio_s"] >= (steady - 1) * 60]
        if len(pts) >= 3:
            x, y = np.array(pts).T
            slope = float(np.polyfit(x / 3600.0, y, 1)[0])
    return {"first": minute(1), "steady": minute(steady) if steady and steady < n_min else None,
            "last": minute(n_min), "steady_minute": steady, "rss_slope_mb_per_hour_steady": slope}


def verdict(result: dict) -> dict:
    m = result["minutes"]
    ref = m["steady"] or m["first"]
    last = m["last"]
    notes = []
    if ref is None or last is None:
        return {"flat": None, "notes": ["run shorter than two minutes"]}
    ratio_p50 = last["step_p50_ms"] / ref["step_p50_ms"]
    ratio_p95 = last["step_p95_ms"] / ref["step_p95_ms"]
    rss_growth = last["rss_mb"] - ref["rss_mb"]
    time_flat = ratio_p50 <= 1.15
    mem_flat = rss_growth <= max(16.0, 0.03 * ref["rss_mb"])
    caches_flat = (last["text_kv_len"] == ref["text_kv_len"] and last["encoder_kv_len"] == ref["encoder_kv_len"])
    if m["steady"] is None:
        notes.append("the caches did not fill their sliding windows early enough in this run: growth up to "
                     "the window is by design, so there is no steady state to judge (run longer)")
    if last["step_ms_len"] > ref["step_ms_len"] and last["step_ms_len"] > STEP_MS_KEEP:
        notes.append(f"session.step_ms grows without bound: {last['step_ms_len']} floats "
                     f"(~{last['step_ms_bytes'] / 2**20:.1f} MiB) after {last['audio_s'] / 60:.0f} min")
    for label in ("text", "encoder"):
        pos = last[f"{label}_pos"]
        mpe = result["model"][label]["max_position_embeddings"]
        if pos > mpe:
            notes.append(f"{label} RoPE position {pos} > max_position_embeddings {mpe} (no error: default "
                         f"RoPE has no table; precision drift only, see rope_precision)")
    if last["buffer_samples"] > 4 * PUSH_SAMPLES:
        notes.append(f"the session's audio window holds {last['buffer_samples']} samples at the end")
    flat = bool(time_flat and mem_flat and caches_flat) if m["steady"] is not None else None
    return {"flat": flat, "step_time_flat": time_flat,
            "memory_flat": mem_flat, "caches_flat": caches_flat, "compared": f"minute {ref['minute']} vs {last['minute']}",
            "step_p50_ratio": ratio_p50, "step_p95_ratio": ratio_p95, "rss_growth_mb": rss_growth, "notes": notes}


# ------------------------------------------------------------------------------------ reporting


TABLE_ROWS = (
    ("step p50 ms", "step_p50_ms", "{:.2f}"),
    ("step p95 ms", "step_p95_ms", "{:.2f}"),
    ("step mean ms", "step_mean_ms", "{:.2f}"),
    ("push+steps p50 ms", "chunk_p50_ms", "{:.2f}"),
    ("RSS MiB", "rss_mb", "{:.1f}"),
    ("text KV length", "text_kv_len", "{:d}"),
    ("text position", "text_pos", "{:d}"),
    ("encoder KV length", "encoder_kv_len", "{:d}"),
    ("encoder position", "encoder_pos", "{:d}"),
    ("KV cache MiB", "cache_mb", "{:.2f}"),
    ("session.step_ms len", "step_ms_len", "{:d}"),
    ("audio window samples", "buffer_samples", "{:d}"),
    ("Python objects (GC)", "py_objects", "{:d}"),
)


def table(result: dict) -> str:
    m = result["minutes"]
    if m["first"] is None:
        return "(less than one whole minute of audio: no minute table; see the per-window rows)"
    cols = [c for c in (m["first"], m["steady"], m["last"]) if c]
    heads = [f"min {c['minute']}" + (" (steady)" if c is m["steady"] else "") for c in cols]
    last = m["last"]
    lines = [f"{'':24}" + "".join(f"{h:>16}" for h in heads) + f"{'last/1':>9}" + (f"{'last/steady':>12}" if m["steady"] else "")]
    for label, key, fmt in TABLE_ROWS:
        vals = [c.get(key) for c in cols]
        if all(v is None for v in vals):
            continue
        cells = "".join(f"{(fmt.format(v) if v is not None else '-'):>16}" for v in vals)

        def ratio(a, b):
            return f"{a / b:.2f}" if a is not None and b not in (None, 0) else "-"

        line = f"{label:24}{cells}{ratio(last.get(key), m['first'].get(key)):>9}"
        if m["steady"]:
            line += f"{ratio(last.get(key), m['steady'].get(key)):>12}"
        lines.append(line)
    return "\n".join(lines)


def report(result: dict) -> str:
    v = result["verdict"]
    m = result["minutes"]
    end = result["end"]
    out = [
        "",
        f"{result['audio_s'] / 60:g} min of audio in {result['run_wall_s']:.0f} s wall "
        f"({result['audio_s'] / result['run_wall_s']:.1f}x real time), {result['n_steps']} steps; "
        f"finish(): {result['finish']['tokens']} tokens in {result['finish']['ms']:.0f} ms",
        table(result),
        f"RSS: start {result['baseline_mem']['rss_mb']:.1f} MiB, end {end['rss_mb']:.1f}, peak {end['hwm_mb']:.1f}, "
        f"after malloc_trim {end['rss_after_malloc_trim_mb']:.1f}; steady slope "
        + (f"{m['rss_slope_mb_per_hour_steady']:+.1f} MiB/h" if m["rss_slope_mb_per_hour_steady"] is not None else "-"),
        f"caches: text {result['model']['text']['layer_types']} window {result['model']['text']['sliding_window']}, "
        f"encoder {result['model']['encoder']['layer_types']} window {result['model']['encoder']['sliding_window']}",
    ]
    for label in ("text", "encoder"):
        rp = result["rope_precision"][label]
        errs = ", ".join(f"@{int(p):,}: {e:.1e}" for p, e in rp["max_abs_score_error"].items())
        out.append(f"RoPE float32 score error ({label}, real config, |score|~{rp['mean_abs_score']:.2f}): {errs}")
    il = result.get("interleave")
    if il:
        out.append(f"interleaved, same load, {il['steps']} steps each: full caches (text KV "
                   f"{il['full_caches']['text']['kv_len']}) p50 {il['full_p50_ms']:.2f} / p95 {il['full_p95_ms']:.2f} ms "
                   f"vs fresh session (text KV 0-{il['fresh_caches']['text']['kv_len']}) p50 {il['fresh_p50_ms']:.2f} / "
                   f"p95 {il['fresh_p95_ms']:.2f} ms: x{il['p50_ratio']:.2f} (paired median x{il['paired_ratio_median']:.2f})")
    if result.get("tracemalloc_top"):
        out += ["tracemalloc (steady -> end):", *result["tracemalloc_top"]]
    flat = {True: "FLAT", False: "NOT FLAT", None: "n/a"}[v["flat"]]
    out.append(f"verdict ({v.get('compared', '')}): {flat}"
               + (f" (step p50 x{v['step_p50_ratio']:.2f}, p95 x{v['step_p95_ratio']:.2f}, "
                  f"RSS {v['rss_growth_mb']:+.1f} MiB)" if "step_p50_ratio" in v else ""))
    out += [f"  - {n}" for n in v["notes"]]
    return "\n".join(out)


def write_csv(path: str, windows: list[dict]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(windows[0]))
        w.writeheader()
        w.writerows(windows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--model", help="Realtime checkpoint directory (default: build a tiny random one)")
    p.add_argument("--minutes", type=float, default=60.0, help="minutes of audio to stream (default 60)")
    p.add_argument("--every-s", type=float, default=30.0, help="record every N seconds of audio (default 30)")
    p.add_argument("--json", help="write everything (per-window rows, minute summary, verdict) here")
    p.add_argument("--csv", help="write the per-window rows here")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: steadier on a shared CPU)")
    p.add_argument("--hidden-size", type=int, default=64, help="tiny model hidden size (default 64)")
    p.add_argument("--layers", type=int, default=2, help="tiny model layers (default 2)")
    p.add_argument("--keep-model", action="store_true", help="do not delete the tiny model's temp dir")
    p.add_argument("--no-objects", dest="objects", action="store_false", help="skip counting Python objects")
    p.add_argument("--interleave-s", type=float, default=60.0,
                   help="after the soak, alternate this many seconds of steps between the long session and a "
                        "fresh one to compare their cost under the same load (0: skip; default 60)")
    p.add_argument("--tracemalloc", action="store_true", help="Python allocation diff steady -> end (slow)")
    p.add_argument("--step", choices=("static", "hf"), default="static",
                   help="the engine's step (default static)")
    p.add_argument("--offset-hours", type=float, default=0.0,
                   help="instead of the soak: start a session at a position offset worth this many hours and "
                        "compare its tokens and logits with a fresh one over --minutes of audio (static step)")
    p.add_argument("--quiet", action="store_true", help="no per-window lines")
    args = p.parse_args(argv)
    if args.minutes <= 0 or args.every_s <= 0:
        p.error("--minutes and --every-s must be positive")
    if args.offset_hours and args.step != "static":
        p.error("--offset-hours needs the static step")
    result = run(args)
    if "offset_check" in result:
        check = result["offset_check"]
        print(json.dumps(check, indent=1))
        late, raw = check["reanchored"], check["not_reanchored"]
        ok = late["token_mismatches"] == 0
        print(f"hour {check['hours']:g} vs a fresh session, {check['seconds']:g} s of audio: "
              f"{'SAME TOKENS' if ok else 'TOKENS DIFFER'}, max logit difference "
              f"{late['max_abs_logit_diff']:.2g} (largest logit {late['largest_logit']:.3g}); "
              f"without re-anchoring: {raw['token_mismatches']} token(s) differ, "
              f"max logit difference {raw['max_abs_logit_diff']:.2g}")
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1, default=str))
        return 0 if ok else 1
    print(report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=str))
    if args.csv:
        write_csv(args.csv, result["windows"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
