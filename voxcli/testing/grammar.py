"""A test model that speaks the real Realtime output grammar: ``[STREAMING_WORD]`` before each word.

The real checkpoint emits, at each 80 ms position, the blank (``[STREAMING_PAD]``), a text piece, or
``[STREAMING_WORD]`` (id 33), which precedes the pieces of its word group (arXiv 2602.11298; vLLM PR
#50783: "the marker precedes its own group's subwords"). A random model never emits the marker (its
special rows are zero), so what steers decoding (keyterms), builds words (cues) or watches for
runs without text would never meet it. :func:`speak_in_words` rigs a loaded model's head, as the
real one behaves:

- where the model's choice is a piece that begins a word (a leading space) and its last token was
  not the marker, it says the marker instead (its score lifted just above the best);
- right after the marker, the marker is ruled out: the word's first piece follows.

Two forward hooks (the token embedding, to know each row's last token; the head, to rig its
scores), which both the static step and transformers' forward call: eager steps only (a compiled
graph would bake the hooks in). The scores the rig writes are those the step decodes from, so a
keyterm bias added after them meets the same grammar a real model's would.
"""

from __future__ import annotations

WORD = 33  # [STREAMING_WORD]


def word_starts(tekkenizer, vocab: int):
    """A bool tensor over the vocabulary: the text pieces that begin a word (a leading space)."""
    import torch

    starts = torch.zeros(vocab, dtype=torch.bool)
    for i in range(vocab):
        if not tekkenizer.is_special(i) and tekkenizer.id_to_byte_piece(i).startswith(b" "):
            starts[i] = True
    return starts


class _Rig:
    def __init__(self, model, tekkenizer) -> None:
        self.embed = model.get_input_embeddings()
        self.head = model.get_output_embeddings()
        vocab = self.head.weight.shape[0]
        self.starts = word_starts(tekkenizer, vocab).to(self.head.weight.device)
        self.last = None  # each row's last token, as the embedding last saw it
        self.handles = [self.embed.register_forward_pre_hook(self._seen),
                        self.head.register_forward_hook(self._rig)]

    def _seen(self, module, args) -> None:
        self.last = args[0][:, -1]

    def _rig(self, module, args, logits):
        import torch

        scores = logits[:, -1]
        best = scores.max(-1).values
        begins = self.starts[scores.argmax(-1)]
        after_word = self.last == WORD if self.last is not None else torch.zeros_like(begins)
        marker = torch.where(after_word, best - 1e4, torch.where(begins, best + 1.0, scores[:, WORD]))
        logits = logits.clone()
        logits[:, -1, WORD] = marker.to(logits.dtype)
        return logits

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def speak_in_words(engine) -> _Rig:
    """Rig ``engine``'s model (a local Realtime engine, eager step) to say ``[STREAMING_WORD]``
    before each word; ``.remove()`` takes the rig off."""
    return _Rig(engine.model, engine.proc.tekken)
