"""What is drawn while transcribing: the Rich live view (state + a pure view of it), plain text
as it arrives for pipes, and nothing (``NullView``, when stdout carries JSON Lines).

Knows ``TokenEvent`` and Rich; nothing of audio, models or flags.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import IO

from rich.console import Console, ConsoleOptions, RenderResult
from rich.live import Live
from rich.segment import Segment
from rich.text import Text

from voxcli.events import FileStatus, LiveStatus, TokenEvent

__all__ = ["FILE_REDRAW_S", "LiveState", "LiveTranscript", "NullView", "PlainTranscript", "status_text", "view"]

# --------------------------------------------------------------------------------------------
# Streaming token display
# --------------------------------------------------------------------------------------------


class _Layout:
    """Turns token texts into display deltas: a new line per segment, no leading blanks."""

    def __init__(self, newline_per_segment: bool) -> None:
        self.newline_per_segment = newline_per_segment
        self.segment: int | None = None
        self.at_line_start = True

    def delta(self, event: TokenEvent) -> str:
        text = event.text
        prefix = ""
        if self.segment is not None and event.segment != self.segment and self.newline_per_segment:
            if not self.at_line_start:
                prefix = "\n"
            self.at_line_start = True
        self.segment = event.segment
        if self.at_line_start:
            text = text.lstrip()
            if not text:
                return ""
            self.at_line_start = False
        return prefix + text


@dataclass(slots=True)
class LiveState:
    """What the live view shows. ``pieces`` holds the text of each displayed delta."""

    title: str | None = None
    pieces: list[str] = field(default_factory=list)
    unsure: set[int] = field(default_factory=set)  # pieces of words the model was unsure of (underlined)
    tail: str = ""  # two-pass: provisional words beyond the final text, drawn dim
    status: LiveStatus | FileStatus | None = None
    done: bool = False


def _fields(pairs: Iterable[tuple[str, str | None]]) -> Text:
    """``key value`` pairs on one dim line, values bold; a pair whose value is None is left out."""
    text = Text(style="dim")
    for key, value in pairs:
        if value is None:
            continue
        if text.plain:
            text.append("  ")
        text.append(f"{key} ")
        text.append(value, style="bold")
    return text


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def status_text(status: LiveStatus | FileStatus) -> Text:
    """The status line under a live transcript: a pure function of the status."""
    if isinstance(status, FileStatus):
        return _fields([
            ("file", status.file), ("audio_s", f"{status.audio_s:.2f}"),
            ("tokens", None if status.tokens is None else str(status.tokens)),
            ("ttft_ms", None if status.tokens is None else _ms(status.ttft_ms)),
            ("total_ms", None if status.tokens is None else _ms(status.total_ms)),
        ])
    s = status
    return _fields([
        ("level", f"{s.level_db:.0f} dB"),
        ("audio", f"{s.heard_s:.1f} s"),
        ("latency", f"p50 {s.latency_ms[0]:.0f} / p95 {s.latency_ms[1]:.0f} ms" if s.latency_ms else "-"),
        ("step", "-" if s.step_ms is None else f"{s.step_ms:.1f}/{s.budget_ms:.0f} ms" if s.final_step_ms is None
         else f"{s.step_ms:.1f} + final {s.final_step_ms:.1f} = {s.step_ms + s.final_step_ms:.1f}/{s.budget_ms:.0f} ms"),
        ("endpoints", str(s.endpoints) if s.endpoints else None),
        ("dropped", str(s.dropped_blocks)),  # always shown: 0 is worth knowing
        ("overflows", str(s.input_overflows) if s.input_overflows else None),  # once the host lost input
        ("warning", "FALLING BEHIND real time" if s.behind else None),
        ("notice", s.notice),
        ("state", s.state),
    ])


class _TranscriptView:
    """Title, transcript, status. While live, the transcript is cropped to the tail that fits
    the terminal; once done, it is rendered in full."""

    def __init__(self, state: LiveState) -> None:
        self.state = state

    def _body(self, max_chars: int | None) -> Text:
        body = Text()
        pieces = self.state.pieces
        start = len(pieces)
        if max_chars is None:
            start = 0
        else:
            # Only wrap what can be visible: each redraw costs O(screen), not O(transcript).
            n = 0
            while start > 0 and n < max_chars:
                start -= 1
                n += len(pieces[start])
        for i in range(start, len(pieces)):
            text = pieces[i]
            if i in self.state.unsure:  # underlined: readable without colour; the space before it is not
                word = text.lstrip()
                body.append(text[:len(text) - len(word)])
                body.append(word, style="underline")
            else:
                body.append(text)
        if self.state.tail:
            body.append(self.state.tail if pieces else self.state.tail.lstrip(), style="dim")
        return body

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        state = self.state
        width = options.max_width

        def render(renderable: Text) -> list[list[Segment]]:
            return console.render_lines(renderable, options, pad=False)

        head = render(Text(state.title, style="bold")) if state.title else []
        foot = render(status_text(state.status)) if state.status is not None else []
        if state.done:
            body = render(self._body(None))
        else:
            # One spare row so the cursor parked after the view never scrolls the terminal.
            rows = max(1, options.size.height - len(head) - len(foot) - 1)
            body = render(self._body(width * (rows + 2)))[-rows:]
        if not state.pieces and not state.tail:
            body = []
        lines = [*head, *body, *foot]
        new_line = Segment.line()
        for i, line in enumerate(lines):
            if i:
                yield new_line
            yield from line


def view(state: LiveState) -> _TranscriptView:
    """The renderable for ``state`` (lays itself out for the console size when drawn)."""
    return _TranscriptView(state)


FILE_REDRAW_S = 1 / 60  # a file, transcribed faster than real time: at most 60 redraws a second


class LiveTranscript:
    """Draws each token the moment it is added, with a status line below.

    ::

        with LiveTranscript(console, title="a.wav") as live:
            for event in events:
                live.add(event)
            live.set_status(FileStatus("a.wav", audio_s=3.1, tokens=42, ttft_ms=51.2))

    Every ``add()`` redraws synchronously (no waiting for a refresh tick) and appends
    ``display_lag_ms`` = (clock after the redraw - ``event.t_emitted``) * 1000. With
    ``min_redraw_s`` (files: :data:`FILE_REDRAW_S`), a token that comes sooner than that after the
    last redraw waits for the next one (or :meth:`draw`), and its lag counts to it: a file
    transcribed faster than real time makes tokens faster than a redraw (1-1.5 ms of Python for a
    100x30 screen, which the engine thread waits for, Python running one thread at a time). Live
    tokens, 80 ms apart, are each drawn at once. On exit the full transcript and the status stay
    on the console.
    ``low_confidence``: a word with a token whose probability (``event.p``) is below it is
    underlined, all of it (0: off).
    Call from one thread (the one that owns the console).
    """

    def __init__(
        self, console: Console, title: str | None = None, *, newline_per_segment: bool = True,
        min_redraw_s: float = 0.0, low_confidence: float = 0.0,
    ) -> None:
        self.console = console
        self.low_confidence = low_confidence
        self._word_start = 0  # the piece the word being drawn began at
        self.min_redraw_s = min_redraw_s
        self._last_draw = -math.inf
        self.state = LiveState(title=title)
        self.display_lag_ms: list[float] = []
        self._layout = _Layout(newline_per_segment)
        self._undrawn: list[float] = []  # t_emitted of tokens added, not yet drawn
        self._dirty = False
        self._live = Live(
            console=console,
            get_renderable=lambda: view(self.state),
            auto_refresh=False,  # every change is drawn at once by the call that makes it
            transient=False,
            # Redirect only the stream this console already draws on: redirecting the other one
            # would send, e.g., a transcript piped to stdout into a stderr status console.
            redirect_stdout=console.file is sys.stdout,
            redirect_stderr=console.file is sys.stderr,
        )

    def __enter__(self) -> LiveTranscript:
        self._live.start(refresh=True)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.draw()
        self.state.done = True
        self._live.stop()  # its final draw shows the whole transcript, not just the tail

    def set_tail(self, text: str) -> None:
        """Two-pass: the provisional words after the final text (dim)."""
        if text != self.state.tail:
            self.state.tail = text
            self._dirty = True
            self.draw()

    def add(self, event: TokenEvent) -> None:
        if not self._live.is_started:
            raise RuntimeError("LiveTranscript.add() called outside its 'with' block")
        text = self._layout.delta(event)
        if text:
            self.state.pieces.append(text)
            self._mark(text, event.p)
            self._dirty = True
        self._undrawn.append(event.t_emitted)
        if time.perf_counter() - self._last_draw >= self.min_redraw_s:
            self.draw()

    def _mark(self, text: str, p: float | None) -> None:
        """Underline the word this piece belongs to if this piece, or one before it in the word,
        is less likely than ``low_confidence``."""
        i = len(self.state.pieces) - 1
        if text[0].isspace() or i == 0:
            self._word_start = i
        marked = self._word_start in self.state.unsure  # the word so far was underlined (all of it)
        if marked or (p is not None and p < self.low_confidence):
            self.state.unsure.update(range(self._word_start, i + 1))

    def draw(self) -> None:
        """Draw what was added since the last draw (nothing to do if nothing was)."""
        if self._dirty and self._live.is_started:
            self._live.refresh()
            self._dirty = False
        now = self._last_draw = time.perf_counter()
        self.display_lag_ms.extend((now - t) * 1000.0 for t in self._undrawn)
        self._undrawn.clear()

    def set_status(self, status: LiveStatus | FileStatus) -> None:
        # One redraw path: tokens waiting for a redraw are shown by this one, and timed by it.
        self.state.status = status
        self._dirty = True
        self.draw()


class PlainTranscript:
    """For pipes and files: each text delta is written and flushed the moment it is added,
    so ``voxcli ... | cat`` shows tokens as they come. Same interface as ``LiveTranscript``."""

    def __init__(self, stream: IO[str], *, newline_per_segment: bool = True) -> None:
        self.stream = stream
        self.display_lag_ms: list[float] = []
        self._layout = _Layout(newline_per_segment)

    def __enter__(self) -> PlainTranscript:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stream.write("\n")
        self.stream.flush()

    def add(self, event: TokenEvent) -> None:
        text = self._layout.delta(event)
        if text:
            self.stream.write(text)
            self.stream.flush()
        self.display_lag_ms.append((time.perf_counter() - event.t_emitted) * 1000.0)

    def draw(self) -> None:
        """Nothing to do: every delta is written when it is added (the live view's interface)."""

    def set_tail(self, text: str) -> None:
        """Provisional words cannot be taken back from a pipe: only final text is written."""

    def set_status(self, status: LiveStatus | FileStatus) -> None:
        """Status lines would corrupt piped text: the CLI prints a summary to stderr instead."""


class NullView:
    """Draws nothing, with the views' interface: for when stdout carries a document or JSON
    events instead, and stderr is no terminal to draw a live view on."""

    display_lag_ms: list[float] = []

    def __enter__(self) -> NullView:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def add(self, event: TokenEvent) -> None:
        pass

    def draw(self) -> None:
        pass

    def set_tail(self, text: str) -> None:
        pass

    def set_status(self, status: LiveStatus | FileStatus) -> None:
        pass
