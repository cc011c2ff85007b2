"""Everything voxcli draws or writes: live views, plain streaming for pipes, transcript formats.

Knows ``TokenEvent``/``Transcript`` and Rich; nothing of audio, models or flags.
"""

from __future__ import annotations

import json
import math
import sys
import time
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from rich.console import Console, ConsoleOptions, RenderResult
from rich.live import Live
from rich.segment import Segment
from rich.table import Table
from rich.text import Text

from voxcli.choices import OUTPUT_FORMATS
from voxcli.events import FileStatus, LiveStatus, Restart, TokenEvent, Transcript

__all__ = [
    "FORMATS",
    "Cue",
    "LiveState",
    "LiveTranscript",
    "NullView",
    "PlainTranscript",
    "events_to_cues",
    "format_summary",
    "metrics_table",
    "render_transcript",
    "status_text",
    "view",
]

FORMATS = OUTPUT_FORMATS

# --------------------------------------------------------------------------------------------
# Cues
# --------------------------------------------------------------------------------------------

_SENTENCE_END = (".", "?", "!", "…", "。", "？", "！")
_CLOSERS = "\"')]}»”’"


@dataclass(slots=True)
class Cue:
    start_s: float
    end_s: float
    text: str


@dataclass(slots=True)
class _Word:
    segment: int
    text: str = ""
    start_s: float | None = None
    end_s: float | None = None

    def add(self, event: TokenEvent) -> None:
        self.text += event.text
        if event.audio_start_s is not None and self.start_s is None:
            self.start_s = event.audio_start_s
        if event.audio_end_s is not None:
            self.end_s = event.audio_end_s if self.end_s is None else max(self.end_s, event.audio_end_s)


def _is_boundary(prev_text: str, next_text: str) -> bool:
    """May a cue break fall between these two non-empty token texts?

    A break needs whitespace, or punctuation that cannot sit inside a word. ASCII punctuation
    does sit inside words ("3.5", "U.S.", "don't"), so only non-ASCII punctuation counts (the
    CJK full stop and comma, which are followed by no space).
    """
    if next_text[0].isspace() or prev_text[-1].isspace():
        return True
    last = prev_text[-1]
    return ord(last) > 127 and unicodedata.category(last).startswith("P")


def _words(events: Iterable[TokenEvent]) -> list[_Word]:
    words: list[_Word] = []
    held: list[TokenEvent] = []  # empty pieces (an incomplete multi-byte char) join what follows
    prev_text = ""
    for event in events:
        if not event.text:
            held.append(event)
            continue
        if (
            not words
            or event.segment != words[-1].segment
            or (_is_boundary(prev_text, event.text) and not words[-1].text.isspace())
        ):
            words.append(_Word(segment=event.segment))
        for e in (*held, event):
            words[-1].add(e)
        held.clear()
        prev_text = event.text
    if held and words:
        for e in held:
            words[-1].add(e)
    return words


def _spread_shared_spans(words: list[_Word]) -> list[_Word]:
    """Give each word its share of a span that many words share.

    An offline model knows only the span of the whole segment it transcribed, so every word of
    it carries that span; left alone, cue timing would collapse. Spread such a run across its
    words in proportion to their length: an estimate, but one that keeps subtitles readable.
    """
    i = 0
    while i < len(words):
        j = i
        span = (words[i].start_s, words[i].end_s)
        while j + 1 < len(words) and (words[j + 1].start_s, words[j + 1].end_s) == span \
                and words[j + 1].segment == words[i].segment:
            j += 1
        if j > i and None not in span:
            lengths = [max(len(w.text.strip()), 1) for w in words[i:j + 1]]
            total = sum(lengths)
            start, end = span
            pos = 0
            for w, n in zip(words[i:j + 1], lengths):
                w.start_s = start + (end - start) * pos / total
                pos += n
                w.end_s = start + (end - start) * pos / total
        i = j + 1
    return words


def _join(words: list[_Word]) -> str:
    # A segment may start without a leading space; it is still a new word.
    parts = []
    for i, w in enumerate(words):
        if i and w.segment != words[i - 1].segment:
            parts.append(" ")
        parts.append(w.text)
    return "".join(parts)


def _clean(text: str) -> str:
    # Subtitle formats end a cue at a blank line: never let a newline inside a token through.
    return " ".join(text.split())


