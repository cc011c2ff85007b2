"""How many paced sessions one `voxcli serve` holds, and what each costs the host.

Starts one `voxcli serve` (a process of its own; the tiny random model by default) and, from this
process, opens N sessions at once for each N in ``--ns``: OpenAI Realtime transcription sessions
(server VAD: Silero per session, as apps run them), 16 kHz PCM16 in 80 ms appends paced at real
speed, each at its own phase. Per N it records, from the server's ``/metrics`` (deltas over the
run): host ms per row (host time of the scheduler's cycles outside the forwards, over the rows
they stepped: one row is one stream's 80 ms of work) and forward ms per row; from the deltas'
``voxcli`` fields: step p50/p99 and the server's emission latency p50/p99; sessions behind (the
last transcript came over 2 s after the audio ended); the server's CPU (% of one core) and the
clients'. ``--profile N`` samples the server with py-spy during the run of N sessions and prints
the functions with the most time of their own.

    python bench/serve_load.py                             # tiny model, N = 16, 64, 128, 256
    python bench/serve_load.py --ns 128 --profile 128 --json /tmp/load.json
    python bench/serve_load.py --model DIR --seconds 20    # any local Realtime checkpoint
    python bench/serve_load.py --ns 32,64 --rotate        # each session the clip from its own start
    python bench/serve_load.py --alone --ns 128            # the scheduler alone: no server, no network
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import websockets

from voxcli.audio.decode import load_audio
from voxcli.engine.server import cycle_counters
from voxcli.events import percentile
from voxcli.measure.environment import host
from voxcli.measure.runs import server_split
from voxcli.testing.served import ServeProcess

ROOT = Path(__file__).resolve().parents[1]
CHUNK = 1280  # 80 ms at 16 kHz
BEHIND_S = 2.0


async def session(url: str, audio: np.ndarray, phase_s: float, record: dict) -> None:
    """One paced session: connect, set 16 kHz PCM16 with server VAD, append 80 ms at a time at
    real speed, commit, wait for the last transcript."""
    await asyncio.sleep(phase_s)
    async with websockets.connect(f"{url}/v1/realtime?intent=transcription", max_size=None,
                                  open_timeout=60) as ws:
        await ws.send(json.dumps({"type": "session.update", "session": {"audio": {"input": {
            "format": {"type": "audio/pcm", "rate": 16000}, "turn_detection": {"type": "server_vad"}}}}}))
        pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()

        async def send() -> None:
            t0 = time.perf_counter()
            for k, i in enumerate(range(0, len(pcm), 2 * CHUNK)):
                await asyncio.sleep(max(0.0, t0 + (k + 1) * CHUNK / 16000 - time.perf_counter()))
                await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                          "audio": base64.b64encode(pcm[i:i + 2 * CHUNK]).decode()}))
            record["t_audio_end"] = time.perf_counter()
            await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))

        sender = asyncio.create_task(send())
        async for raw in ws:
            event = json.loads(raw)
            kind = event["type"]
            if kind.endswith("transcription.delta"):
                fields = event.get("voxcli") or {}
                record["latency_ms"].append(fields.get("latency_ms"))
                record["step_ms"].append(fields.get("step_ms"))
            elif kind == "input_audio_buffer.speech_stopped":
                record["ends"] += 1  # each an utterance done before the commit's own
            elif kind.endswith("transcription.completed"):
                record["t_last"] = time.perf_counter()
                record["completed"] += 1
                if sender.done() and record["completed"] > record["ends"]:
                    break
            elif kind == "error":
                record["error"] = str(event.get("error"))
                break
        await sender


async def run_clients(url: str, audio: np.ndarray, n: int, rotate: bool = False) -> list[dict]:
    """``rotate``: each session the clip from a start of its own (its ends of speech at other
    moments than the others'), not all the same clip within a second of each other."""
    records = [{"latency_ms": [], "step_ms": [], "completed": 0, "ends": 0, "error": None} for _ in range(n)]
    rng = random.Random(n)
    clips = [np.roll(audio, rng.randrange(len(audio))) if rotate else audio for _ in records]
    await asyncio.gather(*(_guarded(session(url, clip, rng.uniform(0, 1.0), r), r) for clip, r in zip(clips, records)))
    return records


async def _guarded(coro, record: dict) -> None:
    try:
        await asyncio.wait_for(coro, 600)
    except Exception as exc:  # noqa: BLE001 - a failed session is a result of a load test
        record["error"] = f"{type(exc).__name__}: {exc}"


def one_n(server: ServeProcess, audio: np.ndarray, n: int, profile: Path | None, rotate: bool = False) -> dict:
    before, cpu0, me0, t0 = server.metrics(), server.cpu_s(), os.times(), time.perf_counter()
    spy = None
    if profile is not None:  # the steady part: from 3 s in (every session connected), for 6 s
        spy = subprocess.Popen(["sh", "-c", f"sleep 3; exec py-spy record -p {server.pid} -f raw -o {profile} "
                                            f"-r 100 --nonblocking -d 6"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    records = asyncio.run(run_clients(server.ws_url, audio, n, rotate))
    wall = time.perf_counter() - t0
    if spy is not None:
        spy.wait(60)
    after, cpu1, me1 = server.metrics(), server.cpu_s(), os.times()

    split = server_split(cycle_counters(before), cycle_counters(after))  # as voxcli bench --server reads it
    rows = split["rows"]
    ok = [r for r in records if not r["error"]]
    lat = [x for r in ok for x in r["latency_ms"] if x is not None]
    steps = [x for r in ok for x in r["step_ms"] if x is not None]
    behind = sum(1 for r in ok if r.get("t_last", 0) - r.get("t_audio_end", 0) > BEHIND_S or "t_last" not in r)
    return {
        "n": n, "wall_s": round(wall, 2), "rows": rows, "cycles": split["cycles"],
        "host_ms_per_row": _r(split["host_ms_per_row"], 4), "forward_ms_per_row": _r(split["forward_ms_per_row"], 4),
        "rows_per_cycle": round(rows / max(split["cycles"], 1), 2),
        "step_ms": _pcts(steps), "latency_ms": _pcts(lat), "behind": behind,
        "failed": len(records) - len(ok), "errors": dict(Counter(r["error"] for r in records if r["error"])),
        "server_cpu_pct": round(100 * (cpu1 - cpu0) / wall, 1),
        "client_cpu_pct": round(100 * ((me1.user - me0.user) + (me1.system - me0.system)) / wall, 1),
    }


def _pcts(values: list[float]) -> dict:
    return {"n": len(values), "p50": _r(percentile(values, 50)), "p99": _r(percentile(values, 99))}


def _r(x, digits: int = 2):
    return None if x is None else round(x, digits)


def profile_top(raw: Path, top: int = 20) -> list[tuple[str, float, float]]:
    """py-spy's raw stacks as (function, self %, total %) of the samples (every thread that was
    running), the most self time first; a function's lines are counted together."""
    own, total, samples = Counter(), Counter(), 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames, n = [f.split(":")[0] + ")" if ":" in f else f for f in stack.split(";")], int(count)
        samples += n
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    return [(f, round(100 * o / samples, 1), round(100 * total[f] / samples, 1)) for f, o in own.most_common(top)]


def alone(model: str, audio: np.ndarray, n: int) -> dict:
    """The scheduler alone, in this process: ``n`` streams with endpointers, each pushed 80 ms of
    audio every 80 ms (all at once, as ticks), no network and no event loop beside it: what the
    cycle itself costs per row, the part of the host work a server's network does not add to."""
    from voxcli.audio.vad import EndpointOptions
    from voxcli.engine.local import load_engine
    from voxcli.serve.scheduler import Scheduler

    engine = load_engine(model, sessions=n)
    cycles = []
    scheduler = Scheduler(engine, max_sessions=n, on_step=lambda tokens, cycle: cycles.append(cycle))
    streams = [scheduler.open(lambda message: None, vad=EndpointOptions()) for _ in range(n)]
    rng = np.random.default_rng(n)
    clips = [np.roll(audio, int(rng.integers(len(audio)))) for _ in range(n)]  # each stream its own audio
    t0 = time.perf_counter()
    for k in range(len(audio) // CHUNK):
        time.sleep(max(0.0, t0 + (k + 1) * CHUNK / 16000 - time.perf_counter()))
        for s, clip in zip(streams, clips):
            s.push(clip[k * CHUNK:(k + 1) * CHUNK])
    for s in streams:
        s.end()
    scheduler.stop(120)
    measured = [c for c in cycles[len(cycles) // 5:] if c is not None]  # past the prefills
    rows = sum(c.rows for c in measured)
    return {"n": n, "alone": True, "rows": rows, "cycles": len(measured),
            "host_ms_per_row": round(1000 * sum(c.host_s for c in measured) / rows, 4),
            "forward_ms_per_row": round(1000 * sum(c.forward_s for c in measured) / rows, 4),
            "rows_per_cycle": round(rows / max(1, sum(1 for c in measured if c.rows)), 2)}


def start(model: str, ns: list[int], serve_args: tuple[str, ...], tmp: Path) -> tuple[ServeProcess, int]:
    """`voxcli serve` with a row for the largest N; where the rows do not fit (its memory check
    refuses them), the next smaller N, and so on."""
    for ceiling in sorted(ns, reverse=True):
        try:
            return ServeProcess(model, max_sessions=ceiling, args=serve_args, log=tmp / f"serve-{ceiling}.log"), ceiling
        except RuntimeError as exc:
            tail = (tmp / f"serve-{ceiling}.log").read_text(errors="replace").strip().splitlines()[-1:]
            print(f"voxcli serve --max-sessions {ceiling}: {exc}: {' '.join(tail)}", flush=True)
    raise SystemExit("voxcli serve did not start for any N")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", help="a Realtime checkpoint dir; tiny = a random one built here")
    ap.add_argument("--ns", default="16,64,128,256", help="sessions at once, a comma list")
    ap.add_argument("--clip", type=Path, default=ROOT / "examples" / "long.wav")
    ap.add_argument("--seconds", type=float, default=12.0, help="each session's audio (the clip, cut or looped)")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="py-spy the server (6 s, from 3 s in) during the run with N sessions")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--serve-arg", action="append", default=[], help="one more argument for voxcli serve")
    ap.add_argument("--rotate", action="store_true",
                    help="each session the clip from its own start: ends of speech spread out, not together")
    ap.add_argument("--alone", action="store_true",
                    help="the scheduler in this process instead (no server, no network): its own cost per row")
    args = ap.parse_args()
    ns = [int(x) for x in args.ns.split(",")]
    audio = load_audio(args.clip)
    audio = np.resize(audio, int(args.seconds * 16000)).astype(np.float32)
    model = args.model
    tmp = Path(tempfile.mkdtemp(prefix="voxcli-load-"))
    if model == "tiny":
        from voxcli.testing.tiny import make_tiny_model

        model = str(make_tiny_model(tmp / "tiny", "realtime"))
    if args.alone:
        for n in ns:
            print(json.dumps(alone(model, audio, n)), flush=True)
        return
    results = []
    server, ceiling = start(model, ns, tuple(args.serve_arg), tmp)
    with server:
        one_n(server, audio[: 2 * 16000], 2, None)  # warm: the first sessions' one-off costs
        for n in ns:
            if n > ceiling:
                results.append({"n": n, "skipped": f"the server holds {ceiling} sessions (its memory check)"})
                print(json.dumps(results[-1]), flush=True)
                continue
            prof = tmp / f"profile-{n}.txt" if n == args.profile else None
            result = one_n(server, audio, n, prof, args.rotate)
            results.append(result)
            print(json.dumps(result), flush=True)
            if prof is not None and prof.exists():
                result["profile_top"] = profile_top(prof)
                print(f"\npy-spy, the server during N={n} (self %, total % of samples; function):")
                for f, own, total in result["profile_top"]:
                    print(f"  {own:5.1f} {total:5.1f}  {f}")
    _table(results)
    if args.json:
        args.json.write_text(json.dumps({"host": host(), "model": args.model, "seconds": args.seconds,
                                         "results": results}, indent=1))


def _table(results: list[dict]) -> None:
    results = [r for r in results if "skipped" not in r]
    print("\n|   N | host ms/row | forward ms/row | rows/cycle | step p50 / p99 ms | emission p50 / p99 ms "
          "| behind | failed | server CPU | clients CPU |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['n']} | {r['host_ms_per_row']} | {r['forward_ms_per_row']} | {r['rows_per_cycle']} "
              f"| {r['step_ms']['p50']} / {r['step_ms']['p99']} | {r['latency_ms']['p50']} / {r['latency_ms']['p99']} "
              f"| {r['behind']} | {r['failed']} | {r['server_cpu_pct']} % | {r['client_cpu_pct']} % |")


if __name__ == "__main__":
    main()
