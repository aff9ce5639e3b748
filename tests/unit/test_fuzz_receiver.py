"""Fuzzing (hypothesis) of what a hostile agent controls: paths, segments, whole
messages.  Whatever arrives, the receiver raises only CvmError (mapped to a
clear status), and nothing appears outside its root."""
import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cvmigrate.common import compression
from cvmigrate.common.blockproto import BLOCK_SIZE
from cvmigrate.common.errors import CvmError, ProtocolError, UnsafePath
from cvmigrate.common.hashing import chunk_hash
from cvmigrate.common.paths import split_relpath
from cvmigrate.proto import block_pb2 as bpb
from cvmigrate.proto import transfer_pb2 as pb
from cvmigrate.receiver.blockjournal import BlockJournal
from cvmigrate.receiver.blocksession import BlockSession
from cvmigrate.receiver.fsops import TargetTree, tmp_name
from cvmigrate.receiver.journal import Journal
from cvmigrate.receiver.session import ReceiverConfig, Session

name = st.one_of(st.sampled_from([b"..", b".", b"", b"a", b"\0", b"x" * 256, b".cvmigrate", b"link"]),
                 st.binary(min_size=0, max_size=12))
paths = st.one_of(st.binary(max_size=40), st.lists(name, min_size=1, max_size=5).map(b"/".join),
                  st.lists(name, min_size=1, max_size=3).map(lambda p: b"/" + b"/".join(p)))


@given(paths)
@settings(max_examples=1000, deadline=None)
def test_split_relpath_accepts_only_plain_names(path):
    try:
        parts = split_relpath(path)
    except UnsafePath:
        return
    assert not path.startswith(b"/") and b"\0" not in path
    for part in parts:
        assert part not in (b"", b".", b"..") and b"/" not in part and len(part) <= 255


@given(st.integers(0, 3), st.binary(max_size=300), st.integers(0, 4096))
@settings(max_examples=1000, deadline=None)
def test_decompress_raises_only_protocol_errors(codec, data, raw_length):
    try:
        out = compression.decompress(codec, data, raw_length, 2048)
    except ProtocolError:
        return
    assert len(out) == raw_length <= 2048


kinds = st.sampled_from([0, 1, 2, 3, 4, 5, 6, 9])
entries = st.builds(lambda i, p, k, mode, size, link, target: pb.Entry(
    id=i, path=p, kind=k, mode=mode, size=size, link_target=link, hardlink_to=target, uid=os.geteuid(),
    gid=os.getegid()), st.integers(0, 50), paths, kinds, st.integers(0, 0o17777), st.integers(0, 1 << 20),
    st.binary(max_size=20), st.one_of(st.just(b""), paths))
chunks = st.builds(lambda f, o, n, h, r: pb.ChunkRef(file_id=f, offset=o, length=n, hash=h, reuse=r),
                   st.integers(0, 50), st.sampled_from([0, 1, 1 << 20, 3 << 20]), st.integers(0, 64),
                   st.binary(min_size=0, max_size=16), st.booleans())
segments = st.builds(lambda c, d, cs: pb.Segment(codec=c, raw_length=len(d), data=d, chunks=cs),
                     st.integers(0, 2), st.binary(max_size=64), st.lists(chunks, max_size=3))
messages = st.lists(st.one_of(
    st.builds(lambda es, ds: pb.AgentMessage(entries=pb.EntryBatch(entries=es, completed_dirs=ds)),
              st.lists(entries, max_size=4), st.lists(paths, max_size=2)),
    st.builds(lambda ss, ends: pb.AgentMessage(data=pb.DataBatch(segments=ss, ends=ends)),
              st.lists(segments, max_size=2),
              st.lists(st.builds(lambda f, s_, h: pb.FileEnd(file_id=f, size=s_, hash=h), st.integers(0, 50),
                                 st.integers(0, 1 << 21), st.binary(max_size=16)), max_size=2)),
    st.just(pb.AgentMessage(done=pb.Done()))), max_size=6)


def _sandbox(tmp: str) -> tuple[Path, Path, Path]:
    """``tmp``, the receiver's root in it, and a directory beside the root that must stay untouched."""
    base = Path(tmp)
    root, outside = base / "root", base / "outside"
    root.mkdir()
    outside.mkdir()
    return base, root, outside


