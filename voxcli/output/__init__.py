"""The output layer: what a person or another program reads. ``render``: the live view, plain
streaming and the output formats; ``recorder``: session files; ``report``: pictures (matplotlib,
an optional extra). Imports only the core modules and audio."""

from voxcli.output.recorder import SessionRecorder
from voxcli.output.render import LiveTranscript, PlainTranscript, render_transcript

__all__ = ["LiveTranscript", "PlainTranscript", "SessionRecorder", "render_transcript"]
