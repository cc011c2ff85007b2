"""transformers' eager forward as a Realtime step (``model.step: hf``, the reference the static
step is tested against), behind the static step's face: ``acquire`` a stream's state, ``run(jobs)``
one forward per job, ``restart``, ``set_token``, ``release``."""

from __future__ import annotations

import time

from voxcli.engine.batching import ForwardClock
from voxcli.engine.pick import pick, unpack


class HfState:
    """One stream's three caches, which the forward updates in place, its keyterm bias, and the
    token its next step is fed."""

    def __init__(self, engine) -> None:
        from transformers import DynamicCache
        from transformers.models.voxtral_realtime.modeling_voxtral_realtime import VoxtralRealtimeConv1dPaddingCache

        config = engine.model.config
        self.caches = {
            engine.cache_kwargs["cache"]: DynamicCache(config=config.text_config),
            engine.cache_kwargs["encoder_cache"]: DynamicCache(config=config.audio_config),
            "padding_cache": VoxtralRealtimeConv1dPaddingCache(),
        }
        self.bias = engine.bias_vector()  # this stream's keyterm bias
        self.last_token = None


class HfStep:
    """Each job in a forward of its own (the hf step does not batch: ``batch`` stays None)."""

    name = "hf eager"

    def __init__(self, engine) -> None:
        self.engine = engine
        self.clock = ForwardClock()

    def acquire(self, num_delay_tokens: int, *, position_offset: int = 0) -> HfState:
        if position_offset:
            raise ValueError("position_offset needs the static step")
        return HfState(self.engine)

    def release(self, state: HfState) -> None:
        pass  # nothing pooled: the caches go with the state

    def restart(self, state: HfState, num_delay_tokens: int) -> HfState:
        """A new stream for a session: fresh caches (a new state: the hf forward's are its own)."""
        return HfState(self.engine)

    def set_token(self, state: HfState, token_id: int) -> None:
        import torch

        state.last_token = torch.full((1, 1), token_id, device=self.engine.device, dtype=torch.long)

    def bias(self, state: HfState):
        return state.bias

    def run(self, jobs: list) -> list:
        """The prompt (a prefill) or the last token, through transformers' forward, one job after
        the other; each job's id on the host, its logits kept where asked."""
        import torch

        engine = self.engine
        model = engine.model
        for job in jobs:
            state = job.state
            t0 = time.perf_counter()
            input_ids = job.prompt_ids if job.prompt_ids is not None else state.last_token
            with torch.inference_mode():
                out = model(input_ids=input_ids, input_features=job.mel.to(model.device, model.dtype), use_cache=True,
                            **state.caches, num_delay_tokens=engine.num_delay_tokens, logits_to_keep=1)
                logits = out.logits[:, -1]
                next_id, packed = pick(logits, state.bias, engine.top_k)
            state.last_token = next_id[:, None]  # the static step keeps it in its own state
            job.picked = unpack(packed[0].tolist(), engine.top_k)  # the one sync per token
            job.t_done = time.perf_counter()
            job.step_ms, job.batch = (job.t_done - t0) * 1000.0, None
            job.logits = logits.float().cpu().clone() if job.keep_logits else None
        return jobs
