"""A test model that says a given phrase: a random tiny model's head rigged to emit the phrase's
tokens, one per step from step ``start`` on, and the blank before and after (as a real model is
quiet before speech and after it). The text a session gets is then known in advance, with any
characters in it (accents, CJK), while every other part of the path (features, the step, the
detokenizer, flushes) runs for real. One forward hook on the head, which both steps call: eager
steps only. Steps are counted per row of each forward, so one session at a time (two-pass's final
stream is the second row, and may say other words: ``final``); ``reset()`` between runs.

    rig = say(engine, " Grüße aus Zürich, 東京!", start=8)
    ...
    rig.remove()
"""

from __future__ import annotations


class Say:
    def __init__(self, engine, text: str, start: int, final: str | None = None) -> None:
        self.tekken = engine.proc.tekken
        self.blank = engine.blank_id
        self.start = start
        self.saying(text, final)
        self.handle = engine.model.lm_head.register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        output = output.clone()
        top = output.max() + 10.0
        for row in range(output.shape[0]):  # row 0: the (provisional) stream; 1: two-pass's final one
            ids = self.ids[min(row, len(self.ids) - 1)]
            k = self.calls[row] - self.start
            self.calls[row] += 1
            output[row, ..., ids[k] if 0 <= k < len(ids) else self.blank] = top
        return output

    def reset(self) -> None:
        self.calls = [0, 0]  # steps each row has taken: the final stream joins the batch later

    def saying(self, text: str, final: str | None = None) -> None:
        """Say ``text`` (and two-pass's final stream ``final``, if given) from the next ``reset()`` on."""
        self.ids = [self.tekken.encode(t, bos=False, eos=False) for t in (text, *([final] if final else []))]
        self.reset()

    def remove(self) -> None:
        self.handle.remove()


def say(engine, text: str, *, start: int = 8, final: str | None = None) -> Say:
    """``final``: what two-pass's final stream says (the batched step's second row); else ``text``."""
    return Say(engine, text, start, final)
