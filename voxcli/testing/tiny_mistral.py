"""Tiny random-weight Voxtral checkpoints in Mistral's native format, for vLLM.

vLLM loads Voxtral only from ``params.json`` + ``consolidated.safetensors`` + ``tekken.json``
(``--tokenizer-mode mistral --config-format mistral --load-format mistral``). This writes such a
directory for either kind, small enough that a vLLM CPU server starts in about a minute and
steps in milliseconds. Random weights give meaningless, mostly printable tokens: use it for
protocol, streaming and timing tests, never for wording. Build one with
``python -m voxcli.testing.tiny_mistral DIR --kind realtime|offline``.

The tensor names and shapes follow what vLLM 0.32's loader expects (``voxtral.py``,
``voxtral_realtime.py``, ``whisper.py``, ``whisper_causal.py``, ``mistral.py``) and the real
checkpoints (the names transformers' conversion scripts read):

- language model, both kinds: ``layers.N.attention.{wq,wk,wv,wo}.weight``,
  ``layers.N.attention_norm.weight``, ``layers.N.feed_forward.{w1,w2,w3}.weight``,
  ``layers.N.ffn_norm.weight``, ``norm.weight``; the embedding is tied (no ``output.weight``).
- offline (Voxtral Mini 3B style), under ``mm_whisper_embeddings.``: ``tok_embeddings.weight``,
  ``whisper_encoder.conv_layers.{0,1}.{weight,bias}``, Whisper encoder layers
  ``whisper_encoder.transformer.layers.N.attention.{wq,wv,wo}.{weight,bias}`` + ``wk.weight`` (no
  k bias), LayerNorm ``attention_norm``/``ffn_norm`` (weight and bias), GELU MLP
  ``feed_forward.{w1,w2}.{weight,bias}``, ``whisper_encoder.transformer.norm.{weight,bias}``, and
  the adapter ``audio_language_projection.{0,2}.weight``.
- realtime (Voxtral Mini 4B Realtime style, chosen by ``encoder_args.causal: true``), under
  ``mm_streams_embeddings.embedding_module.``: the same, except causal convolutions
  ``whisper_encoder.conv_layers.{0,1}.conv.{weight,bias}``, RMSNorm norms (weight only) and a
  SwiGLU MLP ``feed_forward.{w1,w3}.weight`` + ``feed_forward.w2.{weight,bias}``; plus, in the
  language model, ``layers.N.ada_rms_norm_t_cond.{0,2}.weight``.

vLLM's CPU attention supports head sizes 32, 64, 80, ... only, so heads here are 32 wide.
Tensors are stored in bfloat16, like the real checkpoints (vLLM serves them in bfloat16 on CPU
and warns about every float32 tensor it has to cast). It needs numpy, torch and safetensors, which
voxcli's environment and vLLM's both have.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from voxcli.testing.tiny import KINDS, NUM_SPECIAL_TOKENS, NUM_TEXT_TOKENS, tekken

VOCAB_SIZE = NUM_SPECIAL_TOKENS + NUM_TEXT_TOKENS
DOWNSAMPLE_FACTOR = 4  # encoder frames (20 ms) per text token (80 ms)
NUM_MEL_BINS = 128


def _params(kind: str, *, hidden_size: int, num_layers: int, head_dim: int, num_heads: int,
            num_kv_heads: int, encoder_size: int, encoder_layers: int) -> dict:
    encoding = {"sampling_rate": 16000, "frame_rate": 12.5, "num_mel_bins": NUM_MEL_BINS,
                "hop_length": 160, "window_size": 400}
    encoder = {
        "dim": encoder_size,
        "n_layers": encoder_layers,
        "head_dim": head_dim,
        "n_heads": encoder_size // head_dim,
        "n_kv_heads": encoder_size // head_dim,
        "vocab_size": VOCAB_SIZE,
        "norm_eps": 1e-5,
    }
    params = {
        "dim": hidden_size,
        "n_layers": num_layers,
        "head_dim": head_dim,
        "hidden_dim": hidden_size * 2,
        "n_heads": num_heads,
        "n_kv_heads": num_kv_heads,
        "rope_theta": 1e6,
        "norm_eps": 1e-5,
        "vocab_size": VOCAB_SIZE,
        "tied_embeddings": True,
        "max_position_embeddings": 16384,
        "max_seq_len": 16384,
    }
    if kind == "realtime":
        encoding |= {"global_log_mel_max": 1.5, "transcription_format": "streaming"}
        encoder |= {
            "hidden_dim": encoder_size * 2,
            "causal": True,
            "pos_embed": "rope",
            "sliding_window": 750,
            "rope_theta": 1e6,
            "use_biases": True,
            "ffn_type": "swiglu",
            "norm_type": "rms_norm",
        }
        params |= {"sliding_window": 8192, "ada_rms_norm_t_cond": True,
                   "ada_rms_norm_t_cond_dim": 32}
    else:
        encoding |= {"chunk_length_s": 30.0, "transcription_format": "instruct"}
        # Whisper-style: a 4x GELU MLP and 1500 source positions (30 s windows).
        encoder |= {"hidden_dim": encoder_size * 4, "max_source_positions": 1500}
    encoder["audio_encoding_args"] = encoding
    params["multimodal"] = {"whisper_model_args": {
        "encoder_args": encoder,
        "downsample_args": {"downsample_factor": DOWNSAMPLE_FACTOR},
    }}
    return params


def _shapes(kind: str, p: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor of the checkpoint, by name, with its shape."""
    h, f = p["dim"], p["hidden_dim"]
    q, kv = p["n_heads"] * p["head_dim"], p["n_kv_heads"] * p["head_dim"]
    enc = p["multimodal"]["whisper_model_args"]["encoder_args"]
    e, ef, eq = enc["dim"], enc["hidden_dim"], enc["n_heads"] * enc["head_dim"]
    realtime = kind == "realtime"
    mm = "mm_streams_embeddings.embedding_module." if realtime else "mm_whisper_embeddings."
    shapes: dict[str, tuple[int, ...]] = {f"{mm}tok_embeddings.weight": (VOCAB_SIZE, h),
                                          "norm.weight": (h,)}
    for i in range(p["n_layers"]):
        layer = f"layers.{i}."
        shapes |= {
            layer + "attention.wq.weight": (q, h),
            layer + "attention.wk.weight": (kv, h),
            layer + "attention.wv.weight": (kv, h),
            layer + "attention.wo.weight": (h, q),
            layer + "attention_norm.weight": (h,),
            layer + "feed_forward.w1.weight": (f, h),
            layer + "feed_forward.w2.weight": (h, f),
            layer + "feed_forward.w3.weight": (f, h),
            layer + "ffn_norm.weight": (h,),
        }
        if realtime:
            t = p["ada_rms_norm_t_cond_dim"]
            shapes |= {layer + "ada_rms_norm_t_cond.0.weight": (t, h),
                       layer + "ada_rms_norm_t_cond.2.weight": (h, t)}
    w = mm + "whisper_encoder."
    conv = ".conv" if realtime else ""
    shapes |= {
        f"{w}conv_layers.0{conv}.weight": (e, NUM_MEL_BINS, 3),
        f"{w}conv_layers.0{conv}.bias": (e,),
        f"{w}conv_layers.1{conv}.weight": (e, e, 3),
        f"{w}conv_layers.1{conv}.bias": (e,),
    }
    for i in range(enc["n_layers"]):
        layer = f"{w}transformer.layers.{i}."
        shapes |= {
            layer + "attention.wq.weight": (eq, e),
            layer + "attention.wq.bias": (eq,),
            layer + "attention.wk.weight": (eq, e),  # no k bias: vLLM adds a zero one
            layer + "attention.wv.weight": (eq, e),
            layer + "attention.wv.bias": (eq,),
            layer + "attention.wo.weight": (e, eq),
            layer + "attention.wo.bias": (e,),
            layer + "attention_norm.weight": (e,),
            layer + "ffn_norm.weight": (e,),
            layer + "feed_forward.w1.weight": (ef, e),
            layer + "feed_forward.w2.weight": (e, ef),
            layer + "feed_forward.w2.bias": (e,),
        }
        if realtime:  # SwiGLU, RMSNorm
            shapes[layer + "feed_forward.w3.weight"] = (ef, e)
        else:  # GELU MLP with biases, LayerNorm
            shapes |= {layer + "feed_forward.w1.bias": (ef,),
                       layer + "attention_norm.bias": (e,),
                       layer + "ffn_norm.bias": (e,)}
    shapes[f"{w}transformer.norm.weight"] = (e,)
    if not realtime:
        shapes[f"{w}transformer.norm.bias"] = (e,)
    shapes |= {f"{mm}audio_language_projection.0.weight": (h, e * DOWNSAMPLE_FACTOR),
               f"{mm}audio_language_projection.2.weight": (h, h)}
    return shapes


