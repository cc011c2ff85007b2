"""Loading a Voxtral checkpoint on this machine: the device, the dtype, the kind (told apart by
its config), the memory check, then the engine of that kind, warmed up."""

from __future__ import annotations

import time
from pathlib import Path

from voxcli.choices import COMPILE_MODES, DEFAULT_MODEL, DEVICES, DTYPES
from voxcli.delays import check_delay_ms
from voxcli.engine.base import LocalEngine
from voxcli.engine.contract import EngineInfo
from voxcli.errors import ModelError, first_line, setting

DEVICE = setting("model.device")


def resolve_device(device: str) -> str:
    """``auto`` picks cuda, then mps, then cpu. Explicit ``cuda:N`` is accepted."""
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    base = device.split(":", 1)[0]
    if base not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)} (or cuda:N), got {device!r}")
    if base == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} was asked for but CUDA is not available here; use {DEVICE}=cpu",
                         device=device)
    if base == "mps" and not torch.backends.mps.is_available():
        raise ModelError(f"device 'mps' was asked for but MPS is not available here; use {DEVICE}=cpu", device=device)
    return device


def resolve_dtype(dtype: str, device: str):
    """``auto`` is bfloat16 on a GPU that has it, float16 on a CUDA GPU that does not (V100, T4:
    bfloat16 there is emulated, or refused), and float32 on the CPU (bf16 matmuls are slow on
    most CPUs)."""
    import torch

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if dtype == "auto":
        if device == "cpu":
            return torch.float32
        if device.startswith("cuda") and not torch.cuda.is_bf16_supported(including_emulation=False):
            return torch.float16
        return torch.bfloat16
    return getattr(torch, dtype)


def detect_kind(config) -> str:
    model_type = getattr(config, "model_type", None)
    if model_type == "voxtral_realtime":
        return "realtime"
    if model_type == "voxtral":
        return "offline"
    raise ModelError(
        f"model type {model_type!r} is not a Voxtral model; expected a Voxtral Mini 4B Realtime "
        f"or Voxtral Mini 3B / Small 24B checkpoint"
    )


def load_engine(model: str = DEFAULT_MODEL, *, device: str = "auto", dtype: str = "auto",
                delay_ms: int | None = None, threads: int = 0, warmup: bool = True,
                offline: bool = False, max_new_tokens: int = 500, name: str | None = None,
                step: str = "static", compile: str = "auto", sessions: int = 1, alternatives: int = 0,
                confidence: bool = False, keyterms=None, on_eos: str = "restart") -> LocalEngine:
    """Load a Voxtral checkpoint from a hub id or a local directory and warm it up.

    Safetensors only, no remote code. The first use of a hub id downloads it (with progress
    bars); ``offline`` (or ``HF_HUB_OFFLINE=1``) uses only the local cache. Before any weights
    are read, the memory the model needs is compared with what the device has free. Raises
    :class:`ModelError` with one actionable line when any of that cannot work. ``name`` is how
    reports name the model (default: ``model``), e.g. the hub id of an already resolved path.
    ``sessions``: Realtime streams stepped together, the batch's rows (two-pass: 2; ``model.max_streams``),
    each counted by the memory check. ``alternatives``: the top K every token event carries, with
    ``p`` (``confidence``: ``p`` alone); ``keyterms``: what every session favours unless it says
    otherwise (:class:`voxcli.engine.keyterms.Keyterms`). ``on_eos`` (Realtime): ``restart`` or ``pad``, what a
    stream does when the model says end of sequence with audio left (:class:`RealtimeSession`).
    """
    t0 = time.perf_counter()
    from voxcli.engine.hub import resolve_checkpoint

    if delay_ms is not None:
        check_delay_ms(delay_ms)
    path = resolve_checkpoint(model, offline=offline)  # every hub failure is one line, quickly
    import torch

    from voxcli.engine.memory import check_fits

    if threads:
        torch.set_num_threads(threads)
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    config = _load_config(path, model)
    kind = detect_kind(config)
    compiled = step == "static" and wants_compile(compile, str(device))
    est = check_fits(config, kind, torch_dtype, device, model, sessions=sessions,
                     graphs=kind == "realtime" and compiled)
    try:
        from transformers import AutoProcessor

        if kind == "realtime":
            from transformers import VoxtralRealtimeForConditionalGeneration as model_cls
        else:
            from transformers import VoxtralForConditionalGeneration as model_cls
        # Everything is local by now: transformers never goes to the network.
        common = {"trust_remote_code": False, "local_files_only": True}
        processor = AutoProcessor.from_pretrained(path, **common)
        net = model_cls.from_pretrained(path, dtype=torch_dtype, use_safetensors=True, **common)
    except (OSError, ValueError) as exc:
        raise ModelError(f"{setting('model.name')} {model}: cannot load the checkpoint: {first_line(exc)}",
                         model=model) from exc
    net = net.to(device).eval()
    n_params = sum(p.numel() for p in net.parameters())
    info = EngineInfo(model=name or str(model), kind=kind, device=str(device),
                      dtype=str(torch_dtype).removeprefix("torch."), n_params=n_params,
                      load_s=time.perf_counter() - t0)
    if est is not None and kind == "realtime" and step == "static" and sessions > 1:
        from voxcli.engine.memory import available_bytes

        free = available_bytes(str(device))  # the weights are in; no row is allocated yet
        if free is not None and est.row_bytes:
            info.streams = {"rows": sessions, "row_gib": round(est.row_bytes / 1024**3, 3),
                                     "fit": est.rows_in(free[0])}
    if dtype == "auto" and torch_dtype == torch.float16:
        info.dtype_why = "this GPU has no bfloat16"  # the load line says why it is not bf16
    outputs = {"alternatives": alternatives, "confidence": confidence, "keyterms": keyterms}
    from voxcli.engine.offline import OfflineEngine
    from voxcli.engine.realtime import RealtimeEngine

    if kind == "realtime":
        engine: LocalEngine = RealtimeEngine(net, processor, info, delay_ms=delay_ms, step=step, compile=compiled,
                                        streams=sessions, on_eos=on_eos, **outputs)
    else:
        engine = OfflineEngine(net, processor, info, max_new_tokens=max_new_tokens, **outputs)
    if warmup:
        engine.warmup()
    return engine


def wants_compile(mode: str, device: str) -> bool:
    """``model.compile``: ``on``, ``off``, or ``auto``: compiled on CUDA (CUDA graphs: one launch
    a step instead of thousands), eager on the CPU, where compiling takes longer than a typical
    session saves (bench/RESULTS.md, section 5)."""

    if mode not in COMPILE_MODES:
        raise ValueError(f"compile must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
    if mode == "auto":
        return device.startswith("cuda")
    return mode == "on"


def _load_config(path: Path, model: str):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=False, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelError(f"{setting('model.name')} {model}: cannot read its config.json: {first_line(exc)}",
                         model=model) from exc
