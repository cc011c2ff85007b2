"""Tiny random-weight Voxtral checkpoints, built offline from configs.

They exercise the real loading, streaming and timing code without weights or a hub: tests,
`bench/` and CI use them. Random weights produce meaningless tokens; only structure and timing
mean anything. Build one with ``python -m voxcli.tiny DIR --kind realtime|offline``.

Facts this relies on (verified with transformers 5.23 and mistral-common 1.13):
- the tokenizer must be a tekken file named ``tekken.json``, version v7 or later, listing its
  special tokens with contiguous ranks from 0, with an ``"audio"`` section;
- model and processor must be saved into the same directory;
- the offline (3B-style) encoder needs ``intermediate_size == 4 * hidden_size`` and 1500 source
  positions, and its processor hard-codes audio token id 24.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

KINDS = ("realtime", "offline")

# Special-token ids the real checkpoints use; every other control token gets a free rank.
_FIXED_SPECIAL_IDS = {
    "[AUDIO]": 24,
    "[BEGIN_AUDIO]": 25,
    "[STREAMING_PAD]": 32,
    "[STREAMING_WORD]": 33,
    "[TRANSCRIBE]": 34,
}
NUM_SPECIAL_TOKENS = 100
NUM_TEXT_TOKENS = 1900  # the first ranks of the real tekken vocabulary: bytes, then common pieces


def _special_tokens() -> list[dict]:
    from mistral_common.tokens.tokenizers.base import SpecialTokens

    by_rank = dict((v, k) for k, v in _FIXED_SPECIAL_IDS.items())
    free = (r for r in range(NUM_SPECIAL_TOKENS) if r not in by_rank)
    for token in SpecialTokens:
        if token.value not in _FIXED_SPECIAL_IDS:
            by_rank[next(free)] = token.value
    return [
        {"rank": r, "token_str": by_rank.get(r, f"<SPECIAL_{r}>"), "is_control": True}
        for r in range(NUM_SPECIAL_TOKENS)
    ]


def _tekken(kind: str, delay_ms: int) -> dict:
    import mistral_common

    source = Path(mistral_common.__file__).parent / "data" / "tekken_240911.json"
    full = json.loads(source.read_text())
    special = _special_tokens()
    audio = {
        "sampling_rate": 16000,
        "frame_rate": 12.5,
        "audio_encoding_config": {"num_mel_bins": 128, "hop_length": 160, "window_size": 400},
    }
    if kind == "realtime":
        audio |= {
            "transcription_format": "streaming",
            "transcription_delay_ms": delay_ms,
            "streaming_look_ahead_ms": 2.5,
            "streaming_look_back_ms": 52.5,
            "streaming_n_left_pad_tokens": 32,
        }
    else:
        audio |= {"transcription_format": "instruct", "chunk_length_s": 30.0}
    return {
        "config": {
            **full["config"],
            "version": "v7",
            "num_vocab_tokens": NUM_TEXT_TOKENS,
            "default_vocab_size": NUM_SPECIAL_TOKENS + NUM_TEXT_TOKENS,
            "default_num_special_tokens": NUM_SPECIAL_TOKENS,
        },
        "vocab": full["vocab"][:NUM_TEXT_TOKENS],
        "special_tokens": special,
        "audio": audio,
    }


def _randomize(model, std: float = 0.3) -> None:
    """Re-draw the weights wide enough that the output depends on the audio, then zero the
    special-token rows of the tied embedding so random logits favour printable text.

    With the default init (std 0.02) a tiny model emits one token forever, which would hide
    detokenization and segmentation bugs; std 0.3 gives varied text, multi-byte characters included.
    """
    import torch

    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.normal_(0.0, std)
        emb = model.get_input_embeddings().weight
        emb[:NUM_SPECIAL_TOKENS] = 0.0
        out = model.get_output_embeddings()
        if out is not None and out.weight.data_ptr() != emb.data_ptr():
            out.weight[:NUM_SPECIAL_TOKENS] = 0.0


def make_tiny_model(path: str | Path, kind: str = "realtime", *, hidden_size: int = 64,
                    num_layers: int = 2, delay_ms: int = 480, seed: int = 0) -> Path:
    """Write a tiny random Voxtral checkpoint (model + processor + tekken.json) into ``path``."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    import torch
    from transformers import AutoProcessor

    torch.manual_seed(seed)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "tekken.json").write_text(json.dumps(_tekken(kind, delay_ms)))
    vocab_size = NUM_SPECIAL_TOKENS + NUM_TEXT_TOKENS
    heads = 4
    text = {
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": hidden_size * 2,
        "num_hidden_layers": num_layers,
        "num_attention_heads": heads,
        "num_key_value_heads": 2,
        "head_dim": hidden_size // heads,
        "max_position_embeddings": 32768,
    }
    if kind == "realtime":
        from transformers import (VoxtralRealtimeConfig, VoxtralRealtimeFeatureExtractor,
                                  VoxtralRealtimeForConditionalGeneration, VoxtralRealtimeProcessor)
        from transformers.tokenization_mistral_common import MistralCommonBackend

        config = VoxtralRealtimeConfig(
            text_config={**text, "sliding_window": 8192, "tie_word_embeddings": True},
            audio_config={
                "hidden_size": hidden_size,
                "intermediate_size": hidden_size * 2,
                "num_hidden_layers": num_layers,
                "num_attention_heads": heads,
                "head_dim": hidden_size // heads,
                "sliding_window": 750,
            },
        )
        model = VoxtralRealtimeForConditionalGeneration(config)
        processor = VoxtralRealtimeProcessor(
            VoxtralRealtimeFeatureExtractor(),
            MistralCommonBackend(tokenizer_path=str(path / "tekken.json")),
        )
    else:
        from transformers import VoxtralConfig, VoxtralForConditionalGeneration

        config = VoxtralConfig(
            text_config={**text, "model_type": "llama", "tie_word_embeddings": True},
            audio_config={
                "hidden_size": hidden_size,
                "intermediate_size": hidden_size * 4,
                "num_hidden_layers": num_layers,
                "num_attention_heads": heads,
                "max_source_positions": 1500,
            },
            audio_token_id=24,
        )
        model = VoxtralForConditionalGeneration(config)
        processor = None
    _randomize(model)
    model.save_pretrained(path)
    if processor is None:
        processor = _offline_processor(path)
    processor.save_pretrained(path)
    # Loading the processor back proves the directory is complete.
    AutoProcessor.from_pretrained(path)
    return path


def _offline_processor(path: Path):
    from transformers import VoxtralProcessor, WhisperFeatureExtractor
    from transformers.tokenization_mistral_common import MistralCommonBackend

    return VoxtralProcessor(
        WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, hop_length=160,
                                chunk_length=30, n_fft=400),
        MistralCommonBackend(tokenizer_path=str(path / "tekken.json")),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path")
    parser.add_argument("--kind", choices=KINDS, default="realtime")
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    args = parser.parse_args()
    out = make_tiny_model(args.path, args.kind, hidden_size=args.hidden_size, num_layers=args.layers)
    print(out)


if __name__ == "__main__":
    main()
