"""Block-device and image helpers shared by the block-plane tests."""
from __future__ import annotations

import os
from pathlib import Path

import xxhash

MiB = 1 << 20


def device_hash(path: Path | str, size: int | None = None) -> str:
    """XXH3-128 of the first ``size`` bytes of a device or image (all of it without ``size``)."""
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        left = size if size is not None else os.lseek(f.fileno(), 0, os.SEEK_END)
        f.seek(0)
        while left > 0:
            data = f.read(min(8 * MiB, left))
            if not data:
                break
            h.update(data)
            left -= len(data)
    return h.hexdigest()
