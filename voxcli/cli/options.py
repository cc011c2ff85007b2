"""The command line, built from the configuration: every option that sets a configuration key is
made here from that key's field (its type, its help, its range and choices, written once in
:mod:`voxcli.config`); a command names the keys it takes (``@takes(...)``). Each such option
defaults to None ("not given": the configuration file decides). What is not configuration (a
command's own inputs, --config, --debug) is written beside its command."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from voxcli.config import Config

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file.",
                                                show_default=False)]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")]


@dataclass(frozen=True)
class Flag:
    """How configuration key ``key`` is spelt on the command line (``names``), and the command's
    parameter that holds it (``param``)."""

    key: str
    names: tuple[str, ...]
    param: str


FLAGS = [
    Flag("model.name", ("--model", "-m"), "model"),
    Flag("model.device", ("--model-device",), "model_device"),
    Flag("model.dtype", ("--dtype",), "dtype"),
    Flag("model.threads", ("--threads",), "threads"),
    Flag("model.offline", ("--offline",), "offline"),
    Flag("model.server", ("--server",), "server"),
    Flag("model.api_key", ("--api-key",), "api_key"),
    Flag("model.step", ("--step",), "step"),
    Flag("model.compile", ("--compile/--no-compile",), "compile"),
    Flag("transcription.delay_ms", ("--delay-ms",), "delay_ms"),
    Flag("transcription.language", ("--language", "-l"), "language"),
    Flag("transcription.keyterms", ("--keyterm", "-k"), "keyterm"),
    Flag("transcription.keyterm_bias", ("--keyterm-bias",), "keyterm_bias"),
    Flag("transcription.alternatives", ("--alternatives",), "alternatives"),
    Flag("transcription.final_delay_ms", ("--final-delay-ms",), "final_delay_ms"),
    Flag("transcription.final_model", ("--final-model",), "final_model"),
    Flag("output.format", ("--format", "-f"), "output_format"),
    Flag("output.plain", ("--plain",), "plain"),
    Flag("output.low_confidence", ("--low-confidence",), "low_confidence"),
    Flag("listen.device", ("--device", "-d"), "device"),
    Flag("listen.save_dir", ("--save",), "save"),
    Flag("listen.vad", ("--vad",), "vad"),
    Flag("listen.flush_after_ms", ("--flush-after-ms",), "flush_after_ms"),
    Flag("serve.host", ("--host",), "host"),
    Flag("serve.port", ("--port", "-p"), "port"),
    Flag("serve.api_key", ("--api-key",), "api_key"),
    Flag("serve.ssl_certfile", ("--ssl-certfile",), "ssl_certfile"),
    Flag("serve.ssl_keyfile", ("--ssl-keyfile",), "ssl_keyfile"),
    Flag("serve.max_sessions", ("--max-sessions",), "max_sessions"),
    Flag("serve.wyoming", ("--wyoming",), "wyoming"),
    Flag("serve.allow_origins", ("--allow-origin",), "allow_origin"),
    Flag("dictate.hotkey", ("--hotkey",), "hotkey"),
    Flag("dictate.toggle", ("--toggle",), "toggle"),
    Flag("dictate.stop_hotkey", ("--stop-hotkey",), "stop_hotkey"),
    Flag("dictate.live_correct", ("--live-correct",), "live_correct"),
    Flag("dictate.type_with", ("--type-with",), "type_with"),
]
BY_KEY = {f.key: f for f in FLAGS}
# The keys every command that loads a model takes (serve: not the server's, it runs the model itself).
MODEL = ("model.name", "model.device", "model.dtype", "model.threads", "model.offline", "model.server",
         "model.api_key", "transcription.delay_ms", "model.step", "model.compile")
TOKENS = ("transcription.keyterms", "transcription.keyterm_bias", "transcription.alternatives")
# One flag's name for what a key used to be called in one command: still taken, hidden, with a line.
RENAMED = {"--device": "--model-device"}  # transcribe file's model device, before every command said --model-device


def _field(key: str) -> tuple[dataclasses.Field, type]:
    """The configuration field ``key`` names, and its type (``int`` for ``int | None``, ``list``
    for ``list[str]``)."""
    section, _, name = key.partition(".")
    cls = typing.get_type_hints(Config)[section]
    hint = typing.get_type_hints(cls)[name]
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return {f.name: f for f in dataclasses.fields(cls)}[name], typing.get_origin(hint) or hint


def _option(flag: Flag) -> inspect.Parameter:
    """The typer parameter for ``flag``: its type from the field's, its help and range from the
    field's metadata (with the choices it allows). A ``--x/--no-x`` switch for a choice of words
    (``model.compile``: on/off, unset: auto) is a bool that may stay None."""
    field, base = _field(flag.key)
    meta = field.metadata
    help_text = meta["help"][0].upper() + meta["help"][1:]
    if "choices" in meta:
        help_text += f" [{'|'.join(map(str, meta['choices']))}]"
    default = None
    if base is bool:
        annotation, default = bool, False
    elif "/" in flag.names[0]:
        annotation = bool | None
    elif base is list:
        annotation = list[str] | None
    else:
        annotation = base | None
    kwargs = {k: meta[k] for k in ("min", "max") if k in meta and base in (int, float)}
    option = typer.Option(*flag.names, help=help_text + ".", show_default=False, **kwargs)
    return inspect.Parameter(flag.param, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default,
                             annotation=Annotated[annotation, option])


def params(*keys: str) -> dict[str, str]:
    """Configuration key -> the parameter that holds its option."""
    return {k: BY_KEY[k].param for k in keys}


def takes(*keys: str):
    """Give a command an option for each configuration key in ``keys``, made from the key's field.
    The command reads them through ``ctx.params`` (``resolve_config`` with ``params(*keys)``)."""
    flags = [BY_KEY[k] for k in keys]

    def wrap(fn):
        own = list(inspect.signature(fn, eval_str=True).parameters.values())
        made = [_option(f) for f in flags]
        names = {p.name for p in made}

        @functools.wraps(fn)
        def command(*args, **kwargs):
            return fn(*args, **{k: v for k, v in kwargs.items() if k not in names})

        last = [p for p in own if p.name in ("config", "debug")]  # --config and --debug close the list
        ordered = [p for p in own if p not in last] + made + last
        command.__signature__ = inspect.Signature(ordered)
        command.__annotations__ = {p.name: p.annotation for p in ordered}
        del command.__wrapped__  # typer must see the signature above, not fn's
        return command

    return wrap
