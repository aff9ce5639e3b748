"""The in-flight window: plain bytes sent but not yet reported durable by the receiver.

Why shared: file and block transfers bound what a crash can cost with the same
rule -- at most one window is ever re-sent -- so both senders block here.
"""
from __future__ import annotations

import threading


class InflightWindow:
    """Blocks ``acquire(n)`` while ``used + n`` would pass ``limit`` (one item may always go)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.closed = False
        self._cv = threading.Condition()

    def would_block(self, n: int) -> bool:
        return self.used > 0 and self.used + n > self.limit and not self.closed

    def acquire(self, n: int) -> None:
        with self._cv:
            while self.would_block(n):
                self._cv.wait()
            self.used += n

    def release(self, n: int) -> None:
        with self._cv:
            self.used = max(0, self.used - n)
            self._cv.notify_all()

    def close(self) -> None:
        """Wake every waiter for good (the pass is being torn down)."""
        with self._cv:
            self.closed = True
            self._cv.notify_all()
