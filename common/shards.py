"""The sharding rule of a parallel pass: which stream an entry travels on (transfer.proto's header).

Why by parent directory: mirror deletion in a directory must see every child
of it, so one directory's children must meet on one stream; hashing the parent
path spreads directories evenly without any state on either side.  Hard-linked
inodes (nlink > 1) all go to shard 0 in scan order, so a link always follows
its target on the same stream; their directory's shard learns their names
through ``EntryBatch.present``.
"""
from __future__ import annotations

import os

import xxhash

#: No pass uses more streams than this (the issue's bound; beyond it the journal's single writer dominates).
MAX_STREAMS = 8
#: The shard carrying the root entry and every name of a hard-linked inode.
LINK_SHARD = 0


def parent_of(path: bytes) -> bytes:
    """The directory holding ``path`` (relative, ``/``-separated); ``b""`` for the root's children."""
    cut = path.rfind(b"/")
    return path[:cut] if cut > 0 else b""


def shard_of_dir(directory: bytes, count: int) -> int:
    """The shard that carries the children (and the completion) of ``directory``."""
    return xxhash.xxh3_64_intdigest(directory) % count if count > 1 else 0


def usable_cores() -> int:
    """CPUs this process may run on (the affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_streams(local_cores: int, remote_cores: int) -> int:
    """What both sides' cores allow, at most MAX_STREAMS; 1 when the peer does not take shards (0)."""
    if remote_cores <= 0:
        return 1
    return max(1, min(MAX_STREAMS, local_cores, remote_cores))
