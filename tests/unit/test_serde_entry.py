"""An entry survives the trip agent -> wire -> receiver unchanged: ``add_entry`` (the scanner's hot path,
one constructor call with every scalar) against ``entry_from_proto`` (the receiver's validation)."""
from __future__ import annotations

import pytest

from cvmigrate.common.model import Entry, Kind
from cvmigrate.common.serde import add_entry, entry_from_proto
from cvmigrate.proto import transfer_pb2 as pb

ENTRIES = [
    Entry(b"", Kind.DIRECTORY, 0o755, 0, 0, 1, dev=3, ino=2, ctime_ns=5, id=1),
    Entry(b"a/f", Kind.REGULAR, 0o4751, 1000, 1001, 1_700_000_000_123_456_789, size=1 << 40, dev=2049,
          ino=1 << 40, ctime_ns=-7, id=(1 << 32) - 1),
    Entry(b"a/empty", Kind.REGULAR, 0o600, 0, 0, -1_000_000_000, id=3),
    Entry(b"a/l", Kind.SYMLINK, 0o777, 0, 0, 4, link_target=b"../\xff target", id=4),
    Entry(b"dev/sda", Kind.BLOCKDEV, 0o660, 0, 6, 5, rdev=(8 << 8) | 1, id=5),
    Entry(b"dev/null", Kind.CHARDEV, 0o666, 0, 0, 6, rdev=(1 << 8) | 3, id=6),
    Entry(b"p", Kind.FIFO, 0o644, 0, 0, 7, id=7),
    Entry(b"a/g", Kind.REGULAR, 0o644, 0, 0, 8, size=12, hardlink_to=b"a/f", id=8),
    Entry(b"x", Kind.REGULAR, 0o644, 0, 0, 9, size=1,
          xattrs=((b"security.selinux", b"system_u:object_r:etc_t:s0\0"), (b"user.k", b"")), id=9),
]


@pytest.mark.parametrize("e", ENTRIES, ids=lambda e: e.path.decode("latin-1") or "root")
def test_an_entry_written_by_add_entry_reads_back_equal(e: Entry) -> None:
    batch = pb.EntryBatch()
    add_entry(batch.entries, e)
    wire = pb.EntryBatch.FromString(batch.SerializeToString())
    back = entry_from_proto(wire.entries[0])
    assert back == e
    assert back.signature() == e.signature()
    assert (back.dev, back.ino, back.ctime_ns, back.id) == (e.dev, e.ino, e.ctime_ns, e.id)


def test_zero_fields_cost_no_bytes() -> None:
    """Every scalar is passed to the constructor, zero or not: a zero must still not be serialized."""
    batch = pb.EntryBatch()
    add_entry(batch.entries, Entry(b"f", Kind.REGULAR, 0, 0, 0, 0, id=1))
    bare = pb.EntryBatch()
    m = bare.entries.add()
    m.id, m.path, m.kind = 1, b"f", pb.REGULAR
    m.source.SetInParent()
    assert batch.SerializeToString() == bare.SerializeToString()