def _ends_sentence(text: str) -> bool:
    return text.rstrip().rstrip(_CLOSERS).endswith(_SENTENCE_END)


def events_to_cues(
    events: Sequence[TokenEvent],
    *,
    max_chars: int = 84,
    max_duration_s: float = 6.0,
    max_gap_s: float = 0.8,
    fallback_end_s: float = 0.0,
) -> list[Cue]:
    """Group token events into subtitle cues, breaking only between words.

    A new cue starts at a segment change, after sentence-ending punctuation, when the next word
    would make the cue longer than ``max_chars`` or ``max_duration_s``, or when the silence
    before the next word exceeds ``max_gap_s``. A single word longer than the limits stays whole.
    If no event carries an audio span, all text goes into one cue from 0 to ``fallback_end_s``.
    Returned cues have non-empty stripped text, start < end (at millisecond resolution), and are
    monotonic without overlap.
    """
    if max_chars < 1:
        raise ValueError(f"max_chars must be >= 1, got {max_chars}")
    if max_duration_s <= 0 or max_gap_s < 0:
        raise ValueError("max_duration_s must be > 0 and max_gap_s >= 0")
    words = _spread_shared_spans(_words(events))
    if not any(w.start_s is not None or w.end_s is not None for w in words):
        text = _clean(_join(words))
        return _fix_times([Cue(0.0, fallback_end_s, text)]) if text else []

    groups: list[list[_Word]] = []
    cur: list[_Word] = []
    cur_text = ""
    cue_start: float | None = None
    last_end: float | None = None
    for w in words:
        if cur:
            too_long = len(_clean(cur_text + w.text)) > max_chars
            too_slow = (
                cue_start is not None and w.end_s is not None and w.end_s - cue_start > max_duration_s
            )
            gap = last_end is not None and w.start_s is not None and w.start_s - last_end > max_gap_s
            if w.segment != cur[-1].segment or _ends_sentence(cur_text) or too_long or too_slow or gap:
                groups.append(cur)
                cur, cur_text, cue_start, last_end = [], "", None, None
        cur.append(w)
        cur_text += w.text
        if cue_start is None:
            cue_start = w.start_s if w.start_s is not None else w.end_s
        if w.end_s is not None:
            last_end = w.end_s if last_end is None else max(last_end, w.end_s)
        elif w.start_s is not None:
            last_end = w.start_s if last_end is None else max(last_end, w.start_s)
    if cur:
        groups.append(cur)

    cues: list[Cue] = []
    for i, group in enumerate(groups):
        text = _clean(_join(group))
        if not text:
            continue
        starts = [w.start_s for w in group if w.start_s is not None]
        ends = [w.end_s for w in group if w.end_s is not None]
        start = starts[0] if starts else (ends[0] if ends else None)
        end = max(ends) if ends else (starts[-1] if starts else None)
        if start is None:  # a cue made only of events without spans: fill the hole between known ones
            start = cues[-1].end_s if cues else 0.0
            later = [w.start_s for g in groups[i + 1 :] for w in g if w.start_s is not None]
            end = later[0] if later else max(fallback_end_s, start)
        cues.append(Cue(start, end if end is not None else start, text))
    return _fix_times(cues)


def _fix_times(cues: list[Cue]) -> list[Cue]:
    """Clamp to >= 0, make start < end and cues non-overlapping, in whole milliseconds."""
    prev_end_ms = 0
    for cue in cues:
        start_ms = max(round(cue.start_s * 1000), prev_end_ms, 0)
        end_ms = max(round(cue.end_s * 1000), start_ms + 1)
        cue.start_s, cue.end_s = start_ms / 1000, end_ms / 1000
        prev_end_ms = end_ms
    return cues


# --------------------------------------------------------------------------------------------
# Output formats
# --------------------------------------------------------------------------------------------


