"""The live engine worker: captured 16 kHz audio in, tokens, audio and endpoints out.

It runs in the engine thread (``voxcli.live.runner`` gives it one) and hands everything it makes to
``put``: the audio as it was heard (for the WAV), each token with the moments its latency counts
from, each end of speech, and notices worth showing. It never draws and never waits for the screen.

Realtime model: one session step per 80 ms chunk; when the endpointer (``voxcli.audio.vad``) says speech
has ended, the session is finished at once (the right padding is pushed, so the last words come out
without waiting out the delay) and a new one starts at the same sample, so no audio is skipped.
A stream that ends itself (end of sequence) starts again where it stopped transcribing (the
session does that itself, and says where), and a ``Restart`` row says so. The worker never knows
whether a server is behind the engine: a session that outlives a lost server is the engine's
(``voxcli.engine.reconnect``); what it reports on the way is passed on (``incidents``). A
stream that gives no text over ``blank_run_s`` of speech (vLLM #47614: a real session can emit only
blanks for minutes) is restarted with the audio since the run began, backing off.
Offline models: the endpointer cuts speech into utterances, each transcribed when it ends; no
stretch the endpointer heard no speech in is ever sent to one (Voxtral 3B invents text over
silence).
On stop, what was captured is drained and flushed before the worker returns. A stream that fails
for good stops capture; every block captured is still handed on (the WAV), then the error.
"""

from __future__ import annotations

import bisect
import dataclasses
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from voxcli.audio.capture import level_db
from voxcli.audio.tape import Tape
from voxcli.config import Config, ListenConfig
from voxcli.engine.contract import Engine
from voxcli.errors import ServerError
from voxcli.events import Notice, Reconnect, Restart, TokenEvent, clamp_span
from voxcli.units import SAMPLE_RATE

POLL_S = 0.05  # how long the worker waits for a block before looking at a server's deltas again
TWO_STREAMS = (None, "final")  # two-pass, in steps_together's order: the first stream, then the final
BLANK_RESTARTS = 3  # blank-run restarts in a row (each after twice the speech of the last) before giving up


@dataclass(frozen=True)
class LiveToken:
    """A token on its way to the screen, with the two moments its latency is measured from.

    ``t_ready``: when the audio block that let the model take this step was captured (the chunk
    became available). ``t_audio``: when the last sample of the audio the token covers was
    captured. Emission latency = time drawn - ``t_audio``. Both are ``None`` when the engine cannot
    tell (``info.audio_spans``, ``info.step_times``: a server says neither).
    """

    event: TokenEvent
    t_ready: float | None
    t_audio: float | None
    audio_available_s: float  # audio handed to the engine when the token came out
    flushed: bool = False  # made from the right padding pushed at end of speech
    utterance: int = 0  # which stretch of speech (0-based; a new one after each endpoint)
    stream: str = ""  # two-pass: "provisional" or "final"; one stream: ""


@dataclass(frozen=True)
class Endpoint:
    """An end of speech, as positions in the session's audio: where the speech ended, and how
    much audio had been heard when the endpointer knew it."""

    speech_end_s: float
    decided_s: float
    utterance: int

    def to_dict(self) -> dict:
        return {"type": "endpoint", "speech_end_s": round(self.speech_end_s, 4),
                "decided_s": round(self.decided_s, 4), "utterance": self.utterance}


@dataclass(frozen=True)
class AudioIn:
    """16 kHz samples exactly as handed to the engine (for the WAV), with their level."""

    samples: np.ndarray
    level_db: float
    backlog_blocks: int


_LISTEN = ListenConfig()  # listen's defaults, defined once in the configuration


@dataclass
class LiveOptions:
    """The worker's settings. ``from_config`` is the one way listen and bench make them, so both
    run the same session; the defaults are the configuration's."""

    flush_after_ms: int = _LISTEN.flush_after_ms  # this much non-speech ends speech: flush / cut there (0: never)
    vad: str = _LISTEN.vad  # the endpointer's detector: silero, or the energy fallback
    silence_db: float = _LISTEN.silence_db  # energy only: a window below this level is silence
    blank_run_s: float = _LISTEN.blank_run_s  # speech with no text for this long restarts the stream (0: never)
    language: str | None = None  # offline models (and an offline final pass): the language hint
    max_utterance_s: float = 30.0  # offline models: longest utterance transcribed at once
    preroll_s: float = 0.2  # offline models: audio kept before a speech start, so onsets are whole
    tail_s: float = 0.1  # offline models: audio kept after a speech end

    @classmethod
    def from_config(cls, cfg: Config) -> LiveOptions:
        language = cfg.transcription.language
        return cls(flush_after_ms=cfg.listen.flush_after_ms, vad=cfg.listen.vad, silence_db=cfg.listen.silence_db,
                   blank_run_s=cfg.listen.blank_run_s, language=None if language == "auto" else language)


