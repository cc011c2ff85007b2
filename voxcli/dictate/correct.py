"""``voxcli dictate --live-correct``: two-pass's provisional words typed at once, and taken back
(backspaces) where the final stream, a moment later, says otherwise.

What the window should hold is two-pass's text as listen shows it (:class:`TwoPassText`): the
final stream's words, then the provisional words beyond the audio the final stream has covered.
Only whole words count on either side, so a word is never typed half and then rubbed out because
the other stream has not finished it. Each change is the fewest keys: backspaces back to where
the old and new text first differ, then the new text from there. Where both streams agree, a
provisional word turns final without a key pressed.

    correct = LiveCorrect()
    back, text = correct.token(event, stream)   # press backspace ``back`` times, then type ``text``
    back, text = correct.end()                  # the press is over: the final stream's text alone
"""

from __future__ import annotations

import os

from voxcli.dictate.words import FinalWords
from voxcli.events import StreamRole, TokenEvent
from voxcli.live.twopass import TwoPassText


class LiveCorrect:
    """One press's text under ``--live-correct``; ``backspaces`` and ``corrections`` count the
    characters taken back and the edits that took any."""

    def __init__(self) -> None:
        self.two = TwoPassText()
        self.final_words = FinalWords()  # the final stream's word being said waits for its end
        self.final = ""  # the final stream's whole words
        self.screen = ""  # what this press has typed, as the window holds it
        self.backspaces = 0
        self.corrections = 0

    def token(self, event: TokenEvent, stream: StreamRole) -> tuple[int, str]:
        if stream == StreamRole.FINAL:
            for text, whole in self.final_words.add(event.text, event):
                self.final += text
                self.two.add(whole, StreamRole.FINAL)
        else:
            self.two.add(event, StreamRole.PROVISIONAL)
        beyond = FinalWords()  # the provisional words beyond the final ones, the one being said left out
        whole = "".join(text for event in self.two.pending for text, _ in beyond.add(event.text))
        return self._edit(self.final + whole)

    def end(self) -> tuple[int, str]:
        """An end of speech, flushed (both streams have said all they will of it): the window holds
        the final stream's text, and only it. Speech after it starts on a clean slate."""
        self.final += "".join(text for text, _ in self.final_words.take())
        self.two = TwoPassText()  # the provisional words said so far are all the final stream's now
        return self._edit(self.final)

    def _edit(self, want: str) -> tuple[int, str]:
        want = want.lstrip()  # the first word goes where the cursor is
        same = len(os.path.commonprefix([self.screen, want]))
        back = len(self.screen) - same
        if back:
            self.backspaces += back
            self.corrections += 1
        self.screen = want
        return back, want[same:]
