"""One stream's cycle, written once: listen, bench and serve all drive their sessions through it.

A :class:`StreamDriver` owns what happens to one audio stream: each block is heard (counted,
kept on a tape, run through the endpointer, pushed into the open Realtime streams), the streams
step, an end of speech (or the caller's :meth:`~StreamDriver.end_utterance`) flushes them (the
right padding is pushed, so the last words come out without waiting out the delay) and the next
stream starts at the same sample when audio comes, so no audio is skipped. A stream that ends
itself (end of sequence) starts again where it stopped transcribing (the engine's session does
that, and says where; a ``Restart`` row says so here). A stream that gives no text over
``blank_run_s`` of speech (vLLM #47614: a real session can emit only blanks for minutes) is
restarted with the audio since the run began, backing off. Two-pass: a second Realtime stream at
a longer delay beside the first, or an offline model's pass over each utterance that ended.
Offline models: the endpointer cuts speech into utterances, each transcribed when it ends; no
stretch the endpointer heard no speech in is ever sent to one (Voxtral 3B invents text over
silence).

What comes out goes to ``put``: :class:`~voxcli.live.items.LiveToken`, ``Speech``, ``Endpoint``,
``UtteranceDone``, and the engine's ``Restart``, ``Reconnect`` and ``Notice`` rows.

The forwards are not the driver's: :func:`cycle` steps every driver given to it in one forward per
step (each stream a row of the batched step, where the engine batches: ``info.other_delays``),
flushes those whose speech ended in shared forwards, then lets each settle. The live worker
gives it one driver; the server's scheduler all of its sessions'.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Callable

import numpy as np

from voxcli.audio.tape import Tape
from voxcli.errors import ServerError
from voxcli.events import Notice, Reconnect, Restart, StreamRole, TokenEvent, clamp_span
from voxcli.live.items import Endpoint, LiveOptions, LiveToken, Speech, UtteranceDone
from voxcli.live.tracking import BLANK_RESTARTS, BlankRuns, CaptureClock
from voxcli.units import SAMPLE_RATE, samples, seconds

POLL_S = 0.05  # how often a stream finishing on a server is looked at, when the caller waits for it


@dataclasses.dataclass
class _Open:
    """A stream now open: its engine session, and where in the driver's audio it began."""

    session: object
    offset: int


@dataclasses.dataclass
class _Draining:
    """A stream ended at a pause that finishes on a server, collected as its answer comes."""

    session: object
    role: StreamRole
    offset: int
    utterance: int
    done: UtteranceDone | None  # said once its last token is out (the first stream's)


