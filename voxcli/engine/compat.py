"""Everything voxcli reads from transformers' Voxtral processors and models, in one place.

transformers is replacing feature extractors with audio processors (PRs #44394 and #48115:
``VoxtralRealtimeFeatureExtractor`` becomes a deprecated alias, and a processor may hold its
front end as ``audio_processor`` rather than ``feature_extractor``), and 5.24 renamed the
forward's cache arguments. The engine goes through :class:`ProcessorAdapter` and
:func:`cache_kwarg_names`, so such a rename touches this module only. ``tests/test_full_size.py``
checks every figure read here against the real checkpoint's.
"""

from __future__ import annotations

import inspect

import numpy as np

from voxcli.units import SAMPLE_RATE


def _first_attr(obj, *names: str):
    for name in names:
        value = getattr(obj, name, None)
        if value is not None:
            return value
    raise AttributeError(f"{type(obj).__name__} has none of {', '.join(names)}")


class ProcessorAdapter:
    """The parts of a Voxtral (Realtime) processor the engine uses, under stable names."""

    def __init__(self, processor) -> None:
        self.processor = processor
        # The audio front end (log-mel): its attribute name is what the migration changes.
        self.frontend = _first_attr(processor, "audio_processor", "feature_extractor")
        self.instruct = processor.tokenizer.tokenizer.instruct_tokenizer
        self.tekken = self.instruct.tokenizer

    # Realtime ---------------------------------------------------------------------------------

    @property
    def hop_length(self) -> int:
        """Samples between mel frames (160: 10 ms)."""
        return int(_first_attr(self.frontend, "hop_length"))

    @property
    def win_length(self) -> int:
        """Samples in one mel frame's window (400)."""
        return int(_first_attr(self.frontend, "win_length", "n_fft"))

    @property
    def frames_per_token(self) -> int:
        """Mel frames per text token (8: 80 ms)."""
        return int(self.processor.audio_length_per_tok)

    @property
    def samples_per_token(self) -> int:
        """Audio samples per text token (1280: 80 ms)."""
        return int(self.processor.raw_audio_length_per_tok)

    @property
    def audio_config(self):
        """mistral-common's audio config: delay tokens, right padding."""
        return self.processor.mistral_common_audio_config

    @property
    def audio_encoder(self):
        """mistral-common's audio encoder: streaming prompt tokens and left padding."""
        return self.instruct.audio_encoder

    @property
    def default_first_chunk_samples(self) -> int:
        """transformers' own first-chunk size at the checkpoint's delay (a cross-check)."""
        return int(self.processor.num_samples_first_audio_chunk)

    def log_mel(self, samples: np.ndarray, *, center: bool):
        """Log-mel features of ``samples`` (16 kHz float32) as a (1, mel bins, frames) tensor."""
        return self.frontend(samples, center=center, sampling_rate=SAMPLE_RATE, return_tensors="pt")["input_features"]

    # Offline ----------------------------------------------------------------------------------

    def transcription_request(self, clip: np.ndarray, *, language: str | None, model_id: str):
        """The offline (3B / 24B) model's inputs for one clip: prompt ids and features."""
        return self.processor.apply_transcription_request(
            audio=clip, language=language, model_id=model_id, sampling_rate=SAMPLE_RATE,
            format="wav", return_tensors="pt")


def cache_kwarg_names(model) -> dict[str, str]:
    """transformers 5.24 renamed the forward's ``past_key_values`` to ``cache`` (and the Realtime
    model's ``encoder_past_key_values`` to ``encoder_cache``); accept both releases."""
    params = inspect.signature(model.forward).parameters
    if "cache" in params:
        return {"cache": "cache", "encoder_cache": "encoder_cache"}
    return {"cache": "past_key_values", "encoder_cache": "encoder_past_key_values"}
