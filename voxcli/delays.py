"""The Realtime model's transcription delays, as its model card allows them.

Any multiple of 80 ms from 80 to 1200, and 2400 on its own (docs/design.md, "The models"). The
flag, the config file, the Python API and the docs all check against this one definition.
"""

from __future__ import annotations

from voxcli.units import TOKEN_MS

ALLOWED_DELAYS_MS: tuple[int, ...] = (*range(80, 1201, TOKEN_MS), 2400)
ALLOWED_TEXT = "a multiple of 80 from 80 to 1200, or 2400"


def is_allowed_delay_ms(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value in ALLOWED_DELAYS_MS


def check_delay_ms(delay_ms: object) -> int:
    """``delay_ms`` if the model card allows it, else ``ValueError`` naming what is allowed."""
    if not is_allowed_delay_ms(delay_ms):
        raise ValueError(f"delay_ms must be {ALLOWED_TEXT} (ms); got {delay_ms!r}")
    return delay_ms  # type: ignore[return-value]
