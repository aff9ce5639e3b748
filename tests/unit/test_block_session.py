"""The receiver's block session (receiver/blocksession.py) driven message by message, without gRPC.

Targets are sparse image files in tmp_path.  What docs/design.md promises of
the block plane and is checked here: the target's hashes are reported for
every block, in order, before any block may be written; writes outside the
source's blocks, of the wrong length or with a wrong hash are refused and
leave the target untouched; a block lies inside the journal's durable dirty
range before it is written; the manifest (both sides compute it the same
way) proves the pass; a second pass reads the hashes from the journal
instead of the target.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import xxhash

from cvmigrate.common.blockproto import BLOCK_PROTOCOL_VERSION, BLOCK_SIZE, Manifest, manifest_hash
from cvmigrate.common.errors import IntegrityError, PermissionDenied, ProtocolError, TargetError, VersionMismatch
from cvmigrate.common.hashing import chunk_hash
from cvmigrate.proto import block_pb2 as bpb
from cvmigrate.proto import transfer_pb2 as pb
from cvmigrate.receiver.blockjournal import BlockJournal
from cvmigrate.receiver.blocksession import BlockSession
from cvmigrate.receiver.blocktarget import TargetRefused

B = BLOCK_SIZE
SOURCE_SIZE = 3 * B + B // 2      # four blocks, the last one half a block long
NBLOCKS = 4


def _image(path, size: int, writes: dict[int, bytes] | None = None) -> str:
    with open(path, "wb") as f:
        f.truncate(size)
        for off, data in (writes or {}).items():
            f.seek(off)
            f.write(data)
    return str(path)


def _hello(target_device: str, *, protocol_version: int = BLOCK_PROTOCOL_VERSION, source_size: int = SOURCE_SIZE,
           block_size: int = B) -> bpb.BlockHello:
    return bpb.BlockHello(protocol_version=protocol_version, agent_version="test", source_size=source_size,
                          block_size=block_size, target_device=target_device, consistency="image",
                          source=pb.SourceIdentity(hostname="src", root=b"/src.img"))


def _block(i: int, plain: bytes, *, codec: pb.Codec = pb.RAW, data: bytes | None = None,
           hash: bytes | None = None) -> bpb.BlockSegment:
    """A segment of ``plain``: RAW unless ``codec`` (``data`` is then the encoded bytes), with its true hash
    unless ``hash`` says otherwise."""
    return bpb.BlockSegment(index=i, codec=codec, raw_length=len(plain), data=plain if data is None else data,
                            hash=chunk_hash(plain) if hash is None else hash)


def _length(i: int) -> int:
    return min(B, SOURCE_SIZE - i * B)


class Rig:
    """One target image, its state directory, and sessions over them."""

    def __init__(self, tmp_path, target_size: int = 4 * B, writes: dict[int, bytes] | None = None) -> None:
        self.state = str(tmp_path / "state")
        self.target = _image(tmp_path / "target.img", target_size, writes)
        self.journals: list[BlockJournal] = []
        self.sessions: list[BlockSession] = []

    def session(self, allowed: list[str] | None = None) -> BlockSession:
        j = BlockJournal(self.state)
        s = BlockSession(j, [self.target] if allowed is None else allowed)
        self.journals.append(j)
        self.sessions.append(s)
        return s

    def open(self) -> tuple[BlockSession, bpb.BlockWelcome, list[bytes]]:
        """hello + every TargetHashes, as the servicer's hashing thread would send them."""
        s = self.session()
        w = s.hello(_hello(self.target)).welcome
        hashes: list[bytes] = []
        for m in s.hash_target(threading.Event()):
            assert m.hashes.first == len(hashes), "TargetHashes must be in order, without gaps"
            hashes.extend(m.hashes.hashes)
        return s, w, hashes

    def read(self, i: int) -> bytes:
        with open(self.target, "rb") as f:
            f.seek(i * B)
            return f.read(_length(i))

    def close(self) -> None:
        for s in self.sessions:
            s.close()
        for j in self.journals:
            j.close()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    yield r
    r.close()


def _manifest(blocks: list[bytes]) -> bytes:
    """The manifest as block.proto defines it, computed independently of either side's code."""
    h = xxhash.xxh3_128()
    for b in blocks:
        h.update(bytes(16) if not b.strip(b"\0") else chunk_hash(b))
    return h.digest()


# ------------------------------------------------------------------ the manifest
@pytest.mark.parametrize("hashes", [
    [],
    [b""],
    [b"\x07" * 16, b"", b"\x09" * 16],
    [b""] * 5,
])
def test_manifest_is_xxh3_over_the_block_hashes_with_zero_blocks_as_16_zero_bytes(hashes):
    want = xxhash.xxh3_128(b"".join(h or bytes(16) for h in hashes)).digest()
    assert manifest_hash(hashes) == want
    assert manifest_hash(iter(hashes)) == want
    streamed = Manifest()                       # the agent's way: one block at a time while reading
    for h in hashes:
        streamed.add(h)
    assert streamed.digest() == want


