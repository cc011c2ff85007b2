"""Loading the configuration's engine for a command: library chatter quieted, a spinner while it
loads, one line saying what was loaded (and, with --debug, why compiling failed)."""

from __future__ import annotations

import logging
import os
import warnings

from voxcli.config import Config
from voxcli.errors import VoxcliError


def _quiet_libraries(debug: bool) -> None:
    """Library chatter (warnings, transformers' weight-loading bars) would bury the transcript;
    the hub's download progress bars stay, so a first run shows its download."""
    if debug:
        logging.basicConfig(level=logging.INFO)
        logging.getLogger("voxcli.engine.memory").setLevel(logging.DEBUG)  # what the memory check counted, item by item
        return
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()  # weight-loading bars
        # ... which also turns off the hub's, and a download must show its progress.
        import huggingface_hub.utils

        huggingface_hub.utils.enable_progress_bars()
    except ImportError:
        pass


def load_engine(cfg: Config, status_console, debug: bool = False):
    """The engine, with a spinner while it loads and one line saying what was loaded."""
    from voxcli.engine.opener import open_engine

    if not cfg.model.server:
        _quiet_libraries(debug)
    engine = open_engine(cfg, loading=lambda: status_console.status(_loading_text(cfg), spinner="dots"))
    info = engine.info
    if not info.here:  # nothing loaded on this machine: no sizes or times of its own to say
        status_console.print(f"[dim]{info.model}: {engine.kind} on {info.device}[/dim]", highlight=False)
        return engine
    status_console.print(
        f"[dim]{info.model}: {info.kind}, {info.n_params / 1e6:.1f}M params, {info.device}, {info.dtype}"
        f"{' (' + info.dtype_why + ')' if info.dtype_why else ''}; "
        f"{_step_text(info)}{_streams_text(info)}loaded in {info.load_s:.1f} s, "
        f"warm-up {info.warmup_s * 1000:.0f} ms[/dim]", highlight=False)
    if debug and info.compile_fallback_traceback:
        status_console.print(info.compile_fallback_traceback, markup=False, highlight=False, end="")
    return engine


def _streams_text(info) -> str:
    """With model.max_streams > 1: the rows of the batched step, what one costs, how many fit."""
    streams = info.streams
    if not streams:
        return ""
    return (f"{streams['rows']} streams per forward, {streams['row_gib'] * 1024:.0f} MiB each, "
            f"{streams['fit']} fit; ")


def _loading_text(cfg: Config) -> str:
    """What the spinner says while the model loads; compiling can take minutes, so it says that too."""
    if cfg.model.server:
        return f"connecting to {cfg.model.server} ..."
    text = f"loading {cfg.model.name} ..."
    if cfg.model.step != "static" or cfg.model.compile == "off":
        return text
    from voxcli.engine.local import resolve_device, wants_compile

    try:
        compiled = wants_compile(cfg.model.compile, resolve_device(cfg.model.device))
    except (VoxcliError, ValueError):
        return text  # load_engine says what is wrong
    if not compiled:
        return text
    return (f"loading {cfg.model.name} ... (a Realtime model's step is compiled on the way: minutes on a GPU the "
            f"first time, --no-compile skips it)")


def _step_text(info) -> str:
    from voxcli.output.tables import step_words

    words = step_words(info.step, info.compile_s, graphs=info.graphs, fallback=info.compile_fallback)
    return f"{words}; " if words else ""
