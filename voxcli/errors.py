"""Errors a user can cause. The CLI prints them as one line; everything else is a bug."""


class VoxcliError(Exception):
    """Base class: its message is meant for the user, as one line."""


class ConfigError(VoxcliError):
    """A bad configuration key or value."""


class AudioError(VoxcliError):
    """Audio that cannot be read, decoded or captured."""


class ModelError(VoxcliError):
    """A model that cannot be found, downloaded or loaded."""


class ServerError(VoxcliError):
    """A remote (vLLM) engine that cannot be reached, refuses, or fails mid-stream."""


def first_line(exc: BaseException) -> str:
    """An exception's first line of text (or its type's name): what a one-line error quotes."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
