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
from voxcli.events import Notice, Reconnect, Restart, StreamRole, TokenEvent, clamp_span
from voxcli.live.draining import Draining
from voxcli.live.items import Endpoint, LiveOptions, LiveToken, Speech, UtteranceDone
from voxcli.live.streams import Streams
from voxcli.live.tracking import BLANK_RESTARTS, BlankRuns, CaptureClock
from voxcli.live.utterances import WholeUtterances
from voxcli.units import SAMPLE_RATE, samples, seconds


class StreamDriver:
    """One audio stream through ``engine`` (and two-pass's ``final_engine``), items out to ``put``.

    ``hear(samples, t)``: the next audio, captured (or arrived) at ``t``; ``end_utterance()``: the
    caller's end (a commit); :func:`cycle` steps and flushes; ``draining.collect()``: what servers
    answered for streams ended at a pause; ``close()``: the input is over. ``session_options``:
    the engine's ``session()``/``transcribe()`` keywords (keyterms). One thread drives it."""

    def __init__(self, engine, put: Callable[[object], None], options: LiveOptions | None = None, *,
                 final_engine=None, session_options: dict | None = None) -> None:
        self.engine = engine
        self.put = put
        self.options = opts = options or LiveOptions()
        self.session_options = dict(session_options or {})
        self.realtime = engine.kind == "realtime"
        second = final_engine
        self.first_role = StreamRole.PROVISIONAL if second is not None else StreamRole.ONLY
        self.heard = 0  # 16 kHz samples heard
        self.clock = CaptureClock()
        self.tape = Tape()  # audio that may be needed again: a replay, an offline utterance
        self.n_tokens = 0
        self.flushes = 0  # streams finished (and offline utterances transcribed)
        self.utterance = 0
        self.utterance_start = 0  # where the open utterance's audio began (its length, when done)
        self.blank = BlankRuns(opts.blank_run_s)
        self.endpointer = _endpointer(opts)
        self.streams = Streams(engine, self.first_role, session_options=self.session_options,
                               final_engine=second if second is not None and second.kind == "realtime" else None)
        self.whole = None if self.realtime else WholeUtterances(self, engine)  # an offline model's utterances
        # Two-pass with an offline final model: a pass over each utterance.
        self.final_pass = WholeUtterances(self, second) if second is not None and second.kind != "realtime" else None
        self.speech_from: int | None = None  # where the open utterance's speech began (a final pass's start)
        self.t_ready: float | None = None  # when the audio that lets the streams step now arrived
        self._fresh = False  # audio came since the last settle
        self._ends: deque = deque()  # (the endpointer's end, or None: the caller's; offline: where it began)
        self.draining = Draining(self)  # streams ended at a pause, finishing on a server

    # -- audio in --------------------------------------------------------------------------------

    def hear(self, x: np.ndarray, t: float, events: list | None = None) -> None:
        """The next block, arrived at ``t``; ``events``: its endpoints if found (endpoints_together)."""
        if self.realtime:
            self.streams.ensure(self.heard)
        start, self.heard = self.heard, self.heard + len(x)
        self.clock.add(self.heard, t)
        self.tape.append(x)
        if events is None:
            events = self.endpointer.feed(x) if self.endpointer is not None else []
        self.blank.heard(start, self.heard, events)
        self.streams.push(x)
        self.t_ready, self._fresh = t, True
        for vad in events:
            self.put(Speech(vad.kind, vad.sample * 1000 // SAMPLE_RATE, self.utterance + len(self._ends)))
            if vad.kind == "start" and self.speech_from is None:
                self.speech_from = vad.sample
            began = self.whole.speech(vad) if self.whole is not None else None
            if vad.kind == "end":
                self._ends.append((vad, began))

    def end_utterance(self) -> None:
        """The caller's end of the utterance (a client's commit): flushed as an end of speech is."""
        self._ends.append((None, self.whole.caller_end() if self.whole is not None else None))

    @property
    def ending(self) -> bool:
        return bool(self._ends)

    # -- tokens out ------------------------------------------------------------------------------

    def token(self, role: StreamRole, event: TokenEvent, t_ready: float | None, *, flushed: bool = False,
              utterance: int | None = None, offset: int | None = None) -> None:
        """A token of stream ``role`` as an item: its span in the driver's audio, and the moments its
        latency counts from (``t_ready``: when the audio that let it step came)."""
        shift = seconds(self.streams.offset(role) if offset is None else offset)
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
        for role, session in self.streams.sessions():
            self.report(session, self.streams.offset(role))

    def report(self, session, offset: int) -> None:
        """What ``session`` (started at ``offset``) reports on its way, as items."""
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
        server is committed here and collected as its answer comes (``draining.collect()``): capture never
        waits for it. An offline model's utterance is transcribed here."""
        end, began = self._ends[0]
        if self.whole is not None:
            self.whole.ended(began, end)
            return []
        local = []
        for role, session in self.streams.sessions():
            if session.finish_waits:
                session.commit()
                done = self._done() if role == self.first_role else None
                self.draining.add(session, role, self.streams.offset(role), self.utterance, done)
            else:
                local.append((role, session))
        return local

    def flushed(self) -> None:
        """What follows an end, once its streams are flushed: the endpoint, an offline final pass,
        the utterance done (unless a server still finishes it), the next utterance."""
        end, _ = self._ends.popleft()
        offset = self.streams.first_offset(self.heard)
        self.streams.forget()
        if end is not None:
            self.put(Endpoint(seconds(end.sample), seconds(end.decided_sample), self.utterance))
        if self.final_pass is not None and self.speech_from is not None:
            self.final_pass.final_pass(offset, self.speech_from, self.utterance)
        if not self.draining.holds(self.utterance):
            self.put(self._done())
        self.speech_from = None
        self.utterance += 1
        self.utterance_start = self.heard

    def _done(self) -> UtteranceDone:
        return UtteranceDone(self.utterance, seconds(self.heard - self.utterance_start))

    def settle(self) -> None:
        """After a cycle: a stream that heard speech and said nothing restarts; the tape keeps only
        what may be needed again; an offline utterance too long to wait for is transcribed."""
        fresh, self._fresh = self._fresh, False
        if self.whole is not None:
            self.whole.settle()
            return
        if self.streams.waiting:  # on its engine (a server away): not a stream that hears and says nothing
            self.blank.restarted(self.heard, self.heard)
        elif fresh and self.blank.over(self.heard):
            self._restart_blank()
        kept = self.streams.first_offset(self.heard) if self.final_pass is not None else self.heard
        self.tape.keep_from(min(self.heard, kept, self.blank.run_from(self.heard)))

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
        self.streams.replace_first(at, self.tape.slice(at, self.heard))
        self._restarted("blank_run", at)

    def close(self) -> None:
        """The input is over: every stream flushed (waiting on a server is fine now) and every
        answer collected, the endpointer's last end said, the last utterance's final pass."""
        sessions = self.streams.sessions()
        finish(self.engine, [(self, role, s) for role, s in sessions if not s.finish_waits])
        for role, session in sessions:
            if session.finish_waits:
                self.draining.wait_for(role, session, self.streams.offset(role))
        self.draining.wait()
        if self.whole is not None:
            self.whole.close()
        offset = self.streams.first_offset(self.heard)
        last = self.utterance
        for vad in self.endpointer.flush() if self.endpointer is not None else []:
            self.put(Endpoint(seconds(vad.sample), seconds(vad.decided_sample), self.utterance))
            self.utterance += 1  # the input ended inside speech: that is its end
        # Only an utterance the endpointer heard (or, without one, whatever was heard) goes to the
        # offline model: trailing silence after the last end of speech is never sent.
        if self.final_pass is not None and self.heard > offset and (self.speech_from is not None
                                                                   or self.endpointer is None):
            self.final_pass.final_pass(offset, self.speech_from, last)
        self.streams.forget()

    def drop(self) -> None:
        """Every stream dropped unfinished (the caller has gone)."""
        self.streams.drop()
        self.draining.drop()


def endpoints_together(drivers: list[StreamDriver], blocks: list[np.ndarray]) -> list[list]:
    """The endpointer events of each driver's next block (for ``hear(block, t, events)``), every
    Silero endpointer scored in shared calls: a row per stream, one call per 32 ms window."""
    from voxcli.audio.vad import feed_together

    events: list[list] = [[] for _ in drivers]
    with_ep = [i for i, d in enumerate(drivers) if d.endpointer is not None]
    found = feed_together([drivers[i].endpointer for i in with_ep], [blocks[i] for i in with_ep])
    for i, e in zip(with_ep, found):
        events[i] = e
    return events


def _endpointer(options: LiveOptions):
    endpoint = options.endpoint()
    if endpoint is None:
        return None
    from voxcli.audio.vad import Endpointer

    return Endpointer(endpoint)


# -- the forwards, for any number of drivers ------------------------------------------------------


def _together(engine, sessions: list, finishing: bool):
    """``(which session, event)`` for a round of steps (or the flush) of ``sessions``: in shared
    forwards where the engine batches, else one session after the other."""
    if len(sessions) > 1 and engine.kind == "realtime" and engine.info.other_delays:
        return engine.finish_together(sessions) if finishing else engine.steps_together(sessions)
    return ((i, e) for i, s in enumerate(sessions) for e in (s.finish() if finishing else s.steps()))


def step(engine, drivers: list[StreamDriver]) -> None:
    """Every step the drivers' streams can take, each step of all of them in one forward."""
    pairs = [(d, role, s) for d in drivers for role, s in d.streams.sessions()]
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
