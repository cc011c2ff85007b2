"""Tiny random-weight Voxtral checkpoints, built offline from configs.

They exercise the real loading, streaming and timing code without weights or a hub: tests,
`bench/` and CI use them. Random weights produce meaningless tokens; only structure and timing
mean anything. Build one with ``python -m voxcli.testing.tiny DIR --kind realtime|offline``.

They are shaped like the real checkpoints (docs/design.md, "The real checkpoints"), so what
works on them works on the real thing:
- the tokenizer keeps the real layout: 1000 special ranks, with the real ids (1 ``<s>``,
  2 ``</s>``, 24 ``[AUDIO]``, 25 ``[BEGIN_AUDIO]``, 32 ``[STREAMING_PAD]``, 33
  ``[STREAMING_WORD]``, and 34 ``[REPEAT_AUDIO_TEXT]`` for Realtime, ``[TRANSCRIBE]`` for 3B);
  only the text vocabulary is cut down (the first ranks of mistral-common's real tekken file);
- the configs are transformers' own defaults for each class, which equal the real
  ``config.json`` figures except the Realtime encoder's RoPE theta (transformers' default 1e4,
  the checkpoint's 1e6: set here, see ``REAL_ROPE``), with only the sizes shrunk
  (:func:`realtime_config`, :func:`offline_config`; called without sizes they give the
  full-size configs).

Facts this relies on (verified with transformers 5.23-5.24 and mistral-common 1.13):
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

from voxcli.choices import MODEL_KINDS as KINDS

NUM_SPECIAL_TOKENS = 1000  # the real tekken files reserve ranks 0-999 for control tokens
NUM_TEXT_TOKENS = 1900  # tiny models: the first ranks of the real tekken vocabulary
FULL_NUM_TEXT_TOKENS = 131072 - NUM_SPECIAL_TOKENS  # the real vocabulary: 131072 ids in all

# The ids the real checkpoints use and voxcli depends on; rank 34 differs between the kinds.
REAL_SPECIAL_IDS = {
    "<unk>": 0, "<s>": 1, "</s>": 2, "[AUDIO]": 24, "[BEGIN_AUDIO]": 25,
    "[STREAMING_PAD]": 32, "[STREAMING_WORD]": 33,
}
RANK_34 = {"realtime": "[REPEAT_AUDIO_TEXT]", "offline": "[TRANSCRIBE]"}

# The Realtime checkpoint's RoPE, both stacks: its params.json gives the encoder rope_theta 1e6
# (multimodal.whisper_model_args.encoder_args, which transformers' conversion script copies into
# audio_config; voxtral.c's MODEL.md: "RoPE (theta=1e6, interleaved)"), where transformers'
# VoxtralRealtimeEncoderConfig defaults to 1e4. A test model on the default would hear with other
# positions than the real one.
REAL_ROPE = {"text": {"rope_theta": 1e6, "rope_type": "default"},
             "audio": {"rope_theta": 1e6, "rope_type": "default"}}

# Sizes of the test models; everything else is the real configuration.
TINY_SIZES = {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2}


def _special_tokens(kind: str) -> list[dict]:
    """1000 control tokens: the real ids above; mistral-common's other named tokens in the
    order of its enum (which is the real files' order up to [CALL_ID]); then placeholders."""
    from mistral_common.tokens.tokenizers.base import SpecialTokens

    by_rank = {v: k for k, v in REAL_SPECIAL_IDS.items()}
    by_rank[34] = RANK_34[kind]
    named = set(by_rank.values())
    free = (r for r in range(NUM_SPECIAL_TOKENS) if r not in by_rank)
    for token in SpecialTokens:
        if token.value not in named:
            by_rank[next(free)] = token.value
    return [
        {"rank": r, "token_str": by_rank.get(r, f"<SPECIAL_{r}>"), "is_control": True}
        for r in range(NUM_SPECIAL_TOKENS)
    ]


def tekken(kind: str, delay_ms: int = 480, *, num_text_tokens: int = NUM_TEXT_TOKENS) -> dict:
    """A tekken.json for ``kind`` with the real special-token layout and audio section."""
    import mistral_common

    source = Path(mistral_common.__file__).parent / "data" / "tekken_240911.json"
    full = json.loads(source.read_text())
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
            "num_vocab_tokens": num_text_tokens,
            "default_vocab_size": NUM_SPECIAL_TOKENS + num_text_tokens,
            "default_num_special_tokens": NUM_SPECIAL_TOKENS,
        },
        "vocab": full["vocab"][:num_text_tokens],
        "special_tokens": _special_tokens(kind),
        "audio": audio,
    }


def realtime_config(*, vocab_size: int | None = None, hidden_size: int | None = None,
                    num_layers: int | None = None, num_heads: int | None = None,
                    num_kv_heads: int | None = None, text_sliding_window: int | None = None,
                    audio_sliding_window: int | None = None):
    """transformers' VoxtralRealtimeConfig: its defaults are the real checkpoint's figures; the
    arguments shrink sizes (and, for tests of wrapping caches, the sliding windows)."""
    from transformers import VoxtralRealtimeConfig

    config = VoxtralRealtimeConfig()
    text, audio = config.text_config, config.audio_config
    text.rope_parameters = dict(REAL_ROPE["text"])
    audio.rope_parameters = dict(REAL_ROPE["audio"])
    if vocab_size is not None:
        text.vocab_size = audio.vocab_size = vocab_size
    if hidden_size is not None:
        heads = num_heads or text.num_attention_heads
        kv = num_kv_heads or heads
        for sub in (text, audio):
            sub.hidden_size = hidden_size
            sub.head_dim = hidden_size // heads
            sub.num_attention_heads = heads
        text.num_key_value_heads = kv
        text.intermediate_size = audio.intermediate_size = hidden_size * 2
        config.hidden_size = hidden_size
    if num_layers is not None:
        text.num_hidden_layers = audio.num_hidden_layers = num_layers
    if text_sliding_window is not None:
        text.sliding_window = text_sliding_window
    if audio_sliding_window is not None:
        audio.sliding_window = audio_sliding_window
    return config


