"""The FULL-size Realtime model, built without weights (meta device), against the real figures.

Every value the engine derives from the config, the processor and the tokenizer is checked
against the real checkpoint's (docs/design.md, "The real checkpoints"). A transformers or
mistral-common release that moves any of them fails here, not in a user's session.
"""

from __future__ import annotations

import json

import pytest

from voxcli.delays import ALLOWED_DELAYS_MS
from voxcli.engine.local import EngineInfo, RealtimeEngine

GIB = 1024**3


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    import torch
    from transformers import VoxtralRealtimeForConditionalGeneration

    from voxcli.testing.tiny import FULL_NUM_TEXT_TOKENS, realtime_config, realtime_processor, tekken

    path = tmp_path_factory.mktemp("full-size")
    (path / "tekken.json").write_text(json.dumps(tekken("realtime", 480, num_text_tokens=FULL_NUM_TEXT_TOKENS)))
    processor = realtime_processor(path)
    config = realtime_config()
    with torch.device("meta"):
        model = VoxtralRealtimeForConditionalGeneration(config)
    return config, processor, model


def _engine(full, delay_ms=None) -> RealtimeEngine:
    config, processor, model = full
    info = EngineInfo(model="full-size (meta)", kind="realtime", device="meta", dtype="bfloat16",
                      n_params=0, load_s=0.0)
    return RealtimeEngine(model, processor, info, delay_ms=delay_ms)


def test_config_is_the_real_checkpoints(full):
    config, _, model = full
    text, audio = config.text_config, config.audio_config
    assert (text.num_hidden_layers, text.hidden_size, text.intermediate_size) == (26, 3072, 9216)
    assert (text.num_attention_heads, text.num_key_value_heads, text.head_dim) == (32, 8, 128)
    assert text.sliding_window == 8192 and text.max_position_embeddings == 131072
    assert text.rope_parameters["rope_theta"] == 1e6 and text.vocab_size == 131072
    assert config.tie_word_embeddings
    assert (audio.num_hidden_layers, audio.hidden_size, audio.intermediate_size) == (32, 1280, 5120)
    assert (audio.num_attention_heads, audio.head_dim, audio.num_mel_bins) == (32, 64, 128)
    assert audio.sliding_window == 750
    # Every RoPE field of both stacks (the encoder's theta is 1e6 in the checkpoint, 1e4 in
    # transformers' class default), and the rotary modules really use it.
    assert text.rope_parameters == {"rope_theta": 1e6, "rope_type": "default"}
    assert audio.rope_parameters == {"rope_theta": 1e6, "rope_type": "default"}
    import torch

    for rotary, sub, dim in ((model.model.language_model.rotary_emb, text, 128),
                             (model.model.audio_tower.rotary_emb, audio, 64)):
        rotary = type(rotary)(config=sub)  # the same module on the CPU (the model's is on meta)
        expected = 1.0 / (1e6 ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
        assert rotary.attention_scaling == 1.0
        assert torch.allclose(rotary.inv_freq.to(torch.float64), expected, rtol=1e-6)
    assert (config.audio_length_per_tok, config.default_num_delay_tokens, config.downsample_factor) == (8, 6, 4)
    n_params = sum(p.numel() for p in model.parameters())
    assert round(n_params / 1e9, 2) == 4.43
    assert n_params * 2 / GIB == pytest.approx(8.25, abs=0.01)  # bf16 weights


def test_tokenizer_has_the_real_layout(full):
    _, processor, _ = full
    tekken = processor.tokenizer.tokenizer.instruct_tokenizer.tokenizer
    assert tekken.n_words == 131072 and tekken.num_special_tokens == 1000
    assert (tekken.bos_id, tekken.eos_id) == (1, 2)
    ids = {name: tekken.get_special_token(name) for name in
           ("[AUDIO]", "[BEGIN_AUDIO]", "[STREAMING_PAD]", "[STREAMING_WORD]", "[REPEAT_AUDIO_TEXT]")}
    assert ids == {"[AUDIO]": 24, "[BEGIN_AUDIO]": 25, "[STREAMING_PAD]": 32, "[STREAMING_WORD]": 33,
                   "[REPEAT_AUDIO_TEXT]": 34}


def test_derived_figures_at_the_default_delay(full):
    engine = _engine(full)
    _, processor, _ = full
    assert engine.delay_ms == 480 and engine.num_delay_tokens == 6
    assert len(engine.prompt_ids) == 39
    assert engine.prompt_ids == [1] + [32] * 38  # BOS, 32 left pad + 6 delay x [STREAMING_PAD]
    assert len(engine.left_pad) == 32 * 1280  # left pad: 32 tokens of silence
    assert engine.num_right_pad_tokens == 17  # (6 + 1) + 10
    assert engine.first_chunk_samples == 9000 == engine.proc.default_first_chunk_samples
    assert engine.hop_samples == 1280 == processor.raw_audio_length_per_tok
    assert engine.chunk_samples == 1680 == processor.num_samples_per_audio_chunk
    assert engine.window_samples == 1520
    assert engine.frames_per_token == 8
    # The first window after the prefill starts 240 samples before the prompt's last frame.
    assert engine.next_window_start == 39 * 8 * 160 - 200


@pytest.mark.parametrize("delay_ms", ALLOWED_DELAYS_MS)
def test_derived_figures_at_every_allowed_delay(full, delay_ms):
    engine = _engine(full, delay_ms)
    n = delay_ms // 80
    assert engine.num_delay_tokens == n
    assert len(engine.prompt_ids) == 1 + 32 + n
    assert engine.num_right_pad_tokens == (n + 1) + 10
    assert engine.first_chunk_samples == ((n + 1) * 8 - 1) * 160 + 200


def test_memory_estimate_of_the_full_model(full):
    import torch

    from voxcli.engine.memory import estimate

    config = full[0]
    f32 = estimate(config, "realtime", torch.float32.itemsize)
    bf16 = estimate(config, "realtime", torch.bfloat16.itemsize)
    assert f32.weights_bytes / GIB == pytest.approx(16.5, abs=0.05)
    assert bf16.weights_bytes / GIB == pytest.approx(8.25, abs=0.01)
    # Both rings as the static step allocates them: 8192 text slots x 26 layers x 8 KV heads x
    # 128, and 753 encoder slots (the window + 3: a step writes 4 positions before attending) x
    # 32 layers x 32 heads x 64, keys and values; and the row's keyterm bias, one score per token
    # of the 131,072 of the vocabulary.
    assert bf16.cache_bytes == 2 * 2 * (26 * 8 * 128 * 8192 + 32 * 32 * 64 * 753) + 2 * 131072
    assert f32.total_bytes / GIB == pytest.approx(18.5, abs=0.1)
