"""Loading the configuration's engine for a command: library chatter quieted, a spinner while it
loads, one line saying what was loaded (and, with --debug, why compiling failed)."""

from __future__ import annotations

import logging
import os
import warnings

from voxcli.config import Config


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
    from voxcli.engine.opener import loads_here, open_engine

    if loads_here(cfg):
        _quiet_libraries(debug)
    engine = open_engine(cfg, loading=lambda text: status_console.status(text, spinner="dots"))
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


def _step_text(info) -> str:
    from voxcli.output.tables import step_words

    words = step_words(info.step, info.compile_s, graphs=info.graphs, fallback=info.compile_fallback)
    return f"{words}; " if words else ""
