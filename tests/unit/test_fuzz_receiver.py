"""Fuzzing (hypothesis) of what a hostile agent controls: paths, segments, whole
messages.  Whatever arrives, the receiver raises only CvmError (mapped to a
clear status), and nothing appears outside its root."""
import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cvmigrate.common import compression
from cvmigrate.common.errors import CvmError, ProtocolError, UnsafePath
from cvmigrate.common.paths import split_relpath
from cvmigrate.proto import transfer_pb2 as pb
from cvmigrate.receiver.fsops import TargetTree
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


@given(messages)
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_hostile_message_sequences_stay_inside_the_root(msgs):
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        root, outside = base / "root", base / "outside"
        root.mkdir()
        outside.mkdir()
        os.symlink(outside, root / "link")
        tree = TargetTree(str(root))
        journal = Journal(str(root / ".cvmigrate"))
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
            pass  # refused with a clear status: fine
        finally:
            session.close()
            tree.close()
            journal.close()
        assert list(outside.iterdir()) == []
        for dirpath, dirnames, filenames in os.walk(base):
            assert Path(dirpath).resolve().is_relative_to(base.resolve())
