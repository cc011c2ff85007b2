"""A real vLLM server (CPU build) on loopback, serving a tiny random Voxtral model: what the tests'
fixtures (tests/vllm_server.py) and bench/ scripts (serve_vs_vllm.py, twin.py) start.

vLLM lives in its own virtual environment (`.ci/vllm.sh` builds it, and `.ci/setup.sh --test`
runs that); its python is $VOXCLI_VLLM_PYTHON, else the venv's default place. The server runs
with the flags and environment verified in docs/design.md ("Beyond one machine") and
.ci/vllm.sh; every file it writes (logs, sockets, caches) goes into a temporary directory. Two
settings only make it start sooner here, and change nothing a client sees: the engine core and
the model's worker run in the API server's process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`,
`--distributed-executor-backend uni`), so vLLM is imported once instead of three times (41 s to
28 s alone on this project's 2-core VM), and servers may share `VLLM_CACHE_ROOT`, where vLLM keeps
what it learnt about the model class in a subprocess (``modelinfos``): only the first pays for it.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

PYTHON_ENV = "VOXCLI_VLLM_PYTHON"
DEFAULT_PYTHON = Path(os.environ.get("VOXCLI_VLLM_VENV", Path.home() / ".cache/voxcli/vllm-venv")) / "bin/python"
START_TIMEOUT_S = float(os.environ.get("VOXCLI_VLLM_START_TIMEOUT", "300"))
STOP_TIMEOUT_S = 20.0


@dataclass
class VllmServer:
    kind: str
    model: str  # the served model name (vLLM serves the model directory's path by default)
    model_dir: Path
    host: str
    port: int
    proc: subprocess.Popen
    log_path: Path
    startup_s: float = field(default=float("nan"))  # launch -> /health 200
    cafile: Path | None = None  # served over TLS, with a certificate this CA file verifies

    @property
    def url(self) -> str:
        return f"{'https' if self.cafile else 'http'}://{self.host}:{self.port}"

    def log_tail(self, lines: int = 40) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(deque(f, maxlen=lines))
        except OSError as e:
            return f"(no log: {e})"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """Stop the server: SIGTERM to its pid, then to its process group (the engine core and
        workers are its children there), SIGKILL to both after STOP_TIMEOUT_S."""
        pid = self.proc.pid  # also the process group's id: it was started in a new session
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for send in (os.kill, os.killpg):
                try:
                    send(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + STOP_TIMEOUT_S
            while time.monotonic() < deadline:
                if self.proc.poll() is not None and not _group_alive(pid):
                    return
                time.sleep(0.2)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class VllmMissing(RuntimeError):
    """No vLLM venv to start a server from."""


class VllmFailed(RuntimeError):
    """The server exited while starting, or did not become healthy in time (with its log's tail)."""


def find_vllm_python() -> str:
    """The vLLM venv's python: $VOXCLI_VLLM_PYTHON, else where .ci/vllm.sh puts it
    (:class:`VllmMissing` if neither, or if it is not an executable)."""
    python = os.environ.get(PYTHON_ENV)
    if not python and os.access(DEFAULT_PYTHON, os.X_OK):
        python = str(DEFAULT_PYTHON)
    hint = (f"set {PYTHON_ENV} to the python of a vLLM venv: "
            f'export {PYTHON_ENV}="$(bash .ci/vllm.sh | tail -n 1)"')
    if not python:
        raise VllmMissing(f"vLLM server tests need vLLM: {hint}")
    if not os.access(python, os.X_OK):
        raise VllmMissing(f"{PYTHON_ENV}={python} is not an executable; {hint}")
    return python


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _health(host: str, port: int, cafile: Path | None = None) -> int | None:
    if cafile is None:
        conn = http.client.HTTPConnection(host, port, timeout=2)
    else:
        conn = http.client.HTTPSConnection(host, port, timeout=2,
                                           context=ssl.create_default_context(cafile=str(cafile)))
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status
    except OSError:
        return None
    finally:
        conn.close()


def start_vllm_server(kind: str, workdir: Path, *, python: str | None = None,
                      host: str = "127.0.0.1", timeout_s: float = START_TIMEOUT_S,
                      extra_args: tuple[str, ...] = (), port: int | None = None,
                      tls: tuple[Path, Path] | None = None, cache_root: Path | None = None,
                      delay_ms: int = 480) -> VllmServer:
    """Write a tiny model of ``kind`` into ``workdir``, start vLLM on a free port (or ``port``: a
    restart) and wait until /health answers 200. ``tls``: (certificate, key) to serve https with;
    the certificate is its own CA. ``cache_root``: vLLM's cache, shared by the servers of a run
    (default: one in ``workdir``); ``delay_ms``: a Realtime model's delay (its tokenizer's). It
    serves in float32 (exact for the bfloat16 weights), so that voxcli's local engine on the same
    weights (voxcli.testing.twin) computes what it computes. Fails (with the log's tail) if it
    exits or takes over ``timeout_s`` (:class:`VllmFailed`)."""
    from voxcli.testing.tiny_mistral import make_tiny_mistral_model

    python = python or find_vllm_python()
    workdir = Path(workdir)
    model_dir = workdir / "model"
    if not (model_dir / "params.json").exists():  # a restart serves the same model
        model_dir = make_tiny_mistral_model(model_dir, kind, delay_ms=delay_ms)
    tmp = workdir / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env |= {
        "HF_HUB_OFFLINE": "1",
        "VLLM_TARGET_DEVICE": "cpu",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "TMPDIR": str(tmp),
        "VLLM_RPC_BASE_PATH": str(tmp),
        "VLLM_CACHE_ROOT": str(cache_root or workdir / "vllm-cache"),
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # the engine core in this process: one import fewer
        "TORCHINDUCTOR_CACHE_DIR": str(workdir / "inductor-cache"),
    }
    port = port or free_port(host)
    if tls is not None:
        extra_args = (*extra_args, "--ssl-certfile", str(tls[0]), "--ssl-keyfile", str(tls[1]))
    cmd = [python, "-m", "vllm.entrypoints.launchers.api_server.entry",
           "--model", str(model_dir), "--host", host, "--port", str(port),
           "--tokenizer-mode", "mistral", "--config-format", "mistral",
           "--load-format", "mistral", "--max-model-len", "2048", "--enforce-eager", "--dtype", "float32",
           "--distributed-executor-backend", "uni",  # the worker in this process too
           *extra_args]
    log_path = workdir / f"server-{time.time_ns()}.log"
    started = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, env=env, cwd=workdir,
                                start_new_session=True)
    server = VllmServer(kind=kind, model=str(model_dir), model_dir=model_dir, host=host,
                        port=port, proc=proc, log_path=log_path, cafile=tls[0] if tls else None)
    deadline = started + timeout_s
    while True:
        if not server.alive():
            raise VllmFailed(f"vLLM ({kind}) exited with {proc.returncode} while starting; "
                             f"log {log_path}:\n{server.log_tail()}")
        if _health(host, port, server.cafile) == 200:
            break
        if time.perf_counter() > deadline:
            server.kill()
            raise VllmFailed(f"vLLM ({kind}) not healthy after {timeout_s:.0f} s; "
                             f"log {log_path}:\n{server.log_tail()}")
        time.sleep(0.5)
    server.startup_s = time.perf_counter() - started
    print(f"\nvllm_server: {kind} server up on {server.url} in {server.startup_s:.1f} s",
          file=sys.stderr)
    return server


def self_signed_certificate(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """(certificate, key) for ``host``, made with the openssl command; the certificate is its own CA."""
    cert, key = directory / "server.crt", directory / "server.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", f"/CN={host}", "-addext", f"subjectAltName=IP:{host}",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key
