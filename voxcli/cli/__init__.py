"""The command line: flags -> config -> job. The only layer that exits, prints errors or names a flag.
``app``: the Typer app; ``transcribe``, ``listen``, ``bench``: one command's job each."""

from voxcli.cli.app import app, main

__all__ = ["app", "main"]
