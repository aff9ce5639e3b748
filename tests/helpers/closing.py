"""How the test helpers that own a resource (a process, a proxy, namespaces) end it.

``with helper as h:`` ends it when the test is done with it (the product's
:class:`~cvmigrate.common.closing.Closing` mixin); ``LiveSet`` ends
whatever a crashed or interrupted test left running when the interpreter
exits, so no process or namespace outlives the test run.
"""
from __future__ import annotations

import atexit
import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

from cvmigrate.common.closing import Closing

__all__ = ["Closing", "LiveSet"]

T = TypeVar("T")


class LiveSet(Generic[T]):
    """The helpers of one kind still running; ``end`` is called on each at interpreter exit."""

    def __init__(self, end: Callable[[T], object]) -> None:
        self._live: weakref.WeakSet[T] = weakref.WeakSet()
        self._end = end
        atexit.register(self._end_all)

    def add(self, item: T) -> None:
        self._live.add(item)

    def discard(self, item: T) -> None:
        self._live.discard(item)

    def _end_all(self) -> None:
        for item in list(self._live):
            try:
                self._end(item)
            except Exception:  # noqa: BLE001 - at exit, one helper's failure must not keep the others alive
                pass