def offline_config(*, vocab_size: int | None = None, hidden_size: int | None = None,
                   num_layers: int | None = None, num_heads: int | None = None,
                   num_kv_heads: int | None = None):
    """transformers' VoxtralConfig with the 3B's text model (Llama, untied), sizes shrunk."""
    from transformers import VoxtralConfig

    config = VoxtralConfig(audio_token_id=24)
    text, audio = config.text_config, config.audio_config
    if vocab_size is not None:
        text.vocab_size = vocab_size
    if hidden_size is not None:
        heads = num_heads or text.num_attention_heads
        text.hidden_size = audio.hidden_size = hidden_size
        text.head_dim = hidden_size // heads
        text.num_attention_heads = audio.num_attention_heads = heads
        text.num_key_value_heads = num_kv_heads or heads
        text.intermediate_size = hidden_size * 2
        audio.intermediate_size = hidden_size * 4  # the Whisper-style encoder insists on 4x
        config.hidden_size = hidden_size
    if num_layers is not None:
        text.num_hidden_layers = audio.num_hidden_layers = num_layers
    return config


def _randomize(model, std: float = 0.3, eos_std: float = 0.0) -> None:
    """Re-draw the weights wide enough that the output depends on the audio, then zero the
    special-token rows of the tied embedding so random logits favour printable text.
    ``eos_std``: draw the end-of-sequence row (id 2) instead, this wide, so that the model says
    EOS now and then, as a real one does (a zeroed row never wins, which would hide what a
    stream must do after EOS).

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
        if eos_std:
            eos = REAL_SPECIAL_IDS["</s>"]
            emb[eos].normal_(0.0, eos_std)
            if out is not None and out.weight.data_ptr() != emb.data_ptr():
                out.weight[eos] = emb[eos]


def make_tiny_model(path: str | Path, kind: str = "realtime", *, hidden_size: int = 64,
                    num_layers: int = 2, delay_ms: int = 480, seed: int = 0,
                    text_sliding_window: int | None = None, audio_sliding_window: int | None = None,
                    eos_std: float = 0.0) -> Path:
    """Write a tiny random Voxtral checkpoint (model + processor + tekken.json) into ``path``.
    ``eos_std`` > 0: a model that says end of sequence now and then (see :func:`_randomize`)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    import torch
    from transformers import AutoProcessor

    torch.manual_seed(seed)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "tekken.json").write_text(json.dumps(tekken(kind, delay_ms)))
    sizes = {"vocab_size": NUM_SPECIAL_TOKENS + NUM_TEXT_TOKENS, "hidden_size": hidden_size,
             "num_layers": num_layers, "num_heads": TINY_SIZES["num_heads"],
             "num_kv_heads": TINY_SIZES["num_kv_heads"]}
    if kind == "realtime":
        from transformers import VoxtralRealtimeForConditionalGeneration

        config = realtime_config(**sizes, text_sliding_window=text_sliding_window,
                                 audio_sliding_window=audio_sliding_window)
        model = VoxtralRealtimeForConditionalGeneration(config)
    else:
        from transformers import VoxtralForConditionalGeneration

        config = offline_config(**sizes)
        model = VoxtralForConditionalGeneration(config)
    _randomize(model, eos_std=eos_std)
    model.save_pretrained(path)
    processor = realtime_processor(path) if kind == "realtime" else offline_processor(path)
    processor.save_pretrained(path)
    # Loading the processor back proves the directory is complete.
    AutoProcessor.from_pretrained(path)
    return path


def realtime_processor(path: Path):
    """The Realtime processor over ``path/tekken.json`` (the default feature extractor is the
    real one: 128 mel bins, hop 160, window 400)."""
    from transformers import VoxtralRealtimeFeatureExtractor, VoxtralRealtimeProcessor
    from transformers.tokenization_mistral_common import MistralCommonBackend

    return VoxtralRealtimeProcessor(VoxtralRealtimeFeatureExtractor(),
                                    MistralCommonBackend(tokenizer_path=str(Path(path) / "tekken.json")))


def offline_processor(path: Path):
    from transformers import VoxtralProcessor, WhisperFeatureExtractor
    from transformers.tokenization_mistral_common import MistralCommonBackend

    return VoxtralProcessor(
        WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, hop_length=160,
                                chunk_length=30, n_fft=400),
        MistralCommonBackend(tokenizer_path=str(Path(path) / "tekken.json")),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path")
    parser.add_argument("--kind", choices=KINDS, default="realtime")
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--delay-ms", type=int, default=480, help="the tokenizer's default delay (Realtime)")
    args = parser.parse_args()
    out = make_tiny_model(args.path, args.kind, hidden_size=args.hidden_size, num_layers=args.layers,
                          delay_ms=args.delay_ms)
    print(out)


if __name__ == "__main__":
    main()