def _tensors(kind: str, params: dict, *, seed: int, std: float) -> dict[str, np.ndarray]:
    """Random matrices (std ``std``: with a narrow init a tiny model repeats one token forever),
    norm weights 1, biases 0, and zero special-token rows in the tied embedding so the random
    logits favour printable text."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, shape in _shapes(kind, params).items():
        if name.endswith(".bias"):
            value = np.zeros(shape, np.float32)
        elif len(shape) == 1:
            value = np.ones(shape, np.float32)
        else:
            value = rng.normal(0.0, std, shape).astype(np.float32)
        tensors[name] = value
    embedding = next(v for k, v in tensors.items() if k.endswith("tok_embeddings.weight"))
    embedding[:NUM_SPECIAL_TOKENS] = 0.0
    return tensors


def make_tiny_mistral_model(path: str | Path, kind: str = "realtime", *, hidden_size: int = 64,
                            num_layers: int = 2, head_dim: int = 32, num_heads: int = 2,
                            num_kv_heads: int = 1, encoder_size: int = 64,
                            encoder_layers: int = 2, delay_ms: int = 480, seed: int = 0,
                            std: float = 0.3) -> Path:
    """Write ``params.json``, ``consolidated.safetensors`` and ``tekken.json`` into ``path``.

    ``kind`` is "realtime" (causal encoder, Voxtral Mini 4B Realtime layout; ``delay_ms`` sets the
    transcription delay, a multiple of 80) or "offline" (Whisper encoder, Voxtral Mini 3B layout).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if encoder_size % head_dim:
        raise ValueError(f"encoder_size ({encoder_size}) must be a multiple of "
                         f"head_dim ({head_dim})")
    if delay_ms <= 0 or delay_ms % 80:
        raise ValueError(f"delay_ms must be a positive multiple of 80, got {delay_ms}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    params = _params(kind, hidden_size=hidden_size, num_layers=num_layers, head_dim=head_dim,
                     num_heads=num_heads, num_kv_heads=num_kv_heads, encoder_size=encoder_size,
                     encoder_layers=encoder_layers)
    (path / "params.json").write_text(json.dumps(params, indent=2))
    (path / "tekken.json").write_text(json.dumps(tekken(kind, delay_ms)))
    _save_bf16_safetensors(_tensors(kind, params, seed=seed, std=std),
                           path / "consolidated.safetensors")
    return path


def _save_bf16_safetensors(tensors: dict[str, np.ndarray], path: Path) -> None:
    """Write float32 arrays as a bfloat16 safetensors file (numpy has no bfloat16 type: torch
    rounds them, to nearest even, and safetensors writes the file)."""
    import torch
    from safetensors.torch import save_file

    save_file({name: torch.from_numpy(np.ascontiguousarray(array, np.float32)).to(torch.bfloat16)
               for name, array in tensors.items()}, str(path), metadata={"format": "pt"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path")
    parser.add_argument("--kind", choices=KINDS, default="realtime")
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--delay-ms", type=int, default=480)
    args = parser.parse_args()
    print(make_tiny_mistral_model(args.path, args.kind, hidden_size=args.hidden_size,
                                  num_layers=args.layers, delay_ms=args.delay_ms))


if __name__ == "__main__":
    main()
