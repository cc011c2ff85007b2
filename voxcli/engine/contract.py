"""The engine contract: what the pipeline, ``bench`` and the CLI rely on, written down.

Two implementations: the local engines (``voxcli.engine.local``: transformers on this machine) and the
remote ones (``voxcli.engine.remote``: a vLLM server). Anything that satisfies these Protocols can be
run by ``voxcli.live.runner`` (a test's scripted engine too). Nothing heavy is imported here.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import numpy as np

from voxcli.events import TokenEvent


@runtime_checkable
class Session(Protocol):
    """One Realtime stream: push audio as it arrives, pull tokens as they exist.

    ``finish()`` ends the stream (the right padding is pushed, so the last words come out) and
    yields what remains. ``finish_waits`` tells whether that waits on someone else (a server);
    such a session also offers ``commit()`` (end the stream, return at once) and ``pending()``
    (what has arrived since, without waiting; ``finished`` once all of it has), so that the end
    of speech never holds up capture. ``close()`` drops the stream without finishing it (a
    restart after a run of blanks; a lost server). A stream whose model said end of sequence
    with audio left restarts on its own (a local session), or raises
    :class:`voxcli.errors.StreamEnded` (a server's), and the caller opens a new one.
    """

    finish_waits: bool
    pushed_samples: int  # 16 kHz samples pushed so far

    def push(self, samples: np.ndarray) -> None: ...

    def steps(self) -> Iterator[TokenEvent]: ...

    def finish(self) -> Iterator[TokenEvent]: ...

    def close(self) -> None: ...


@runtime_checkable
class WaitingSession(Session, Protocol):
    """A stream on a server. ``answered_samples``: how much audio had been pushed when the server
    last answered, i.e. how far it is known to have listened; after a lost connection, a new
    session replays the audio from there (less the model's delay)."""

    finished: bool
    answered_samples: int

    def commit(self) -> None: ...

    def pending(self) -> Iterator[TokenEvent]: ...


@runtime_checkable
class Engine(Protocol):
    """A loaded model, of ``kind`` ``"realtime"`` or ``"offline"``.

    ``remote`` engines know less than local ones, and their events say so by leaving fields
    empty rather than inventing them: no token ids (-1), no per-token audio spans (Realtime), no
    step times, no chunk-ready times. ``info`` is an :class:`voxcli.engine.EngineInfo`.
    """

    kind: str
    remote: bool
    info: object

    def transcribe(self, audio: np.ndarray, *, language: str | None = None,
                   max_new_tokens: int | None = None) -> Iterator[TokenEvent]: ...


@runtime_checkable
class RealtimeEngine(Engine, Protocol):
    def session(self) -> Session: ...
