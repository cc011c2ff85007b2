"""The live layer: captured audio through an engine in its own thread, tokens back to the main
thread. ``driver``: one stream's cycle (endpoints, flushes, restarts, two-pass), written once and
used by listen, bench and serve; ``worker``: capture around one driver in the engine thread;
``runner``: the producer/consumer plumbing; ``twopass``: provisional and final text. Imports
engine, audio and output, never cli."""

from voxcli.live.driver import StreamDriver
from voxcli.live.items import LiveOptions
from voxcli.live.runner import LiveResult, Runner, run_live, transcribe_audio
from voxcli.live.worker import LiveWorker

__all__ = ["LiveOptions", "LiveResult", "LiveWorker", "Runner", "StreamDriver", "run_live", "transcribe_audio"]
