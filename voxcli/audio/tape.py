"""Recent 16 kHz audio, addressed by absolute sample position: the live worker's (a restart's
replay, an offline utterance) and a server session's (what the server has not answered for)."""

from __future__ import annotations

import threading
from collections import deque

import numpy as np


class Tape:
    """Blocks appended as they come, kept without copying; whole blocks are dropped from the front
    once nothing can start in them (``keep_from``). One thread may append while another reads."""

    def __init__(self) -> None:
        self.start = 0  # absolute position of the first sample kept
        self.end = 0  # absolute position after the last sample
        self._blocks: deque[np.ndarray] = deque()
        self._lock = threading.Lock()

    def append(self, x: np.ndarray) -> None:
        with self._lock:
            self._blocks.append(x)
            self.end += len(x)

    def slice(self, a: int, b: int) -> np.ndarray:
        """Samples ``a`` to ``b`` (clipped to what is kept), copying only the blocks they touch."""
        with self._lock:
            out, pos = [], self.start
            for block in self._blocks:
                lo, hi = max(a, pos), min(b, pos + len(block))
                if lo < hi:
                    out.append(block[lo - pos:hi - pos])
                pos += len(block)
                if pos >= b:
                    break
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def keep_from(self, a: int) -> None:
        with self._lock:
            while self._blocks and self.start + len(self._blocks[0]) <= a:
                self.start += len(self._blocks.popleft())
