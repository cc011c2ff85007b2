"""Errors a user can cause. The CLI prints them as one line; everything else is a bug.

An error carries its data: the keyword arguments it was raised with are kept in ``data`` (the
model, the server's URL, an HTTP status, ...), and a setting the message refers to is written as
``{section.key}`` (``{model.name}``). ``str()`` shows the setting's key, which is what a Python
caller or a config file knows; only the CLI, which knows its flags, words them as flags
(``worded({"model.name": "--model"})``). The engine never names a flag.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_SETTING = re.compile(r"\{([a-z_]+\.[a-z_]+)\}")


class VoxcliError(Exception):
    """Base class: its message is meant for the user, as one line."""

    def __init__(self, message: str = "", **data: object) -> None:
        super().__init__(message)
        self.template = message
        self.data = data

    def worded(self, names: Mapping[str, str] | None = None) -> str:
        """The message with each ``{section.key}`` named as ``names`` says (else as the key)."""
        names = names or {}
        return _SETTING.sub(lambda m: names.get(m[1], m[1]), self.template)

    def __str__(self) -> str:
        return self.worded()

    def extended(self, more: str) -> VoxcliError:
        """The same error, same type and data, with ``more`` appended to its message."""
        return type(self)(self.template + more, **self.data)


class ConfigError(VoxcliError):
    """A bad configuration key or value."""


class AudioError(VoxcliError):
    """Audio that cannot be read, decoded or captured."""


class ModelError(VoxcliError):
    """A model that cannot be found, downloaded or loaded."""


class EngineFull(ModelError):
    """Every stream the loaded model allocated is in use (serve: ``server_full``)."""


class StreamFailed(VoxcliError):
    """A stream that cannot go on: its engine is gone for good. What the contract says a session's
    ``push``, ``steps`` or ``pending`` raises; callers catch this, never what is behind the engine."""


class ServerError(StreamFailed):
    """A remote (vLLM) engine that cannot be reached, refuses, or fails mid-stream."""


class StreamEnded(ServerError):
    """A server ended a realtime stream (``transcription.done``: its model said end of sequence)
    before the audio did: the rest goes to a new session."""


def setting(key: str) -> str:
    """How a message refers to a setting: ``f"{setting('model.name')} {name}: not found"``."""
    return "{" + key + "}"


def one_line(text: str) -> str:
    """``text`` on one line: a path or a library's message with a newline in it must not break
    an error that is printed as one line (newlines are shown as ``\\n``)."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


def first_line(exc: BaseException) -> str:
    """An exception's first line of text (or its type's name): what a one-line error quotes."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