def _finite(obj: Any) -> Any:
    """NaN/inf are not JSON: write them as null rather than produce a file nothing can parse."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def _json(obj: Any, **kwargs: Any) -> str:
    return json.dumps(_finite(obj), ensure_ascii=False, allow_nan=False, **kwargs)


def _timestamp(seconds: float, sep: str) -> str:
    ms = round(seconds * 1000)
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def _vtt_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render_transcript(transcript: Transcript, fmt: str) -> str:
    """One transcript as ``fmt`` (one of ``FORMATS``); the result ends with a newline
    (except an SRT with no cues, which is empty)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if fmt == "text":
        return transcript.text + "\n"
    if fmt == "json":
        return _json(transcript.to_dict(), indent=2) + "\n"
    if fmt == "jsonl":
        source = transcript.source
        lines = []
        for e in transcript.events:
            lines.append(_json({"type": "token", "source": source, **e.to_dict()}))
            if e.restart_at_s is not None:  # the stream it ended starts again here
                lines.append(_json({**Restart("eos", e.restart_at_s).to_dict(), "source": source}))
        summary = {
            "type": "summary",
            "source": transcript.source,
            "model": transcript.model,
            "text": transcript.text,
            "metrics": transcript.metrics.to_dict(),
        }
        lines.append(_json(summary))
        return "\n".join(lines) + "\n"
    cues = events_to_cues(transcript.events, fallback_end_s=transcript.metrics.audio_s)
    if fmt == "srt":
        blocks = [
            f"{i}\n{_timestamp(c.start_s, ',')} --> {_timestamp(c.end_s, ',')}\n"
            f"{c.text.replace('-->', '->')}\n"
            for i, c in enumerate(cues, 1)
        ]
        return "\n".join(blocks)
    blocks = [
        f"{_timestamp(c.start_s, '.')} --> {_timestamp(c.end_s, '.')}\n{_vtt_escape(c.text)}\n"
        for c in cues
    ]
    return "\n".join(["WEBVTT\n", *blocks])


# --------------------------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------------------------


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_summary(transcript: Transcript) -> str:
    """One status line for stderr, e.g. ``a.wav: 42 tokens, 3.10 s audio, ttft_ms 51.2, ...``."""
    m = transcript.metrics
    n_tokens = m.n_tokens or len(transcript.events)
    return (
        f"{transcript.source}: {n_tokens} tokens, {m.audio_s:.2f} s audio, "
        f"ttft_ms {_num(m.ttft_ms, '.1f')}, total_ms {_num(m.total_ms, '.1f')}, "
        f"rtf {_num(m.rtf, '.2f')}"
    )


_STAT_COLUMNS = ("p50", "p90", "p95", "p99", "mean", "min", "max")


def sig3(value: float | None) -> str:
    """A figure to 3 significant figures, never in e-notation and never wider than it must be:
    1068.4 -> "1070", 20.94 -> "20.9", 1.264 -> "1.26", 0.1234 -> "0.123"."""
    if value is None or not math.isfinite(value):
        return "-"
    value = float(f"{value:.2e}")  # rounded to 3 significant figures first: 9.996 -> 10.0
    if value == 0:
        return "0"
    digits = math.floor(math.log10(abs(value))) + 1  # digits before the point
    if digits >= 3:
        return str(int(value))
    return f"{value:.{3 - digits}f}"


def metrics_table(title: str, rows: dict[str, dict]) -> Table:
    """A table of ``summarize()`` dicts, one row per metric name. Every figure stays whole at 80
    columns: 3 significant figures, and no borders (two spaces between columns)."""
    table = Table(title=title, box=None, pad_edge=False, padding=(0, 1), header_style="bold")
    table.add_column("metric", no_wrap=True, min_width=max((len(m) for m in rows), default=6))
    table.add_column("n", justify="right", no_wrap=True)
    for name in _STAT_COLUMNS:
        table.add_column(name, justify="right", no_wrap=True)
    for metric, stats in rows.items():
        table.add_row(metric, str(stats.get("n", 0)), *(sig3(stats.get(k)) for k in _STAT_COLUMNS))
    return table


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
        for text in pieces[start:]:
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


def step_words(step: str | None, compile_s: float | None) -> str:
    """Which Realtime step ran, e.g. ``static compiled step (compiled in 7.0 s)``; "" if none."""
    if not step:
        return ""
    return f"{step} step" + (f" (compiled in {compile_s:.1f} s)" if compile_s is not None else "")


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
    Call from one thread (the one that owns the console).
    """

    def __init__(
        self, console: Console, title: str | None = None, *, newline_per_segment: bool = True,
        min_redraw_s: float = 0.0,
    ) -> None:
        self.console = console
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
            self._dirty = True
        self._undrawn.append(event.t_emitted)
        if time.perf_counter() - self._last_draw >= self.min_redraw_s:
            self.draw()

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
