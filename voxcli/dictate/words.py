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

ENDS_A_WORD = ".,!?;:…。、！？"


class FinalWords:
    def __init__(self) -> None:
        self.held = ""  # said, not yet known to be a whole word
        self.typed_any = False

    def piece(self, text: str) -> str:
        """A new piece of text; returns what is now final (may be "")."""
        if not text:
            return ""
        out = ""
        if text[0].isspace() and self.held.strip():  # the held word is complete
            out, self.held = self.held, ""
        self.held += text
        if self.held.rstrip()[-1:] in tuple(ENDS_A_WORD) and self.held.strip():
            out, self.held = out + self.held, ""
        return self._first(out)

    def end(self) -> str:
        """The end of speech (a release, a flush): everything held is final."""
        out, self.held = self.held, ""
        return self._first(out)

    def _first(self, out: str) -> str:
        if out and not self.typed_any:
            out = out.lstrip()
            self.typed_any = bool(out)
        return out
