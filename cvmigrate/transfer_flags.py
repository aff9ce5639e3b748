"""The transfer flags the commands that run a file-level pass share (``push``, ``migrate``).

Why here, beside :mod:`cvmigrate.security_flags`: command-line wiring over ``common`` (the agent's command line
may use it).  Each command words what ``--streams`` splits and who decides by default its own way; the flag's
type, its limit and the refusal of a value out of range are this module's.
"""
from __future__ import annotations

import argparse

from cvmigrate.common.errors import UsageError
from cvmigrate.common.shards import MAX_STREAMS


def add_streams_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup, splits: str,
                         default: str) -> None:
    """``--streams N`` (0: unset); ``splits`` says what runs over N streams, ``default`` who decides without it."""
    parser.add_argument("--streams", type=int, default=0, metavar="N",
                        help=f"{splits} (TCP connections, receiver worker processes); default: {default}, at most "
                             f"{MAX_STREAMS}; 1 = one stream")


def streams_from_args(args: argparse.Namespace) -> int:
    """--streams N: 1 .. MAX_STREAMS, or 0 (unset: the command's default decides)."""
    n = int(getattr(args, "streams", 0) or 0)
    if not 0 <= n <= MAX_STREAMS:
        raise UsageError(f"--streams {n}: give 1 to {MAX_STREAMS} (or 0 for what both sides' cores allow)")
    return n
