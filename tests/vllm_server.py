"""A real vLLM server (CPU build) on loopback, serving a tiny random Voxtral model, for tests:
pytest fixtures around :mod:`voxcli.testing.vllm` (which starts it).

vLLM lives in its own virtual environment (`.ci/vllm.sh` builds it, and `.ci/setup.sh --test`
runs that); its python is $VOXCLI_VLLM_PYTHON, else the venv's default place. Without it the fixtures skip, except under CI=true,
where they fail: CI must exercise the server. Use the fixtures `vllm_realtime` / `vllm_offline`
(session-scoped: each server starts once, in 40-70 s on 2 cores, and is stopped at the end):

    from vllm_server import vllm_offline  # noqa: F401 - the fixture

    def test_x(vllm_offline):
        vllm_offline.url, vllm_offline.model, vllm_offline.port ...

The server runs with the flags and environment verified in docs/design.md ("Beyond one machine") and .ci/vllm.sh; every file it
writes (logs, sockets, caches) goes into a temporary directory. Two settings only make it start
sooner here, and change nothing a client sees: the engine core and the model's worker run in the
API server's process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`, `--distributed-executor-backend uni`),
so vLLM is imported once instead of three times (41 s to 28 s alone on this project's 2-core VM),
and the servers of one test run share `VLLM_CACHE_ROOT`, where vLLM keeps what it learnt about the
model class in a subprocess (``modelinfos``): only the first server pays for it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from voxcli.testing.vllm import (  # noqa: F401 - re-exported for the tests
    VllmFailed,
    VllmMissing,
    VllmServer,
    find_vllm_python,
    free_port,
    self_signed_certificate,
)
from voxcli.testing.vllm import start_vllm_server as _start


def vllm_python() -> str:
    """The vLLM venv's python, or skip (fail under CI) with a reason."""
    try:
        return find_vllm_python()
    except VllmMissing as exc:
        if os.environ.get("CI") == "true" or "not an executable" in str(exc):
            pytest.fail(str(exc), pytrace=False)
        pytest.skip(str(exc))


def start_vllm_server(kind: str, workdir: Path, **kwargs) -> VllmServer:
    """:func:`voxcli.testing.vllm.start_vllm_server`, skipping without vLLM and failing the test
    (with the log's tail, no traceback) when the server does not come up."""
    kwargs.setdefault("python", None)
    kwargs["python"] = kwargs["python"] or vllm_python()
    try:
        return _start(kind, workdir, **kwargs)
    except VllmFailed as exc:
        pytest.fail(str(exc), pytrace=False)


def _server_fixture(kind: str, delay_ms: int = 480, name: str | None = None):
    @pytest.fixture(scope="session", name=name or f"vllm_{kind}")
    def fixture(tmp_path_factory):
        python = vllm_python()  # skip or fail before building anything
        server = start_vllm_server(kind, tmp_path_factory.mktemp(name or f"vllm-{kind}"), python=python,
                                   cache_root=shared_cache(tmp_path_factory), delay_ms=delay_ms)
        try:
            yield server
        finally:
            server.kill()

    return fixture


def shared_cache(tmp_path_factory) -> Path:
    """One vLLM cache for every server of this test run (of this xdist worker)."""
    path = tmp_path_factory.getbasetemp() / "vllm-cache"
    path.mkdir(exist_ok=True)
    return path


vllm_realtime = _server_fixture("realtime")
vllm_offline = _server_fixture("offline")
vllm_realtime_960 = _server_fixture("realtime", delay_ms=960, name="vllm_realtime_960")  # another delay (the twin tests)
