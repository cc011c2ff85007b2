"""One set of random weights written twice: as vLLM loads it, and as voxcli and transformers load it.

``python -m voxcli.testing.twin OUT [--kind realtime|offline] [--delay-ms 480]`` writes

- ``OUT/mistral``: ``params.json``, ``consolidated.safetensors``, ``tekken.json``
  (:func:`voxcli.testing.tiny_mistral.make_tiny_mistral_model`: Mistral's native layout, which vLLM
  serves), and
- ``OUT/hf``: ``config.json``, ``model.safetensors`` and the processor beside the same ``tekken.json``
  (the layout of the published transformers checkpoints, which voxcli loads),

so that the same audio through a vLLM server and through voxcli's local engine can be compared:
the strongest check a CPU gives that voxcli's prompt, mel, padding, delay and chunking are the
reference's. :func:`mistral_to_hf` converts any such Mistral directory, so a test can take the
model a running vLLM server already serves. tests/test_twin.py and bench/twin.py share the rest:
the samples a server hears (:func:`as_served`), vLLM's grid (:func:`hear_as_vllm`,
:func:`quiet_where_the_first_step_begins`) and where two texts part (:func:`first_difference`).

The mapping is the one the real checkpoints follow (the facts come from transformers' conversion
scripts for both kinds; the code is ours):

- names: ``layers.N.attention.w{q,k,v,o}`` -> ``language_model.model.layers.N.self_attn.{q,k,v,o}_proj``,
  ``attention_norm``/``ffn_norm`` -> ``input_layernorm``/``post_attention_layernorm``, ``feed_forward.w1/w2/w3``
  -> ``mlp.gate_proj/down_proj/up_proj``, ``ada_rms_norm_t_cond.0/.2`` -> ``ada_rms_norm.linear1/linear2``; the
  audio encoder and the projector likewise (:data:`_NAMES`);
- RoPE: Mistral's weights rotate interleaved pairs (x0, x1), (x2, x3) ...; transformers rotates halves
  (x_i, x_{i + d/2}). The rows of every q and k projection that RoPE rotates (the text model's, and
  the Realtime encoder's; the offline encoder has no RoPE) are permuted per head, so that row
  ``2i`` goes to ``i`` and row ``2i + 1`` to ``d/2 + i`` (:func:`_halves`);
- the embedding is tied in these files: the hf head gets a copy; the offline encoder's sinusoidal
  positions, which Mistral's files leave out, are computed (Whisper's formula).

Values are copied exactly (bfloat16 in both): nothing but layout differs between the twins.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
from pathlib import Path

from voxcli.choices import MODEL_KINDS as KINDS
from voxcli.units import TOKEN_SAMPLES

_RT = r"mm_streams_embeddings\.embedding_module\."
_OFF = r"mm_whisper_embeddings\."
_ENC_LAYER = r"whisper_encoder\.transformer\.layers\.(\d+)\."
# (Mistral name pattern, hf name) for each kind; first match wins.
_NAMES = {
    "common": [
        (r"^norm\.weight$", r"language_model.model.norm.weight"),
        (r"^layers\.(\d+)\.attention_norm\.weight$", r"language_model.model.layers.\1.input_layernorm.weight"),
        (r"^layers\.(\d+)\.ffn_norm\.weight$", r"language_model.model.layers.\1.post_attention_layernorm.weight"),
        (r"^layers\.(\d+)\.attention\.w([qkvo])\.weight$", r"language_model.model.layers.\1.self_attn.\2_proj.weight"),
        (r"^layers\.(\d+)\.feed_forward\.w1\.weight$", r"language_model.model.layers.\1.mlp.gate_proj.weight"),
        (r"^layers\.(\d+)\.feed_forward\.w2\.weight$", r"language_model.model.layers.\1.mlp.down_proj.weight"),
        (r"^layers\.(\d+)\.feed_forward\.w3\.weight$", r"language_model.model.layers.\1.mlp.up_proj.weight"),
    ],
    "realtime": [
        (r"^layers\.(\d+)\.ada_rms_norm_t_cond\.0\.weight$", r"language_model.model.layers.\1.ada_rms_norm.linear1.weight"),
        (r"^layers\.(\d+)\.ada_rms_norm_t_cond\.2\.weight$", r"language_model.model.layers.\1.ada_rms_norm.linear2.weight"),
        (_RT + r"tok_embeddings\.weight$", r"language_model.model.embed_tokens.weight"),
        (_RT + r"whisper_encoder\.conv_layers\.0\.conv\.(weight|bias)$", r"audio_tower.embedder.conv1.\1"),
        (_RT + r"whisper_encoder\.conv_layers\.1\.conv\.(weight|bias)$", r"audio_tower.embedder.conv2.\1"),
        (_RT + r"whisper_encoder\.transformer\.norm\.weight$", r"audio_tower.norm.weight"),
        (_RT + _ENC_LAYER + r"attention\.w([qkv])\.(weight|bias)$", r"audio_tower.layers.\1.self_attn.\2_proj.\3"),
        (_RT + _ENC_LAYER + r"attention\.wo\.(weight|bias)$", r"audio_tower.layers.\1.self_attn.o_proj.\2"),
        (_RT + _ENC_LAYER + r"attention_norm\.weight$", r"audio_tower.layers.\1.self_attn_layer_norm.weight"),
        (_RT + _ENC_LAYER + r"ffn_norm\.weight$", r"audio_tower.layers.\1.final_layer_norm.weight"),
        (_RT + _ENC_LAYER + r"feed_forward\.w1\.weight$", r"audio_tower.layers.\1.mlp.gate_proj.weight"),
        (_RT + _ENC_LAYER + r"feed_forward\.w2\.(weight|bias)$", r"audio_tower.layers.\1.mlp.down_proj.\2"),
        (_RT + _ENC_LAYER + r"feed_forward\.w3\.weight$", r"audio_tower.layers.\1.mlp.up_proj.weight"),
        (_RT + r"audio_language_projection\.0\.weight$", r"multi_modal_projector.linear_1.weight"),
        (_RT + r"audio_language_projection\.2\.weight$", r"multi_modal_projector.linear_2.weight"),
    ],
    "offline": [
        (_OFF + r"tok_embeddings\.weight$", r"language_model.model.embed_tokens.weight"),
        (_OFF + r"whisper_encoder\.conv_layers\.0\.(weight|bias)$", r"audio_tower.conv1.\1"),
        (_OFF + r"whisper_encoder\.conv_layers\.1\.(weight|bias)$", r"audio_tower.conv2.\1"),
        (_OFF + r"whisper_encoder\.transformer\.norm\.(weight|bias)$", r"audio_tower.layer_norm.\1"),
        (_OFF + _ENC_LAYER + r"attention\.w([qkv])\.(weight|bias)$", r"audio_tower.layers.\1.self_attn.\2_proj.\3"),
        (_OFF + _ENC_LAYER + r"attention\.wo\.(weight|bias)$", r"audio_tower.layers.\1.self_attn.out_proj.\2"),
        (_OFF + _ENC_LAYER + r"attention_norm\.(weight|bias)$", r"audio_tower.layers.\1.self_attn_layer_norm.\2"),
        (_OFF + _ENC_LAYER + r"ffn_norm\.(weight|bias)$", r"audio_tower.layers.\1.final_layer_norm.\2"),
        (_OFF + _ENC_LAYER + r"feed_forward\.w1\.(weight|bias)$", r"audio_tower.layers.\1.fc1.\2"),
        (_OFF + _ENC_LAYER + r"feed_forward\.w2\.(weight|bias)$", r"audio_tower.layers.\1.fc2.\2"),
        (_OFF + r"audio_language_projection\.0\.weight$", r"multi_modal_projector.linear_1.weight"),
        (_OFF + r"audio_language_projection\.2\.weight$", r"multi_modal_projector.linear_2.weight"),
    ],
}


def hf_name(kind: str, name: str) -> str:
    """The hf name of a Mistral tensor (ValueError for one the mapping does not know)."""
    for pattern, replacement in (*_NAMES["common"], *_NAMES[kind]):
        new, n = re.subn(pattern, replacement, name)
        if n:
            return new
    raise ValueError(f"no hf name for {name!r} ({kind})")


def _halves(tensor, heads: int):
    """Rows of a q/k projection (weight (heads x d, in) or bias (heads x d,)) from interleaved RoPE
    pairs to transformers' halves: per head, row 2i -> i and row 2i + 1 -> d/2 + i."""
    rows = tensor.shape[0]
    d = rows // heads
    shaped = tensor.reshape(heads, d // 2, 2, *tensor.shape[1:])
    return shaped.transpose(1, 2).reshape(rows, *tensor.shape[1:])


def _sinusoids(length: int, channels: int):
    """Whisper's sinusoidal positions (log timescale 10000): sin then cos."""
    import torch

    increment = math.log(10000) / (channels // 2 - 1)
    inv = torch.exp(-increment * torch.arange(channels // 2, dtype=torch.float32))
    scaled = torch.arange(length, dtype=torch.float32)[:, None] * inv[None, :]
    return torch.cat([scaled.sin(), scaled.cos()], dim=1)


def _config(kind: str, params: dict):
    """transformers' config for ``params.json`` (the class defaults are the real checkpoints';
    sizes, norms and RoPE come from the file)."""
    from voxcli.testing.tiny import offline_config, realtime_config

    enc = params["multimodal"]["whisper_model_args"]["encoder_args"]
    config = realtime_config() if kind == "realtime" else offline_config()
    text, audio = config.text_config, config.audio_config
    for sub, src, kv in ((text, params, params["n_kv_heads"]), (audio, enc, enc["n_heads"])):
        sub.hidden_size, sub.num_hidden_layers = src["dim"], src["n_layers"]
        sub.intermediate_size, sub.num_attention_heads = src["hidden_dim"], src["n_heads"]
        sub.head_dim, sub.vocab_size = src["head_dim"], src["vocab_size"]
        if hasattr(sub, "num_key_value_heads"):
            sub.num_key_value_heads = kv
    text.rms_norm_eps = params["norm_eps"]
    text.max_position_embeddings = params.get("max_seq_len", text.max_position_embeddings)
    if kind == "realtime":
        text.sliding_window = int(params["sliding_window"])
        audio.sliding_window = int(enc["sliding_window"])
        audio.rms_norm_eps = enc["norm_eps"]
        text.rope_parameters = {"rope_theta": float(params["rope_theta"]), "rope_type": "default"}
        audio.rope_parameters = {"rope_theta": float(enc["rope_theta"]), "rope_type": "default"}
        config.downsample_factor = params["multimodal"]["whisper_model_args"]["downsample_args"]["downsample_factor"]
    else:
        text.rope_parameters = {"rope_theta": float(params["rope_theta"]), "rope_type": "default"}
        audio.max_source_positions = enc.get("max_source_positions", audio.max_source_positions)
    config.hidden_size = text.hidden_size
    return config


def mistral_to_hf(mistral_dir: str | Path, hf_dir: str | Path) -> Path:
    """Write the hf twin of a Mistral-format Voxtral directory (either kind) into ``hf_dir``."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoProcessor

    from voxcli.testing.tiny import offline_processor, realtime_processor

    mistral_dir, hf_dir = Path(mistral_dir), Path(hf_dir)
    params = json.loads((mistral_dir / "params.json").read_text())
    enc = params["multimodal"]["whisper_model_args"]["encoder_args"]
    kind = "realtime" if enc.get("causal") else "offline"
    config = _config(kind, params)
    hf_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(mistral_dir / "tekken.json", hf_dir / "tekken.json")
    state = {}
    for name, tensor in load_file(str(mistral_dir / "consolidated.safetensors")).items():
        new = hf_name(kind, name)
        rotary = re.search(r"\.(q|k)_proj\.", new) and (new.startswith("language_model") or kind == "realtime")
        if rotary:
            heads = config.text_config if new.startswith("language_model") else config.audio_config
            n = heads.num_attention_heads if ".q_proj." in new else heads.num_key_value_heads
            tensor = _halves(tensor, n)
        state[new] = tensor
    state["language_model.lm_head.weight"] = state["language_model.model.embed_tokens.weight"].clone()
    if kind == "realtime":
        from transformers import VoxtralRealtimeForConditionalGeneration as cls
    else:
        from transformers import VoxtralForConditionalGeneration as cls

        a = config.audio_config
        state["audio_tower.embed_positions.weight"] = _sinusoids(a.max_source_positions, a.hidden_size).to(torch.bfloat16)
    config.save_pretrained(hf_dir)
    save_file({k: v.contiguous() for k, v in state.items()}, str(hf_dir / "model.safetensors"), metadata={"format": "pt"})
    # Every tensor of the model read from the file, and nothing else in it.
    _, loading = cls.from_pretrained(hf_dir, dtype=torch.bfloat16, output_loading_info=True)
    wrong = {k: v for k, v in loading.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if wrong:
        raise ValueError(f"the hf twin does not match transformers' model: {wrong}")
    processor = realtime_processor(hf_dir) if kind == "realtime" else offline_processor(hf_dir)
    processor.save_pretrained(hf_dir)
    AutoProcessor.from_pretrained(hf_dir)  # the directory is complete
    return hf_dir


def hear_as_vllm(engine) -> int:
    """Move a local Realtime engine's step windows onto vLLM's grid; returns the samples moved.

    The one difference between voxcli and vLLM found with these twins (bench/RESULTS.md 11):
    vLLM cuts each step's audio ``streaming_look_back_ms`` (52.5) before and
    ``streaming_look_ahead_ms`` (2.5) after its 80 ms, and computes that window's mel centred, so
    every step after the prefill hears its 8 frames 40 samples earlier than the frames of the
    whole clip (which voxcli and transformers' offline ``generate`` use), and the first step's
    convolutions take their context from frames on that grid too. Moving the windows makes every
    step hear what vLLM's does; the first step's context still differs unless the audio around
    the end of the prefill is the same on both grids (silence)."""
    audio_config = engine.proc.audio_config
    shift = int(audio_config.streaming_look_ahead_ms * audio_config.sampling_rate / 1000)
    engine.next_window_start -= shift
    return shift


def as_served(audio):
    """The samples a server decodes from voxcli's PCM16 (vLLM divides by 32768): what voxcli's
    local engine must be handed to hear what the server heard. For audio read from a 16-bit file,
    the audio itself."""
    from voxcli.audio.pcm import from_pcm16, to_pcm16

    return from_pcm16(to_pcm16(audio))


def quiet_where_the_first_step_begins(audio, delay_ms: int):
    """``audio`` with silence around the end of the prefill (its first 1 + delay tokens), where
    vLLM's first step takes its convolutions' context from frames 40 samples off the whole clip's."""
    edge = (1 + delay_ms // 80) * TOKEN_SAMPLES
    out = audio.copy()
    out[edge - 1600:edge + 400] = 0.0
    return out


def first_difference(theirs: str, events) -> tuple[int, int | None]:
    """How many characters of ``theirs`` the text of ``events`` (voxcli's tokens) has from the
    start, and the index of the token where they first differ (None: identical). Only the joined
    texts are compared: a server's deltas and voxcli's tokens part a character that spans tokens at
    other places."""
    ours = "".join(e.text for e in events)
    same = next((i for i, (a, b) in enumerate(zip(theirs, ours)) if a != b), min(len(theirs), len(ours)))
    if theirs == ours:
        return same, None
    at, seen = 0, 0
    while at < len(events) and seen + len(events[at].text) <= same:
        seen += len(events[at].text)
        at += 1
    return same, at


def make_twin(out: str | Path, kind: str = "realtime", *, delay_ms: int = 480, seed: int = 0) -> tuple[Path, Path]:
    """``OUT/mistral`` and ``OUT/hf``: the same random weights in both layouts."""
    from voxcli.testing.tiny_mistral import make_tiny_mistral_model

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    out = Path(out)
    mistral = make_tiny_mistral_model(out / "mistral", kind, delay_ms=delay_ms, seed=seed)
    return mistral, mistral_to_hf(mistral, out / "hf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--kind", choices=KINDS, default="realtime")
    parser.add_argument("--delay-ms", type=int, default=480, help="the tokenizer's default delay (Realtime)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for path in make_twin(args.out, args.kind, delay_ms=args.delay_ms, seed=args.seed):
        print(path)


if __name__ == "__main__":
    main()
