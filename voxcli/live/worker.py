"""The live engine worker: captured 16 kHz audio in, through one stream driver, items out.

It runs in the engine thread (``voxcli.live.runner`` gives it one) and hands everything it makes to
``put``: the audio as it was heard (for the WAV), then what its :class:`voxcli.live.driver.StreamDriver`
makes of it (tokens with the moments their latency counts from, ends of speech, restarts, notices).
It never draws and never waits for the screen. The session's cycle (endpoints, flushes, restarts,
two-pass) is the driver's; this is capture around it. On stop, what was captured is drained and
flushed before the worker returns. A stream that fails for good stops capture; every block
captured is still handed on (the WAV), then the error.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from voxcli.audio.capture import level_db
from voxcli.engine.contract import Engine
from voxcli.errors import StreamFailed
from voxcli.live.driver import StreamDriver, cycle
from voxcli.live.items import AudioIn, LiveOptions

POLL_S = 0.05  # how long the worker waits for a block before looking at a server's deltas again


class LiveWorker:
    """The consumer of captured audio: capture plus one stream driver.

    ``run(put)`` is the engine thread's whole work; ``put`` may block briefly (a bounded queue) but
    the capture never waits for it: the source counts what it has to drop.
    """

    def __init__(self, engine: Engine, source, stop: threading.Event, options: LiveOptions | None = None,
                 final_engine: Engine | None = None) -> None:
        self.engine = engine
        self.source = source
        self.stop_event = stop
        self._put: Callable[[object], None] = lambda item: None
        # Two-pass: a second Realtime stream at a longer delay, or an offline pass, fed the same audio.
        self.driver = StreamDriver(engine, lambda item: self._put(item), options, final_engine=final_engine)

    @property
    def flushes(self) -> int:
        return self.driver.flushes

    @property
    def clock(self):
        return self.driver.clock

    def run(self, put: Callable[[object], None]) -> None:
        self._put = put
        driver = self.driver
        self._block_iter = blocks = self._blocks()
        try:
            for t_cap, x in blocks:
                driver.draining.collect()
                if x is not None:
                    put(AudioIn(x, level_db(x), self.source.backlog))
                    driver.hear(x, t_cap)
                elif not driver.realtime:
                    continue
                cycle(self.engine, [driver])
            driver.close()
        except StreamFailed as exc:
            self._give_up(exc)

    def _blocks(self):
        """Captured 16 kHz blocks until the source ends; ``(None, None)`` when none came within the
        poll interval, so deltas that arrive on their own schedule (a server's) are still
        drawn between blocks. A stop request ends capture; what is already queued is still heard."""
        for item in self.source.stream(POLL_S):
            yield item if item is not None else (None, None)
            if self.stop_event.is_set():
                self.source.stop()

    def _give_up(self, exc: StreamFailed):
        """Stop capture, hand every block already captured to the WAV, and fail in one line."""
        self.stop_event.set()
        for _, x in self._block_iter:
            if x is not None:
                self._put(AudioIn(x, level_db(x), self.source.backlog))
        raise exc
