"""zstd compression of segments: per segment, or one continuous stream per connection.

Why per segment: a segment is either one large chunk (so incompressible
chunks of a big file go raw, decided chunk by chunk) or many small files
packed together (one zstd frame compresses them far better than one frame
each and costs one call instead of hundreds).  A compressed result that does
not save at least ~3 % is discarded and the plain bytes are sent.
Compressor contexts are reused per thread: creating one per call is slow.

When the link is the bottleneck (the agent compresses at all), segments are
instead the pieces of one zstd stream per connection (``StreamEncoder`` /
``StreamDecoder``): the window then spans everything sent before, as rsync's
``-z`` stream does, which per-segment frames cannot.
"""
from __future__ import annotations

import threading
import time
from typing import BinaryIO, cast

import zstandard

from cvmigrate.common.errors import ProtocolError

RAW = 0
ZSTD = 1
#: below this, compression overhead outweighs any saving
MIN_COMPRESS = 256
#: keep the compressed form only if it is at most this fraction of the plain size
KEEP_RATIO = 0.97
DEFAULT_LEVEL = 1
#: a segment at least this large is probed before it is compressed whole (``incompressible``)
PROBE_MIN = 128 << 10
#: the probe: this many bytes from the start, the middle and the end of the segment
PROBE_SAMPLE = 16 << 10
#: a probe that saves less than 1 % says "incompressible" (samples compress a little worse than the whole,
#: so the bar sits below KEEP_RATIO's 3 %)
PROBE_RATIO = 0.99
#: in a stream, after a segment of one file did not shrink, the next 1, 2, 4, ... up to this many segments of
#: that file go raw before it is tried again
MAX_RAW_RUN = 16

_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    cache = getattr(_local, "c", None)
    if cache is None:
        cache = _local.c = {}
    comp = cache.get(level)
    if comp is None:
        comp = cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return comp


def incompressible(plain: bytes | memoryview) -> bool:
    """Would zstd not save enough on ``plain`` to keep its output?  Answered from 48 KiB of it at level 1.

    Why: trying to compress incompressible data (media, archives, encrypted or already compressed files)
    costs 0.5-2 CPU s per GiB, all of it thrown away; the probe costs about a twentieth of that.  What a
    probe can miss -- a segment compressible only away from its start, middle and end -- travels raw.
    """
    n = len(plain)
    if n < PROBE_MIN:
        return False
    mv = memoryview(plain)
    mid = (n - PROBE_SAMPLE) // 2
    sample = b"".join((mv[:PROBE_SAMPLE], mv[mid:mid + PROBE_SAMPLE], mv[n - PROBE_SAMPLE:]))
    return len(_compressor(1).compress(sample)) > len(sample) * PROBE_RATIO


def compress(plain: bytes | memoryview, level: int = DEFAULT_LEVEL) -> tuple[int, bytes]:
    """Return (codec, data): ZSTD when it pays, else RAW with the plain bytes."""
    n = len(plain)
    if level <= 0 or n < MIN_COMPRESS or incompressible(plain):
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


# ------------------------------------------------------------------ one stream per connection
ZSTD_STREAM = 2
#: the agent's window for its stream: context across files (32 MiB, with long-distance matching)
STREAM_WINDOW_LOG = 25
#: the largest window a receiver accepts (what a hostile agent can make it allocate for decoding)
MAX_STREAM_WINDOW_LOG = 26
#: a level change ends the frame (and its window): at most this often
SWITCH_SECONDS = 5.0
MAX_STREAM_LEVEL = 9


