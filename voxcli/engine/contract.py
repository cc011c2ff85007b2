"""The engine contract: what the pipeline, ``bench`` and the CLI rely on, written down.

Two implementations: the local engines (``voxcli.engine.local``: transformers on this machine) and the
remote ones (``voxcli.engine.remote``: a vLLM server). Anything that satisfies these Protocols can be
run by ``voxcli.live.runner`` (a test's scripted engine too). Callers never ask which one is
behind an engine: they read what it can do from ``info`` (:class:`EngineInfo`). Nothing heavy is
imported here.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from voxcli.events import TokenEvent

DEFAULT = object()  # keyterms=DEFAULT: the engine's own (every session favours them unless told otherwise)


@dataclass
class EngineInfo:
    """What was loaded, for reports and benchmarks, and what the engine can tell about its tokens.

    An engine that cannot tell something leaves it out of its events rather than inventing it (a
    vLLM server: no token ids, no per-token audio, no step times). The capability fields say so up
    front, so a caller decides without knowing what is behind the engine.
    """

    model: str
    kind: str
    device: str
    dtype: str
    n_params: int
    load_s: float
    warmup_s: float = 0.0
    here: bool = True  # the weights are on this machine: n_params, dtype, load and warm-up times are its own
    num_delay_tokens: int | None = None  # a Realtime model's delay, in tokens
    step: str | None = None  # which path runs a Realtime step: "static compiled", "static eager", "hf eager"
    compile_s: float | None = None  # compiling the static step at warm-up (included in warmup_s)
    graphs: dict | None = None  # what compiling made at warm-up (voxcli.engine.graphs.GraphCounts.to_dict)
    compile_fallback: str | None = None  # why compiling failed (the eager static step runs)
    compile_fallback_traceback: str | None = None  # the same, in full (shown with --debug)
    streams: dict | None = None  # model.max_streams > 1: rows of the batched step, GiB each, how many fit
    dtype_why: str | None = None  # why the dtype is not the one asked for (auto: a GPU without bfloat16)
    token_ids: bool = True  # events carry the model's token ids (else -1)
    audio_spans: bool = True  # events say which audio each token covers (two-pass aligns by it)
    step_times: bool = True  # events carry step times, and each token comes from the chunk just pushed
    delay_ms: int | None = None  # a Realtime model's delay; None: offline, or not known
    other_delays: bool = False  # ``with_delay()`` gives the same weights at another delay (two-pass)
    # The engine decodes here: its ``session()`` and ``transcribe()`` take ``keyterms=`` (a
    # :class:`voxcli.engine.keyterms.Keyterms`, or None), and its events can carry ``p``,
    # ``alternatives`` and ``keyterm`` (voxcli.engine.pick, keyterms). A server's tokens come without scores.
    scores: bool = True


@runtime_checkable
class Session(Protocol):
    """One Realtime stream: push audio as it arrives, pull tokens as they exist.

    ``finish()`` ends the stream (the right padding is pushed, so the last words come out) and
    yields what remains. ``finish_waits`` tells whether that waits on someone else (a server);
    such a session also offers ``commit()`` (end the stream, return at once) and ``pending()``
    (what has arrived since, without waiting; ``finished`` once all of it has), so that the end
    of speech never holds up capture. ``close()`` drops the stream without finishing it (a
    restart after a run of blanks), and never raises (a server's connection that fails to close
    loses nothing). A stream whose model said end of sequence with audio left
    starts again on its own, and says where with an event carrying ``restart_at_s``.
    ``incidents()``: what happened on the way that the caller may show or record (a
    :class:`voxcli.events.Reconnect`, a :class:`voxcli.events.Notice`); a local session has none.
    ``push()`` never waits on anyone else; an error the stream cannot get over is raised by the
    next ``push``, ``steps`` or ``pending``, as :class:`voxcli.errors.StreamFailed`.
    """

    finish_waits: bool
    waiting: bool  # waiting for its engine to come back (a server away); its audio is kept meanwhile
    pushed_samples: int  # 16 kHz samples pushed so far

    def push(self, samples: np.ndarray) -> None: ...

    def steps(self) -> Iterator[TokenEvent]: ...

    def finish(self) -> Iterator[TokenEvent]: ...

    def close(self) -> None: ...

    def incidents(self) -> list[object]: ...


@runtime_checkable
class WaitingSession(Session, Protocol):
    """A stream whose end waits on someone else (``finish_waits``): ``commit()`` ends it at once,
    ``pending()`` yields what has come since, ``finished`` once all of it has."""

    finished: bool

    def commit(self) -> None: ...

    def pending(self) -> Iterator[TokenEvent]: ...


@runtime_checkable
class Engine(Protocol):
    """A loaded model, of ``kind`` ``"realtime"`` or ``"offline"``; ``info`` says what it can tell.

    ``transcribe(audio)``: the tokens of a whole clip (``language``: a hint offline models take;
    ``max_new_tokens``: a cap; ``segments``: sample ranges an offline model hears one by one (None:
    it finds the speech itself; a Realtime model hears the clip whole); ``keyterms``: what to favour
    (a :class:`voxcli.engine.keyterms.Keyterms`, None for nothing, DEFAULT for the engine's own; an
    engine without ``info.scores`` refuses any). ``critical_path_ms(audio)``: the model's own path
    to its first token, timed with nothing around it (None where that cannot be timed from here:
    a server). ``environment()``: what produced the figures (library versions, the device's
    name), for bench reports.
    """

    kind: str
    info: EngineInfo

    def transcribe(self, audio: np.ndarray, *, language: str | None = None, max_new_tokens: int | None = None,
                   segments: list[tuple[int, int]] | None = None, keyterms=DEFAULT) -> Iterator[TokenEvent]: ...

    def warmup(self) -> float: ...

    def critical_path_ms(self, audio: np.ndarray) -> float | None: ...

    def environment(self) -> dict: ...


@runtime_checkable
class RealtimeEngine(Engine, Protocol):
    """A Realtime model: ``session(keyterms=...)`` opens a stream (:class:`Session`)."""

    def session(self, *, keyterms=DEFAULT) -> Session: ...


@runtime_checkable
class BatchingEngine(RealtimeEngine, Protocol):
    """A Realtime engine whose sessions step together (``info.other_delays``): ``with_delay(ms)``
    gives the same weights at another delay (two-pass's second stream), ``steps_together(sessions)``
    the tokens of several of its sessions as ``(which session, event)``, each step of all of them
    in one forward, and ``finish_together(sessions)`` their ends the same way (the stream driver
    batches every driver's streams through these)."""

    def with_delay(self, delay_ms: int) -> BatchingEngine: ...

    def steps_together(self, sessions: list[Session]) -> Iterator[tuple[int, TokenEvent]]: ...

    def finish_together(self, sessions: list[Session]) -> Iterator[tuple[int, TokenEvent]]: ...
