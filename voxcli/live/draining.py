"""Streams that finish on a server: ended at a pause, their last answers are collected as they
come, so capture never waits for them; at the input's end, the driver waits for them."""

from __future__ import annotations

import time
from dataclasses import dataclass

from voxcli.errors import StreamFailed
from voxcli.events import Notice, StreamRole, clamp_span
from voxcli.live.items import UtteranceDone
from voxcli.units import seconds

POLL_S = 0.05  # how often a stream finishing on a server is looked at, when the caller waits for it


@dataclass
class _Ending:
    session: object
    role: StreamRole
    offset: int
    utterance: int
    done: UtteranceDone | None  # said once its last token is out (the first stream's)


class Draining:
    """The streams of one :class:`voxcli.live.driver.StreamDriver` that finish on a server; their
    tokens and incidents go through the driver."""

    def __init__(self, driver) -> None:
        self.driver = driver
        self.items: list[_Ending] = []

    def add(self, session, role: StreamRole, offset: int, utterance: int, done: UtteranceDone | None) -> None:
        self.items.append(_Ending(session, role, offset, utterance, done))

    def holds(self, utterance: int) -> bool:
        return any(item.utterance == utterance for item in self.items)

    def collect(self) -> None:
        """What servers have answered since (never waits)."""
        d = self.driver
        for item in list(self.items):
            try:
                for event in item.session.pending():
                    d.report(item.session, item.offset)
                    d.token(item.role, event, event.t_emitted, flushed=True, utterance=item.utterance,
                            offset=item.offset)
            except StreamFailed as exc:
                d.put(Notice(f"{exc} (at the end of utterance {item.utterance})"))
            d.report(item.session, item.offset)
            if item.session.finished:
                self.items.remove(item)
                d.flushes += 1
                if item.done is not None:
                    d.put(item.done)

    def wait(self, stop=None) -> None:
        """Until every stream ended at a pause has finished (or ``stop``, an Event, is set)."""
        while self.items and not (stop is not None and stop.is_set()):
            self.collect()
            time.sleep(POLL_S if self.items else 0)

    def wait_for(self, role: StreamRole, session, offset: int) -> None:
        """A stream's end (the input's), its last answer as it comes. Waiting for it can take
        ``model.reconnect_s`` when the server is away, and what happens meanwhile is said when it
        happens. A stream that fails for good raises (after saying what happened first)."""
        d = self.driver
        t_ready, end_s = time.perf_counter(), seconds(session.pushed_samples)
        session.commit()
        try:
            while True:
                for event in session.pending():
                    d.report(session, offset)  # what happened on the way comes before what followed it
                    event = clamp_span(event, end_s)
                    d.token(role, event, t_ready, flushed=True)
                    t_ready = event.t_emitted
                d.report(session, offset)
                if session.finished:
                    break
                time.sleep(POLL_S)
        finally:  # a stream that failed still says what happened first (the outage it waited out)
            d.report(session, offset)
        d.flushes += 1

    def drop(self) -> None:
        for item in self.items:
            item.session.close()
        self.items = []