def _play(root: Path, tree: TargetTree, journal: Journal, msgs: list[pb.AgentMessage]) -> None:
    """Feed ``msgs`` to a session on ``root`` as the servicer does (a CvmError, a refusal with a clear status,
    is fine), then close the session, the tree and the journal."""
    session = Session(ReceiverConfig(root=str(root)), tree, journal)
    try:
        session.hello(pb.Hello(protocol_version=1, options=pb.Options(delete=True)))
        for m in msgs:
            kind = m.WhichOneof("body")
            if kind == "entries":
                session.entries(m.entries)
            elif kind == "data":
                session.data(m.data)
            else:
                session.done()
    except CvmError:
        pass
    finally:
        session.close()
        tree.close()
        journal.close()


@given(messages)
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_hostile_message_sequences_stay_inside_the_root(msgs):
    with tempfile.TemporaryDirectory() as tmp:
        base, root, outside = _sandbox(tmp)
        os.symlink(outside, root / "link")
        tree = TargetTree(str(root))
        journal = Journal(str(root / ".cvmigrate"))
        _play(root, tree, journal, msgs)
        assert list(outside.iterdir()) == []
        for dirpath, _dirnames, _filenames in os.walk(base):
            assert Path(dirpath).resolve().is_relative_to(base.resolve())


# ----------------------------------------------------------------------------- issue 11: hostile values
# What a compromised source sends besides odd paths: names in the receiver's temporary namespace and its
# state directory, device numbers, setuid modes, xattrs with odd names, NUL bytes, extreme integers.  The
# root holds what an earlier hostile pass may have planted: a hard link to a file outside the root at a
# temporary name, a FIFO where a file was, a symlink out.  Whatever arrives, only CvmError escapes, every
# file outside the root keeps its bytes, mode and link count, and the journal keeps a single name.

EXTREME = st.sampled_from([0, 1, (1 << 31) - 1, (1 << 32) - 1, (1 << 32), (1 << 44), (1 << 62), (1 << 63) - 1,
                           (1 << 64) - 1])
hostile_names = st.sampled_from([b"a", b"f", b"fifo", b"link", b"d", tmp_name(b"a"), tmp_name(b"f"),
                                 tmp_name(b"x"), b".cvmigrate", b".cvmigrate/journal.db", b"d/" + tmp_name(b"a"),
                                 b"a\0b", b"d/a"])
xattr_names = st.sampled_from([b"user.x", b"trusted.x", b"security.capability", b"system.posix_acl_access",
                               b"", b"user.\0x", b"x" * 300, b"nonamespace"])
hostile_entries = st.builds(
    lambda i, p, k, mode, uid, size, rdev, link, target, xs, mtime: pb.Entry(
        id=i, path=p, kind=k, mode=mode, uid=uid, gid=os.getegid(), size=size, rdev=rdev, link_target=link,
        hardlink_to=target, xattrs=[pb.Xattr(name=n, value=v) for n, v in xs], mtime_ns=mtime),
    st.integers(0, 20), hostile_names, kinds, st.sampled_from([0o644, 0o4755, 0o6777, 0o7777, 0o1777, 0o17777]),
    st.one_of(st.just(os.geteuid()), st.sampled_from([0, (1 << 32) - 1, (1 << 32) - 2])), EXTREME,
    st.one_of(st.just(0), EXTREME, st.builds(os.makedev, st.integers(0, 4095), st.integers(0, (1 << 20) - 1))),
    st.sampled_from([b"", b"target", b"a\0b", b"/etc/shadow", b"x" * 5000]),
    st.one_of(st.just(b""), hostile_names),
    st.lists(st.tuples(xattr_names, st.binary(max_size=8)), max_size=2),
    st.sampled_from([0, -1, 1 << 62, -(1 << 63), (1 << 63) - 1]))
hostile_chunks = st.builds(lambda f, o, n, r: pb.ChunkRef(file_id=f, offset=o, length=n, hash=b"", reuse=r),
                           st.integers(0, 20), EXTREME, st.integers(0, 8), st.booleans())
hostile_messages = st.lists(st.one_of(
    st.builds(lambda es, ds: pb.AgentMessage(entries=pb.EntryBatch(entries=es, completed_dirs=ds)),
              st.lists(hostile_entries, max_size=4), st.lists(st.sampled_from([b"", b"d", b".cvmigrate"]),
                                                              max_size=2)),
    st.builds(lambda cs, ends: pb.AgentMessage(data=pb.DataBatch(
        segments=[pb.Segment(codec=pb.RAW, raw_length=8, data=b"A" * 8, chunks=cs)] if cs else [], ends=ends)),
        st.lists(hostile_chunks, max_size=2),
        st.lists(st.builds(lambda f, s_: pb.FileEnd(file_id=f, size=s_, hash=bytes(16)), st.integers(0, 20),
                           EXTREME), max_size=2)),
    st.just(pb.AgentMessage(done=pb.Done()))), max_size=6)


