"""Content-defined chunking (FastCDC 2020) of files that changed.

Why: on the fixed 1 MiB grid an 8-byte edit re-sends a whole chunk (a whole
file below 1 MiB), and an insertion shifts every later chunk off the grid.
Cut points chosen by content (a gear hash over the bytes, as borg and restic
do) move with the bytes, so unchanged regions cut into the same chunks at
their new offsets and only the chunks around an edit travel.

Both sides must cut identically: the receiver cuts the old content it holds
and offers those chunks, the agent cuts the new content and names the ones
it finds by hash.  So the parameters are fixed here, in one place: pyfastcdc's
FastCDC 2020 with its default gear table, normalized chunking 1, min avg/4,
max avg*4, and an average chosen from the file's size by ``avg_for``.

pyfastcdc's Cython extension cuts at ~1.5 GB/s.  Where it cannot load (a
bundle on another architecture), pyfastcdc's own pure-Python implementation
of the same algorithm is used: identical cut points, ~3 MB/s, so the receiver
then keeps large files on the grid (``avg_for``).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator

from cvmigrate.common.hashing import chunk_hash, is_zero

logger = logging.getLogger(__name__)

try:
    from pyfastcdc.cy import FastCDC as _FastCDC
    NATIVE = True
except ImportError:  # pragma: no cover - exercised by forcing the fallback in tests
    from pyfastcdc.py import FastCDC as _FastCDC
    NATIVE = False

#: the smallest and largest average chunk; max chunk = 4 x avg stays within the 1 MiB grid chunk,
#: the largest chunk the receiver accepts
MIN_AVG = 2 << 10
MAX_AVG = 256 << 10
#: about this many chunks per file before MAX_AVG caps the average
CHUNKS_PER_FILE = 4096
#: beyond this a file stays on the grid: its chunk list would not fit one Decision message
MAX_CDC_FILE = 16 << 30
#: without the compiled chunker, files above this stay on the grid (pure Python cuts ~3 MB/s)
MAX_PURE_FILE = 8 << 20

_READ = 4 << 20


def avg_for(size: int, native: bool | None = None) -> int:
    """The average chunk size for a changed file of ``size`` bytes; 0 = keep it on the fixed grid.

    Small files get 2 KiB chunks (an 8-byte edit in 100 KiB costs ~2 KiB), large ones about
    ``CHUNKS_PER_FILE`` chunks, so chunk lists and per-chunk work stay bounded.
    """
    if size > MAX_CDC_FILE or (not (NATIVE if native is None else native) and size > MAX_PURE_FILE):
        return 0
    avg = MIN_AVG
    while avg < MAX_AVG and avg * CHUNKS_PER_FILE < size:
        avg <<= 1
    return avg


def valid_avg(avg: int) -> bool:
    """Is ``avg`` an average this cvmigrate cuts with (a power of two in [MIN_AVG, MAX_AVG])?"""
    return MIN_AVG <= avg <= MAX_AVG and avg & (avg - 1) == 0


class _Reader:
    """``readinto`` over a descriptor from offset 0, at most ``size`` bytes (a file that grows is cut as
    it was when its size was taken; one that shrinks shows as a short read)."""

    __slots__ = ("fd", "left")

    def __init__(self, fd: int, size: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        self.fd, self.left = fd, size

    def readinto(self, b: memoryview) -> int:
        if self.left <= 0:
            return 0
        view = b[:min(len(b), self.left, _READ)]
        n = os.readv(self.fd, [view])
        self.left -= n
        return n


def cut(fd: int, size: int, avg: int) -> Iterator[tuple[int, memoryview]]:
    """(offset, bytes) of the file's content-defined chunks, in order.

    The memoryview is valid only until the next chunk is taken (copy what must be kept).
    Reading stops early when the file shrank: the caller compares the total with ``size``.
    """
    assert valid_avg(avg), avg
    for c in _FastCDC(avg).cut_stream(_Reader(fd, size)):
        yield c.offset, c.data


def chunk_list(fd: int, size: int, avg: int) -> list[tuple[int, int, bytes]]:
    """(offset, length, hash) of the non-zero content-defined chunks of an existing file.

    The receiver offers these from a file's old version; zero chunks are left out (they are never
    sent, so never reused).
    """
    out: list[tuple[int, int, bytes]] = []
    for off, data in cut(fd, size, avg):
        if not is_zero(data):  # type: ignore[arg-type]
            out.append((off, len(data), chunk_hash(data)))
    return out
