"""Session fixtures: tiny random Voxtral checkpoints of both kinds, built offline from configs.

Nothing here reaches the network: HF_HUB_OFFLINE is set before transformers is imported.
"""

from __future__ import annotations

import os
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The caller's environment must not change what the tests see: a developer's own key, a debug switch
# (tracebacks instead of the one-line errors the tests read), a hub token. HF_HUB_OFFLINE is set
# above for this process; tests that need the hub asked (tests/test_hub.py) clear it for their own
# subprocesses, whatever the caller exported.
os.environ.pop("VOXCLI_API_KEY", None)
os.environ.pop("VOXCLI_DEBUG", None)
os.environ.pop("HF_TOKEN", None)
# Nor their config file: every test, and every subprocess a test starts, sees an empty config home
# unless it sets one itself.
os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="voxcli-test-xdg-")
# On a shared 2-core machine tiny models run steadier single-threaded; torch reads this when it is
# first imported (here or in a subprocess), so unit tests never have to import it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
from vllm_server import vllm_offline, vllm_realtime, vllm_realtime_960  # noqa: F401 - one server of each for the run
from vmic import no_mic, vmic  # noqa: F401 - the virtual-microphone fixtures, for every test module


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """``vllm`` and ``compile`` tests are ``slow`` too; the vLLM tests run in one pytest-xdist
    worker (``--dist loadgroup``), so each session-scoped server starts once; ``gpu`` tests are
    skipped without a GPU (torch is imported only when there are some).

    First among the hooks (tryfirst): xdist's own turns each test's ``xdist_group`` mark into its
    node id's group in the same hook, and a mark added after it groups nothing: for a while every
    vLLM server started in both workers (each worker ran some vLLM tests)."""
    for item in items:
        if {"vllm", "compile"} & set(item.keywords):
            item.add_marker(pytest.mark.slow)
        if "vllm" in item.keywords or any(name.startswith("vllm_") for name in item.fixturenames):
            item.add_marker(pytest.mark.xdist_group("vllm"))
    gpu = [item for item in items if "gpu" in item.keywords]
    if not gpu:
        return
    import torch

    if not torch.cuda.is_available():
        for item in gpu:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))


@pytest.fixture(scope="session")
def realtime_dir(tmp_path_factory):
    from voxcli.testing.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-realtime"), "realtime")


@pytest.fixture(scope="session")
def offline_dir(tmp_path_factory):
    from voxcli.testing.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-offline"), "offline")


@pytest.fixture(scope="session")
def wrap_dir(tmp_path_factory):
    """Held out: a seed no other model uses, and windows far smaller than a clip (decoder 24
    tokens, encoder 40 positions), so the rings wrap and re-anchor many times inside one."""
    from voxcli.testing.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-wrap"), "realtime", seed=11,
                           text_sliding_window=24, audio_sliding_window=40)


@pytest.fixture(scope="session")
def eos_dir(tmp_path_factory):
    """A model that says end of sequence now and then mid-clip, as a real checkpoint does (random
    tiny models never do: their special rows are zeroed). Seed 5, EOS row std 0.6: five EOS
    mid-clip in long.wav (1.4, 5.0, 9.4, 10.5 and 13.9 s)."""
    from voxcli.testing.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-eos"), "realtime", seed=5, eos_std=0.6)


@pytest.fixture(scope="session")
def realtime_engine(realtime_dir):
    from voxcli.engine.local import load_engine

    return load_engine(str(realtime_dir), device="cpu")


@pytest.fixture(scope="session")
def offline_engine(offline_dir):
    from voxcli.engine.local import load_engine

    return load_engine(str(offline_dir), device="cpu", max_new_tokens=24)