class _BlankRuns:
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


class _CaptureClock:
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


class _Emitting:
    """The worker's hand-off: a session's events as items for ``put`` (tokens with the moments
    their latency counts from, restart rows, what the session reports on its way), and the
    streams still finishing at a pause, collected between blocks. Mixed into LiveWorker."""

    def _emit(self, event: TokenEvent, offset: int, t_ready: float, flushed: bool = False,
              utterance: int | None = None, stream: str | None = None) -> None:
        shift = offset / SAMPLE_RATE
        start = None if event.audio_start_s is None else event.audio_start_s + shift
        end = None if event.audio_end_s is None else event.audio_end_s + shift
        restart_at = None if event.restart_at_s is None else event.restart_at_s + shift
        event = dataclasses.replace(event, index=self.n_tokens, audio_start_s=start, audio_end_s=end,
                                    restart_at_s=restart_at)
        self.n_tokens += 1
        first_stream = (self._first_stream if stream is None else stream) == self._first_stream
        if first_stream and event.text.strip():
            self.blank.text(self.heard)
        t_audio = None
        if end is not None:
            t_audio = self.clock.at(min(self.heard, int(round(end * SAMPLE_RATE))))
        if not self.engine.info.step_times:  # which chunk made a token is not known
            t_ready = None
        self._put(LiveToken(event, t_ready, t_audio, self.heard / SAMPLE_RATE, flushed,
                            self.utterance if utterance is None else utterance,
                            self._first_stream if stream is None else stream))
        if restart_at is not None:  # a local stream said end of sequence and started again there
            self._restarted("eos", int(round(restart_at * SAMPLE_RATE)))

    def _restarted(self, reason: str, at: int) -> None:
        self.blank.restarted(at, self.heard)
        self._put(Restart(reason, at / SAMPLE_RATE))

    def _take(self, session, offset: int, t_ready: float | None, stream: str | None = None) -> None:
        """The stream's tokens so far (``t_ready``: when the block that let it step was captured;
        None: no block came, each token counts from its own emission), and what happened on its way."""
        for event in session.steps():
            self._emit(event, offset, event.t_emitted if t_ready is None else t_ready, stream=stream)
        self._incidents(session, offset)

    def _take_both(self, session, final, offset: int, t_ready: float) -> None:
        """Two-pass: both streams' tokens so far, each step of both in one forward."""
        for i, event in self.engine.steps_together([session, final]):
            self._emit(event, offset, t_ready, stream=TWO_STREAMS[i])

    def _incidents(self, session, offset: int) -> None:
        for item in session.incidents():  # a Reconnect row (at a position in the session's audio), a Notice
            if isinstance(item, Reconnect):  # to the session's audio; replayed: all of it since the replay began
                start_s = offset / SAMPLE_RATE + (item.replay_from_s or 0.0)
                item = dataclasses.replace(item, lost_at_s=item.lost_at_s + offset / SAMPLE_RATE,
                                           replayed_s=max(item.replayed_s, self.heard / SAMPLE_RATE - start_s))
            self._put(item)

    def _end_stream(self, session, offset: int) -> None:
        """End of speech: flush the stream. A server finishes on its own time, and capture must not
        wait for it: its last deltas are collected between blocks (``_drain``)."""
        if session.finish_waits:
            session.commit()
            self._draining.append((session, offset, self.utterance))
        else:
            self._finish(session, offset)

    def _drain(self) -> None:
        """Deltas of streams that ended at a pause and are still finishing on a server."""
        for item in list(self._draining):
            session, offset, utterance = item
            try:
                for event in session.pending():
                    self._incidents(session, offset)
                    self._emit(event, offset, event.t_emitted, flushed=True, utterance=utterance)
            except ServerError as exc:
                self._notice(f"{exc} (at the end of utterance {utterance})")
            self._incidents(session, offset)
            if session.finished:
                self._draining.remove(item)
                self.flushes += 1

    def _finish(self, session, offset: int, stream: str | None = None) -> None:
        # Padding chunks exist the moment the flush starts; each is ready once the step before it
        # is done, so that is what a flushed token's latency counts from.
        t_ready = time.perf_counter()
        end_s = session.pushed_samples / SAMPLE_RATE
        events = self._finishing(session, offset) if session.finish_waits else session.finish()
        try:
            for event in events:
                self._incidents(session, offset)  # what happened on the way comes before what followed it
                event = clamp_span(event, end_s)
                self._emit(event, offset, t_ready, flushed=True, stream=stream)
                t_ready = event.t_emitted
        finally:  # a stream that failed still says what happened first (the outage it waited out)
            self._incidents(session, offset)
        self.flushes += 1

    def _finish_both(self, session, final, offset: int) -> None:
        """Two-pass at an end of speech (or of the input): both streams' right padding in shared
        forwards; each stream's flushed tokens count from its last one, as ``_finish`` counts."""
        t_ready = [time.perf_counter()] * 2
        ends = [session.pushed_samples / SAMPLE_RATE, final.pushed_samples / SAMPLE_RATE]
        for i, event in self.engine.finish_together([session, final]):
            event = clamp_span(event, ends[i])
            self._emit(event, offset, t_ready[i], flushed=True, stream=TWO_STREAMS[i])
            t_ready[i] = event.t_emitted
        self.flushes += 2

    def _finishing(self, session, offset: int):
        """A server's last deltas as they come. Waiting for them can take ``model.reconnect_s``
        when the server is away, and what happens meanwhile (that it went away) is said when it
        happens, not when the wait ends."""
        session.commit()
        while True:
            yield from session.pending()
            self._incidents(session, offset)
            if session.finished:
                return
            time.sleep(POLL_S)


