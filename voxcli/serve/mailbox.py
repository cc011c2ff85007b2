"""From the scheduler thread to the event loop, with one wake for many messages.

``loop.call_soon_threadsafe`` per token writes to the loop's self-pipe each time: a syscall and a
loop iteration per token, per stream. A :class:`Mailbox` queues ``(fn, message)`` and wakes the
loop only when no wake is pending; the loop, once woken, hands over everything queued by then
(a cycle's tokens for every stream at once).
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable


class Mailbox:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._items: deque[tuple[Callable[[object], None], object]] = deque()
        self._lock = threading.Lock()
        self._woken = False

    def put(self, fn: Callable[[object], None], message: object) -> None:
        """Any thread: ``fn(message)`` runs in the loop's thread, soon, in the order put."""
        self._items.append((fn, message))
        with self._lock:
            if self._woken:
                return  # a wake is pending: its drain takes this too
            self._woken = True
        self.loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        with self._lock:
            self._woken = False  # a put from here on wakes the loop again
        while self._items:
            fn, message = self._items.popleft()
            fn(message)
