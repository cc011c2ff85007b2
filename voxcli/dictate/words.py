"""Which text is final enough to type: whole words, never a piece that may still grow.

A Realtime model says a word in pieces ("Vox", "tral"); a piece that begins with whitespace
starts the next word, so the word before it is complete. Punctuation ends a word too, and so does
the end of speech (the flush's last piece). Typing only complete words means nothing typed is ever
taken back: a piece never changes once said, and a word is typed once its last piece is known.

    words = FinalWords()
    words.piece(" Hel")   # ""        (the word may go on)
    words.piece("lo")     # ""
    words.piece(",")      # "Hello,"  (punctuation ends it)
    words.piece(" wor")   # ""
    words.end()           # " wor"    (the end of speech: whatever is held)

The first text of a press is typed without its leading space (the cursor is where the user put
it); later words keep the space the model put before them.
"""

from __future__ import annotations

ENDS_A_WORD = tuple(".,!?;:…。、！？")  # punctuation that ends a word: no more of it is coming


class FinalWords:
    def __init__(self) -> None:
        self.items: list[tuple[str, object]] = []  # said, not yet known to be a whole word: (text, item)
        self.typed_any = False

    @property
    def held(self) -> str:
        return "".join(text for text, _ in self.items)

    def add(self, text: str, item: object = None) -> list[tuple[str, object]]:
        """A new piece and what it came with (a token): the pieces, with theirs, now in whole words."""
        if not text:
            return []
        out: list[tuple[str, object]] = []
        if text[0].isspace() and self.held.strip():  # the held word is complete
            out, self.items = self.items, []
        self.items.append((text, item))
        held = self.held
        if held.rstrip()[-1:] in ENDS_A_WORD and held.strip():
            out, self.items = out + self.items, []
        return out

    def take(self) -> list[tuple[str, object]]:
        """The end of speech: every piece held is in a whole word now."""
        out, self.items = self.items, []
        return out

    def piece(self, text: str) -> str:
        """A new piece of text; returns what is now final (may be "")."""
        return self._first("".join(t for t, _ in self.add(text)))

    def end(self) -> str:
        """The end of speech (a release, a flush): everything held is final."""
        return self._first("".join(t for t, _ in self.take()))

    def _first(self, out: str) -> str:
        if out and not self.typed_any:
            out = out.lstrip()
            self.typed_any = bool(out)
        return out
