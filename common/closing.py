"""``with obj:`` for the objects that own one resource (a channel, a database, an SSH session).

Why a mixin: each of them only says how it closes; entering gives the object itself and leaving always
closes it, written once (and typed: ``with Checkpoint(path) as ckpt`` is a Checkpoint).
"""
from __future__ import annotations

from typing import Self


class Closing:
    """Mixin: ``with obj as o:`` gives ``obj`` itself and calls ``close()`` on the way out, always."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
