"""Session fixtures: tiny random Voxtral checkpoints of both kinds, built offline from configs.

Nothing here reaches the network: HF_HUB_OFFLINE is set before transformers is imported.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.pop("VOXCLI_API_KEY", None)  # a developer's own key must not reach the tests

import pytest
from vmic import no_mic, vmic  # noqa: F401 - the virtual-microphone fixtures, for every test module
from vllm_server import vllm_offline, vllm_realtime  # noqa: F401 - one server of each kind for the whole run


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    # On a shared 2-core machine tiny models run steadier single-threaded.
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def realtime_dir(tmp_path_factory):
    from voxcli.testing.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-realtime"), "realtime")


@pytest.fixture(scope="session")
def offline_dir(tmp_path_factory):
    from voxcli.testing.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-offline"), "offline")


@pytest.fixture(scope="session")
def realtime_engine(realtime_dir):
    from voxcli.engine.local import load_engine

    return load_engine(str(realtime_dir), device="cpu")


@pytest.fixture(scope="session")
def offline_engine(offline_dir):
    from voxcli.engine.local import load_engine

    return load_engine(str(offline_dir), device="cpu", max_new_tokens=24)