class LiveWorker(_Emitting):
    """The consumer of captured audio: feed the engine, hand tokens, audio and endpoints to ``put``.

    ``run(put)`` is the engine thread's whole work; ``put`` may block briefly (a bounded queue) but
    the capture never waits for it: the source counts what it has to drop.
    """

    def __init__(self, engine: Engine, source, stop: threading.Event, options: LiveOptions | None = None,
                 final_engine: Engine | None = None) -> None:
        self.engine = engine
        # Two-pass: a second Realtime stream at a longer delay, fed the same audio here.
        self.final_engine = final_engine
        self._first_stream = "provisional" if final_engine is not None else ""
        self.source = source
        self.stop_event = stop
        self.options = options or LiveOptions()
        self.heard = 0  # 16 kHz samples handed to the engine
        self.clock = _CaptureClock()
        self.n_tokens = 0
        self.flushes = 0
        self.utterance = 0
        self._put: Callable[[object], None] = lambda item: None
        self._draining: list[tuple] = []  # (session, offset, utterance) finishing on a server
        self.blank = _BlankRuns(self.options.blank_run_s)
        opts = self.options
        self.endpointer = None
        if opts.flush_after_ms:
            from voxcli.audio.vad import Endpointer, EndpointOptions

            self.endpointer = Endpointer(EndpointOptions(detector=opts.vad, min_silence_ms=opts.flush_after_ms,
                                                         silence_db=opts.silence_db))

    def run(self, put: Callable[[object], None]) -> None:
        self._put = put
        if self.engine.kind == "realtime":
            self._run_realtime()
        else:
            self._run_offline()

    def _blocks(self):
        """Captured 16 kHz blocks until the source ends; ``(None, None)`` when none came within the
        poll interval, so deltas that arrive on their own schedule (a server's) are still
        drawn between blocks. A stop request ends capture; what is already queued is still heard."""
        for item in self.source.stream(POLL_S):
            yield item if item is not None else (None, None)
            if self.stop_event.is_set():
                self.source.stop()

    def _notice(self, text: str) -> None:
        self._put(Notice(text))

    def _hear(self, t_cap: float, x: np.ndarray) -> list:
        """Account for a block and hand it to the WAV; the endpointer's events for it."""
        self.heard += len(x)
        self.clock.add(self.heard, t_cap)
        self._put(AudioIn(x, level_db(x), self.source.backlog))
        events = self.endpointer.feed(x) if self.endpointer is not None else []
        self.blank.heard(self.heard - len(x), self.heard, events)
        return events

    def _endpoint(self, event) -> None:
        self._put(Endpoint(event.sample / SAMPLE_RATE, event.decided_sample / SAMPLE_RATE, self.utterance))
        self.utterance += 1

    def _run_realtime(self) -> None:
        # Audio that may be needed again: a restart after a run of blanks, an offline final
        # pass's utterance.
        tape = Tape()
        session, offset = self.engine.session(), 0
        second = self.final_engine
        final = second.session() if second is not None and second.kind == "realtime" else None
        final_pass = second if second is not None and second.kind == "offline" else None  # per utterance
        utterance_from: int | None = None  # final pass: where the open utterance's speech began
        self._block_iter = blocks = self._blocks()
        try:
            for t_cap, x in blocks:
                self._drain()
                vad_events = []
                if x is not None:
                    vad_events = self._hear(t_cap, x)
                    tape.append(x)
                    for vad in vad_events:
                        if vad.kind == "start" and utterance_from is None:
                            utterance_from = vad.sample
                    session.push(x)
                if final is not None and x is not None:  # the same audio at the longer delay: one forward for both
                    final.push(x)
                    self._take_both(session, final, offset, t_cap)
                else:
                    self._take(session, offset, t_cap if x is not None else None)
                for vad in vad_events:
                    if vad.kind == "end":
                        if final is not None:  # both flush in shared forwards
                            self._finish_both(session, final, offset)
                            final = self.final_engine.session()
                        else:
                            self._end_stream(session, offset)
                        self._endpoint(vad)
                        if final_pass is not None and utterance_from is not None:
                            self._final_pass(final_pass, tape, max(offset, utterance_from - self._preroll),
                                             self.utterance - 1)
                        utterance_from = None
                        session, offset = self.engine.session(), self.heard
                if session.waiting:  # on its engine (a server away): not a stream that hears and says nothing
                    self.blank.restarted(self.heard, self.heard)
                elif x is not None and self.blank.over(self.heard):
                    session, offset = self._restart_blank(session, offset, tape)
                tape.keep_from(min(self.heard, offset if final_pass is not None else self.heard,
                                   self.blank.run_from(self.heard)))
            if final is not None:
                self._finish_both(session, final, offset)
            else:
                self._finish(session, offset)  # the input is over: now waiting is fine
            while self._draining:
                self._drain()
                time.sleep(POLL_S if self._draining else 0)
        except ServerError as exc:
            self._give_up(exc)
        last = self.utterance
        for vad in self.endpointer.flush() if self.endpointer is not None else []:
            self._endpoint(vad)  # the input ended inside speech: that is its end
        # Only an utterance the endpointer heard (or, without one, whatever was heard) goes to the
        # offline model: trailing silence after the last end of speech is never sent.
        if final_pass is not None and self.heard > offset and (utterance_from is not None or self.endpointer is None):
            start = offset if utterance_from is None else max(offset, utterance_from - self._preroll)
            self._final_pass(final_pass, tape, start, last)

    @property
    def _preroll(self) -> int:
        return int(self.options.preroll_s * SAMPLE_RATE)

    def _restart_blank(self, session, offset: int, tape: Tape):
        """A stream that heard speech and said nothing: a new one, replayed from where the run
        began. After BLANK_RESTARTS in a row, one line, and no more restarts until text comes."""
        self.blank.restarts += 1
        if self.blank.restarts > BLANK_RESTARTS:
            self._notice(f"the model gave no text over {self.blank.speech / SAMPLE_RATE:.0f} s of speech "
                         f"after {BLANK_RESTARTS} restarts; not restarting again until it does (is the "
                         f"checkpoint right?)")
            return session, offset
        at = self.blank.run_from(self.heard)
        session.close()
        session = self.engine.session()
        session.push(tape.slice(at, self.heard))
        self._restarted("blank_run", at)
        return session, at

    def _give_up(self, exc: ServerError):
        """Stop capture, hand every block already captured to the WAV, and fail in one line."""
        self.stop_event.set()
        for t_cap, x in self._block_iter:
            if x is not None:
                self._hear(t_cap, x)
        raise exc

    def _final_pass(self, engine: Engine, tape: Tape, offset: int, utterance: int) -> None:
        """Two-pass with an offline model: the utterance that just ended, transcribed whole (from
        its speech's start, less the preroll, to now)."""
        audio = tape.slice(offset, self.heard)
        t_ready = time.perf_counter()
        for event in engine.transcribe(audio, language=self.options.language, segments=[(0, len(audio))]):
            self._emit(event, offset, t_ready, stream="final", utterance=utterance)

    def _run_offline(self) -> None:
        opts = self.options
        tape = Tape()
        preroll, tail = int(opts.preroll_s * SAMPLE_RATE), int(opts.tail_s * SAMPLE_RATE)
        longest = int(opts.max_utterance_s * SAMPLE_RATE)
        start = 0 if self.endpointer is None else None  # where the open utterance begins
        for t_cap, x in self._blocks():
            if x is None:
                continue
            vad_events = self._hear(t_cap, x)
            tape.append(x)
            for vad in vad_events:
                if vad.kind == "start":
                    start = max(vad.sample - preroll, tape.start)
                elif start is not None:
                    self._transcribe_utterance(tape.slice(start, vad.sample + tail), start)
                    self._endpoint(vad)
                    start = None
            if start is not None and self.heard - start >= longest:
                self._transcribe_utterance(tape.slice(start, self.heard), start)  # too long to wait
                start = self.heard
            tape.keep_from(start if start is not None else self.heard - preroll)
        ends = self.endpointer.flush() if self.endpointer is not None else []
        if start is not None and self.heard > start:
            self._transcribe_utterance(tape.slice(start, self.heard), start)
        for vad in ends:
            self._endpoint(vad)

    def _transcribe_utterance(self, audio: np.ndarray, start: int) -> None:
        t_ready = time.perf_counter()
        for event in self.engine.transcribe(audio, segments=[(0, len(audio))]):
            self._emit(event, start, t_ready)
        self.flushes += 1
