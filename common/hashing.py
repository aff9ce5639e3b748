"""XXH3-128 hashing of chunks and whole files.

Why XXH3-128 on the *plain* bytes: the chunk id must not depend on the
compressor (borg's rule), and 128 bits make accidental collisions across a
whole server negligible.  ``FileHasher`` hashes a file's logical content in
order, holes included as zeros, so both sides agree on one digest no matter
how sparse the file is or which chunks travelled.
"""
from __future__ import annotations

import os

import xxhash

HASH_LEN = 16
_ZEROS = bytes(1 << 20)


def chunk_hash(data: bytes | memoryview) -> bytes:
    """The 16-byte XXH3-128 digest of ``data``."""
    return xxhash.xxh3_128_digest(data)


class FileHasher:
    """Streaming XXH3-128 over a file's logical content (holes = zeros)."""

    __slots__ = ("_h", "length")

    def __init__(self) -> None:
        self._h = xxhash.xxh3_128()
        self.length = 0

    def update(self, data: bytes | memoryview) -> None:
        self._h.update(data)
        self.length += len(data)

    def update_zeros(self, count: int) -> None:
        """Feed ``count`` zero bytes (a hole) without allocating them."""
        self.length += count
        while count > 0:
            n = min(count, len(_ZEROS))
            self._h.update(memoryview(_ZEROS)[:n])
            count -= n

    def digest(self) -> bytes:
        return self._h.digest()


def is_zero(data: bytes) -> bool:
    """True when every byte is zero: a memcmp against a zero block, no Python loop."""
    step = len(_ZEROS)
    for start in range(0, len(data), step):
        part = data[start:start + step] if len(data) > step else data
        if part != (_ZEROS if len(part) == step else _ZEROS[:len(part)]):
            return False
    return True


def hash_file_content(fd: int, size: int, chunk_size: int = 1 << 20) -> bytes:
    """XXH3-128 of a file's logical content read back from ``fd`` (holes read as zeros)."""
    h = FileHasher()
    off = 0
    while off < size:
        data = os.pread(fd, min(chunk_size, size - off), off)
        if not data:
            h.update_zeros(size - off)
            break
        h.update(data)
        off += len(data)
    return h.digest()
