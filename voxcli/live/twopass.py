"""Two-pass transcription: provisional text at once, final text from a second stream at a longer
delay, aligned by the audio each token covers (not by guessing from text).

``TwoPassText`` is what is shown and what is replaced; ``TwoPassRecorder`` draws a session on a
view and keeps what its figures are made of (``listen`` and ``bench`` both use it, so both count
the same revisions); ``two_pass_figures`` the session's figures.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from voxcli.events import StreamRole, TokenEvent, summarize


@dataclass(frozen=True, slots=True)
class Replacement:
    """Provisional words that final text took the place of, over the same audio."""

    provisional: str
    final: str
    until_s: float  # audio the final stream has covered
    words: int  # provisional words replaced
    changed: int  # of those, how many the final text does not have

    def to_dict(self) -> dict:
        return {"type": "replacement", "provisional": self.provisional, "final": self.final,
                "until_s": round(self.until_s, 4), "words": self.words, "changed": self.changed}


def _norm_words(text: str) -> list[str]:
    return [w.strip(".,!?;:\"'()").casefold() for w in text.split() if w.strip(".,!?;:\"'()")]


class TwoPassText:
    """Two-pass transcription's text: the final stream, then the provisional words whose audio lies
    beyond what the final stream has covered (``tail``).

    Tokens align by the audio they cover, not by guessing from text: when final text has covered
    the audio up to t, every whole provisional word that ends by t goes, at once and whole (a word
    still being written is kept until the next one starts, or until ``seal()`` says speech ended).
    Final text is only ever appended.
    """

    def __init__(self) -> None:
        self.covered_s = 0.0
        self.pending: list[TokenEvent] = []  # provisional tokens not yet covered
        self._final_since: list[TokenEvent] = []  # final tokens not yet set against provisional words
        self._sealed = 0  # pending tokens known to form whole words (speech ended after them)

    @property
    def tail(self) -> str:
        return "".join(e.text for e in self.pending)

    def add(self, event: TokenEvent, stream: str) -> Replacement | None:
        if stream != StreamRole.FINAL:
            self.pending.append(event)
            return None
        self._final_since.append(event)
        if event.audio_end_s is not None:
            self.covered_s = max(self.covered_s, event.audio_end_s)
        return self._replace()

    def seal(self) -> Replacement | None:
        """Speech ended: the provisional words so far are whole, the last one too."""
        self._sealed = len(self.pending)
        return self._replace()

    def _replace(self) -> Replacement | None:
        groups = _word_groups(self.pending)
        if groups and groups[-1][-1] >= self._sealed:
            groups = groups[:-1]  # the word still being written stays
        done = 0  # pending tokens in whole words the final stream has covered
        for group in groups:
            ends = [self.pending[i].audio_end_s for i in group if self.pending[i].audio_end_s is not None]
            if not ends or max(ends) > self.covered_s:
                break
            done = group[-1] + 1
        if done == 0:
            return None
        until = max(e.audio_end_s for e in self.pending[:done] if e.audio_end_s is not None)
        replaced, self.pending = "".join(e.text for e in self.pending[:done]), self.pending[done:]
        self._sealed = max(0, self._sealed - done)
        # The final text over the same audio: what ends by the last replaced word's end.
        cut = next((i for i, e in enumerate(self._final_since)
                    if e.audio_end_s is not None and e.audio_end_s > until), len(self._final_since))
        final = "".join(e.text for e in self._final_since[:cut])
        self._final_since = self._final_since[cut:]
        old, new = _norm_words(replaced), _norm_words(final)
        kept = sum(block.size for block in difflib.SequenceMatcher(a=old, b=new, autojunk=False).get_matching_blocks())
        return Replacement(replaced, final, self.covered_s, len(old), len(old) - kept)


def draw(two: TwoPassText, view, event: TokenEvent, stream: str) -> Replacement | None:
    """One token of a two-pass session on a view: final text drawn as one stream is, the
    provisional words beyond it as the view's (dim) tail. The replacement it made, if any."""
    replacement = two.add(event, stream)
    if stream == StreamRole.FINAL:
        view.add(event)
    view.set_tail(two.tail)
    return replacement


