"""Whether a process is alive, asked by the receiver's pass gate (a worker that died mid-stream frees
its shard) and by the SSH bootstrap's remote helper (does the receiver it started still run).

Standard library only, and importable as a lone file: the controller uploads it beside the remote
helper (controller/bootstrap/remote_helper.py) to a rescue system that has no cvmigrate installed.
"""
from __future__ import annotations

import os


def alive(pid: int) -> bool:
    """Does process ``pid`` run?  A zombie does not; one we may not signal does."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True