def _fingerprint(d: Path) -> dict[str, tuple[int, int, bytes]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(d):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            s = os.lstat(p)
            out[p] = (s.st_mode, s.st_nlink, Path(p).read_bytes() if os.path.isfile(p) and not os.path.islink(p)
                      else b"")
    return out


@given(hostile_messages)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_hostile_values_and_planted_objects_never_reach_outside(msgs):
    with tempfile.TemporaryDirectory() as tmp:
        _, root, outside = _sandbox(tmp)
        (outside / "victim").write_bytes(b"outside\n")
        (root / "d").mkdir()
        (root / "a").write_bytes(b"old a\n")
        os.link(outside / "victim", root / os.fsdecode(tmp_name(b"f")))    # planted by an earlier pass
        os.mkfifo(root / "fifo")
        os.symlink(outside, root / "link")
        before = _fingerprint(outside)
        tree = TargetTree(str(root))
        tree.make_state_dir(str(root / ".cvmigrate"))
        journal = Journal(str(root / ".cvmigrate"))
        tree.protect(str(root / ".cvmigrate"))
        _play(root, tree, journal, msgs)
        after = _fingerprint(outside)
        # the planted hard link may be unlinked (nlink 2 -> 1); never written through
        assert {p: (m, c) for p, (m, _, c) in after.items()} == {p: (m, c) for p, (m, _, c) in before.items()}
        assert os.lstat(root / ".cvmigrate" / "journal.db").st_nlink == 1


# ----------------------------------------------------------------------------- the block protocol

block_targets = st.sampled_from(["allowed", "outside", "link", "../outside/victim", "", "fifo", "allowed/.."])
block_hellos = st.builds(lambda t, size, bs, v: (t, bpb.BlockHello(protocol_version=v, source_size=size,
                                                                      block_size=bs)),
                         block_targets, st.one_of(st.integers(0, 4 << 20), EXTREME),
                         st.sampled_from([BLOCK_SIZE, 0, 4096, (1 << 32) - 1]), st.sampled_from([1, 0, 2]))
block_data = st.builds(lambda segs, zeros: bpb.BlockData(blocks=segs, zeros=zeros),
                       st.lists(st.builds(lambda i, n, d: bpb.BlockSegment(index=i, codec=pb.RAW, raw_length=n, data=d,
                                                                           hash=chunk_hash(d)),
                                          st.one_of(st.integers(0, 5), EXTREME), st.integers(0, BLOCK_SIZE),
                                          st.binary(max_size=16)), max_size=2),
                       st.lists(st.builds(lambda f, c: bpb.ZeroRun(first=f, count=c),
                                          st.one_of(st.integers(0, 5), EXTREME),
                                          st.one_of(st.integers(0, 5), EXTREME)), max_size=2))


@given(block_hellos, st.lists(block_data, max_size=3), st.one_of(st.integers(0, 8), EXTREME))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_block_protocol_writes_only_the_allowed_target(hello, datas, total):
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        outside = base / "outside"
        outside.mkdir()
        (outside / "victim").write_bytes(b"outside\n" * 1000)
        allowed = base / "allowed.img"
        with open(allowed, "wb") as f:
            f.truncate(4 << 20)
        os.symlink(outside / "victim", base / "link")
        os.mkfifo(base / "fifo")
        before = _fingerprint(outside)
        name, h = hello
        h.target_device = {"allowed": str(allowed), "outside": str(outside / "victim"), "link": str(base / "link"),
                           "fifo": str(base / "fifo"), "allowed/..": str(allowed) + "/.."}.get(name, name)
        journal = BlockJournal(str(base / "state"))
        session = BlockSession(journal, [str(allowed)])
        try:
            session.hello(h)
            session.view = [b""] * min(session.nblocks, 64)   # as if the target's hashes were reported
            for d in datas:
                session.data(d)
            session.done(bpb.BlockDone(blocks_total=total))
        except CvmError:
            pass
        finally:
            session.close()
            journal.close()
        assert _fingerprint(outside) == before
        assert allowed.stat().st_size == 4 << 20