class StreamDriver:
    """One audio stream through ``engine`` (and two-pass's ``final_engine``), items out to ``put``.

    ``hear(samples, t)``: the next audio, captured (or arrived) at ``t``; ``end_utterance()``: the
    caller ends the utterance here (a commit); :func:`cycle` does the steps and flushes; ``drain()``
    collects what servers answer for streams ended at a pause; ``close()``: the input is over
    (everything is flushed and collected; waiting is fine now). ``session_options``: the engine's
    ``session()``/``transcribe()`` keywords for this stream (keyterms). One thread drives it.
    """

    def __init__(self, engine, put: Callable[[object], None], options: LiveOptions | None = None, *,
                 final_engine=None, session_options: dict | None = None) -> None:
        self.engine = engine
        self.put = put
        self.options = opts = options or LiveOptions()
        self.session_options = dict(session_options or {})
        self.realtime = engine.kind == "realtime"
        second = final_engine
        self.final_engine = second if second is not None and second.kind == "realtime" else None
        self.final_pass = second if second is not None and second.kind != "realtime" else None  # per utterance
        self.first_role = StreamRole.PROVISIONAL if second is not None else StreamRole.ONLY
        self.heard = 0  # 16 kHz samples heard
        self.clock = CaptureClock()
        self.tape = Tape()  # audio that may be needed again: a replay, an offline utterance
        self.n_tokens = 0
        self.flushes = 0  # streams finished (and offline utterances transcribed)
        self.utterance = 0
        self.utterance_start = 0  # where the open utterance's audio began (its length, when done)
        self.blank = BlankRuns(opts.blank_run_s)
        endpoint = opts.endpoint()
        self.endpointer = None
        if endpoint is not None:
            from voxcli.audio.vad import Endpointer

            self.endpointer = Endpointer(endpoint)
        self.streams: dict[StreamRole, _Open] = {}  # the Realtime streams open now
        self.speech_from: int | None = None  # where the open utterance's speech began (a final pass's start)
        self.cut_from: int | None = 0 if self.endpointer is None else None  # offline: the open utterance's start
        self.t_ready: float | None = None  # when the audio that lets the streams step now arrived
        self._fresh = False  # audio came since the last settle
        self._ends: deque = deque()  # (the endpointer's end, or None: the caller's; offline: its start)
        self._draining: list[_Draining] = []

    # -- audio in --------------------------------------------------------------------------------

    def hear(self, x: np.ndarray, t: float) -> None:
        if self.realtime:
            self._open()
        start, self.heard = self.heard, self.heard + len(x)
        self.clock.add(self.heard, t)
        self.tape.append(x)
        events = self.endpointer.feed(x) if self.endpointer is not None else []
        self.blank.heard(start, self.heard, events)
        for stream in self.streams.values():
            stream.session.push(x)
        self.t_ready, self._fresh = t, True
        for vad in events:
            self.put(Speech(vad.kind, vad.sample * 1000 // SAMPLE_RATE, self.utterance + len(self._ends)))
            if vad.kind == "start":
                if self.speech_from is None:
                    self.speech_from = vad.sample
                if not self.realtime:
                    self.cut_from = max(vad.sample - samples(self.options.preroll_s), self.tape.start)
            else:
                self._ends.append((vad, self.cut_from))
                if not self.realtime:
                    self.cut_from = None

    def end_utterance(self) -> None:
        """The caller's end of the utterance (a client's commit): flushed as an end of speech is."""
        self._ends.append((None, self.cut_from))
        if not self.realtime:
            self.cut_from = self.heard if self.endpointer is None else None

    @property
    def ending(self) -> bool:
        return bool(self._ends)

    @property
    def waiting(self) -> bool:
        """A stream is waiting for its engine to come back (a server away)."""
        return any(stream.session.waiting for stream in self.streams.values())

    def _open(self) -> None:
        roles = [(self.first_role, self.engine, self.session_options)]
        if self.final_engine is not None:
            roles.append((StreamRole.FINAL, self.final_engine, {}))
        for role, engine, kwargs in roles:
            if role not in self.streams:
                self.streams[role] = _Open(engine.session(**kwargs), self.heard)

    # -- tokens out ------------------------------------------------------------------------------

    def open_streams(self) -> list[tuple[StreamRole, object]]:
        return [(role, stream.session) for role, stream in self.streams.items()]

    def token(self, role: StreamRole, event: TokenEvent, t_ready: float | None, *, flushed: bool = False,
              utterance: int | None = None, offset: int | None = None) -> None:
        """A token of stream ``role`` as an item: its span in the driver's audio, and the moments its
        latency counts from (``t_ready``: when the audio that let it step came)."""
        shift = seconds(self.streams[role].offset if offset is None else offset)
        start = None if event.audio_start_s is None else event.audio_start_s + shift
        end = None if event.audio_end_s is None else event.audio_end_s + shift
        restart_at = None if event.restart_at_s is None else event.restart_at_s + shift
        event = dataclasses.replace(event, index=self.n_tokens, audio_start_s=start, audio_end_s=end,
                                    restart_at_s=restart_at)
        self.n_tokens += 1
        if role == self.first_role and event.text.strip():
            self.blank.text(self.heard)
        t_audio = None if end is None else self.clock.at(min(self.heard, samples(end)))
        if not self.engine.info.step_times:  # which chunk made a token is not known
            t_ready = None
        self.put(LiveToken(event, t_ready, t_audio, seconds(self.heard), flushed,
                           self.utterance if utterance is None else utterance, role))
        if restart_at is not None:  # a local stream said end of sequence and started again there
            self._restarted("eos", samples(restart_at))

    def incidents(self) -> None:
        for stream in self.streams.values():
            self._incidents(stream.session, stream.offset)

    def _incidents(self, session, offset: int) -> None:
        for item in session.incidents():  # a Reconnect row (at a position in the session's audio), a Notice
            if isinstance(item, Reconnect):  # replayed: all of it since the replay began
                start_s = seconds(offset) + (item.replay_from_s or 0.0)
                item = dataclasses.replace(item, lost_at_s=item.lost_at_s + seconds(offset),
                                           replayed_s=max(item.replayed_s, seconds(self.heard) - start_s))
            self.put(item)

    def _restarted(self, reason: str, at: int) -> None:
        self.blank.restarted(at, self.heard)
        self.put(Restart(reason, seconds(at)))

    # -- ends ------------------------------------------------------------------------------------

    def flushing(self) -> list[tuple[StreamRole, object]]:
        """The next end: the streams to flush now, in shared forwards. A stream that finishes on a
        server is committed here and collected as its answer comes (``drain``): capture never
        waits for it. An offline model's utterance is transcribed here."""
        end, cut_from = self._ends[0]
        if not self.realtime:
            if cut_from is not None:
                stop = self.heard if end is None else end.sample + samples(self.options.tail_s)
                self._transcribe_utterance(cut_from, stop)
            return []
        local = []
        for role, stream in self.streams.items():
            if stream.session.finish_waits:
                stream.session.commit()
                done = self._done() if role == self.first_role else None
                self._draining.append(_Draining(stream.session, role, stream.offset, self.utterance, done))
            else:
                local.append((role, stream.session))
        return local

    def flushed(self) -> None:
        """What follows an end, once its streams are flushed: the endpoint, an offline final pass,
        the utterance done (unless a server still finishes it), the next utterance."""
        end, _ = self._ends.popleft()
        first = self.streams.get(self.first_role)
        offset = first.offset if first is not None else self.heard
        self.streams = {}
        if end is not None:
            self.put(Endpoint(seconds(end.sample), seconds(end.decided_sample), self.utterance))
        if self.final_pass is not None and self.speech_from is not None:
            self._final_pass(max(offset, self.speech_from - samples(self.options.preroll_s)), self.utterance)
        if not any(d.utterance == self.utterance for d in self._draining):
            self.put(self._done())
        self.speech_from = None
        self.utterance += 1
        self.utterance_start = self.heard

    def _done(self) -> UtteranceDone:
        return UtteranceDone(self.utterance, seconds(self.heard - self.utterance_start))

    def drain(self) -> None:
        """What servers have answered for streams ended at a pause (never waits)."""
        for item in list(self._draining):
            try:
                for event in item.session.pending():
                    self._incidents(item.session, item.offset)
                    self.token(item.role, event, event.t_emitted, flushed=True, utterance=item.utterance,
                               offset=item.offset)
            except ServerError as exc:
                self.put(Notice(f"{exc} (at the end of utterance {item.utterance})"))
            self._incidents(item.session, item.offset)
            if item.session.finished:
                self._draining.remove(item)
                self.flushes += 1
                if item.done is not None:
                    self.put(item.done)

    def settle(self) -> None:
        """After a cycle: a stream that heard speech and said nothing restarts; the tape keeps only
        what may be needed again; an offline utterance too long to wait for is transcribed."""
        fresh, self._fresh = self._fresh, False
        if self.realtime:
            if self.waiting:  # on its engine (a server away): not a stream that hears and says nothing
                self.blank.restarted(self.heard, self.heard)
            elif fresh and self.blank.over(self.heard):
                self._restart_blank()
            first = self.streams.get(self.first_role)
            kept = first.offset if self.final_pass is not None and first is not None else self.heard
            self.tape.keep_from(min(self.heard, kept, self.blank.run_from(self.heard)))
            return
        if self.cut_from is not None and self.heard - self.cut_from >= samples(self.options.max_utterance_s):
            self._transcribe_utterance(self.cut_from, self.heard)  # too long to wait
            self.cut_from = self.heard
        self.tape.keep_from(self.cut_from if self.cut_from is not None else self.heard - samples(self.options.preroll_s))

    def _restart_blank(self) -> None:
        """A stream that heard speech and said nothing: a new one, replayed from where the run
        began. After BLANK_RESTARTS in a row, one line, and no more restarts until text comes."""
        self.blank.restarts += 1
        if self.blank.restarts > BLANK_RESTARTS:
            self.put(Notice(f"the model gave no text over {seconds(self.blank.speech):.0f} s of speech "
                            f"after {BLANK_RESTARTS} restarts; not restarting again until it does (is the "
                            f"checkpoint right?)"))
            return
        at = self.blank.run_from(self.heard)
        old = self.streams.get(self.first_role)
        if old is not None:
            old.session.close()
        session = self.engine.session(**self.session_options)
        session.push(self.tape.slice(at, self.heard))
        self.streams[self.first_role] = _Open(session, at)
        self._restarted("blank_run", at)

    def close(self) -> None:
        """The input is over: every stream flushed (waiting on a server is fine now) and every
        answer collected, the endpointer's last end said, the last utterance's final pass."""
        if self.realtime:
            local = [(self, role, s) for role, s in self.open_streams() if not s.finish_waits]
            finish(self.engine, local)
            for role, stream in self.streams.items():
                if stream.session.finish_waits:
                    self._finish_waiting(role, stream)
            while self._draining:
                self.drain()
                time.sleep(POLL_S if self._draining else 0)
        elif self.cut_from is not None and self.heard > self.cut_from:
            self._transcribe_utterance(self.cut_from, self.heard)
        first = self.streams.get(self.first_role)
        offset = first.offset if first is not None else self.heard
        last = self.utterance
        for vad in self.endpointer.flush() if self.endpointer is not None else []:
            self.put(Endpoint(seconds(vad.sample), seconds(vad.decided_sample), self.utterance))
            self.utterance += 1  # the input ended inside speech: that is its end
        # Only an utterance the endpointer heard (or, without one, whatever was heard) goes to the
        # offline model: trailing silence after the last end of speech is never sent.
        if self.final_pass is not None and self.heard > offset and (self.speech_from is not None
                                                                   or self.endpointer is None):
            start = offset if self.speech_from is None else max(offset, self.speech_from
                                                                - samples(self.options.preroll_s))
            self._final_pass(start, last)
        self.streams = {}

    def drop(self) -> None:
        """Every stream dropped unfinished (the caller has gone)."""
        for stream in self.streams.values():
            stream.session.close()
        for item in self._draining:
            item.session.close()
        self.streams, self._draining = {}, []

    def _finish_waiting(self, role: StreamRole, stream: _Open) -> None:
        """A server's last answer as it comes. Waiting for it can take ``model.reconnect_s`` when
        the server is away, and what happens meanwhile is said when it happens."""
        session, offset = stream.session, stream.offset
        t_ready, end_s = time.perf_counter(), seconds(session.pushed_samples)
        session.commit()
        try:
            while True:
                for event in session.pending():
                    self._incidents(session, offset)  # what happened on the way comes before what followed it
                    event = clamp_span(event, end_s)
                    self.token(role, event, t_ready, flushed=True)
                    t_ready = event.t_emitted
                self._incidents(session, offset)
                if session.finished:
                    break
                time.sleep(POLL_S)
        finally:  # a stream that failed still says what happened first (the outage it waited out)
            self._incidents(session, offset)
        self.flushes += 1

    # -- offline models --------------------------------------------------------------------------

    def _transcribe_utterance(self, start: int, stop: int) -> None:
        audio = self.tape.slice(start, stop)
        t_ready = time.perf_counter()
        # With an endpointer, the utterance is speech; without, the engine finds the speech in it.
        segments = [(0, len(audio))] if self.endpointer is not None else None
        for event in self.engine.transcribe(audio, segments=segments, **self.session_options):
            self.token(self.first_role, event, t_ready, offset=start)
        self.flushes += 1

    def _final_pass(self, start: int, utterance: int) -> None:
        """Two-pass with an offline model: the utterance that just ended, transcribed whole (from
        its speech's start, less the preroll, to now)."""
        audio = self.tape.slice(start, self.heard)
        t_ready = time.perf_counter()
        for event in self.final_pass.transcribe(audio, language=self.options.language, segments=[(0, len(audio))]):
            self.token(StreamRole.FINAL, event, t_ready, utterance=utterance, offset=start)


# -- the forwards, for any number of drivers ------------------------------------------------------


def _together(engine, sessions: list, finishing: bool):
    """``(which session, event)`` for a round of steps (or the flush) of ``sessions``: in shared
    forwards where the engine batches, else one session after the other."""
    if len(sessions) > 1 and engine.kind == "realtime" and engine.info.other_delays:
        return engine.finish_together(sessions) if finishing else engine.steps_together(sessions)
    return ((i, e) for i, s in enumerate(sessions) for e in (s.finish() if finishing else s.steps()))


def step(engine, drivers: list[StreamDriver]) -> None:
    """Every step the drivers' streams can take, each step of all of them in one forward."""
    pairs = [(d, role, s) for d in drivers for role, s in d.open_streams()]
    for i, event in _together(engine, [s for _, _, s in pairs], finishing=False):
        d, role, _ = pairs[i]
        d.token(role, event, event.t_emitted if d.t_ready is None else d.t_ready)
    for d in drivers:
        d.t_ready = None  # a later round with no new audio counts each token from its own emission
        d.incidents()


def finish(engine, streams: list[tuple[StreamDriver, StreamRole, object]]) -> None:
    """``streams`` flushed, their right padding stepped in shared forwards. Padding exists the moment
    the flush starts; each chunk is ready once the step before it is done, so that is what a
    flushed token's latency counts from."""
    t0 = time.perf_counter()
    last: dict[int, float] = {}
    ends = [seconds(s.pushed_samples) for _, _, s in streams]
    for i, event in _together(engine, [s for _, _, s in streams], finishing=True):
        d, role, _ = streams[i]
        event = clamp_span(event, ends[i])
        d.token(role, event, last.get(i, t0), flushed=True)
        last[i] = event.t_emitted
    for d, _, _ in streams:
        d.flushes += 1
        d.incidents()


def flush(engine, drivers: list[StreamDriver]) -> None:
    """Every end the drivers have waiting, in order: their streams flushed in shared forwards."""
    ending = [d for d in drivers if d.ending]
    while ending:
        finish(engine, [(d, role, s) for d in ending for role, s in d.flushing()])
        for d in ending:
            d.flushed()
        ending = [d for d in ending if d.ending]


def cycle(engine, drivers: list[StreamDriver]) -> None:
    """One round for ``drivers`` after their new audio was heard: steps, flushes, settling."""
    step(engine, drivers)
    flush(engine, drivers)
    for d in drivers:
        d.settle()
