"""The ``with`` protocol of the test helpers that own a resource (a process, a proxy, namespaces)."""
from __future__ import annotations

from typing import Self


class Closing:
    """Mixin: ``with helper as h:`` gives the helper itself and calls ``close()`` on the way out, always."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
