"""Scripted engines for tests, built the way the real ones are.

``ScriptedServer`` is an engine the way :class:`voxcli.engine.remote.RemoteRealtimeEngine` is
one: its sessions are the real :class:`voxcli.engine.reconnect.ReconnectingSession`, over
connections to a scripted server (``ScriptedConnection``: a word per 80 ms of audio sent) instead
of a WebSocket. Subclass the connection to make the server misbehave: drop, stall, end early.
``ScriptedLocal`` is a local engine's stand-in: its sessions are the connections themselves.
"""

from __future__ import annotations

import time

from voxcli.engine.contract import EngineInfo
from voxcli.engine.reconnect import Link, ReconnectingSession
from voxcli.events import TokenEvent
from voxcli.units import TOKEN_SAMPLES

SCRIPTED_DELAY_MS = 480  # the scripted server's model delay: a replay reaches back this far


class ScriptedConnection:
    """One stream on a scripted model: a word (``text``) per 80 ms pushed."""

    text = " w"
    finish_waits = False  # as a local session: its finish() returns at once
    waiting = False

    def __init__(self, engine) -> None:
        self.engine = engine
        self.pushed_samples = 0
        self._emitted = 0
        self.committed = False
        self.finished = False
        self.closed = False

    def push(self, samples) -> None:
        self.pushed_samples += len(samples)

    def steps(self):
        while (self._emitted + 1) * TOKEN_SAMPLES <= self.pushed_samples:
            self._emitted += 1
            yield self.event(self._emitted - 1)

    def event(self, k: int) -> TokenEvent:
        return TokenEvent(k, -1, self.text, time.perf_counter())

    @property
    def answered_samples(self) -> int:
        return self._emitted * TOKEN_SAMPLES

    def commit(self) -> None:
        self.committed = True

    def pending(self):
        yield from self.steps()
        self.finished = True

    def finish(self):
        self.commit()
        return self.pending()

    def close(self) -> None:
        self.closed = True

    def incidents(self) -> list:
        return []


class ScriptedServer:
    """A Realtime engine on a scripted server; ``opened``: every connection, in order."""

    kind = "realtime"
    connection = ScriptedConnection

    def __init__(self, reconnect_s: float = 120.0) -> None:
        self.info = EngineInfo(model="scripted", kind="realtime", device="vLLM server http://scripted", dtype="server",
                               n_params=0, load_s=0.0, token_ids=False, audio_spans=False, step_times=False)
        self.reconnect_s = reconnect_s
        self.link = Link()
        self.opened: list = []

    @property
    def sessions(self) -> int:
        return len(self.opened)

    def configured(self, cfg):
        """As ``open_engine`` makes it: the configuration's reconnect window."""
        self.reconnect_s = cfg.model.reconnect_s
        return self

    def session(self):
        return ReconnectingSession(self.connect, reconnect_s=self.reconnect_s,
                                   overlap_samples=SCRIPTED_DELAY_MS * 16, name="the vLLM server", link=self.link)

    def connect(self):
        self.opened.append(self.connection(self))
        return self.opened[-1]

    def critical_path_ms(self, audio) -> None:
        return None

    def environment(self) -> dict:
        return {"server": "http://scripted"}


class ScriptedLocal(ScriptedServer):
    """A local Realtime engine's stand-in: everything measured, sessions without a server between."""

    def __init__(self) -> None:
        super().__init__()
        self.info = EngineInfo(model="scripted", kind="realtime", device="cpu", dtype="-", n_params=0, load_s=0.0)

    def session(self):
        return self.connect()
