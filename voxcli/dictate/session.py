"""Dictation: while the hotkey is held (or toggled on), the microphone's words are typed into the
focused window as each becomes final.

    engine thread (DictateWorker)                          main thread (Dictation.run)
    capture -> while listening: driver.hear, cycle    ->   LiveToken: FinalWords -> typist.type
               at release: end_utterance, flush       ->   UtteranceDone: the held word, then idle

The model stays loaded and warm between presses and the microphone open, so a press costs only
capture, one step and typing. Audio while not listening is not heard (only its level is shown).
A release flushes the stream at once, as an end of speech does in listen: the last words come out
within the flush, and nothing is typed after its ``UtteranceDone``. The stop key ends a press at
once: nothing more of it is typed. Ctrl-C stops at once: nothing is typed after it, and an open stream is dropped unflushed (its rows freed). The session's stream cycle is the driver's (:mod:`voxcli.live.driver`): the
endpointer, restarts and two-pass work as in listen; with two-pass only the final stream's words
are typed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from voxcli.audio.capture import level_db
from voxcli.dictate.correct import LiveCorrect
from voxcli.dictate.hotkey import Binding, Hotkey
from voxcli.dictate.words import FinalWords
from voxcli.events import StreamRole
from voxcli.live.driver import StreamDriver, cycle
from voxcli.live.items import AudioIn, LiveOptions, LiveToken, UtteranceDone
from voxcli.live.runner import LIVE_QUEUE_SIZE, Runner

POLL_S = 0.02  # how often the engine thread looks at the hotkey when no audio comes


@dataclass(frozen=True)
class Released:
    """The hotkey was let go (or toggled off): the stream is being flushed."""

    t: float


@dataclass(frozen=True)
class PressDone:
    """The release's flush is over: every word of the press is out."""


@dataclass(frozen=True)
class Level:
    level_db: float


class DictateWorker:
    """The engine thread's work: capture gated by ``listening``, through one stream driver.
    ``deferred``: start the source at the first press (a file replayed as the microphone plays
    from its start when the user first speaks)."""

    def __init__(self, engine, source, listening: threading.Event, stop: threading.Event,
                 options: LiveOptions | None = None, final_engine=None, deferred: bool = False) -> None:
        self.engine, self.source = engine, source
        self.listening, self.stop = listening, stop
        self.deferred = deferred
        self.put: Callable[[object], None] = lambda item: None
        self.driver = StreamDriver(engine, lambda item: self.put(item), options, final_engine=final_engine)

    def run(self, put: Callable[[object], None]) -> None:
        self.put = put
        if self.deferred:
            while not self.listening.is_set():
                if self.stop.wait(POLL_S):
                    return
            self.source.start()
        was = False
        try:
            for item in self._blocks():
                self.driver.draining.collect()  # a server's answers for speech ended at a pause
                now = self.listening.is_set()
                if item is not None:
                    t, x = item
                    if now:
                        put(AudioIn(x, level_db(x), self.source.backlog))
                        self.driver.hear(x, t)
                    else:
                        put(Level(level_db(x)))
                released = was and not now
                if released:  # flush now, as an end of speech is
                    put(Released(time.perf_counter()))
                    self.driver.end_utterance()
                was = now
                cycle(self.engine, [self.driver])  # flushes every end waiting, in order
                if released:
                    self.driver.draining.wait(self.stop)  # a server: its answer to the flush, the last words
                    put(PressDone())
        finally:
            self.driver.drop()  # stopped (Ctrl-C, or the consumer gone): nothing more is said, rows freed

    def _blocks(self):
        """Captured blocks (``None`` when none came within the poll interval) until stop; after a
        replayed file ends, ``None`` until stop (the hotkey may still be down)."""
        for item in self.source.stream(POLL_S):
            yield item
            if self.stop.is_set():
                return
        while not self.stop.wait(POLL_S):
            yield None


@dataclass
class Figures:
    """Dictation's own latency: hotkey down -> first character typed, release -> last typed."""

    first_char_ms: list[float] = field(default_factory=list)
    release_to_last_ms: list[float] = field(default_factory=list)
    presses: int = 0  # presses over (their flush done)
    backspaces: list[int] = field(default_factory=list)  # --live-correct: characters taken back, per press
    corrections: list[int] = field(default_factory=list)  # --live-correct: the edits that took any back, per press


