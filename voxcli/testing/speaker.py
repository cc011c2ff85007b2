"""A test model that says a given phrase: a random tiny model's head rigged to emit the phrase's
tokens, one per step from step ``start`` on, and the blank before and after (as a real model is
quiet before speech and after it). The text a session gets is then known in advance, with any
characters in it (accents, CJK), while every other part of the path (features, the step, the
detokenizer, flushes) runs for real. One forward hook on the head, which both steps call: eager
steps only. Steps are counted per forward call, so one session at a time; ``reset()`` between runs.

    rig = say(engine, " Grüße aus Zürich, 東京!", start=8)
    ...
    rig.remove()
"""

from __future__ import annotations


class Say:
    def __init__(self, engine, text: str, start: int) -> None:
        self.tekken = engine.proc.tekken
        self.ids = self.tekken.encode(text, bos=False, eos=False)
        self.blank = engine.blank_id
        self.start = start
        self.calls = 0
        self.handle = engine.model.lm_head.register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        k = self.calls - self.start
        self.calls += 1
        output = output.clone()
        output[..., self.ids[k] if 0 <= k < len(self.ids) else self.blank] = output.max() + 10.0
        return output

    def reset(self) -> None:
        self.calls = 0

    def saying(self, text: str) -> None:
        """Say ``text`` from the next ``reset()`` on."""
        self.ids = self.tekken.encode(text, bos=False, eos=False)

    def remove(self) -> None:
        self.handle.remove()


def say(engine, text: str, *, start: int = 8) -> Say:
    return Say(engine, text, start)
