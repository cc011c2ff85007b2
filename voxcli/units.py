"""The units everything is counted in, defined once.

All audio inside voxcli is mono float32 at 16 kHz (what both Voxtral encoders take); a Realtime
token covers 80 ms of it (docs/design.md, "The models").
"""

from __future__ import annotations

SAMPLE_RATE = 16000  # Hz
TOKEN_MS = 80  # the Realtime model emits one token per 80 ms of audio
TOKEN_SAMPLES = SAMPLE_RATE * TOKEN_MS // 1000  # 1280


def seconds(samples: int) -> float:
    return samples / SAMPLE_RATE


def samples(seconds_: float) -> int:
    return int(round(seconds_ * SAMPLE_RATE))
