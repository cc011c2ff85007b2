"""What a stream driver keeps count of across its streams: speech heard without text (a blank run
restarts the stream), and when each sample was captured (latency figures)."""

from __future__ import annotations

import bisect
import time
from collections import deque

from voxcli.units import SAMPLE_RATE

BLANK_RESTARTS = 3  # blank-run restarts in a row (each after twice the speech of the last) before giving up


class BlankRuns:
    """Speech heard with no text from the stream, counted across streams (every end of speech
    starts one, so utterances each shorter than the limit must still add up): how much, where the
    run now going on began (a restart replays from there), and when it has gone on long enough
    (``limit_s``, doubled after each restart in a row) to restart the stream."""

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s  # 0: never
        self.speech_from: int | None = None  # where the speech now going on began (None: not in speech)
        self.text_at = 0  # where the first stream last gave text (or was restarted)
        self.speech = 0  # samples of speech heard since then, over every stream
        self.restarts = 0  # restarts since the last text

    def heard(self, start: int, end: int, events) -> None:
        """Samples ``start`` to ``end`` were heard; ``events``: the endpointer's for them."""
        # An event is decided after its sample (an end once the silence has lasted): the samples
        # between were counted (or not) as the state was, and are set right here.
        for vad in events:
            if vad.kind == "end" and self.speech_from is not None:
                since = max(self.speech_from, self.text_at)
                self.speech += max(vad.sample, since) - max(start, since)
            elif vad.kind == "start" and self.speech_from is None:
                self.speech += max(0, start - max(vad.sample, self.text_at))
            self.speech_from = vad.sample if vad.kind == "start" else None
        if self.speech_from is not None:
            self.speech += max(0, end - max(start, self.speech_from, self.text_at))

    def text(self, heard: int) -> None:
        self.text_at, self.restarts, self.speech = heard, 0, 0

    def restarted(self, at: int, heard: int) -> None:
        """A new stream hears from ``at`` on: the speech counted is what it has heard again."""
        self.text_at = max(self.text_at, at)  # the new stream's run without text starts here
        self.speech = min(self.speech, max(0, heard - at) if self.speech_from is not None else 0)

    def run_from(self, heard: int) -> int:
        """Where the run without text, inside the speech now going on, began (``heard``: none to watch)."""
        if not self.limit_s or self.speech_from is None or self.restarts > BLANK_RESTARTS:
            return heard
        return max(self.speech_from, self.text_at)

    def over(self, heard: int) -> bool:
        """Enough speech without text, and speech going on now (a restart replays its run)."""
        limit = self.limit_s * 2 ** self.restarts
        return self.run_from(heard) < heard and self.speech >= limit * SAMPLE_RATE > 0


class CaptureClock:
    """Maps a 16 kHz sample position to the moment it was captured (for latency figures).

    Only recent blocks are remembered (bounded for sessions of any length); older positions map
    to the oldest time kept.
    """

    def __init__(self, keep_blocks: int = 30000) -> None:
        self._ends: deque[int] = deque(maxlen=keep_blocks)
        self._times: deque[float] = deque(maxlen=keep_blocks)

    def add(self, end_sample: int, t_captured: float) -> None:
        self._ends.append(end_sample)
        self._times.append(t_captured)

    def at(self, sample: int) -> float:
        if not self._times:
            return time.perf_counter()
        i = bisect.bisect_left(self._ends, sample)
        return self._times[min(i, len(self._times) - 1)]
