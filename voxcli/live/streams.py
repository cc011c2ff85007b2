"""The Realtime streams a driver has open: one per role (the only one, or two-pass's provisional
and final), each an engine session and the sample of the driver's audio it began at."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from voxcli.events import StreamRole


@dataclass
class OpenStream:
    session: object
    offset: int  # where in the driver's audio the stream began


class Streams:
    """``engine`` (and a Realtime ``final_engine``) opened as needed, fed the same audio."""

    def __init__(self, engine, first_role: StreamRole, *, final_engine=None, session_options: dict | None = None):
        self.engine = engine
        self.first_role = first_role
        self.roles = [(first_role, engine, dict(session_options or {}))]
        if final_engine is not None:
            self.roles.append((StreamRole.FINAL, final_engine, {}))
        self.open: dict[StreamRole, OpenStream] = {}

    def ensure(self, at: int) -> None:
        """Every role open, those not yet open starting at sample ``at``."""
        for role, engine, kwargs in self.roles:
            if role not in self.open:
                self.open[role] = OpenStream(engine.session(**kwargs), at)

    def push(self, x: np.ndarray) -> None:
        for stream in self.open.values():
            stream.session.push(x)

    def sessions(self) -> list[tuple[StreamRole, object]]:
        return [(role, stream.session) for role, stream in self.open.items()]

    def offset(self, role: StreamRole) -> int:
        return self.open[role].offset

    def first_offset(self, default: int) -> int:
        first = self.open.get(self.first_role)
        return first.offset if first is not None else default

    @property
    def waiting(self) -> bool:
        """A stream is waiting for its engine to come back (a server away)."""
        return any(stream.session.waiting for stream in self.open.values())

    def replace_first(self, at: int, audio: np.ndarray) -> None:
        """The first stream dropped and opened again at ``at``, fed ``audio`` (from ``at`` on)."""
        old = self.open.get(self.first_role)
        if old is not None:
            old.session.close()
        _, engine, kwargs = self.roles[0]
        session = engine.session(**kwargs)
        session.push(audio)
        self.open[self.first_role] = OpenStream(session, at)

    def forget(self) -> None:
        """Finished (or handed on to finish elsewhere): the next audio opens new streams."""
        self.open = {}

    def drop(self) -> None:
        for stream in self.open.values():
            stream.session.close()
        self.open = {}
