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
