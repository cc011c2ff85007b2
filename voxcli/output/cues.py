"""Subtitle cues from token events: words rebuilt from pieces, split at sentence ends and pauses,
with real timestamps (the audio each token covers): all at once for a file (``events_to_cues``),
or as they close while a session runs (:class:`LiveCues`), the same cues either way."""

from __future__ import annotations

import itertools
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from voxcli.events import TokenEvent

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
    first: int = 0  # index of its first event (LiveCues drops the events of closed cues)
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
    """Words rebuilt from the text events; special tokens take no part (a Realtime blank's span
    joined to the next word would start it at the beginning of the silence before it)."""
    words: list[_Word] = []
    held: list[TokenEvent] = []  # empty pieces (an incomplete multi-byte char) join what follows
    prev_text = ""
    held_from = 0
    for i, event in enumerate(events):
        if event.special:
            continue  # a blank or a marker: no text, and its span is silence, not a word's
        if not event.text:
            held_from = held_from if held else i
            held.append(event)
            continue
        if (
            not words
            or event.segment != words[-1].segment
            or (_is_boundary(prev_text, event.text) and not words[-1].text.isspace())
        ):
            words.append(_Word(segment=event.segment, first=held_from if held else i))
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


def _check_limits(max_chars: int, max_duration_s: float, max_gap_s: float) -> None:
    if max_chars < 1:
        raise ValueError(f"max_chars must be >= 1, got {max_chars}")
    if max_duration_s <= 0 or max_gap_s < 0:
        raise ValueError("max_duration_s must be > 0 and max_gap_s >= 0")


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
    _check_limits(max_chars, max_duration_s, max_gap_s)
    words = _spread_shared_spans(_words(events))
    if not _timed(words):
        text = _clean(_join(words))
        return _fix_times([Cue(0.0, fallback_end_s, text)]) if text else []
    groups = _groups(words, max_chars, max_duration_s, max_gap_s)
    return _fix_times(_cues(groups, fallback_end_s))


def _timed(words: list[_Word]) -> bool:
    return any(w.start_s is not None or w.end_s is not None for w in words)


def _groups(words: list[_Word], max_chars: int, max_duration_s: float, max_gap_s: float) -> list[list[_Word]]:
    """The words of each cue, greedily: a break, once made, stays made whatever words follow."""
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
    return groups


def _cues(groups: list[list[_Word]], fallback_end_s: float, before: Cue | None = None) -> list[Cue]:
    """A cue per group with text (``before``: the cue that precedes them, if any), times not yet fixed."""
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
            last = cues[-1] if cues else before
            start = last.end_s if last else 0.0
            later = [w.start_s for g in groups[i + 1 :] for w in g if w.start_s is not None]
            end = later[0] if later else max(fallback_end_s, start)
        cues.append(Cue(start, end if end is not None else start, text))
    return cues


class LiveCues:
    """The cues of a session that is still running, each handed out once it is closed: when the
    next cue has begun (a break once made stays made: later words only follow it), or at an end of
    speech (:meth:`end`; the session's events carry their utterance as ``segment``, and a new
    segment always breaks). Together, the closed cues are exactly :func:`events_to_cues` of all the
    events: this keeps only the open cue's events and recomputes just those.

    A cue whose words share one span with the next cue's (an offline segment's words, timed by
    spreading the segment's span over them) stays open until the run ends; a session whose events
    carry no spans at all (some servers) has one cue, handed out by :meth:`finish`.
    """

    def __init__(self, *, max_chars: int = 84, max_duration_s: float = 6.0, max_gap_s: float = 0.8) -> None:
        _check_limits(max_chars, max_duration_s, max_gap_s)
        self._limits = (max_chars, max_duration_s, max_gap_s)
        self._events: list[TokenEvent] = []
        self._last: Cue | None = None  # the last cue handed out, times fixed
        self._timed = False  # some word has had a span (until then no cue closes: nothing is dropped)

    def add(self, event: TokenEvent) -> list[Cue]:
        """The cues this event closed (usually none). A special token takes no part in cues, and a
        token without a span in a session that never had one cannot close any: both cost nothing."""
        if event.special:
            return []
        self._events.append(event)
        if not self._timed and event.audio_start_s is None and event.audio_end_s is None:
            return []
        return self._close(everything=False)

    def end(self) -> list[Cue]:
        """An end of speech: every cue so far is closed."""
        return self._close(everything=True)

    def finish(self, audio_s: float) -> list[Cue]:
        """The session is over: what is left (all of it, from 0 to ``audio_s``, if nothing had a span)."""
        if not self._timed and self._events:  # every event of the session is still here
            text = _clean(_join(_words(self._events)))
            self._events = []
            return _fix_times([Cue(0.0, audio_s, text)]) if text else []
        return self.end()

    def _close(self, everything: bool) -> list[Cue]:
        words = _words(self._events)
        spans = [(w.start_s, w.end_s, w.segment) for w in words]  # before a shared span is spread
        words = _spread_shared_spans(words)
        if not _timed(words):
            return []
        self._timed = True
        groups = _groups(words, *self._limits)
        firsts = [0, *itertools.accumulate(len(g) for g in groups)]  # each group's first word
        n = len(groups) if everything else len(groups) - 1
        while 0 < n < len(groups) and spans[firsts[n]] == spans[firsts[n] - 1]:
            n -= 1  # the last closed word's span goes on into the open cue: it is not final yet
        if n <= 0:
            return []
        cues = _fix_times(_cues(groups[:n], 0.0, self._last), round(self._last.end_s * 1000) if self._last else 0)
        self._events = self._events[groups[n][0].first:] if n < len(groups) else []
        if cues:
            self._last = cues[-1]
        return cues


def _fix_times(cues: list[Cue], prev_end_ms: int = 0) -> list[Cue]:
    """Clamp to >= 0 (and to ``prev_end_ms``: where the cue before them ended), make start < end
    and cues non-overlapping, in whole milliseconds."""
    for cue in cues:
        start_ms = max(round(cue.start_s * 1000), prev_end_ms, 0)
        end_ms = max(round(cue.end_s * 1000), start_ms + 1)
        cue.start_s, cue.end_s = start_ms / 1000, end_ms / 1000
        prev_end_ms = end_ms
    return cues


