"""Capped, jittered exponential backoff for calls that may fail transiently.

Why our own and not the SDK's StandardRetryer: the SDK sleeps 2**n seconds
without a cap or jitter and retries neither InternalError nor on a time
budget.  Tencent Cloud throttles per account and per action (EnterRescueMode:
20 requests/s), so many controllers retrying in lockstep would keep each other
throttled; "equal jitter" (half the delay fixed, half random) spreads them
while still guaranteeing a wait.  Attempts and total time are both bounded, and
whether an error is retryable is the caller's decision (a predicate), so the
policy knows nothing about Tencent's error codes.
"""
from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

from cvmigrate.common.logsetup import REPORTED

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry.

    ``max_attempts`` counts the first try; ``max_total`` bounds the time spent
    sleeping plus calling (no retry starts after it); the n-th delay is drawn
    from [d/2, d] with d = min(max_delay, base_delay * 2**n).
    """

    max_attempts: int = 8
    base_delay: float = 0.5
    max_delay: float = 30.0
    max_total: float = 300.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("RetryPolicy.max_attempts must be >= 1")
        if self.base_delay < 0 or self.max_delay < 0 or self.max_total < 0:
            raise ValueError("RetryPolicy delays must be >= 0")

    def delay(self, retry_number: int, rng: random.Random | None = None) -> float:
        """Seconds to sleep before retry ``retry_number`` (0 for the first retry)."""
        ceiling = min(self.max_delay, self.base_delay * (2 ** min(retry_number, 62)))
        return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)


#: No retries at all (tests of non-retry behaviour, or a caller that retries itself).
NO_RETRY = RetryPolicy(max_attempts=1)


def call_with_retry(
    fn: Callable[[int], T],
    *,
    policy: RetryPolicy,
    retryable: Callable[[BaseException], bool],
    describe: str = "call",
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    rng: random.Random | None = None,
) -> T:
    """Call ``fn(attempt)`` (attempt counts from 1) until it returns or fails for good.

    A non-retryable exception propagates at once; a retryable one propagates
    when attempts or the time budget run out.
    """
    start = clock()
    attempt = 1
    while True:
        try:
            return fn(attempt)
        except Exception as exc:
            if not retryable(exc):
                raise
            if attempt >= policy.max_attempts:
                logger.warning("%s: giving up after %d attempts: %s", describe, attempt, exc, extra=REPORTED)
                raise
            pause = policy.delay(attempt - 1, rng)
            if clock() - start + pause > policy.max_total:
                logger.warning("%s: giving up after %.1f s (retry budget %.0f s): %s",
                               describe, clock() - start, policy.max_total, exc, extra=REPORTED)
                raise
            logger.info("%s: attempt %d failed (%s); retrying in %.2f s", describe, attempt, exc, pause)
            sleep(pause)
            attempt += 1
