"""What every command shares: the configuration resolved from its flags, one-line errors with the
right exit status, and --debug."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from voxcli.cli.options import RENAMED
from voxcli.config import Config, load_config
from voxcli.errors import ConfigError, VoxcliError


def debug_on(debug: bool) -> bool:
    return debug or os.environ.get("VOXCLI_DEBUG", "") not in ("", "0")


def fail(message: str | VoxcliError, code: int = 1, ctx: typer.Context | None = None) -> typer.Exit:
    """One line on stderr. An error's settings are named by the flags of the running command."""
    if isinstance(message, VoxcliError):
        message = message.worded(ctx.meta.get(FLAG_NAMES, {}) if ctx is not None else {})
    typer.echo(f"voxcli: error: {message}", err=True)
    return typer.Exit(code)


FLAG_NAMES = "voxcli.flag_names"  # click context meta: configuration key -> the flag that sets it


def resolve_config(ctx: typer.Context, config_path: Path | None, debug: bool = False,
                    keys: dict[str, str] | None = None) -> Config:
    """Defaults < file < flags; a bad key or value exits 2.

    ``keys`` maps a configuration key to the parameter of the running command that sets it. An
    unset switch (False) and an absent option (None) leave the key alone. The flags' spellings are
    kept, so that errors naming a key are worded with this command's flag. A renamed flag still
    given under its old name (``options.RENAMED``) sets its key, with a one-line notice.
    """
    options = {param.name: param for param in ctx.command.params}
    for old, new in RENAMED.items():
        given = ctx.params.get(f"old_{old.strip('-').replace('-', '_')}")
        new_param = next((p.name for p in ctx.command.params if new in p.opts), None)
        if given is not None and new_param is not None:
            typer.echo(f"voxcli: {old} is now {new} (the old name will go)", err=True)
            ctx.params[new_param] = ctx.params[new_param] if ctx.params[new_param] is not None else given
    if "keyterm" in ctx.params:
        gather_keyterms(ctx, debug)
    overrides, names = {}, {}
    for key, name in (keys or {}).items():
        value = ctx.params[name]
        if isinstance(value, bool) and options[name].secondary_opts:  # --x/--no-x: a choice, both ways
            value = "on" if value else "off"
        if isinstance(value, tuple):  # a repeatable option: () is "not given", not "none"
            value = list(value) or None
        overrides[key] = str(value) if isinstance(value, Path) else (None if value is False else value)
        names[key] = max(options[name].opts, key=len)
    ctx.meta[FLAG_NAMES] = names
    try:
        return load_config(config_path, overrides)
    except ConfigError as exc:
        if debug:
            raise
        raise fail(exc, 2, ctx) from None


def gather_keyterms(ctx: typer.Context, debug: bool) -> None:
    """--keyterm and --keyterms-file together are the keyterms (None, neither given: the config
    file's); a file that cannot be read exits 2."""
    from voxcli.engine.keyterms import read_keyterms_file
    from voxcli.errors import first_line

    phrases = list(ctx.params.get("keyterm") or [])
    path = ctx.params.get("keyterms_file")
    if path is not None:
        try:
            phrases += read_keyterms_file(path)
        except (OSError, UnicodeDecodeError) as exc:
            if debug:
                raise
            raise fail(f"--keyterms-file {path}: cannot read it: {first_line(exc)}", 2) from None
    ctx.params["keyterm"] = phrases if phrases or path is not None else None


def exit_with(ctx: typer.Context, job, debug: bool):
    """Run a command's job; a user-caused error becomes one line and exit 1, or 2 for a bad
    configuration value found while checking the job's inputs (--debug re-raises)."""
    try:
        code = job()
    except VoxcliError as exc:
        if debug:
            raise
        raise fail(exc, 2 if isinstance(exc, ConfigError) else 1, ctx) from None
    raise typer.Exit(code)
