"""Kept for its callers: ``write_atomic`` is :func:`cvmigrate.common.durable.write_file`."""
from __future__ import annotations

from cvmigrate.common.durable import write_file as write_atomic

__all__ = ["write_atomic"]
