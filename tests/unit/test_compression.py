import os

import pytest

from cvmigrate.common import compression as c
from cvmigrate.common.errors import ProtocolError


def test_compressible_roundtrip():
    plain = b"the same line again\n" * 5000
    codec, data = c.compress(plain)
    assert codec == c.ZSTD and len(data) < len(plain) // 10
    assert c.decompress(codec, data, len(plain), 1 << 20) == plain


def test_incompressible_goes_raw():
    plain = os.urandom(1 << 20)
    assert c.compress(plain) == (c.RAW, plain)


def test_tiny_and_level_zero_go_raw():
    assert c.compress(b"abc")[0] == c.RAW
    assert c.compress(b"a" * 10000, level=0)[0] == c.RAW


@pytest.mark.parametrize("codec,data,raw_len,limit,msg", [
    (c.RAW, b"abc", 4, 100, "declared 4"),
    (c.ZSTD, b"garbage!", 8, 100, "zstd"),
    (c.ZSTD, c.compress(b"x" * 1000)[1], 1000, 999, "limit is 999"),
    (c.ZSTD, c.compress(b"x" * 1000)[1], 999, 5000, "declared 999"),
    (7, b"", 0, 10, "unknown codec"),
])
def test_hostile_segments_refused(codec, data, raw_len, limit, msg):
    with pytest.raises(ProtocolError) as info:
        c.decompress(codec, data, raw_len, limit)
    assert msg in str(info.value)


def test_the_probe_tells_incompressible_segments_from_compressible_ones():
    """48 KiB at level 1 decide for 1 MiB: random bytes go raw without a whole-segment attempt, text and a
    segment that is random only in part (start, middle and end sampled) are compressed."""
    assert c.incompressible(os.urandom(1 << 20))
    assert not c.incompressible(b"the same line again\n" * 60_000)
    half = os.urandom(512 << 10) + b"\0" * (512 << 10)   # the end sample is zeros: worth compressing
    assert not c.incompressible(half)
    codec, data = c.compress(half, 3)
    assert codec == c.ZSTD and len(data) < 600 << 10
    assert not c.incompressible(os.urandom(c.PROBE_MIN - 1))   # below the probe's size: compress decides alone
    assert c.compress(os.urandom(c.PROBE_MIN - 1), 3)[0] == c.RAW
