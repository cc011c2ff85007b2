"""A Realtime stream on a vLLM server that outlives the server: the session a caller gets from
``RemoteRealtimeEngine.session()``.

``push()`` never touches the network: it appends the block to this session's own audio and
returns. A sender thread of its own takes the audio from there to the server, one connection
(:class:`voxcli.engine.remote.RemoteRealtimeSession`) at a time. When the server goes away, the
sender keeps trying (0.5 s, doubling to 5 s between tries, for up to ``reconnect_s``), and when it
is back replays the audio from where the server last answered, less the model's delay (the
audio whose text had not come yet), then goes on. Capture goes on the whole time, however long the
outage: nothing here waits on the caller's thread. When the model says end of sequence with
audio left (vLLM ends the request), a new connection starts at that point and an empty event
carrying ``restart_at_s`` says so.

The audio kept is what the server has not yet answered for (plus the delay): during an outage,
at most ``reconnect_s`` of it (then the session fails), which bounds it. ``incidents()`` hands
the caller what happened on the way (a ``Reconnect`` row, a ``Notice`` to show).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator

import numpy as np

from voxcli.audio.tape import Tape
from voxcli.errors import ServerError, StreamEnded, first_line
from voxcli.events import Notice, Reconnect, TokenEvent, restart_sample
from voxcli.units import TOKEN_SAMPLES, seconds

POLL_S = 0.02  # the sender's wait for new audio before looking at the server's deltas again
FIRST_WAIT_S = 0.5  # between reconnect tries, doubling ...
MAX_WAIT_S = 5.0  # ... up to this
SEND_MAX = 16 * TOKEN_SAMPLES  # audio handed to the connection at once (1.28 s; a replay goes in pieces)


class _Outage:
    """The server is away: since when, why, and whether it has been said."""

    def __init__(self, error: ServerError, origin: object) -> None:
        self.t_lost = time.monotonic()
        self.first_error = error
        self.origin = origin  # the session that lost the server first: it reports the reconnect
        self.attempts = 0
        self.reported = False  # a reconnect row went out for it


class Link:
    """What the sessions of one engine know together about their server: the outage going on.
    A session opened during an outage (the next utterance's) joins it: one window, one notice,
    one reconnect row, the first error; it ends when any of them hears the server again."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._outage: _Outage | None = None

    def lost(self, exc: ServerError, session: object) -> tuple[_Outage, bool]:
        """The outage going on (``True``: it begins now, ``session`` lost the server first)."""
        with self._lock:
            if self._outage is None:
                self._outage = _Outage(exc, session)
                return self._outage, True
            return self._outage, False

    def back(self, outage: _Outage) -> None:
        with self._lock:
            if self._outage is outage:
                self._outage = None


class ReconnectingSession:
    """The caller's side: ``push``, ``steps``, ``commit``/``pending``/``finished``, ``finish``,
    ``close`` and ``incidents`` (see :class:`voxcli.engine.contract.Session`)."""

    finish_waits = True

    def __init__(self, connect: Callable[[], object], *, reconnect_s: float, overlap_samples: int,
                 name: str = "the vLLM server", link: Link | None = None) -> None:
        self._connect = connect  # () -> a new connection's session (RemoteRealtimeSession), or ServerError
        self._link = link or Link()
        self._lost_at = 0  # where in this session's audio the server was lost
        self._outage: _Outage | None = None  # the outage this session is waiting out
        self.reconnect_s = reconnect_s
        self.overlap = overlap_samples
        self.name = name
        self._audio = Tape()  # this session's audio, from its start
        self._events: deque[TokenEvent] = deque()  # a server's deltas: a dozen a second at most
        self._incidents: deque[object] = deque()
        self._error: ServerError | None = None
        self._commit = threading.Event()
        self._closed = threading.Event()
        self._wake = threading.Event()
        self._ended = threading.Event()  # the sender is done (finished, failed or closed)
        self.finished = False
        self._conn = None
        self._conn_from = 0  # where the connection's audio starts in this session's
        self._sent = 0  # audio handed to the connection, as a position in this session's
        self._thread = threading.Thread(target=self._run, name="voxcli-server-stream", daemon=True)
        self._thread.start()

    # -- the caller's thread: never waits on the network --

    @property
    def pushed_samples(self) -> int:
        return self._audio.end

    @property
    def waiting(self) -> bool:
        """The stream is waiting for its server to come back (its audio is kept meanwhile)."""
        return self._outage is not None

    @property
    def answered_samples(self) -> int:
        conn = self._conn
        return self._conn_from + (conn.answered_samples if conn is not None else 0)

    def push(self, samples: np.ndarray) -> None:
        self._raise_if_failed()
        self._audio.append(np.asarray(samples, dtype=np.float32))
        self._wake.set()

    def steps(self) -> Iterator[TokenEvent]:
        while self._events:
            yield self._events.popleft()
        self._raise_if_failed()

    def incidents(self) -> list[object]:
        out = []
        while self._incidents:
            out.append(self._incidents.popleft())
        return out

    def commit(self) -> None:
        self._commit.set()
        self._wake.set()

    def pending(self) -> Iterator[TokenEvent]:
        yield from self.steps()
        if self._ended.is_set() and not self._events:
            self.finished = True
            self._raise_if_failed()

    def finish(self) -> Iterator[TokenEvent]:
        self.commit()
        while not self.finished:
            yield from self.pending()
            if not self.finished:
                self._ended.wait(POLL_S)

    def close(self) -> None:
        self._closed.set()
        self._wake.set()
        _close_quietly(self._conn)

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    # -- the sender thread --

    def _run(self) -> None:
        replay_from = 0
        try:
            while not self._closed.is_set():
                try:
                    if self._conn is None:
                        if self._outage is not None:
                            self._outage.attempts += 1
                        self._open(replay_from)
                    if self._pump():
                        return
                    self._outage = None
                except StreamEnded:
                    replay_from = restart_sample(self._conn_from, self._conn.answered_samples, self.overlap)
                    self._drop_connection()
                    if replay_from >= self._audio.end and self._commit.is_set():
                        return  # nothing left to hear
                    self._events.append(TokenEvent(index=-1, token_id=-1, text="", t_emitted=time.perf_counter(),
                                                   special=True, restart_at_s=seconds(replay_from)))
                except ServerError as exc:
                    if self._closed.is_set():
                        return
                    if self._conn is not None:
                        replay_from = self._conn_from + max(0, self._conn.answered_samples - self.overlap)
                    self._drop_connection()
                    self._lost(exc)
        except BaseException as exc:  # noqa: BLE001 - no thread dies silently: the caller gets it
            if self._error is None:
                self._error = exc if isinstance(exc, ServerError) else ServerError(
                    f"the stream to {self.name} failed: {type(exc).__name__}: {first_line(exc)}")
        finally:
            self._drop_connection()
            self._ended.set()

    def _open(self, replay_from: int) -> None:
        self._conn = self._connect()
        self._conn_from = self._sent = max(replay_from, self._audio.start)
        outage = self._outage
        if outage is not None and outage.origin is self and not outage.reported:
            outage.reported = True
            down_s = time.monotonic() - outage.t_lost
            row = Reconnect(lost_at_s=seconds(self._lost_at), down_s=down_s,
                            replayed_s=seconds(self._audio.end - self._sent), attempts=outage.attempts,
                            error=first_line(outage.first_error), replay_from_s=seconds(self._sent))
            self._incidents.append(row)
            self._incidents.append(Notice(f"reconnected after {row.down_s:.1f} s; {row.replayed_s:.1f} s of audio "
                                          f"replayed"))

    def _pump(self) -> bool:
        """Audio out, deltas in, until the stream is done (True) or the server answers after an
        outage (False: the outage is over; the caller calls again)."""
        conn, committed = self._conn, False
        while not self._closed.is_set():
            block = self._audio.slice(self._sent, self._sent + SEND_MAX)
            if len(block):
                conn.push(block)
                self._sent += len(block)
            elif self._commit.is_set() and not committed:
                conn.commit()
                committed = True
            before = len(self._events)
            self._events.extend(conn.pending() if committed else conn.steps())
            if committed and conn.finished:
                return True
            self._audio.keep_from(min(self._sent, self._conn_from + max(0, conn.answered_samples - self.overlap)))
            if self._outage is not None and len(self._events) > before:
                self._link.back(self._outage)
                return False  # the server is answering again
            if not len(block):
                self._wake.wait(POLL_S)
                self._wake.clear()
        return True

    def _lost(self, exc: ServerError) -> None:
        """The server went away: keep the audio, try again after a wait, give up after
        ``reconnect_s`` (at once when it is 0)."""
        if self.reconnect_s <= 0:
            raise exc
        outage = self._outage
        if outage is None:
            self._lost_at, self._wait = self._audio.end, FIRST_WAIT_S
            outage, new = self._link.lost(exc, self)
            self._outage = outage
            if new:
                self._incidents.append(Notice(f"{first_line(exc)}; reconnecting for up to {self.reconnect_s:.0f} s, "
                                              f"the audio is kept"))
        if time.monotonic() - outage.t_lost >= self.reconnect_s:
            raise ServerError(f"lost {self.name} ({first_line(outage.first_error)}), and it did not come back "
                              f"within {self.reconnect_s:.0f} s (last try: {first_line(exc)})", **exc.data) from None
        self._closed.wait(self._wait)
        self._wait = min(2 * self._wait, MAX_WAIT_S)

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        _close_quietly(conn)


def _close_quietly(conn) -> None:
    if conn is None:
        return
    try:
        conn.close()
    except Exception:  # noqa: BLE001 - a broken connection may fail to close; nothing is lost
        pass
