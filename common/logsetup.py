"""Logging configuration, done once by the CLI entry point (never at import time).

Why: every module logs through ``logging.getLogger(__name__)``; only the process
entry decides where lines go (stderr plus an optional log file) and how verbose.
A filter stamps every record with the migration id and stage so that a line in
a shared log file can be traced to its migration.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

#: go2tencentcloud's --log-level values: 1 ERROR, 2 INFO (default), 3 DEBUG.
LEVELS = {1: logging.ERROR, 2: logging.INFO, 3: logging.DEBUG}

_context = {"migration": "-", "stage": "-"}


def set_context(*, migration: str | None = None, stage: str | None = None) -> None:
    """Set the migration id / stage stamped on every following log record."""
    if migration is not None:
        _context["migration"] = migration
    if stage is not None:
        _context["stage"] = stage


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.migration = _context["migration"]
        record.stage = _context["stage"]
        return True


def configure(level: int = 2, log_file: str | Path | None = None, *, debug: bool = False) -> None:
    """Configure the root logger for a CLI process."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    lvl = logging.DEBUG if debug else LEVELS.get(level, logging.INFO)
    root.setLevel(lvl)
    fmt = logging.Formatter("%(asctime)s %(levelname)s [%(migration)s/%(stage)s] %(name)s: %(message)s")
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(fmt)
    stderr.addFilter(_ContextFilter())
    root.addHandler(stderr)
    if log_file:
        fh = logging.FileHandler(log_file, encoding="utf-8")
        fh.setFormatter(fmt)
        fh.addFilter(_ContextFilter())
        root.addHandler(fh)
    logging.getLogger("grpc").setLevel(max(lvl, logging.WARNING))
