"""Entry.signature is stored in every receiver journal: a faster computation must give the very value the
first one gave (the parts fed one by one to XXH3-128), or every entry of an existing target looks changed."""
import struct

import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from cvmigrate.common.model import Entry, Kind


def streamed_signature(e: Entry) -> bytes:
    """The definition (journal format 1 and 2): fixed fields, then length-prefixed links and xattrs."""
    h = xxhash.xxh3_128()
    h.update(struct.pack("<BIIIqQQ", e.kind, e.mode, e.uid, e.gid, e.mtime_ns, e.size, e.rdev))
    for part in (e.link_target, e.hardlink_to):
        h.update(struct.pack("<I", len(part)))
        h.update(part)
    for name, value in e.xattrs:
        h.update(struct.pack("<II", len(name), len(value)))
        h.update(name)
        h.update(value)
    return h.digest()


entries = st.builds(
    Entry, path=st.binary(max_size=20), kind=st.sampled_from(list(Kind)), mode=st.integers(0, 0o7777),
    uid=st.integers(0, (1 << 32) - 2), gid=st.integers(0, (1 << 32) - 2),
    mtime_ns=st.integers(-(1 << 63), (1 << 63) - 1),
    size=st.integers(0, (1 << 64) - 1), link_target=st.binary(max_size=30), rdev=st.integers(0, (1 << 32) - 1),
    hardlink_to=st.binary(max_size=30),
    xattrs=st.lists(st.tuples(st.binary(min_size=1, max_size=10), st.binary(max_size=40)), max_size=3).map(tuple))


@given(entries)
@settings(max_examples=300, deadline=None)
def test_signature_is_the_streamed_digest(e: Entry) -> None:
    assert e.signature() == streamed_signature(e)


def test_signature_changes_with_every_field() -> None:
    base = Entry(b"a", Kind.REGULAR, 0o644, 0, 0, 1, 2)
    others = [Entry(b"a", Kind.REGULAR, 0o600, 0, 0, 1, 2), Entry(b"a", Kind.REGULAR, 0o644, 1, 0, 1, 2),
              Entry(b"a", Kind.REGULAR, 0o644, 0, 0, 2, 2), Entry(b"a", Kind.REGULAR, 0o644, 0, 0, 1, 3),
              Entry(b"a", Kind.REGULAR, 0o644, 0, 0, 1, 2, xattrs=((b"user.a", b""),)),
              Entry(b"a", Kind.REGULAR, 0o644, 0, 0, 1, 2, hardlink_to=b"b")]
    assert len({base.signature(), *(o.signature() for o in others)}) == len(others) + 1
