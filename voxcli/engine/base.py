"""What every model on this machine shares: the loaded weights and processor, detokenization,
keyterm walks, what a token event says beyond its id, warm-up and timing."""

from __future__ import annotations

import codecs
import collections
import time
from collections.abc import Iterator

import numpy as np

from voxcli.engine.compat import ProcessorAdapter, cache_kwarg_names
from voxcli.engine.contract import DEFAULT, EngineInfo
from voxcli.events import TokenEvent
from voxcli.units import SAMPLE_RATE

TRIES_KEPT = 32  # keyterm tries an engine keeps made (each session's phrases; the engine's own among them)


_UNSEEN = object()


class Detokenizer:
    """Turns token ids into text deltas one at a time.

    Tekken tokens are byte pieces: a multi-byte character can be split across tokens, so bytes go
    through an incremental UTF-8 decoder that holds back an incomplete character until it is whole.
    Special tokens add no text.
    """

    def __init__(self, tekkenizer, pieces: dict[int, bytes | None] | None = None) -> None:
        self._tok = tekkenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        # id -> its bytes (None: special), shared by an engine's detokenizers: mistral-common's
        # lookup checks its policy argument on every call, 15 us a token (bench/RESULTS.md, 15).
        self._pieces = {} if pieces is None else pieces

    def _bytes(self, token_id: int) -> bytes | None:
        piece = self._pieces.get(token_id, _UNSEEN)
        if piece is _UNSEEN:
            piece = None if self._tok.is_special(token_id) else self._tok.id_to_byte_piece(token_id)
            self._pieces[token_id] = piece
        return piece

    def is_special(self, token_id: int) -> bool:
        return self._bytes(token_id) is None

    def push(self, token_id: int) -> str:
        piece = self._bytes(token_id)
        return "" if piece is None else self._utf8.decode(piece)

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)

    def piece(self, token_id: int) -> str:
        """One token's own text, out of context (an alternative's): a special's name, a byte
        piece that is not a whole character as the replacement character."""
        if self._tok.is_special(token_id):
            return self._tok.id_to_piece(token_id)
        return self._tok.id_to_byte_piece(token_id).decode("utf-8", errors="replace")


class LocalEngine:
    """What both model kinds share: loading state, warm-up, detokenization. Satisfies
    :class:`voxcli.engine.contract.Engine` (the Realtime engine also :class:`voxcli.engine.contract.RealtimeEngine`)."""

    kind: str = ""
    forward_clock = None  # a Realtime engine's: time in its forwards (a server splits its cycles with it)

    def __init__(self, model, processor, info: EngineInfo, *, alternatives: int = 0, confidence: bool = False,
                 keyterms=None) -> None:
        self.model = model
        self.processor = processor
        self.proc = ProcessorAdapter(processor)
        self.info = info
        self._tekken = self.proc.tekken
        self._pieces: dict[int, bytes | None] = {}  # every detokenizer's lookups (Detokenizer)
        self.eos_id = self._tekken.eos_id
        self.cache_kwargs = cache_kwarg_names(model)
        if alternatives < 0:
            raise ValueError(f"alternatives must be >= 0, got {alternatives}")
        self.alternatives = alternatives  # the top K each token event carries (with p)
        self.top_k = max(alternatives, int(confidence))  # what each step reads back: 1 for p alone
        self.keyterms = keyterms  # voxcli.engine.keyterms.Keyterms every session favours unless told otherwise
        self._tries: collections.OrderedDict = collections.OrderedDict()  # Keyterms -> trie, the latest TRIES_KEPT

    def bias_walk(self, vector, keyterms=DEFAULT):
        """A stream's keyterm walk over ``vector`` (its bias on the device, zero), for
        ``keyterms`` (default: the engine's); None when there is nothing to favour."""
        from voxcli.engine.keyterms import BiasWalk, KeytermTrie

        keyterms = self.keyterms if keyterms is DEFAULT else keyterms
        if not keyterms:
            return None
        if keyterms not in self._tries:
            self._tries[keyterms] = KeytermTrie(keyterms, self._tekken, word_marker=self.word_marker)
            if len(self._tries) > TRIES_KEPT:  # a server's sessions may each bring their own
                self._tries.popitem(last=False)
        self._tries.move_to_end(keyterms)
        return BiasWalk(self._tries[keyterms], vector)

    @property
    def word_marker(self) -> int | None:
        """The token the model says before each word group (``[STREAMING_WORD]``: the Realtime
        model's grammar), or None for a model without markers."""
        return None

    def bias_vector(self):
        """A zero bias for a stream of its own (the hf step, the offline loop)."""
        import torch

        return torch.zeros(self.model.lm_head.weight.shape[0], device=self.model.device, dtype=self.model.dtype)

    def token_extras(self, picked, walk, special: bool, detok: "Detokenizer") -> dict:
        """What a token event says beyond its id: ``p`` and ``alternatives`` (with top_k), the
        keyterm it completed."""
        extras: dict = {}
        if picked.logprob is not None:
            extras["p"] = picked.p
            if self.alternatives:
                extras["alternatives"] = tuple({"token_id": i, "text": detok.piece(i), "logprob": lp}
                                               for i, lp in picked.top[:self.alternatives])
        done = walk.after(picked.token_id, picked.plain_id, special) if walk is not None else None
        if done is not None:
            extras["keyterm"], extras["keyterm_biased"] = done
        return extras

    @property
    def device(self):
        return self.model.device

    def detokenizer(self) -> Detokenizer:
        return Detokenizer(self._tekken, self._pieces)

    def critical_path_ms(self, audio: np.ndarray) -> float:
        from voxcli.engine.timing import critical_path_ms

        return critical_path_ms(self, audio)

    def environment(self) -> dict:
        from voxcli.engine.timing import environment

        return environment(self)

    def transcribe(self, audio: np.ndarray, *, language: str | None = None, max_new_tokens: int | None = None,
                   segments: list[tuple[int, int]] | None = None, keyterms=DEFAULT) -> Iterator[TokenEvent]:
        raise NotImplementedError

    def warmup(self) -> float:
        """Run a short silent clip through the full path once; returns the seconds it took. The
        endpointer's detector is loaded too: not inside the first file's or session's timing."""
        from voxcli.audio.vad import preload

        t0 = time.perf_counter()
        preload()
        for _ in self.transcribe(np.zeros(SAMPLE_RATE // 2, dtype=np.float32), max_new_tokens=4):
            pass
        self.info.warmup_s = time.perf_counter() - t0
        return self.info.warmup_s


def validate_audio(audio: np.ndarray) -> np.ndarray:
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise ValueError(f"audio must be mono (one dimension), got shape {audio.shape}")
    if not np.issubdtype(audio.dtype, np.floating):
        raise ValueError(f"audio must be floating point samples in [-1, 1], got {audio.dtype}")
    return audio.astype(np.float32, copy=False)