class StreamEncoder:
    """The agent's end of one continuous zstd stream per connection, like ``rsync -z``.

    Why one stream: segments compressed one by one lose the context of
    everything sent before (a tree of small, similar files compresses far
    better as one stream).  Each segment is flushed at its end (FLUSH_BLOCK),
    so the receiver decodes it whole on arrival while the window keeps
    spanning all earlier segments.  Must be fed in send order, by one thread.
    A level change starts a new frame (zstd fixes the level per frame), so it
    happens at most every ``SWITCH_SECONDS``.
    """

    def __init__(self, level: int, window_log: int = STREAM_WINDOW_LOG) -> None:
        self.window_log = window_log
        self.level = 0
        self._raw: dict[int, list[int]] = {}   # file -> [its segments still to send raw, the next run's length]
        self._obj: zstandard.ZstdCompressionObj | None = None
        self._switched = 0.0
        self._start(level)

    def _start(self, level: int) -> bytes:
        tail = self._obj.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH) if self._obj is not None else b""
        params = zstandard.ZstdCompressionParameters.from_level(
            level, window_log=self.window_log, enable_ldm=True)
        self._obj = zstandard.ZstdCompressor(compression_params=params).compressobj()
        self.level = level
        self._switched = time.monotonic()
        return tail

    def encode(self, plain: bytes | memoryview, level: int | None = None) -> bytes:
        """The stream's bytes for ``plain``: everything needed to decode it, given the earlier output."""
        head = b""
        if level is not None and level != self.level and time.monotonic() - self._switched >= SWITCH_SECONDS:
            head = self._start(max(1, min(MAX_STREAM_LEVEL, level)))
        assert self._obj is not None
        return head + self._obj.compress(plain) + self._obj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)

    def encode_segment(self, plain: bytes | memoryview, level: int | None, file_key: int | None) -> tuple[int, bytes]:
        """(codec, data) for a segment: ZSTD_STREAM, or RAW while its file's recent segments did not shrink.

        ``file_key``: the file a segment of one file's chunks belongs to (None for packed small files).  A
        probe of the segment alone cannot judge a stream, whose window may hold its match (a file copied
        earlier in the pass), so the stream itself is the probe: a segment of a file that did not shrink
        by 3 % sends the next 1, 2, 4, ... ``MAX_RAW_RUN`` segments of that file raw, then tries again;
        one that shrinks ends the run.  A raw segment stays out of the window.
        """
        run = self._raw.get(file_key) if file_key is not None else None
        if run is not None and run[0] > 0:
            run[0] -= 1
            return RAW, bytes(plain)
        data = self.encode(plain, level)
        if file_key is not None:
            if len(data) > len(plain) * KEEP_RATIO:
                if len(self._raw) >= 4096:
                    self._raw.clear()   # bounded: a pass of many incompressible large files starts over
                n = min(run[1] * 2, MAX_RAW_RUN) if run is not None else 1
                self._raw[file_key] = [n, n]
            elif run is not None:
                del self._raw[file_key]
        return ZSTD_STREAM, data


class _Overflow(Exception):
    pass


class _Sink:
    """Collects one segment's output; refuses more than was declared (the memory bound)."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.limit = 0

    def write(self, data: bytes) -> int:
        if len(self.buf) + len(data) > self.limit:
            raise _Overflow()
        self.buf += data
        return len(data)


class StreamDecoder:
    """The receiver's end of one stream: in order, bounded in memory.

    Bounded: the window is at most 2**``max_window_log`` (a frame asking for
    more is refused by zstd itself), and a segment's output stops at its
    declared length (at most ``max_segment``): a hostile agent can neither
    make the receiver allocate an unbounded window nor inflate a few bytes into
    gigabytes.  Any error breaks the stream for good: later segments cannot be
    decoded without the ones before, so the caller ends the pass.
    """

    def __init__(self, max_segment: int, max_window_log: int = MAX_STREAM_WINDOW_LOG) -> None:
        self.max_segment = max_segment
        self._sink = _Sink()
        dctx = zstandard.ZstdDecompressor(max_window_size=1 << max_window_log)
        # an output buffer larger than any segment: write() then returns every byte its input decodes to
        self._writer = dctx.stream_writer(cast(BinaryIO, self._sink), write_size=max_segment + 1)

    def decode_any(self, data: bytes) -> bytes:
        """Decode a piece whose plain length is not declared: whatever it decodes to, up to ``max_segment``."""
        return self._feed(data, self.max_segment, f"zstd stream piece decodes to more than {self.max_segment} bytes")

    def decode(self, data: bytes, raw_length: int) -> bytes:
        if raw_length > self.max_segment:
            raise ProtocolError(f"segment declares {raw_length} plain bytes, limit is {self.max_segment}")
        out = self._feed(data, raw_length, f"zstd stream segment decodes to more than the {raw_length} bytes declared")
        if len(out) != raw_length:
            raise ProtocolError(f"zstd stream segment decoded to {len(out)} bytes, declared {raw_length}")
        return out

    def _feed(self, data: bytes, limit: int, too_long: str) -> bytes:
        """The plain bytes ``data`` decodes to, at most ``limit`` of them (else ProtocolError ``too_long``)."""
        sink = self._sink
        sink.buf, sink.limit = bytearray(), limit
        try:
            self._writer.write(data)
        except _Overflow:
            raise ProtocolError(too_long) from None
        except zstandard.ZstdError as exc:
            raise ProtocolError(f"corrupt zstd stream: {exc}") from exc
        out, sink.buf = bytes(sink.buf), bytearray()
        return out
