"""What both ends of the block plane must agree on (proto/cvmigrate/proto/block.proto).

One place for each: the block size and protocol version the agent announces in
BlockHello and the receiver checks, and the manifest that proves a pass -- the
agent computes it while reading the source, the receiver from its journal after
the last commit; a pass is complete only if both are equal.

Block size: 1 MiB, the file plane's chunk size, for the same reasons -- per
block Python overhead is negligible, xxhash/zstd release the GIL, and a small
change re-sends little (one 4 KiB write costs one 1 MiB block, zstd-compressed).
"""
from __future__ import annotations

from collections.abc import Iterable

import xxhash

BLOCK_SIZE = 1 << 20
BLOCK_PROTOCOL_VERSION = 1

_ZERO16 = bytes(16)


class Manifest:
    """Streaming manifest: XXH3-128 over the blocks' hashes in order, a zero block as 16 zero bytes."""

    __slots__ = ("_h",)

    def __init__(self) -> None:
        self._h = xxhash.xxh3_128()

    def add(self, block_hash: bytes) -> None:
        """The next block's hash (``b""`` for a zero block)."""
        self._h.update(block_hash or _ZERO16)

    def digest(self) -> bytes:
        return self._h.digest()


def manifest_hash(hashes: Iterable[bytes | None]) -> bytes:
    """The manifest of these block hashes in order; a block whose hash is unknown (None) never matches."""
    m = Manifest()
    for h in hashes:
        if h is None:
            return b"unknown"
        m.add(h)
    return m.digest()
