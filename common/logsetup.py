"""Logging configuration, done once by the CLI entry point (never at import time).

Why: every module logs through ``logging.getLogger(__name__)``; only the process
entry decides where lines go (stderr plus an optional log file) and how verbose.
A filter stamps every record with the migration id and stage so that a line in
a shared log file can be traced to its migration.

Two thresholds, because the two readers differ: the log file gets everything
``--log-level`` asks for (go2tencentcloud's ``log``: what to read after a
failure), while stderr of a client command (migrate, check, push, ...) shows
warnings only -- its failure is the one line ``cvmigrate.cli.main`` prints, and
a record logged with ``extra=REPORTED`` (an error that is about to be raised
and printed anyway) never reaches stderr twice.  Servers (receive, agent,
emulator) keep INFO on stderr: it is their log.

The log file is opened per run: an existing non-empty file is rotated to
``FILE.1`` .. ``FILE.5`` first, so each run's log starts clean and none grows
forever.  ``--log-format json`` writes one JSON object per line (time, level,
migration, stage, logger, message).
"""
from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
import time
from pathlib import Path
from typing import Any

#: go2tencentcloud's --log-level values: 1 ERROR, 2 INFO (default), 3 DEBUG.
LEVELS = {1: logging.ERROR, 2: logging.INFO, 3: logging.DEBUG}
FORMATS = ("text", "json")
#: Rotated copies kept of the log file (FILE.1 is the previous run).
LOG_BACKUPS = 5
#: A single run's log is rotated within the run beyond this size.
LOG_MAX_BYTES = 64 * 1024 * 1024
#: ``logger.error(..., extra=REPORTED)``: the error is raised and printed by the CLI; keep it off stderr.
REPORTED = {"cvm_reported": True}

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


class _NotReported(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "cvm_reported", False)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers and scripts."""

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "migration": getattr(record, "migration", "-"),
            "stage": getattr(record, "stage", "-"),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            obj["traceback"] = self.formatException(record.exc_info)
        return json.dumps(obj, ensure_ascii=False)


def _formatter(fmt: str) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter()
    return logging.Formatter("%(asctime)s %(levelname)s [%(migration)s/%(stage)s] %(name)s: %(message)s")


def open_log_file(path: str | Path) -> logging.Handler:
    """A handler on ``path`` for this run: the previous run's file moves to ``path.1`` (and so on)."""
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=LOG_MAX_BYTES, backupCount=LOG_BACKUPS,
                                                   encoding="utf-8", delay=False)
    try:
        if os.path.getsize(path) > 0:
            handler.doRollover()
    except OSError:
        pass
    return handler


#: Set once by the CLI entry for this process (stderr cap, log format); later configure() calls reuse them.
defaults: dict[str, Any] = {"stderr_level": None, "fmt": "text"}

#: The log file already opened by this process (a second configure() keeps appending to it, not rotating).
_opened: dict[str, logging.Handler] = {}


def configure(level: int = 2, log_file: str | Path | None = None, *, debug: bool = False,
              stderr_level: int | None = None, fmt: str | None = None) -> None:
    """Configure the root logger for a CLI process.

    ``stderr_level`` (a logging level) is the least severe record stderr shows; ``fmt`` is "text" or
    "json"; None takes the process defaults the CLI entry set (``defaults``).
    """
    stderr_level = defaults["stderr_level"] if stderr_level is None else stderr_level
    fmt = fmt or defaults["fmt"]
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    lvl = logging.DEBUG if debug else LEVELS.get(level, logging.INFO)
    root.setLevel(lvl)
    formatter = _formatter(fmt)
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(formatter)
    stderr.addFilter(_ContextFilter())
    if stderr_level is not None and not debug:
        stderr.setLevel(max(lvl, stderr_level))
        stderr.addFilter(_NotReported())
    root.addHandler(stderr)
    if log_file:
        key = os.path.abspath(log_file)
        fh = _opened.get(key)
        if fh is None:
            fh = _opened[key] = open_log_file(log_file)
        fh.setFormatter(formatter)
        fh.filters.clear()
        fh.addFilter(_ContextFilter())
        root.addHandler(fh)
    logging.getLogger("grpc").setLevel(max(lvl, logging.WARNING))