def test_manifest_depends_on_order_and_an_unknown_block_never_matches():
    a, b = b"\x01" * 16, b"\x02" * 16
    assert manifest_hash([a, b]) != manifest_hash([b, a])
    unknown = manifest_hash([a, None, b])
    assert unknown != manifest_hash([a, b"", b]) and len(unknown) != 16


def test_the_block_constants_are_those_block_proto_names():
    # both sides import them from common/blockproto.py; a change here is a protocol change
    assert BLOCK_SIZE == 1 << 20
    assert BLOCK_PROTOCOL_VERSION == 1


# ------------------------------------------------------------------ hello: which targets may be written
@pytest.mark.parametrize("hello,error", [
    ({"protocol_version": 2}, VersionMismatch),
    ({"protocol_version": 0}, VersionMismatch),
    ({"block_size": 4096}, ProtocolError),
    ({"block_size": 0}, ProtocolError),
    ({"target_device": ""}, ProtocolError),
    ({"source_size": 4 * B + 1}, TargetRefused),           # the target is smaller than the source
])
def test_hello_refuses(rig, hello, error):
    with pytest.raises(error):
        rig.session().hello(_hello(**{"target_device": rig.target, **hello}))


def test_only_targets_the_receiver_was_told_about(rig, tmp_path):
    other = _image(tmp_path / "other.img", 4 * B)
    with pytest.raises(PermissionDenied) as ei:
        rig.session().hello(_hello(other))
    assert "--block-target" in str(ei.value)
    with pytest.raises(PermissionDenied):
        rig.session(allowed=[]).hello(_hello(rig.target))


def test_a_name_resolving_to_an_allowed_target_is_that_target(rig, tmp_path):
    link = tmp_path / "alias.img"
    link.symlink_to(rig.target)
    w = rig.session().hello(_hello(str(link))).welcome
    assert w.target_size == 4 * B


def test_a_target_that_is_neither_a_device_nor_a_file_is_refused(rig, tmp_path):
    d = tmp_path / "dir"
    d.mkdir()
    with pytest.raises(TargetRefused):
        rig.session(allowed=[str(d)]).hello(_hello(str(d)))


def test_welcome_describes_a_fresh_target(rig):
    s, w, hashes = rig.open()
    assert (w.protocol_version, w.target_size, w.resumed, w.journal_blocks) == (1, 4 * B, False, 0)
    assert w.max_inflight_bytes > 0 and w.session_id
    assert hashes == [b""] * NBLOCKS


