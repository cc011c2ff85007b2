"""``open_engine(config)``: the configuration's engine, local or on a server, loaded and warm.

The one place that reads ``model.server``: what comes back satisfies the contract
(:mod:`voxcli.engine.contract`) either way, and nothing above this layer asks which it is.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager

from voxcli.config import Config
from voxcli.errors import ConfigError, VoxcliError, setting


def loads_here(cfg: Config) -> bool:
    """Does ``cfg``'s engine load weights on this machine (libraries to quiet, a download to show)?"""
    return not cfg.model.server


def open_engine(cfg: Config, *, loading: Callable[[str], AbstractContextManager] = lambda text: contextlib.nullcontext()):
    """The engine ``cfg`` names. ``loading(text)`` is entered around the part that takes time without
    showing progress of its own (a spinner saying ``text``); a first run's download, before it, draws
    the hub's own progress bars."""
    from voxcli.engine.keyterms import Keyterms

    t = cfg.transcription
    keyterms = Keyterms.of(t.keyterms, t.keyterm_bias)
    if cfg.model.server:
        asked = [name for name, on in (("transcription.alternatives", t.alternatives),
                                       ("output.low_confidence", cfg.output.low_confidence)) if on]
        if asked:  # keyterms: voxcli serve takes them (connect_engine checks)
            raise ConfigError(f"{setting(asked[0])} needs a local model: a server's tokens come without scores "
                              f"({setting('model.server')} is set)", server=cfg.model.server)
        from voxcli.engine.connect import connect_engine

        with loading(loading_text(cfg)):
            return connect_engine(cfg.model.server, cfg.model.name, kind=cfg.model.server_kind,
                                  max_new_tokens=cfg.model.max_new_tokens, api_key=cfg.model.api_key,
                                  timeout_s=cfg.model.timeout_s, reconnect_s=cfg.model.reconnect_s,
                                  keyterms=keyterms)
    from voxcli.engine.hub import resolve_checkpoint
    from voxcli.engine.local import load_engine

    path = resolve_checkpoint(cfg.model.name, offline=cfg.model.offline)
    with loading(loading_text(cfg)):
        return load_engine(
            str(path), name=cfg.model.name, device=cfg.model.device, dtype=cfg.model.dtype,
            delay_ms=cfg.transcription.delay_ms, threads=cfg.model.threads,
            max_new_tokens=cfg.model.max_new_tokens, step=cfg.model.step, compile=cfg.model.compile,
            sessions=max(cfg.model.max_streams, 2 if cfg.transcription.final_delay_ms is not None else 1),
            alternatives=t.alternatives, confidence=cfg.output.low_confidence > 0, keyterms=keyterms,
            on_eos=t.on_eos,
        )


def loading_text(cfg: Config) -> str:
    """What the spinner says while the model loads; compiling can take minutes, so it says that too."""
    if cfg.model.server:
        return f"connecting to {cfg.model.server} ..."
    text = f"loading {cfg.model.name} ..."
    if cfg.model.step != "static" or cfg.model.compile == "off":
        return text
    from voxcli.engine.loading import resolve_device, wants_compile

    try:
        compiled = wants_compile(cfg.model.compile, resolve_device(cfg.model.device))
    except (VoxcliError, ValueError):
        return text  # load_engine says what is wrong
    if not compiled:
        return text
    return (f"loading {cfg.model.name} ... (a Realtime model's step is compiled on the way: minutes on a GPU the "
            f"first time, --no-compile skips it)")
