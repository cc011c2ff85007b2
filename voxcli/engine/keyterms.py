"""Keyterm biasing: phrases the user chooses made likelier inside the decoding step.

The open Voxtral checkpoints have no text slot for context, so a hint cannot be prompted; but
voxcli owns its decoding step, so it can add to the scores itself. Each phrase is tokenized with
the checkpoint's own tokenizer, with and without a leading space (how a word inside a sentence
and one at its start are spelled), into a trie of token ids. At every step a stream's scores get
``bias`` added to the first token of every phrase, and to the next token of every phrase whose
prefix the stream's text has just ended with. Special tokens (the Realtime model's
``[STREAMING_PAD]`` / ``[STREAMING_WORD]``) are skipped by the walk: a blank between two tokens of
a phrase does not break it.

The bias is a vector on the model's device that the step adds before its argmax (a row of the
static step's batch: part of the compiled graph, whose shape never changes). :class:`BiasWalk`
updates it in place, a few entries at a time, after each token's id is on the host (the device
is idle then: no sync is added, and nothing recompiles when the phrases change).

Default bias: 2.0 (logits, natural log units). A biased token wins a greedy step when its
probability is at least ``exp(-2)``, about 14 %, of the top token's: near ties go the user's way,
confident tokens do not. Each phrase a stream completes is reported on the token that completes
it (``keyterm``), with ``keyterm_biased`` when the bias changed at least one of its tokens, so a
user tuning the bias can see over-correction.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from voxcli.choices import KEYTERM_BIAS as DEFAULT_BIAS


@dataclass(frozen=True)
class Keyterms:
    """Phrases to favour, and by how much (logits added)."""

    phrases: tuple[str, ...]
    bias: float = DEFAULT_BIAS

    @classmethod
    def of(cls, phrases: Iterable[str], bias: float = DEFAULT_BIAS) -> "Keyterms | None":
        """Cleaned phrases (spaces collapsed, empty and repeated ones dropped); None if there is no
        phrase. A bias of 0 changes no score (the ids are exactly those without keyterms), and the
        phrases the stream says are still counted: the baseline to tune the bias against."""
        seen: dict[str, None] = {}
        for phrase in phrases:
            phrase = " ".join(str(phrase).split())
            if phrase:
                seen.setdefault(phrase, None)
        if not seen:
            return None
        return cls(tuple(seen), float(bias))


def read_keyterms_file(path) -> list[str]:
    """One phrase a line; blank lines and lines starting with ``#`` are skipped."""
    from pathlib import Path

    lines = Path(path).expanduser().read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


@dataclass(eq=False)
class _Node:
    depth: int = 0
    children: dict[int, "_Node"] = field(default_factory=dict)
    phrase: str | None = None  # a phrase ends here


class KeytermTrie:
    """Every phrase's token ids (with and without a leading space), as a trie."""

    def __init__(self, keyterms: Keyterms, tekkenizer) -> None:
        self.bias = keyterms.bias
        self.root = _Node()
        for phrase in keyterms.phrases:
            for spelling in (phrase, " " + phrase):
                ids = [i for i in tekkenizer.encode(spelling, bos=False, eos=False) if not tekkenizer.is_special(i)]
                node = self.root
                for token_id in ids:
                    node = node.children.setdefault(token_id, _Node(node.depth + 1))
                if node is not self.root:
                    node.phrase = node.phrase or phrase
        self.first = frozenset(self.root.children)


class BiasWalk:
    """One stream's walk through the trie, and the bias vector it keeps up to date.

    ``vector``: the stream's bias on the device (vocabulary-sized, zero where nothing is
    favoured); written only here. :meth:`after` takes each token the stream emitted and returns
    ``(phrase, biased)`` when it completed a phrase (the longest, if several end there), else None.
    """

    def __init__(self, trie: KeytermTrie, vector) -> None:
        self.trie = trie
        self.vector = vector
        self._biased: set[int] = set()  # entries of vector set to the bias now
        self._active: dict[int, tuple[_Node, bool]] = {}  # id(node) -> (node, bias changed a token on the way)
        self._write(trie.first)

    def after(self, token_id: int, plain_id: int, special: bool) -> tuple[str, bool] | None:
        """``token_id`` was emitted; ``plain_id`` is what the step would have picked without the
        bias. Specials leave the walk where it was."""
        if special:
            return None
        changed = token_id != plain_id
        active: dict[int, tuple[_Node, bool]] = {}
        done: tuple[_Node, bool] | None = None
        for node, forced in [(self.trie.root, False), *self._active.values()]:
            child = node.children.get(token_id)
            if child is None:
                continue
            forced = forced or changed
            if child.phrase is not None and (done is None or child.depth > done[0].depth):
                done = (child, forced)
            if child.children:
                held = active.get(id(child))
                active[id(child)] = (child, forced or (held is not None and held[1]))
        self._active = active
        self._write(self.trie.first.union(*(node.children for node, _ in active.values())))
        return None if done is None else (done[0].phrase, done[1])

    def _write(self, want) -> None:
        import torch

        gone, new = self._biased - want, set(want) - self._biased
        for ids, value in ((gone, 0.0), (new, self.trie.bias)):
            if ids:
                index = torch.tensor(sorted(ids), dtype=torch.long).to(self.vector.device, non_blocking=True)
                self.vector.index_fill_(0, index, value)
        self._biased = set(want)
