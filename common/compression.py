"""zstd compression of segments, decided per segment.

Why per segment: a segment is either one large chunk (so incompressible
chunks of a big file go raw, decided chunk by chunk) or many small files
packed together (one zstd frame compresses them far better than one frame
each and costs one call instead of hundreds).  A compressed result that does
not save at least ~3 % is discarded and the plain bytes are sent.
Compressor contexts are reused per thread: creating one per call is slow.
"""
from __future__ import annotations

import threading

import zstandard

from cvmigrate.common.errors import ProtocolError

RAW = 0
ZSTD = 1
#: below this, compression overhead outweighs any saving
MIN_COMPRESS = 256
#: keep the compressed form only if it is at most this fraction of the plain size
KEEP_RATIO = 0.97
DEFAULT_LEVEL = 1

_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    cache = getattr(_local, "c", None)
    if cache is None:
        cache = _local.c = {}
    comp = cache.get(level)
    if comp is None:
        comp = cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return comp


def compress(plain: bytes | memoryview, level: int = DEFAULT_LEVEL) -> tuple[int, bytes]:
    """Return (codec, data): ZSTD when it pays, else RAW with the plain bytes."""
    n = len(plain)
    if level <= 0 or n < MIN_COMPRESS:
        return RAW, bytes(plain)
    out = _compressor(level).compress(plain)
    if len(out) <= n * KEEP_RATIO:
        return ZSTD, out
    return RAW, bytes(plain)


def decompress(codec: int, data: bytes, raw_length: int, max_length: int) -> bytes:
    """Decode a segment, refusing anything that would exceed ``max_length``.

    The declared ``raw_length`` is checked against the real output so a
    hostile peer cannot make the receiver allocate unbounded memory.
    """
    if raw_length > max_length:
        raise ProtocolError(f"segment declares {raw_length} plain bytes, limit is {max_length}")
    if codec == RAW:
        if len(data) != raw_length:
            raise ProtocolError(f"raw segment has {len(data)} bytes, declared {raw_length}")
        return data
    if codec != ZSTD:
        raise ProtocolError(f"unknown codec {codec}")
    dctx = getattr(_local, "d", None)
    if dctx is None:
        dctx = _local.d = zstandard.ZstdDecompressor()
    try:
        params = zstandard.get_frame_parameters(data)
        if params.content_size != raw_length:
            raise ProtocolError(f"zstd frame holds {params.content_size} bytes, declared {raw_length}")
        out = dctx.decompress(data, max_output_size=raw_length)
    except zstandard.ZstdError as exc:
        raise ProtocolError(f"corrupt zstd segment: {exc}") from exc
    if len(out) != raw_length:
        raise ProtocolError(f"zstd segment decoded to {len(out)} bytes, declared {raw_length}")
    return out
