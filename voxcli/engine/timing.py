"""What a local engine measures about itself for ``voxcli bench``: the model's own path to its
first token, and the environment that produced the figures."""

from __future__ import annotations

import os
import platform
import time

import numpy as np

from voxcli.units import SAMPLE_RATE


def critical_path_ms(engine, audio: np.ndarray) -> float:
    """The model's own path to its first token, with no pipeline around it: features, encoder,
    prefill and the first decode step, synchronized on a GPU."""
    import torch

    model = engine.model
    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
    static = getattr(engine, "static", None)
    # The static step's state is taken from the pool before the clock starts: resetting it is
    # the session's work (counted in ttft_ms), not the model's.
    state = static.acquire(engine.num_delay_tokens) if static is not None else None
    sync()
    t0 = time.perf_counter()
    with torch.inference_mode():
        if engine.kind == "realtime":
            need = engine.first_chunk_samples
            clip = np.zeros(need, np.float32)
            clip[: min(need, len(audio))] = audio[:need]
            feats = engine.log_mel(np.concatenate([engine.left_pad, clip]), center=True)
            ids = torch.tensor([engine.prompt_ids], device=model.device)
            if state is not None:
                from voxcli.engine.batching import Job

                static.run([Job(state, feats, ids)])  # reads the token id back: synchronized
                sync()
                static.release(state)
                return (time.perf_counter() - t0) * 1000.0
            out = model(input_ids=ids, input_features=feats.to(model.device, model.dtype), use_cache=True,
                        num_delay_tokens=engine.num_delay_tokens, logits_to_keep=1)
        else:
            inputs = engine.proc.transcription_request(audio[: 30 * SAMPLE_RATE], language=None,
                                                       model_id=engine.info.model).to(model.device)
            inputs["input_features"] = inputs["input_features"].to(model.dtype)
            out = model(**inputs, use_cache=True, logits_to_keep=1)
        int(out.logits[:, -1].argmax(-1).item())
    sync()
    return (time.perf_counter() - t0) * 1000.0


def environment(engine) -> dict:
    """The device, the libraries and the settings a local engine's figures came from."""
    import torch
    import transformers

    device = engine.info.device
    if device.startswith("cuda"):
        device_name = torch.cuda.get_device_name(torch.device(device))
    else:
        device_name = cpu_name()
    info = engine.info
    static = getattr(engine, "static", None)
    graphs = {}
    if static is not None and static.compilation.graphs.at_warmup is not None:
        # What warm-up compiled and recorded, and what came after it (anything but zeros: a slow step).
        graphs = {"graphs": info.graphs, "graphs_after_warmup": static.compilation.graphs.after_warmup.to_dict()}
    return {
        "n_params": info.n_params, "delay_ms": info.delay_ms, "step": info.step,
        "compile_s": info.compile_s, **graphs,
        **({"compile_fallback": info.compile_fallback} if info.compile_fallback else {}),
        "device_name": device_name, "dtype": engine.info.dtype,
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or f"cpu ({os.cpu_count()} cores)"
