"""What produced a figure, captured once for ``voxcli bench`` and every bench/ script: the host
(Python, the platform, the CPU, voxcli's version and git revision, the date, the libraries and the
GPU where torch is loaded), and what an engine says of itself (its library versions and device,
or its server)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from voxcli.engine.timing import cpu_name


def host() -> dict:
    """The machine and the software, whatever is measured on them."""
    import voxcli

    out = {"python": platform.python_version(), "platform": platform.platform(), "cpu": cpu_name(),
           "cpu_count": os.cpu_count(), "voxcli": voxcli.__version__, "git_revision": _git_revision(),
           "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if "torch" in sys.modules:  # only where something loaded it: a server's figures do not need it
        import torch

        out.update(torch=torch.__version__, torch_threads=torch.get_num_threads(), cuda=torch.version.cuda,
                   gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
    if "transformers" in sys.modules:
        out["transformers"] = sys.modules["transformers"].__version__
    return out


def environment(engine) -> dict:
    """Enough to know what produced an engine's figures and to reproduce them: the host, and what
    the engine says of itself (library versions and the device's name, or the server)."""
    return {**host(), "model": engine.info.model, "kind": engine.kind, "device": engine.info.device,
            **engine.environment()}


def _git_revision() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