# ------------------------------------------------------------------ target hashes
def test_target_hashes_cover_every_block_from_the_targets_bytes(tmp_path):
    a = os.urandom(B)
    tail = b"T" * (B // 2)
    beyond = b"never part of the source"
    r = Rig(tmp_path, writes={0: a, 2 * B: b"\0" * B, 3 * B: tail, SOURCE_SIZE: beyond})
    try:
        s, _, hashes = r.open()
        # block 1 is a hole, block 2 written zeros: both read as the zero hash; the last block is
        # hashed over the source's length only, not the target's bytes after it
        assert hashes == [chunk_hash(a), b"", b"", chunk_hash(tail)]
        assert s.hashed == 3          # the hole cost no read
    finally:
        r.close()


# ------------------------------------------------------------------ data: what is refused
@pytest.mark.parametrize("make,error", [
    (lambda: bpb.BlockData(blocks=[_block(NBLOCKS, b"x" * B)]), ProtocolError),                 # past the end
    (lambda: bpb.BlockData(blocks=[_block(1 << 40, b"x" * B)]), ProtocolError),
    (lambda: bpb.BlockData(blocks=[_block(3, b"x" * B)]), ProtocolError),                       # last block too long
    (lambda: bpb.BlockData(blocks=[_block(0, b"x" * (B // 2))]), ProtocolError),                # a full block too short
    (lambda: bpb.BlockData(blocks=[_block(0, b"x" * B, hash=b"\0" * 16)]), IntegrityError),    # wrong hash
    (lambda: bpb.BlockData(blocks=[bpb.BlockSegment(index=0, codec=pb.RAW, raw_length=B, data=b"short",
                                                    hash=chunk_hash(b"x" * B))]), ProtocolError),
    (lambda: bpb.BlockData(blocks=[_block(0, b"x" * B, codec=7)]),  # type: ignore[arg-type]  # unknown codec
     ProtocolError),
    (lambda: bpb.BlockData(zeros=[bpb.ZeroRun(first=0, count=0)]), ProtocolError),
    (lambda: bpb.BlockData(zeros=[bpb.ZeroRun(first=2, count=3)]), ProtocolError),
    (lambda: bpb.BlockData(zeros=[bpb.ZeroRun(first=NBLOCKS, count=1)]), ProtocolError),
])
def test_out_of_range_or_unverifiable_writes_are_refused_and_change_nothing(tmp_path, make, error):
    old = os.urandom(B)
    r = Rig(tmp_path, writes={0: old, 2 * B: old, 3 * B: old[:B // 2]})
    try:
        s, _, _ = r.open()
        with pytest.raises(error):
            s.data(make())
        assert (r.read(0), r.read(2), r.read(3)) == (old, old, old[:B // 2])
        assert s.written == s.zeroed == 0
    finally:
        r.close()


def test_a_block_sent_before_its_target_hash_was_reported_is_refused(rig):
    s = rig.session()
    s.hello(_hello(rig.target))               # no TargetHashes yet
    with pytest.raises(ProtocolError) as ei:
        s.data(bpb.BlockData(blocks=[_block(0, b"x" * B)]))
    assert "before its target hash" in str(ei.value)
    assert rig.read(0) == b"\0" * B


# ------------------------------------------------------------------ data: writing, committing, the dirty range
def test_a_whole_pass_writes_verifies_commits_and_proves_the_manifest(rig):
    s, _, _ = rig.open()
    blocks = [os.urandom(B), b"\0" * B, b"z" * B, os.urandom(B // 2)]
    msgs = s.data(bpb.BlockData(blocks=[_block(0, blocks[0]), _block(2, blocks[2]), _block(3, blocks[3])]))
    assert msgs == []                         # below the commit threshold: nothing acknowledged yet
    out = s.done(bpb.BlockDone(blocks_total=NBLOCKS, manifest=_manifest(blocks)))
    committed = [m.committed for m in out if m.HasField("committed")]
    summary = [m.summary for m in out if m.HasField("summary")]
    assert committed and committed[0].blocks == 3 and committed[0].bytes == 2 * B + B // 2
    assert summary and summary[0].manifest_ok and summary[0].blocks_written == 3
    assert [rig.read(i) for i in range(NBLOCKS)] == blocks
    assert s.finished


def test_a_zstd_block_is_decoded_then_verified(rig):
    import zstandard

    s, _, _ = rig.open()
    plain = b"compressible " * (B // 13) + b"x" * (B % 13)
    data = zstandard.ZstdCompressor().compress(plain)
    s.data(bpb.BlockData(blocks=[_block(1, plain, codec=pb.ZSTD, data=data)]))
    assert rig.read(1) == plain


def test_a_zero_run_makes_blocks_read_as_zeros(tmp_path):
    r = Rig(tmp_path, writes={B: b"\xff" * B, 2 * B: b"\xee" * B})
    try:
        s, _, hashes = r.open()
        assert hashes[1] and hashes[2]
        s.data(bpb.BlockData(zeros=[bpb.ZeroRun(first=1, count=2)]))
        assert r.read(1) == r.read(2) == b"\0" * B
        out = s.done(bpb.BlockDone(blocks_total=NBLOCKS, manifest=_manifest([b"\0" * B] * 3 + [b"\0" * (B // 2)])))
        assert out[-1].summary.manifest_ok and out[-1].summary.blocks_zeroed == 2
    finally:
        r.close()


@pytest.mark.parametrize("blocks_total,manifest,error", [
    (NBLOCKS, b"\0" * 16, IntegrityError),          # the receiver's view differs from the source
    (NBLOCKS - 1, None, ProtocolError),             # the agent counted another number of blocks
    (NBLOCKS + 1, None, ProtocolError),
])
def test_done_refuses_a_pass_that_does_not_prove_itself(rig, blocks_total, manifest, error):
    s, _, _ = rig.open()
    good = _manifest([b"\0" * B] * 3 + [b"\0" * (B // 2)])
    with pytest.raises(error):
        s.done(bpb.BlockDone(blocks_total=blocks_total, manifest=manifest if manifest is not None else good))
    assert not s.finished


def _target_row(state: str, target: str) -> tuple[int, int]:
    j = BlockJournal(state)
    try:
        return j.db.execute("SELECT dirty_lo, dirty_hi FROM targets WHERE path=?",
                            (os.path.realpath(target),)).fetchone()
    finally:
        j.close()


def test_a_block_lies_in_the_durable_dirty_range_before_it_is_written(rig):
    s, _, _ = rig.open()
    s.data(bpb.BlockData(blocks=[_block(2, b"w" * B)]))       # written, not committed
    lo, hi = _target_row(rig.state, rig.target)               # read through another connection
    assert lo <= 2 < hi
    s.maybe_commit(force=True)
    lo, hi = _target_row(rig.state, rig.target)
    assert lo > 2                                             # committed blocks are clean again


def test_after_a_crash_the_dirty_blocks_are_hashed_again_not_trusted(tmp_path):
    r = Rig(tmp_path)
    try:
        s, _, _ = r.open()
        s.data(bpb.BlockData(blocks=[_block(0, b"a" * B)]))
        s.maybe_commit(force=True)                            # block 0 committed: journaled
        s.data(bpb.BlockData(blocks=[_block(1, b"b" * B)]))   # block 1 written, never committed
        # the crash: no done(), no close(); the journal keeps its dirty range
        s2, w, hashes = r.open()
        assert w.resumed
        assert hashes[0] == chunk_hash(b"a" * B) and hashes[1] == chunk_hash(b"b" * B)
        assert s2.hashed >= 1                                 # block 1 came from the target, not the journal
    finally:
        r.close()


def test_a_stream_that_ends_early_keeps_what_arrived_verified(rig):
    """close() without BlockDone (the agent went away): written blocks are committed, not re-sent."""
    s, _, _ = rig.open()
    s.data(bpb.BlockData(blocks=[_block(1, b"k" * B)]))
    s.close()
    s2, w, hashes = rig.open()
    assert w.resumed and hashes[1] == chunk_hash(b"k" * B)
    assert s2.hashed == 0                                     # every hash came from the journal


# ------------------------------------------------------------------ resume
def test_a_second_pass_takes_every_hash_from_the_journal(rig):
    s, _, _ = rig.open()
    blocks = [b"1" * B, b"\0" * B, b"3" * B, b"4" * (B // 2)]
    s.data(bpb.BlockData(blocks=[_block(0, blocks[0]), _block(2, blocks[2]), _block(3, blocks[3])]))
    s.done(bpb.BlockDone(blocks_total=NBLOCKS, manifest=_manifest(blocks)))
    s.close()
    s2, w, hashes = rig.open()
    assert (w.resumed, w.journal_blocks) == (True, NBLOCKS)
    assert s2.hashed == 0                                     # no target read at all
    assert hashes == [chunk_hash(blocks[0]), b"", chunk_hash(blocks[2]), chunk_hash(blocks[3])]


@pytest.mark.parametrize("change", ["source_size", "replaced"])
def test_the_journal_forgets_a_target_that_is_not_the_one_it_journaled(tmp_path, change):
    r = Rig(tmp_path, writes={0: b"q" * B})
    try:
        s, _, _ = r.open()
        s.done(bpb.BlockDone(blocks_total=NBLOCKS,
                             manifest=_manifest([b"q" * B, b"\0" * B, b"\0" * B, b"\0" * (B // 2)])))
        s.close()
        source_size = SOURCE_SIZE
        if change == "source_size":
            source_size = 2 * B                                   # another source on the same target
        else:
            # another file at the same name (the old one kept aside, so its inode number is not reused)
            os.rename(r.target, r.target + ".old")
            _image(r.target, 4 * B, {0: b"q" * B})
        s2 = r.session()
        w = s2.hello(_hello(r.target, source_size=source_size)).welcome
        assert (w.resumed, w.journal_blocks) == (False, 0)
    finally:
        r.close()


def test_block_journal_refuses_an_unknown_format_version(tmp_path):
    state = str(tmp_path / "state")
    BlockJournal(state).close()
    import sqlite3
    db = sqlite3.connect(os.path.join(state, "block.db"))
    db.execute("UPDATE meta SET value='9' WHERE key='format_version'")
    db.commit()
    db.close()
    with pytest.raises(VersionMismatch):
        BlockJournal(state)


@pytest.mark.parametrize("plant", ["hard link", "symlink", "wal symlink"])
def test_block_journal_refuses_a_database_that_is_not_its_own_plain_file(tmp_path, plant):
    # the same rule as the file journal (receiver/journal.py, open_state_db): a second name would let
    # something else rewrite the hashes the receiver trusts instead of reading the target
    state = tmp_path / "state"
    state.mkdir()
    elsewhere = tmp_path / "elsewhere.db"
    elsewhere.write_bytes(b"")
    if plant == "hard link":
        os.link(elsewhere, state / "block.db")
    elif plant == "symlink":
        os.symlink(elsewhere, state / "block.db")
    else:
        os.symlink(elsewhere, state / "block.db-wal")
    with pytest.raises(TargetError, match="not a plain file"):
        BlockJournal(str(state))
    assert elsewhere.read_bytes() == b""
