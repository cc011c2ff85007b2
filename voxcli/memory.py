"""Will the model fit? An estimate from its config, made before any weights are read.

Parameters are counted exactly by building the model on PyTorch's meta device (shapes only, no
memory, no weights). On top of them come the caches a session keeps at their largest: the
Realtime model's two sliding windows (text decoder and audio encoder), or, for the offline
models, one 30 s window plus the tokens generated for it. The total is compared with free GPU
memory (CUDA) or available system memory (CPU, MPS). Loading a model that does not fit would
otherwise end with the OOM killer and no message.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

GIB = 1024**3
OFFLINE_CONTEXT_TOKENS = 375 + 500  # 30 s of audio tokens (1500 frames / 4) + max_new_tokens
SKIP_ENV = "VOXCLI_SKIP_MEMORY_CHECK"


@dataclass(frozen=True)
class MemoryEstimate:
    n_params: int
    dtype_bytes: int
    weights_bytes: int
    cache_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.cache_bytes


def count_parameters(config, kind: str) -> int:
    """Exact parameter count of the model ``config`` describes, without allocating it."""
    import torch

    if kind == "realtime":
        from transformers import VoxtralRealtimeForConditionalGeneration as model_cls
    else:
        from transformers import VoxtralForConditionalGeneration as model_cls
    with torch.device("meta"):
        model = model_cls(config)
    return sum(p.numel() for p in model.parameters())


def _kv_bytes(sub, tokens: int, dtype_bytes: int) -> int:
    heads = getattr(sub, "num_key_value_heads", None) or sub.num_attention_heads
    head_dim = getattr(sub, "head_dim", None) or sub.hidden_size // sub.num_attention_heads
    return sub.num_hidden_layers * 2 * heads * head_dim * tokens * dtype_bytes


def estimate(config, kind: str, dtype_bytes: int) -> MemoryEstimate:
    n_params = count_parameters(config, kind)
    text = config.text_config
    if kind == "realtime":
        audio = config.audio_config
        text_tokens = min(text.sliding_window or text.max_position_embeddings, text.max_position_embeddings)
        cache = _kv_bytes(text, text_tokens, dtype_bytes) + _kv_bytes(audio, audio.sliding_window, dtype_bytes)
    else:
        cache = _kv_bytes(text, OFFLINE_CONTEXT_TOKENS, dtype_bytes)
    return MemoryEstimate(n_params, dtype_bytes, n_params * dtype_bytes, cache)


def available_bytes(device: str) -> tuple[int, str] | None:
    """(bytes free, what that is) for ``device``, or None where it cannot be told."""
    if device.startswith("cuda"):
        import torch

        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return int(free), f"free on {torch.cuda.get_device_name(torch.device(device))}"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024, "of system memory available"
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "of system memory free"
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(config, kind: str, dtype, device: str, model: str) -> MemoryEstimate | None:
    """Raise ModelError (one line, both figures, what to try) when the model will not fit."""
    from voxcli.errors import ModelError, setting

    if os.environ.get(SKIP_ENV, "") not in ("", "0"):
        return None
    est = estimate(config, kind, dtype.itemsize)
    free = available_bytes(device)
    if free is None or est.total_bytes <= free[0]:
        return est
    dtype_name = str(dtype).removeprefix("torch.")
    tries = []
    if est.dtype_bytes > 2:
        tries.append(f"{setting('model.dtype')}=bfloat16 (half the weights)")
    if not device.startswith("cuda"):
        tries.append(f"a GPU ({setting('model.device')}=cuda)")
    tries.append("a smaller model")
    raise ModelError(
        f"{model} needs about {est.total_bytes / GIB:.1f} GiB in {dtype_name} ({est.n_params / 1e9:.2f} B "
        f"parameters = {est.weights_bytes / GIB:.1f} GiB, caches {est.cache_bytes / GIB:.1f} GiB), but only "
        f"{free[0] / GIB:.1f} GiB is {free[1]}; try {', or '.join(tries)} "
        f"({SKIP_ENV}=1 loads it anyway)", model=model, needed_bytes=est.total_bytes, free_bytes=free[0])
