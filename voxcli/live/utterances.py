"""Whole utterances for offline models: where the open one begins (its speech's start less the
preroll; without an endpointer, where the last one was cut), cut at an end of speech, at the
caller's end, or once too long to wait for, and each transcribed whole. Also two-pass's offline
final pass over each utterance a Realtime stream transcribed. No stretch the endpointer heard no
speech in is ever sent to an offline model (Voxtral 3B invents text over silence)."""

from __future__ import annotations

import time

from voxcli.events import StreamRole
from voxcli.units import samples


class WholeUtterances:
    """A driver's offline model (or final pass): the audio comes from the driver's tape, the tokens
    go out through the driver."""

    def __init__(self, driver, engine) -> None:
        self.driver = driver
        self.engine = engine
        self.cut_from: int | None = 0 if driver.endpointer is None else None  # the open utterance's start
        opts = driver.options
        self.preroll, self.tail = samples(opts.preroll_s), samples(opts.tail_s)
        self.longest = samples(opts.max_utterance_s)

    def speech(self, vad) -> int | None:
        """The endpointer's event; at an end, where the utterance that ended began (None: none open)."""
        if vad.kind == "start":
            self.cut_from = max(vad.sample - self.preroll, self.driver.tape.start)
            return None
        start, self.cut_from = self.cut_from, None
        return start

    def caller_end(self) -> int | None:
        """The caller ends the utterance here; where it began (None: none open)."""
        start = self.cut_from
        self.cut_from = self.driver.heard if self.driver.endpointer is None else None
        return start

    def ended(self, start: int | None, end) -> None:
        """An utterance from ``start`` to the endpointer's ``end`` (None: to now), transcribed."""
        if start is not None:
            self.transcribe(start, self.driver.heard if end is None else end.sample + self.tail)

    def settle(self) -> None:
        d = self.driver
        if self.cut_from is not None and d.heard - self.cut_from >= self.longest:
            self.transcribe(self.cut_from, d.heard)  # too long to wait
            self.cut_from = d.heard
        d.tape.keep_from(self.cut_from if self.cut_from is not None else d.heard - self.preroll)

    def close(self) -> None:
        if self.cut_from is not None and self.driver.heard > self.cut_from:
            self.transcribe(self.cut_from, self.driver.heard)

    def transcribe(self, start: int, stop: int) -> None:
        d = self.driver
        audio = d.tape.slice(start, stop)
        t_ready = time.perf_counter()
        # With an endpointer, the utterance is speech; without, the engine finds the speech in it.
        segments = [(0, len(audio))] if d.endpointer is not None else None
        for event in self.engine.transcribe(audio, segments=segments, **d.session_options):
            d.token(d.first_role, event, t_ready, offset=start)
        d.flushes += 1

    def final_pass(self, offset: int, speech_from: int | None, utterance: int) -> None:
        """Two-pass with an offline model: the utterance that just ended, transcribed whole, from
        its speech's start (less the preroll; none heard: its stream's start, ``offset``) to now."""
        d = self.driver
        start = offset if speech_from is None else max(offset, speech_from - self.preroll)
        audio = d.tape.slice(start, d.heard)
        t_ready = time.perf_counter()
        for event in self.engine.transcribe(audio, language=d.options.language, segments=[(0, len(audio))]):
            d.token(StreamRole.FINAL, event, t_ready, utterance=utterance, offset=start)
