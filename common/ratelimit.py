"""A token bucket for the data stream's bandwidth limit.

Why a bucket on the sending thread: the limit applies to bytes that reach the
wire (compressed), it must hold within a few percent over tens of seconds,
and the controller may change it in the middle of a migration.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable


class TokenBucket:
    """Blocks ``take(n)`` so that the long-run rate stays at ``rate`` bytes/s (None = unlimited)."""

    def __init__(self, rate: float | None, burst_seconds: float = 0.25) -> None:
        self._lock = threading.Lock()
        self._burst_seconds = burst_seconds
        self._rate: float | None = None
        self._tokens = 0.0
        self._stamp = time.monotonic()
        self.set_rate(rate)

    @property
    def rate(self) -> float | None:
        return self._rate

    def set_rate(self, rate: float | None) -> None:
        """Change the limit now (bytes/s; None or <= 0 lifts it)."""
        with self._lock:
            self._rate = rate if rate and rate > 0 else None
            self._tokens = 0.0
            self._stamp = time.monotonic()

    def take(self, n: int, *, sleep: Callable[[float], None] = time.sleep) -> None:
        """Account for ``n`` bytes about to be sent; return once the rate allows them.

        The balance may go negative (a message larger than the burst); the
        caller then waits the debt off before sending, so the rate holds for
        every message, not only on average over many.
        """
        with self._lock:
            if self._rate is None:
                return
            self._refill()
            self._tokens -= n
        while True:
            with self._lock:
                rate = self._rate
                if rate is None:
                    return
                self._refill()
                if self._tokens >= 0:
                    return
                wait = -self._tokens / rate
            sleep(min(wait, 0.5))

    def _refill(self) -> None:
        now = time.monotonic()
        assert self._rate is not None
        burst = max(self._rate * self._burst_seconds, 64 * 1024)
        self._tokens = min(burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
