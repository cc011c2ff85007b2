"""Getting a checkpoint from the hub, against a hub stand-in on 127.0.0.1 (tests/fake_hub.py).

The real download code runs (huggingface_hub's metadata request, file listing, HEAD/GET per
file, its cache); only the server is ours. Nothing reaches the network: an unreachable hub is a
closed port on 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import socket

import pytest
from fake_hub import FakeHub
from test_cli import HELLO, assert_one_error_line, voxcli


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when this returns: connections are refused


@pytest.fixture
def hub_env(tmp_path):
    env = dict(os.environ)
    for key in ("HF_HUB_OFFLINE", "VOXCLI_DEBUG", "HF_TOKEN"):
        env.pop(key, None)
    env.update(HF_HOME=str(tmp_path / "hf-home"), XDG_CONFIG_HOME=str(tmp_path / "xdg"),
               TOKENIZERS_PARALLELISM="false", HF_HUB_DISABLE_TELEMETRY="1")
    return env


@pytest.fixture
def hub(realtime_dir, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(realtime_dir, repo)
    # The real repositories also hold the weights in Mistral's format: never downloaded.
    (repo / "consolidated.safetensors").write_bytes(b"\0" * 4096)
    (repo / "params.json").write_text("{}")
    mistral_only = tmp_path / "mistral-only"
    mistral_only.mkdir()
    for name in ("params.json", "consolidated.safetensors", "tekken.json"):
        shutil.copy(repo / name, mistral_only / name)
    with FakeHub() as server:
        server.add("mistralai/tiny-realtime", repo)
        server.add("mistralai/tiny-gated", repo, gated=True)
        server.add("mistralai/tiny-mistral-format", mistral_only)
        yield server


def test_no_network_and_no_cache_is_one_line_without_retries(hub_env):
    hub_env["HF_ENDPOINT"] = f"http://127.0.0.1:{_closed_port()}"
    run = voxcli(hub_env, "transcribe", "file", HELLO, "--model-device", "cpu")  # the default model
    line = assert_one_error_line(run, code=1)
    assert "cannot reach the Hugging Face hub" in line and "--model=PATH" in line
    assert "Retrying" not in run.stderr


@pytest.mark.slow
def test_download_shows_progress_skips_mistral_weights_then_works_from_cache(hub, hub_env, tmp_path):
    hub_env["HF_ENDPOINT"] = hub.url
    run = voxcli(hub_env, "transcribe", "file", HELLO, "--model", "mistralai/tiny-realtime", "--model-device", "cpu")
    assert run.code == 0, run
    assert "Fetching" in run.stderr  # the hub's progress bar is shown, not silenced
    assert run.stdout.strip()
    fetched = {p.name for p in (tmp_path / "hf-home").rglob("*") if p.is_file() or p.is_symlink()}
    assert "model.safetensors" in fetched and "config.json" in fetched
    assert "consolidated.safetensors" not in fetched and "params.json" not in fetched
    assert not any(path.endswith("consolidated.safetensors") for _, path in hub.requests)

    # The hub gone: the cached copy is used, with no error.
    hub_env["HF_ENDPOINT"] = f"http://127.0.0.1:{_closed_port()}"
    again = voxcli(hub_env, "transcribe", "file", HELLO, "--model", "mistralai/tiny-realtime", "--model-device", "cpu")
    assert again.code == 0, again
    assert again.stdout == run.stdout  # the same greedy model on the same file
    offline = voxcli(hub_env, "transcribe", "file", HELLO, "--model", "mistralai/tiny-realtime", "--model-device", "cpu",
                     "--offline")
    assert offline.code == 0, offline


def test_offline_without_a_cached_copy_is_one_line(hub_env):
    run = voxcli(hub_env, "transcribe", "file", HELLO, "--model", "mistralai/tiny-realtime", "--offline")
    line = assert_one_error_line(run, code=1)
    assert "not in the local Hugging Face cache" in line


@pytest.mark.parametrize("repo, words", [
    ("mistralai/tiny-gated", ["gated", "hf auth login"]),
    ("mistralai/tiny-mistral-format", ["params.json", "consolidated.safetensors", "vLLM", "--server"]),
    ("mistralai/no-such-model", ["no such model", "hf auth login"]),
])
def test_hub_refusals_are_one_line(hub, hub_env, repo, words):
    hub_env["HF_ENDPOINT"] = hub.url
    run = voxcli(hub_env, "transcribe", "file", HELLO, "--model", repo, "--model-device", "cpu")
    line = assert_one_error_line(run, code=1)
    assert all(w in line for w in words), line
