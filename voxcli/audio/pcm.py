"""16-bit PCM, the one conversion every wire uses (OpenAI's, vLLM's, Mistral's and Deepgram's
realtime audio, Wyoming's chunks, WAV uploads).

Both directions scale by 32768, as vLLM and the servers here decode: a sample read from a 16-bit
file goes out and comes back bit-identical, so a server hears exactly what the local engine
hears. Scaling by 32767 on the way out (as this code once did) moved every sample louder than
half of full scale by one step (0.3 % of examples/hello.wav's), enough to flip a token of the tiny
random model mid-clip.
"""

from __future__ import annotations

import numpy as np

__all__ = ["from_pcm16", "to_pcm16"]


def to_pcm16(samples: np.ndarray) -> bytes:
    """float samples in [-1, 1] -> little-endian 16-bit PCM (beyond the range: clipped)."""
    return np.clip(np.round(np.asarray(samples, np.float64) * 32768.0), -32768, 32767).astype("<i2").tobytes()


def from_pcm16(raw: bytes) -> np.ndarray:
    """Little-endian 16-bit PCM -> float32 in [-1, 1)."""
    return np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
