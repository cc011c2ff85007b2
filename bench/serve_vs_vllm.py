"""`voxcli serve` against vLLM's CPU server, same machine, same clip, in one run.

    python bench/serve_vs_vllm.py [--sessions 1,4,16] [--clip examples/hello.wav] [--json FILE]

Starts both servers on loopback with tiny random Realtime models (voxcli's `voxcli.testing.tiny`,
vLLM's `voxcli.testing.tiny_mistral`: the same hidden size and layers, 32-wide heads for vLLM's
CPU attention, different random weights), then for each N runs
`voxcli bench --server URL --concurrency N --paced CLIP` against each, and prints first-delta
latency (ttft_ms) and per-delta gaps (delta_interval_ms) side by side. vLLM comes from
`.ci/vllm.sh`'s venv ($VOXCLI_VLLM_PYTHON). Both servers run for the whole comparison; each bench
runs alone.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def start_voxcli(model: Path, port: int, sessions: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "voxcli", "serve", "-m", str(model), "--model-device", "cpu",
                             "--port", str(port), "--max-sessions", str(sessions)], cwd=ROOT,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("voxcli serve did not start")
            time.sleep(0.3)


def bench(url: str, n: int, clip: str, out: Path) -> dict:
    run = subprocess.run([sys.executable, "-m", "voxcli", "bench", "--server", url, "--concurrency", str(n), "--paced",
                          "--json", str(out), clip], cwd=ROOT, capture_output=True, text=True, timeout=900)
    if run.returncode:
        raise SystemExit(f"bench against {url} failed: {run.stderr[-2000:]}")
    return json.loads(out.read_text())["load"]["aggregate"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", default="1,4,16")
    parser.add_argument("--clip", default=str(ROOT / "examples" / "hello.wav"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    counts = [int(n) for n in args.sessions.split(",")]
    from voxcli.testing.tiny import make_tiny_model
    from voxcli.testing.vllm import free_port, start_vllm_server

    work = Path(tempfile.mkdtemp(prefix="serve-vs-vllm-"))
    vllm = start_vllm_server("realtime", work / "vllm")
    port = free_port()
    voxcli = start_voxcli(make_tiny_model(work / "tiny", "realtime"), port, max(counts))
    results = {}
    try:
        for n in counts:
            for name, url in (("voxcli serve", f"http://127.0.0.1:{port}"), ("vLLM", vllm.url)):
                results.setdefault(name, {})[n] = bench(url, n, args.clip, work / f"{name[:6]}-{n}.json")
                print(f"{name} N={n} done", file=sys.stderr)
    finally:
        voxcli.terminate()
        voxcli.wait(30)
        vllm.kill()
    print("| server | N | ttft_ms p50 | p95 | delta_interval_ms p50 | p95 | p99 | deltas/s | failed |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n in counts:
        for name in results:
            a = results[name][n]
            t, d = a["ttft_ms"], a["delta_interval_ms"]
            print(f"| {name} | {n} | {t['p50']:.1f} | {t['p95']:.1f} | {d['p50']:.1f} | {d['p95']:.1f} | "
                  f"{d['p99']:.1f} | {a['deltas_per_s']:.1f} | {a['failed']} |")
    if args.json:
        args.json.write_text(json.dumps({"environment": {"cpu_count": os.cpu_count()}, "results": results}, indent=1))


if __name__ == "__main__":
    main()
