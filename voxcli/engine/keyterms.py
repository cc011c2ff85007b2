"""Keyterm biasing: phrases the user chooses made likelier inside the decoding step.

The open Voxtral checkpoints have no text slot for context, so a hint cannot be prompted; but
voxcli owns its decoding step, so it can add to the scores itself. Each phrase is tokenized with
the checkpoint's own tokenizer, with and without a leading space (how a word inside a sentence
and one at its start are spelled), into a trie of token ids. A stream's scores get ``bias`` added
only where the phrase may go on, by the model's own output grammar:

- a phrase's first piece, only where a word may begin: for the Realtime model, right after its
  ``[STREAMING_WORD]`` marker (which precedes every word group it says, arXiv 2602.11298: a bias
  there never makes it skip the marker); for a model without markers, a piece that begins with a
  space begins a word wherever it comes. A Realtime stream that has said GRAMMAR_PROOF text
  pieces and no marker is taken for a model without them (a random test model); The spelling without a space, whose first piece is
  usually a short mid-word piece, only before the stream's first text, and never when that piece
  is a single character;
- a begun phrase's next piece, along the phrase (a piece that begins the phrase's next word waits
  for its marker too); while a phrase is begun, no first piece is biased, so going on beats
  starting again, and a first piece is not biased right after it was said (a phrase begun and
  left is not begun again at once): no biased piece repeats at every frame, or back to back.

Other special tokens (the blank ``[STREAMING_PAD]``) are skipped by the walk: a blank between two
tokens of a phrase does not break it.

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

GRAMMAR_PROOF = 8  # text pieces without a word marker after which a stream's model is taken to have none


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
    """Every phrase's token ids (with and without a leading space), as a trie; which pieces begin a
    word (a leading space); and the first pieces a stream may be biased towards where a word begins
    (``spaced``) and, before its first text, also (``bare``)."""

    def __init__(self, keyterms: Keyterms, tekkenizer, *, word_marker: int | None = None) -> None:
        self.bias = keyterms.bias
        self.word_marker = word_marker  # the model says this before each word group (Realtime); None: no markers
        self.root = _Node()
        self.begins_word: set[int] = set()
        spaced, bare = set(), set()
        for phrase in keyterms.phrases:
            for spelling in (phrase, " " + phrase):
                ids = [i for i in tekkenizer.encode(spelling, bos=False, eos=False) if not tekkenizer.is_special(i)]
                node = self.root
                for token_id in ids:
                    if tekkenizer.id_to_byte_piece(token_id)[:1] == b" ":
                        self.begins_word.add(token_id)
                    node = node.children.setdefault(token_id, _Node(node.depth + 1))
                if node is not self.root:
                    node.phrase = node.phrase or phrase
                if ids:
                    first = tekkenizer.id_to_byte_piece(ids[0])
                    if first[:1] == b" ":
                        spaced.add(ids[0])
                    elif len(first.decode("utf-8", errors="replace")) > 1:  # a lone mid-word character: never
                        bare.add(ids[0])
        self.spaced, self.bare = frozenset(spaced), frozenset(bare)


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
        self._said_text = 0  # text pieces the stream has said
        self._grammar = trie.word_marker is not None  # words begin after a marker (until shown otherwise)
        self._marked = False  # the stream has said a marker
        self._last: int | None = None  # the last text piece said
        self._at_word = not self._grammar  # a word may begin here (a model without markers: anywhere)
        self._write(self._wanted())

    def after(self, token_id: int, plain_id: int, special: bool) -> tuple[str, bool] | None:
        """``token_id`` was emitted; ``plain_id`` is what the step would have picked without the
        bias. The word marker opens a word; other specials leave the walk where it was."""
        if special:
            if token_id == self.trie.word_marker and self._grammar:  # a word begins: one that was inside one is broken
                self._at_word = self._marked = True
                self._active = {k: (node, forced) for k, (node, forced) in self._active.items()
                                if self.trie.begins_word & node.children.keys()}
                self._write(self._wanted())
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
        self._last = token_id
        self._said_text += 1
        if self._grammar and not self._marked and self._said_text >= GRAMMAR_PROOF:
            self._grammar = False  # this model says no markers
        self._at_word = not self._grammar
        self._write(self._wanted())
        return None if done is None else (done[0].phrase, done[1])

    def _wanted(self) -> set[int]:
        """What the next step may be biased towards: a begun phrase's next pieces (one that begins
        a word only where a word may begin); else, where a word may begin, first pieces."""
        if self._active:
            nexts = set().union(*(node.children for node, _ in self._active.values()))
            if not self._grammar:
                return nexts
            return nexts & self.trie.begins_word if self._at_word else nexts - self.trie.begins_word
        if not self._at_word:
            return set()
        firsts = self.trie.spaced if self._said_text else self.trie.spaced | self.trie.bare
        return set(firsts) - {self._last}  # a phrase begun and left is not begun again at once

    def _write(self, want) -> None:
        import torch

        gone, new = self._biased - want, set(want) - self._biased
        for ids, value in ((gone, 0.0), (new, self.trie.bias)):
            if ids:
                index = torch.tensor(sorted(ids), dtype=torch.long).to(self.vector.device, non_blocking=True)
                self.vector.index_fill_(0, index, value)
        self._biased = set(want)