class TwoPassRecorder:
    """A two-pass session as it is drawn and counted, the same for ``listen`` and ``bench``.

    ``token(event, stream)`` draws a token (final text, the provisional words beyond it);
    ``latency(stream, event, emission_ms)`` keeps its figures once drawn; ``endpoint()`` seals the
    provisional words at an end of speech (the last word is whole: it may be replaced now).
    ``on_replacement`` is called with each :class:`Replacement` as it happens.
    """

    def __init__(self, view, on_replacement=None) -> None:
        self.text = TwoPassText()
        self.view = view
        self.on_replacement = on_replacement
        self.tokens: list[tuple[str, str, float | None, float | None]] = []  # stream, text, latency, step
        self.replacements: list[Replacement] = []

    def token(self, event: TokenEvent, stream: str) -> None:
        self._replaced(draw(self.text, self.view, event, stream))

    def latency(self, stream: str, event: TokenEvent, emission_ms: float | None) -> None:
        step = None if shares_step(stream, event) else event.step_ms
        self.tokens.append((stream, event.text, emission_ms, step))

    def endpoint(self) -> None:
        replacement = self.text.seal()
        self.view.set_tail(self.text.tail)
        self._replaced(replacement)

    def figures(self) -> dict:
        return two_pass_figures(self.tokens, self.replacements)

    def final_text(self) -> str:
        return "".join(text for stream, text, _, _ in self.tokens if stream == StreamRole.FINAL)

    def _replaced(self, replacement: Replacement | None) -> None:
        if replacement is not None:
            self.replacements.append(replacement)
            if self.on_replacement is not None:
                self.on_replacement(replacement)


def shares_step(stream: str, event: TokenEvent) -> bool:
    """A two-pass final token from the batched static step: it shares its forwards with the
    provisional stream (whose tokens count that time once), or flushes alone after an end of
    speech, which is no step of every 80 ms. Only a final stream that steps on its own (an offline
    final model, the hf step) adds a step of its own to every tick."""
    return stream == StreamRole.FINAL and event.batch is not None


def _word_groups(events: list[TokenEvent]) -> list[list[int]]:
    """Indices of ``events`` word by word (a word starts at whitespace; empty pieces join it)."""
    groups: list[list[int]] = []
    for i, event in enumerate(events):
        starts = bool(event.text) and event.text[0].isspace()
        if not groups or (starts and any(events[j].text.strip() for j in groups[-1])):
            groups.append([])
        groups[-1].append(i)
    return groups


def word_latencies(tokens: list[tuple[str, str, float | None, float | None]], stream: str) -> list[float]:
    """Each word's latency: when its last piece was drawn, less when its audio was captured."""
    words: list[float | None] = []
    for kind, text, latency, _ in tokens:
        if kind != stream or not text:
            continue
        if not words or text[0].isspace():
            words.append(None)
        if latency is not None:
            words[-1] = latency
    return [w for w in words if w is not None]


def two_pass_figures(tokens, replacements) -> dict:
    """Figures of a two-pass session from its tokens as (stream, text, emission latency, step) and
    its replacements: word latency per stream, the revision rate, the (shared) step and the final
    stream's own."""
    replaced = sum(r.words for r in replacements)
    return {
        "provisional_word_latency_ms": summarize(word_latencies(tokens, StreamRole.PROVISIONAL)),
        "final_word_latency_ms": summarize(word_latencies(tokens, StreamRole.FINAL)),
        "revision_rate": round(sum(r.changed for r in replacements) / replaced, 4) if replaced else None,
        "replacements": len(replacements),
        # Every forward the provisional stream took part in: with a Realtime final stream, both streams
        # step in one forward, so this is the step of both.
        "step_ms": summarize([t[3] for t in tokens if t[0] == StreamRole.PROVISIONAL and t[3] is not None]),
        # The final stream's own steps, where it does not share the provisional stream's forwards (an
        # offline final model, or the hf step).
        "final_step_ms": summarize([t[3] for t in tokens if t[0] == StreamRole.FINAL and t[3] is not None]),
    }