class Dictation:
    """The main thread's side: items from the worker typed as words become final.

    ``typist``: :mod:`voxcli.dictate.typist`; ``focus_is_ours()``: whether the focused window is
    this terminal (text is held, not typed); ``status(state, text)``: the one-line status."""

    def __init__(self, typist, *, focus_is_ours: Callable[[], bool] = lambda: False,
                 status: Callable[[str, str], None] = lambda state, text: None, two_pass: bool = False,
                 hold_modifier: bool = False, recorder=None, live_correct: bool = False) -> None:
        """``hold_modifier``: the hotkey held is (or has) a modifier, so a key typed while it is
        down would reach the app as a shortcut (ctrl+h): the press's words wait for the release.
        ``live_correct`` (two-pass): provisional words typed at once, final ones put in their
        place with backspaces where they differ (:mod:`voxcli.dictate.correct`)."""
        self.typist = typist
        self.live_correct = live_correct
        self.correct = LiveCorrect() if live_correct else None
        self.recorder = recorder  # --save: the audio heard and the tokens, as listen saves them; no keystroke
        self.hold_modifier = hold_modifier
        self.waiting = ""  # words of a press held with a modifier, typed at its release
        self.focus_is_ours = focus_is_ours
        self.status = status
        self.two_pass = two_pass
        self.listening = threading.Event()
        self.halted = threading.Event()  # Ctrl-C: nothing more is typed
        self.cancelled = threading.Event()  # the stop key: nothing more of this press is typed
        self.words = FinalWords()
        self.typed = ""  # this press's
        self.held = ""  # kept back: voxcli's own terminal had focus
        self.figures = Figures()
        self.t_down: float | None = None
        self.t_release: float | None = None
        self.t_last: float | None = None  # the last character typed
        self.first_done = False  # this press's first character is typed (and timed)
        self.releasing = False

    # -- the hotkey (any thread) --

    def press(self) -> None:
        if not self.listening.is_set():
            self.cancelled.clear()  # a new press types again (a stop key the worker never saw is forgotten)
            self.t_down, self.t_release = time.perf_counter(), None
            self.listening.set()

    def release(self) -> None:
        self.listening.clear()

    def toggle(self) -> None:
        if self.listening.is_set():
            self.release()
        else:
            self.press()

    def cancel(self) -> None:
        """The stop key: this press ends now, and nothing more of it is typed (its flush included)."""
        if self.listening.is_set() or self.releasing:
            self.cancelled.set()
            self.listening.clear()

    def bindings(self, hotkey: Hotkey, stop_key: Hotkey | None, toggle: bool) -> list[Binding]:
        """What the keys do: the hotkey held (or, ``toggle``, pressed) and the stop key."""
        keys = [Binding(hotkey, self.toggle, lambda: None) if toggle else Binding(hotkey, self.press, self.release)]
        return keys + ([Binding(stop_key, self.cancel)] if stop_key is not None else [])

    # -- the main thread --

    def run(self, worker: DictateWorker, stop: threading.Event) -> None:
        """Until ``stop`` (or KeyboardInterrupt, which halts typing at once and is raised again)."""
        self.status("idle", "")
        with Runner(worker.run, maxsize=LIVE_QUEUE_SIZE, join_s=10.0) as runner:
            try:
                for item in runner.items():
                    self._item(item)
                    if stop.is_set() and not self.releasing and not self.listening.is_set():
                        return
            except KeyboardInterrupt:
                self.halted.set()
                raise
            finally:
                stop.set()

    def _item(self, item) -> None:
        if self.recorder is not None:
            if isinstance(item, AudioIn):
                self.recorder.write_audio(item.samples)
            elif isinstance(item, LiveToken):
                extra = {"utterance": item.utterance, "flushed": item.flushed, **({"stream": item.stream}
                                                                                  if item.stream else {})}
                self.recorder.write_event(item.event, transcript=item.stream != StreamRole.PROVISIONAL, **extra)
        if isinstance(item, LiveToken):
            if self.correct is not None and item.stream != StreamRole.ONLY:
                back, text = self.correct.token(item.event, item.stream)
                self._type(text, back=back)
            elif not (self.two_pass and item.stream == StreamRole.PROVISIONAL):
                self._type(self.words.piece(item.event.text))
        elif isinstance(item, AudioIn):
            self.status("listening", f"{item.level_db:5.0f} dB  {self.typed[-60:]}")
        elif isinstance(item, Level) and not self.releasing:  # the microphone works, between presses too
            self.status("idle", f"{item.level_db:5.0f} dB" + (f"  held: {self.held[-60:]}" if self.held else ""))
        elif isinstance(item, Released):
            self.releasing, self.t_release = True, item.t
            self.status("typing", self.typed[-60:])
        elif isinstance(item, UtteranceDone):
            self._end()
        elif isinstance(item, PressDone):  # the press is over: nothing more is typed for it
            self._end()
            if self.correct is not None:
                self.figures.backspaces.append(self.correct.backspaces)
                self.figures.corrections.append(self.correct.corrections)
                self.correct = LiveCorrect()
            waiting, self.waiting = self.waiting, ""
            self._type(waiting, now=True)
            if self.t_release is not None and self.t_last is not None and self.t_last >= self.t_release:
                self.figures.release_to_last_ms.append((self.t_last - self.t_release) * 1000.0)
            self.releasing = False
            self.figures.presses += 1
            self.words, self.typed, self.t_last, self.first_done = FinalWords(), "", None, False
            cancelled = self.cancelled.is_set()
            self.cancelled.clear()
            self.status("idle", "stopped: the rest of that press was not typed" if cancelled else
                        "held: " + self.held[-60:] if self.held else "")

    def _end(self) -> None:
        """An end of speech: the words held are whole (with --live-correct, the final stream's)."""
        if self.correct is not None:
            back, text = self.correct.end()
            self._type(text, back=back)
        else:
            self._type(self.words.end())

    def _type(self, text: str, now: bool = False, back: int = 0) -> None:
        """Type ``text`` after taking back ``back`` characters (--live-correct)."""
        if not (text or back) or self.halted.is_set() or self.cancelled.is_set():
            return
        if self.hold_modifier and not now and (self.listening.is_set() or self.releasing):
            self.waiting = _cut(self.waiting, back) + text  # typed at PressDone, once the modifier is up
            return
        if self.focus_is_ours():
            self.held = _cut(self.held, back) + text
            self.status("held", "voxcli's own terminal has focus: not typed")
            return
        if back:
            self.typist.backspace(back)
        if text:
            self.typist.type(text)
        if not self.first_done and text and self.t_down is not None:
            self.figures.first_char_ms.append((time.perf_counter() - self.t_down) * 1000.0)
            self.first_done = True
        self.typed = _cut(self.typed, back) + text
        self.t_last = time.perf_counter()


def _cut(text: str, back: int) -> str:
    return text[:max(0, len(text) - back)]
