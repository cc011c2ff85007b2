"""The output layer: what a person or another program reads. ``view``: the live view, plain
streaming; ``formats``: text, JSON, JSONL, SRT, VTT (``cues``: subtitle cues); ``tables``: figures
as tables; ``recorder``: session files; ``report``: pictures (matplotlib, an optional extra).
Imports only the core modules and audio."""

from voxcli.output.formats import render_transcript
from voxcli.output.recorder import SessionRecorder
from voxcli.output.view import LiveTranscript, PlainTranscript

__all__ = ["LiveTranscript", "PlainTranscript", "SessionRecorder", "render_transcript"]
