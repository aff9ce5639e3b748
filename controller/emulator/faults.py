"""Fault injection for the emulator: throttling, internal errors, slow and lost responses.

Why: the cloud layer's retry policy and the controller's crash-resume logic are
only believable if they have been seen to survive the failures Tencent Cloud
really produces.  A rule says which action it hits, what happens (an error
code, a delay, a dropped connection before or after the action ran), how often
(the next N calls, or with a seeded probability).  Rules are evaluated in
order; delays of all matching rules add up, the first error or disconnect wins.
"""
from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field
from typing import Any

#: The messages Tencent Cloud sends with the common transient errors.
DEFAULT_MESSAGES = {
    "RequestLimitExceeded": "Your current request times exceeds the frequency limit for this action. "
                            "Please reduce the frequency of calls.",
    "InternalError": "An internal error has occurred. Retry your request, but if the problem persists, contact us.",
    "MutexOperation.TaskRunning": "An identical task is running on the instance.",
}


@dataclass
class FaultRule:
    """One injected fault.

    ``count`` is how many more times the rule may fire (None: forever);
    ``probability`` with ``seed`` makes random faults reproducible;
    ``disconnect`` is "before" (the request is lost, the action never runs) or
    "after" (the action runs, its response is lost).
    """

    action: str = "*"
    error: str | None = None
    message: str | None = None
    count: int | None = None
    probability: float = 1.0
    delay: float = 0.0
    disconnect: str | None = None
    seed: int | None = None
    _rng: random.Random = field(default_factory=random.Random, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.disconnect not in (None, "before", "after"):
            raise ValueError(f"fault rule: disconnect must be 'before' or 'after', not {self.disconnect!r}")
        if not (0.0 <= self.probability <= 1.0):
            raise ValueError(f"fault rule: probability must be within 0..1, not {self.probability!r}")
        self._rng = random.Random(self.seed)  # noqa: S311 - seeded fault injection, reproducible on purpose

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FaultRule:
        known = {"action", "error", "message", "count", "probability", "delay", "disconnect", "seed"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"fault rule: unknown fields {sorted(unknown)}; known: {sorted(known)}")
        if data.get("disconnect") is True:  # JSON's `"disconnect": true` means "before"
            data = {**data, "disconnect": "before"}
        return cls(**data)

    def matches(self, action: str) -> bool:
        return self.action in ("*", action) and (self.count is None or self.count > 0)


@dataclass(frozen=True)
class Fault:
    """What the server does to one request."""

    delay: float = 0.0
    error: str | None = None
    message: str = ""
    disconnect: str | None = None


class FaultPlan:
    """The ordered, thread-safe list of fault rules."""

    def __init__(self, rules: list[FaultRule] | None = None) -> None:
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = list(rules or [])

    def add(self, rule: FaultRule) -> None:
        with self._lock:
            self._rules.append(rule)

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def decide(self, action: str) -> Fault | None:
        """Roll every matching rule once; return the combined fault or None."""
        delay = 0.0
        error: str | None = None
        message = ""
        disconnect: str | None = None
        with self._lock:
            for rule in self._rules:
                if not rule.matches(action):
                    continue
                if rule.probability < 1.0 and rule._rng.random() >= rule.probability:
                    continue
                wants_outcome = rule.error is not None or rule.disconnect is not None
                if wants_outcome and (error is not None or disconnect is not None):
                    continue  # an earlier rule already decided; do not consume this one
                if rule.count is not None:
                    rule.count -= 1
                delay += rule.delay
                if rule.error is not None:
                    error = rule.error
                    message = rule.message or DEFAULT_MESSAGES.get(rule.error, f"injected fault {rule.error}")
                elif rule.disconnect is not None:
                    disconnect = rule.disconnect
            self._rules = [r for r in self._rules if r.count is None or r.count > 0]
        if not delay and error is None and disconnect is None:
            return None
        return Fault(delay=delay, error=error, message=message, disconnect=disconnect)
