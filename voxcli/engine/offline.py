"""Voxtral Mini 3B / Small 24B on this machine: whole windows of up to 30 s, split at silences,
each decoded with a hand-written greedy loop (prefill, then one step per token)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np

from voxcli.engine.base import DEFAULT, LocalEngine, validate_audio
from voxcli.engine.contract import EngineInfo
from voxcli.engine.pick import unpack
from voxcli.engine.segments import transcribe_segments
from voxcli.events import TokenEvent
from voxcli.units import SAMPLE_RATE


class OfflineEngine(LocalEngine):
    """Voxtral Mini 3B / Small 24B: whole windows of up to 30 s, split at silences."""

    kind = "offline"
    MAX_SEGMENT_S = 30.0

    def __init__(self, model, processor, info: EngineInfo, *, max_new_tokens: int = 500, **outputs) -> None:
        super().__init__(model, processor, info, **outputs)
        self.max_new_tokens = max_new_tokens

    def transcribe(self, audio: np.ndarray, *, language: str | None = None,
                   max_new_tokens: int | None = None,
                   segments: list[tuple[int, int]] | None = None, keyterms=DEFAULT) -> Iterator[TokenEvent]:
        """Tokens for each speech segment in turn; each event carries its segment's span.

        ``segments`` (sample ranges) default to :func:`voxcli.audio.vad.stream_segments`: the speech
        the endpointer (Silero VAD) finds, grouped into windows of at most 30 s, cut at silences,
        found as the clip is searched. Silence, and any stretch over 2 s without speech, is never
        sent to the model (it invents text there).
        """
        audio = validate_audio(audio)
        limit = max_new_tokens or self.max_new_tokens
        yield from transcribe_segments(audio, segments, lambda clip: self._generate(clip, language, limit, keyterms),
                                       max_segment_s=self.MAX_SEGMENT_S)

    def warmup(self) -> float:
        from voxcli.audio.vad import preload

        t0 = time.perf_counter()
        preload()  # the split points of a long file are found with it
        n = SAMPLE_RATE // 2
        for _ in self.transcribe(np.zeros(n, dtype=np.float32), max_new_tokens=2, segments=[(0, n)]):
            pass
        self.info.warmup_s = time.perf_counter() - t0
        return self.info.warmup_s

    def _generate(self, clip: np.ndarray, language: str | None, max_new_tokens: int,
                  keyterms=DEFAULT) -> Iterator[TokenEvent]:
        import torch
        from transformers import DynamicCache

        from voxcli.engine.pick import pick

        model = self.model
        inputs = self.proc.transcription_request(clip, language=language, model_id=self.info.model)
        inputs = inputs.to(model.device)
        inputs["input_features"] = inputs["input_features"].to(model.dtype)
        detok = self.detokenizer()
        cache = DynamicCache(config=model.config.text_config)
        bias = self.bias_vector()
        walk = self.bias_walk(bias, keyterms)
        ids = inputs["input_ids"]
        kwargs = {"input_features": inputs["input_features"], "attention_mask": inputs.get("attention_mask")}
        for k in range(max_new_tokens):
            t0 = time.perf_counter()
            with torch.inference_mode():
                out = model(input_ids=ids, use_cache=True, logits_to_keep=1,
                            **{self.cache_kwargs["cache"]: cache}, **kwargs)
                next_id, packed = pick(out.logits[:, -1], bias, self.top_k)
            picked = unpack(packed[0].tolist(), self.top_k)  # the one sync per token
            token_id = picked.token_id
            t_emitted = time.perf_counter()
            if token_id == self.eos_id:
                break
            special = detok.is_special(token_id)
            yield TokenEvent(k, token_id, detok.push(token_id), t_emitted, special=special,
                             step_ms=(t_emitted - t0) * 1000.0 if k else None,  # step 0 is the prefill
                             **self.token_extras(picked, walk, special, detok))
            ids = next_id[:, None]
            kwargs = {}
        tail = detok.flush()
        if tail:
            yield TokenEvent(max_new_tokens, -1, tail, time.perf_counter())
