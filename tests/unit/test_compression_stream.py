"""One zstd stream per connection (common/compression.py): context across segments, and a
receiver end that a hostile agent cannot make allocate without bound."""
import os
import random
import resource

import pytest
import zstandard

from cvmigrate.common import compression
from cvmigrate.common.compression import StreamDecoder, StreamEncoder
from cvmigrate.common.errors import ProtocolError

MAX_SEGMENT = 8 << 20


def _similar_files(n: int) -> list[bytes]:
    """Small files that share most of their text, as a source tree's files do."""
    rnd = random.Random(5)
    common = b"".join(rnd.choice([b"import os\n", b"def f(x):\n    return x\n", b"# comment\n"]) for _ in range(400))
    return [common[: rnd.randint(2000, len(common))] + rnd.randbytes(64) for _ in range(n)]


def test_every_segment_decodes_on_arrival_in_order():
    enc, dec = StreamEncoder(3), StreamDecoder(MAX_SEGMENT)
    segs = _similar_files(50) + [os.urandom(3 << 20), bytes(MAX_SEGMENT), b"x"]
    for s in segs:
        assert dec.decode(enc.encode(s), len(s)) == s


def test_the_window_spans_earlier_segments():
    """The point of the stream: a file like earlier ones costs a few bytes, not a frame of its own."""
    files = _similar_files(200)
    enc = StreamEncoder(3)
    stream = sum(len(enc.encode(f)) for f in files)
    alone = sum(len(compression.compress(f, 3)[1]) for f in files)
    assert stream * 4 < alone, (stream, alone)


def test_a_level_change_starts_a_new_frame_the_decoder_follows(monkeypatch):
    monkeypatch.setattr(compression, "SWITCH_SECONDS", 0.0)
    enc, dec = StreamEncoder(1), StreamDecoder(MAX_SEGMENT)
    for i, s in enumerate(_similar_files(30)):
        assert dec.decode(enc.encode(s, level=1 + i % 4), len(s)) == s
    assert enc.level == 1 + 29 % 4


def test_a_level_change_waits_for_its_interval():
    enc = StreamEncoder(1)
    enc.encode(b"a" * 1000, level=6)
    assert enc.level == 1  # just started: the frame (and its window) is kept


def test_a_segment_that_inflates_beyond_its_declared_length_is_refused_without_inflating():
    """A few KiB that decode to a gigabyte: the decoder stops at the declared length."""
    bomb = zstandard.ZstdCompressor(level=19).compressobj()
    data = b""
    for _ in range(1024):
        data += bomb.compress(bytes(1 << 20))
    data += bomb.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
    assert len(data) < 1 << 20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ProtocolError, match="more than the 1000 bytes declared"):
        StreamDecoder(MAX_SEGMENT).decode(data, 1000)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 64 << 10  # KiB: < 64 MiB grown


def test_a_window_beyond_the_bound_is_refused():
    params = zstandard.ZstdCompressionParameters.from_level(3, window_log=compression.MAX_STREAM_WINDOW_LOG + 1)
    obj = zstandard.ZstdCompressor(compression_params=params).compressobj()
    data = obj.compress(os.urandom(1000)) + obj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
    with pytest.raises(ProtocolError, match="corrupt zstd stream"):
        StreamDecoder(MAX_SEGMENT).decode(data, 1000)


@pytest.mark.parametrize("declared", [MAX_SEGMENT + 1, 1 << 40])
def test_a_declared_length_beyond_the_segment_limit_is_refused(declared):
    with pytest.raises(ProtocolError, match="limit"):
        StreamDecoder(MAX_SEGMENT).decode(b"", declared)


def test_garbage_and_short_segments_are_refused():
    enc, dec = StreamEncoder(1), StreamDecoder(MAX_SEGMENT)
    s = os.urandom(5000)
    with pytest.raises(ProtocolError):
        dec.decode(enc.encode(s), len(s) + 1)   # decodes to fewer bytes than declared
    with pytest.raises(ProtocolError):
        StreamDecoder(MAX_SEGMENT).decode(b"\x00garbage" * 10, 80)


def _decode(dec: StreamDecoder, codec: int, data: bytes, n: int) -> bytes:
    """The receiver's dispatch (receiver/session.py ``_segment``): stream pieces in order, raw ones apart."""
    if codec == compression.ZSTD_STREAM:
        return dec.decode(data, n)
    return compression.decompress(codec, data, n, MAX_SEGMENT)


def test_a_file_whose_segments_do_not_shrink_goes_raw_in_runs_that_grow():
    """Random 1 MiB segments of one file: tried in the stream, then 1, 2, 4, 8, 16, 16 ... sent raw between tries
    (LDM over incompressible data costs ~3 CPU s per GiB); every segment still decodes, in order."""
    enc, dec = StreamEncoder(3), StreamDecoder(MAX_SEGMENT)
    segs = [os.urandom(1 << 20) for _ in range(70)]
    codecs = []
    for s in segs:
        codec, data = enc.encode_segment(s, None, 7)
        assert _decode(dec, codec, data, len(s)) == s
        codecs.append(codec)
    tried = [i for i, k in enumerate(codecs) if k == compression.ZSTD_STREAM]
    assert tried == [0, 2, 5, 10, 19, 36, 53], tried          # runs of 1, 2, 4, 8, 16, 16 raw segments
    assert set(codecs) == {compression.ZSTD_STREAM, compression.RAW}


def test_a_segment_that_shrinks_ends_the_run_and_other_files_are_not_affected():
    enc, dec = StreamEncoder(3), StreamDecoder(MAX_SEGMENT)
    text = b"".join(_similar_files(40))
    plan = [(os.urandom(1 << 20), 7), (os.urandom(1 << 20), 7),   # tried (no), then raw
            (text, 8),                                           # another file: the stream
            (text[::-1], 7),                                     # file 7 tried again: shrinks, run over
            (text[1:], 7), (os.urandom(1 << 20), None)]          # in the stream; packed segments always are
    got = []
    for s, key in plan:
        codec, data = enc.encode_segment(s, None, key)
        assert _decode(dec, codec, data, len(s)) == s
        got.append(codec)
    S, R = compression.ZSTD_STREAM, compression.RAW
    assert got == [S, R, S, S, S, S]


def test_a_copy_of_an_earlier_file_still_matches_through_the_window():
    """What the runs must not lose: a segment that repeats stream bytes shrinks, so it stays in the stream."""
    enc = StreamEncoder(3)
    blob = os.urandom(1 << 20)
    first = enc.encode_segment(blob, None, 1)
    again = enc.encode_segment(blob, None, 2)
    assert first[0] == again[0] == compression.ZSTD_STREAM
    assert len(again[1]) < len(blob) // 20
