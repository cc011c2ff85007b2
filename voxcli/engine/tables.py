"""What the static step computes once per model and reuses: the decoder's conditioning on the
delay (per delay) and the rotations that re-anchor cached keys (per shift)."""

from __future__ import annotations

import math


class Tables:
    """Made on first use, kept: no device sync inside a session."""

    def __init__(self, tower, lm, time_embedding, device, dtype) -> None:
        self.tower, self.lm, self.time_embedding = tower, lm, time_embedding
        self.device, self.dtype = device, dtype
        self._ada: dict[int, object] = {}
        self._rotations: dict[tuple[bool, int], tuple] = {}

    def ada_scale(self, num_delay_tokens: int):
        """``1 + ada_rms_norm(t_cond)`` for every decoder layer, as transformers computes it:
        (layers, 1, 1, hidden)."""
        import torch

        if num_delay_tokens not in self._ada:
            with torch.inference_mode():
                time_tensor = torch.full((1,), num_delay_tokens, device=self.device, dtype=self.dtype)
                t_cond = self.time_embedding(time_tensor)[None, ...]
                scales = [1 + layer.ada_rms_norm(t_cond) for layer in self.lm.layers]
                self._ada[num_delay_tokens] = torch.stack(scales)[:, None].clone()
        return self._ada[num_delay_tokens]

    def rotation(self, encoder: bool, shift: int) -> tuple:
        """cos and sin of -shift times each frequency (the angle reduced mod 2 pi in float64, so the
        shift adds no error of its own), in float32 on the device."""
        import torch

        if (encoder, shift) not in self._rotations:
            rotary = (self.tower if encoder else self.lm).rotary_emb
            angle = torch.remainder(-float(shift) * rotary.inv_freq.detach().double().cpu(), 2 * math.pi)
            emb = torch.cat([angle, angle])
            # No attention_scaling here: the cached keys carry it once already, from their own
            # rotation; a rotation by a pure angle keeps it once.
            self._rotations[(encoder, shift)] = (emb.cos().to(self.device, torch.float32),
                                                 emb.sin().to(self.device, torch.float32))
        return self._rotations[(encoder, shift)]
