"""The live layer: captured audio through an engine in its own thread, tokens back to the main
thread. ``runner``: the producer/consumer plumbing; ``worker``: the engine thread's loops;
``twopass``: provisional and final text. Imports engine, audio and output, never cli."""

from voxcli.live.runner import LiveResult, Runner, run_live, transcribe_audio
from voxcli.live.worker import LiveOptions, LiveWorker

__all__ = ["LiveOptions", "LiveResult", "LiveWorker", "Runner", "run_live", "transcribe_audio"]
