"""``voxcli serve`` in a process of its own, for benchmarks and tests that need a real server
(a load test's clients in another process, replicas behind a balancer, one killed).

    with ServeProcess(model_dir, port=free_port(), max_sessions=16) as server:
        server.url, server.ws_url, server.pid
        server.metrics()            # /metrics as {"name{labels}": value}
        server.cpu_s()              # the process's user + system CPU seconds so far
        server.kill()               # SIGKILL: a replica dies with its sessions open
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from voxcli.engine.server import parse_metrics
from voxcli.testing.vllm import free_port

__all__ = ["ServeProcess", "free_port", "get", "parse_metrics"]


def get(url: str, timeout_s: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


class ServeProcess:
    def __init__(self, model: str | Path, *, port: int | None = None, max_sessions: int = 8,
                 args: tuple[str, ...] = (), log: Path | None = None, start_timeout_s: float = 180.0) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "voxcli", "serve", "--model", str(model), "--offline", "--port", str(self.port),
               "--max-sessions", str(max_sessions), *args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
        self._log = open(log, "wb") if log is not None else subprocess.DEVNULL
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self.pid = self.proc.pid
        self._wait(start_timeout_s)

    def _wait(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"voxcli serve exited with {self.proc.returncode} before it was ready")
            try:
                if get(self.url + "/health", 1.0)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"voxcli serve on port {self.port} was not up within {timeout_s:.0f} s")

    def health(self, path: str = "/health") -> tuple[int, dict]:
        status, body = get(self.url + path)
        return status, json.loads(body)

    def metrics(self) -> dict[str, float]:
        return parse_metrics(get(self.url + "/metrics")[1])

    def cpu_s(self) -> float:
        """User + system CPU seconds of the server process (/proc, Linux)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        if self._log is not subprocess.DEVNULL:
            self._log.close()

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
