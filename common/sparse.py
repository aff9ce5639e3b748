"""Holes of an image file, as SEEK_DATA/SEEK_HOLE report them.

Both ends of the block plane read whole images block by block (the agent its
source, the receiver its target when the journal does not know a block); a
block that lies entirely in a hole is zero and costs no read.
"""
from __future__ import annotations

import errno
import os

SEEK_DATA, SEEK_HOLE = getattr(os, "SEEK_DATA", 3), getattr(os, "SEEK_HOLE", 4)


class Holes:
    """SEEK_DATA/SEEK_HOLE over an image file: is a byte range entirely a hole?

    Ranges must be asked in increasing order (one sequential read).  ``enabled``
    is False for a block device, and becomes False if the filesystem cannot
    report holes: every range then counts as data.
    """

    def __init__(self, fd: int, size: int, enabled: bool) -> None:
        self.fd, self.size, self.enabled = fd, size, enabled
        self.data_lo, self.data_hi = -1, -1        # a known data region

    def is_hole(self, start: int, end: int) -> bool:
        if not self.enabled:
            return False
        if start >= self.data_hi:
            try:
                self.data_lo = os.lseek(self.fd, start, SEEK_DATA)
                self.data_hi = os.lseek(self.fd, self.data_lo, SEEK_HOLE)
            except OSError as exc:
                if exc.errno == errno.ENXIO:        # no data after start
                    self.data_lo = self.data_hi = self.size + 1
                else:
                    self.enabled = False
                    return False
        return end <= self.data_lo
