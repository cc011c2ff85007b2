"""Will the model fit? An estimate from its config, made before any weights are read.

Parameters are counted exactly by building the model on PyTorch's meta device (shapes only, no
memory, no weights). On top of them come the caches a session keeps at their largest: the
Realtime model's two sliding windows (text decoder and audio encoder), or, for the offline
models, one 30 s window plus the tokens generated for it. The total is compared with free GPU
memory (CUDA) or available system memory (CPU, MPS). Loading a model that does not fit would
otherwise end with the OOM killer and no message.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)
GIB = 1024**3
OFFLINE_CONTEXT_TOKENS = 375 + 500  # 30 s of audio tokens (1500 frames / 4) + max_new_tokens
SKIP_ENV = "VOXCLI_SKIP_MEMORY_CHECK"


@dataclass(frozen=True)
class MemoryEstimate:
    n_params: int
    dtype_bytes: int
    weights_bytes: int
    cache_bytes: int  # every session state together (two-pass keeps two)
    sessions: int = 1
    graph_bytes: int = 0  # the compiled step's CUDA-graph pool: one step's activations and logits

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.cache_bytes + self.graph_bytes

    @property
    def row_bytes(self) -> int:
        """What one more stream costs: one row of both rings (the Realtime model)."""
        return self.cache_bytes // max(self.sessions, 1)

    def rows_in(self, room_bytes: int) -> int:
        """How many streams' rows ``room_bytes`` holds."""
        return max(0, room_bytes // self.row_bytes) if self.row_bytes else 0

    def streams_fit(self, free_bytes: int) -> int:
        """How many streams fit beside the weights in ``free_bytes`` (the graph pool counted once)."""
        return self.rows_in(free_bytes - self.weights_bytes - self.graph_bytes)

    def items(self, device: str) -> list[tuple[str, int, str]]:
        """What the estimate counts, item by item (``--debug`` prints them)."""
        rows = [("weights", self.weights_bytes, f"{self.n_params / 1e9:.2f} B parameters"),
                ("session states", self.cache_bytes, f"{self.sessions} x both sliding-window caches at their largest "
                                                     "(a row of the batched step each)"),
                ("graph pool", self.graph_bytes, "compiled step on CUDA: one step's activations and logits")]
        if device.startswith("cuda"):
            rows.append(("CUDA context", 0, "already taken from the free figure: reading it creates the context"))
            rows.append(("host RAM while loading", self.weights_bytes, "the weights pass through system memory"))
        return rows


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


def estimate(config, kind: str, dtype_bytes: int, *, sessions: int = 1, graphs: bool = False) -> MemoryEstimate:
    """``sessions``: Realtime session states held at once (two-pass: 2); ``graphs``: the step is
    compiled into CUDA graphs, whose pool holds a step's intermediates."""
    n_params = count_parameters(config, kind)
    text = config.text_config
    graph = 0
    if kind == "realtime":
        audio = config.audio_config
        text_tokens = min(text.sliding_window or text.max_position_embeddings, text.max_position_embeddings)
        cache = _kv_bytes(text, text_tokens, dtype_bytes) + _kv_bytes(audio, audio.sliding_window + 3, dtype_bytes)
        cache += text.vocab_size * dtype_bytes  # the row's keyterm bias (voxcli.engine.rows)
        cache *= sessions
        if graphs:
            # The largest graph is the prefill: 39 prompt tokens, 156 encoder positions. Its peak is
            # one layer's activations plus the attention scores, and the float32 logits.
            enc_pos, tokens = 39 * 4, 39
            enc = enc_pos * (audio.intermediate_size * 2 + 4 * audio.hidden_size) * dtype_bytes
            enc += audio.num_attention_heads * enc_pos * enc_pos * 4
            dec = tokens * (text.intermediate_size * 2 + 4 * text.hidden_size) * dtype_bytes
            graph = 2 * (enc + dec) + 4 * text.vocab_size * 4
    else:
        cache = _kv_bytes(text, OFFLINE_CONTEXT_TOKENS, dtype_bytes)
    return MemoryEstimate(n_params, dtype_bytes, n_params * dtype_bytes, cache, sessions, graph)


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


def check_fits(config, kind: str, dtype, device: str, model: str, *, sessions: int = 1,
               graphs: bool = False) -> MemoryEstimate | None:
    """Raise ModelError (one line, both figures, what to try) when the model will not fit: on the
    device, and (loading onto a GPU) in system memory, which the weights pass through."""
    from voxcli.errors import ModelError, setting

    if os.environ.get(SKIP_ENV, "") not in ("", "0"):
        return None
    est = estimate(config, kind, dtype.itemsize, sessions=sessions, graphs=graphs and device.startswith("cuda"))
    for name, size, note in est.items(device):
        log.debug("memory: %-24s %6.2f GiB  (%s)", name, size / GIB, note)
    free = available_bytes(device)
    if device.startswith("cuda"):
        host = available_bytes("cpu")
        if host is not None and est.weights_bytes > host[0]:
            raise ModelError(
                f"{model} passes its {est.weights_bytes / GIB:.1f} GiB of weights through system memory while "
                f"loading, but only {host[0] / GIB:.1f} GiB {host[1]}; close other programs or add swap "
                f"({SKIP_ENV}=1 loads it anyway)", model=model, needed_bytes=est.weights_bytes, free_bytes=host[0])
    if free is not None:
        log.debug("memory: %-24s %6.2f GiB  (%s)", "free", free[0] / GIB, free[1])
        if kind == "realtime":
            log.debug("memory: %-24s %6.2f GiB  (%d fit)", "one more stream", est.row_bytes / GIB,
                      est.streams_fit(free[0]))
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
        f"parameters = {est.weights_bytes / GIB:.1f} GiB, caches {est.cache_bytes / GIB:.1f} GiB"
        f"{f' for {est.sessions} streams, {est.row_bytes / GIB:.2f} GiB each' if est.sessions > 1 else ''}"
        f"{f', graphs {est.graph_bytes / GIB:.1f} GiB' if est.graph_bytes else ''}), but only "
        f"{free[0] / GIB:.1f} GiB is {free[1]}; try {', or '.join(tries)} "
        f"({SKIP_ENV}=1 loads it anyway)", model=model, needed_bytes=est.total_bytes, free_bytes=free[0])
