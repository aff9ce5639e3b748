"""Read a regular file as chunks on the fixed grid, never reading its holes.

Why: a 1 GiB sparse file holding 1 MiB of data must cost 1 MiB of reading and
sending, not 1 GiB.  SEEK_DATA/SEEK_HOLE give the data extents; a grid chunk
that touches no extent is skipped without a read, and a chunk that reads as
all zeros is skipped too (the receiver leaves a hole), like ``rsync -S``.

The file is also watched for change while it is read: its size, mtime and
ctime before and after must agree, or the caller re-reads it later.
"""
from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from dataclasses import dataclass

from cvmigrate.common.cdc import cut
from cvmigrate.common.hashing import FileHasher, chunk_hash, is_zero


@dataclass(slots=True)
class Chunk:
    offset: int
    data: bytes
    hash: bytes


def data_extents(fd: int, size: int) -> list[tuple[int, int]]:
    """[(start, end), ...] of the file's data; the whole file when the fs cannot tell."""
    extents: list[tuple[int, int]] = []
    pos = 0
    try:
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # no data after pos
                    break
                raise
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            if end > start:
                extents.append((start, end))
            pos = end
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            return [(0, size)] if size else []
        raise
    return extents


def grid_chunks(extents: list[tuple[int, int]], size: int, chunk_size: int) -> Iterator[tuple[int, int]]:
    """(offset, length) of every grid chunk that intersects a data extent, in order."""
    last = -1
    for start, end in extents:
        first_idx = start // chunk_size
        last_idx = (end - 1) // chunk_size
        for idx in range(max(first_idx, last + 1), last_idx + 1):
            off = idx * chunk_size
            yield off, min(chunk_size, size - off)
            last = idx


class FileChanged(Exception):
    """The file changed while it was read; its content cannot be trusted."""


def stat_key(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def read_chunks(fd: int, size: int, chunk_size: int, hasher: FileHasher,
                skip: dict[int, bytes] | None = None) -> Iterator[Chunk | tuple[int, bytes]]:
    """Yield the file's non-zero chunks; feed ``hasher`` with the logical content.

    ``skip`` maps offset -> hash of chunks the receiver already has: when the
    chunk read here has that hash, ``(offset, hash)`` is yielded instead of a
    Chunk, and its bytes stay home.
    """
    pos = 0
    # a file of one chunk is read whole: two lseeks cost more than reading a small hole, and
    # the receiver still leaves all-zero blocks unwritten
    extents = [(0, size)] if size <= chunk_size else data_extents(fd, size)
    for off, length in grid_chunks(extents, size, chunk_size):
        data = os.pread(fd, length, off)
        if len(data) != length:
            raise FileChanged(f"short read at offset {off}: file shrank")
        if off > pos:
            hasher.update_zeros(off - pos)
        hasher.update(data)
        pos = off + length
        if is_zero(data):
            continue
        h = chunk_hash(data)
        if skip is not None and skip.get(off) == h:
            yield (off, h)
        else:
            yield Chunk(off, data, h)
    if size > pos:
        hasher.update_zeros(size - pos)


def read_cdc_chunks(fd: int, size: int, avg: int, hasher: FileHasher,
                    offered: dict[bytes, int] | None = None) -> Iterator[Chunk | tuple[int, int, bytes]]:
    """Yield the file's non-zero content-defined chunks (common/cdc.py); feed ``hasher`` with all of it.

    ``offered`` maps hash -> length of chunks the receiver holds (anywhere in the old content): such a
    chunk is yielded as ``(offset, length, hash)`` and its bytes stay home.  The file is read whole
    (holes as zeros): it changed, and its old version is being compared, not copied.
    """
    pos = 0
    for off, view in cut(fd, size, avg):
        hasher.update(view)
        pos = off + len(view)
        if is_zero(view):  # type: ignore[arg-type]
            continue
        h = chunk_hash(view)
        if offered is not None and offered.get(h) == len(view):
            yield (off, len(view), h)
        else:
            yield Chunk(off, bytes(view), h)
    if pos != size:
        raise FileChanged(f"short read at offset {pos}: file shrank")
