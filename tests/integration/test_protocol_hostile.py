"""Hostile or broken protocol input: each is refused with a clear status and
nothing is written outside the root (nor, for refused entries, inside it)."""
import os
import threading

import grpc
import pytest

from cvmigrate.agent.push import PushOptions, PushSession
from cvmigrate.common.errors import IntegrityError, VersionMismatch
from cvmigrate.common.hashing import chunk_hash
from cvmigrate.common.model import PROTOCOL_VERSION
from cvmigrate.proto import transfer_pb2 as pb
from cvmigrate.proto import transfer_pb2_grpc as pb_grpc
from tests.helpers.wire import transfer_outcome


def stream(address, *messages, version=PROTOCOL_VERSION):
    """Send Hello + messages on one Transfer stream; return (responses, status code, details)."""
    hello = pb.AgentMessage(hello=pb.Hello(protocol_version=version, options=pb.Options(delete=True)))
    return transfer_outcome(address, [hello, *messages])


def entry(path, kind=pb.REGULAR, **kw):
    kw.setdefault("mode", 0o644)
    return pb.Entry(id=kw.pop("id", 1), path=path, kind=kind, **kw)


def listing(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if ".cvmigrate" not in p.parts)


@pytest.mark.parametrize("path,fragment", [
    (b"../escape", "'..'"),
    (b"/etc/evil", "absolute"),
    (b"a/../../escape", "'..'"),
    (b"nul\0byte", "NUL"),
    (b"x" * 256, "longer than 255"),
    (b"a//b", "''"),
    (b".cvmigrate/journal.db", "state directory"),
])
def test_unsafe_paths_refused(receiver, tmp_path, path, fragment):
    address, root = receiver
    before = listing(tmp_path)
    batch = pb.EntryBatch(entries=[entry(path, size=3)])
    _, code, details = stream(address, pb.AgentMessage(entries=batch))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in details
    assert listing(tmp_path) == before


def test_symlink_on_the_way_is_not_followed(receiver, tmp_path):
    address, root = receiver
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, root / "link")
    for kind in (pb.REGULAR, pb.DIRECTORY, pb.FIFO):
        batch = pb.EntryBatch(entries=[entry(b"link/planted", kind=kind)])
        _, code, details = stream(address, pb.AgentMessage(entries=batch))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details
        assert "symlink" in details
    assert list(outside.iterdir()) == []


def test_unknown_protocol_version(receiver):
    address, root = receiver
    _, code, details = stream(address, version=99)
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "protocol version 99" in details


def test_first_message_must_be_hello(receiver):
    address, _ = receiver
    with grpc.insecure_channel(address) as ch:
        call = pb_grpc.ReceiverStub(ch).Transfer(iter([pb.AgentMessage(done=pb.Done())]), timeout=10)
        with pytest.raises(grpc.RpcError) as info:
            list(call)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Hello" in info.value.details()


def test_data_for_a_file_never_needed(receiver):
    address, root = receiver
    seg = pb.Segment(codec=pb.RAW, raw_length=3, data=b"abc",
                     chunks=[pb.ChunkRef(file_id=42, offset=0, length=3, hash=chunk_hash(b"abc"))])
    _, code, details = stream(address, pb.AgentMessage(data=pb.DataBatch(segments=[seg])))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "file id 42" in details
    assert listing(root) == []


def test_segment_lies_about_its_length(receiver):
    address, root = receiver
    e = pb.EntryBatch(entries=[entry(b"f", size=3)])
    seg = pb.Segment(codec=pb.RAW, raw_length=3, data=b"abc",
                     chunks=[pb.ChunkRef(file_id=1, offset=0, length=9, hash=chunk_hash(b"abc"))])
    _, code, details = stream(address, pb.AgentMessage(entries=e), pb.AgentMessage(data=pb.DataBatch(segments=[seg])))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "overruns" in details
    assert not (root / "f").exists()


def test_flood_of_hash_mismatches_ends_with_data_loss(receiver):
    address, root = receiver
    msgs = [pb.AgentMessage(entries=pb.EntryBatch(entries=[entry(b"f", size=3)]))]
    for _ in range(5):
        seg = pb.Segment(codec=pb.RAW, raw_length=3, data=b"abc",
                         chunks=[pb.ChunkRef(file_id=1, offset=0, length=3, hash=b"\0" * 16)])
        msgs.append(pb.AgentMessage(data=pb.DataBatch(segments=[seg], ends=[pb.FileEnd(file_id=1, size=3)])))
    _, code, details = stream(address, *msgs)
    assert code == grpc.StatusCode.DATA_LOSS
    assert "failed verification" in details
    assert listing(root) == []


def test_second_agent_gets_busy(receiver, tmp_path):
    address, root = receiver
    release = threading.Event()

    def slow_requests():
        yield pb.AgentMessage(hello=pb.Hello(protocol_version=PROTOCOL_VERSION, options=pb.Options()))
        release.wait(10)

    with grpc.insecure_channel(address) as ch:
        first = pb_grpc.ReceiverStub(ch).Transfer(slow_requests(), timeout=20)
        assert next(first).WhichOneof("body") == "welcome"
        _, code, details = stream(address)
        assert code == grpc.StatusCode.ABORTED
        assert "busy" in details
        release.set()
        first.cancel()


def _small_tree(tmp_path):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "victim").write_bytes(os.urandom(300_000))
    (src / "ok").write_bytes(b"fine\n" * 100)
    return src


def test_corrupted_chunk_is_retried_and_succeeds(receiver, tmp_path):
    address, root = receiver
    src = _small_tree(tmp_path)
    flips: list[int] = []

    def flip_once(e, offset, buf):
        if e.path == b"d/victim" and not flips:
            buf[1234] ^= 0x01
            flips.append(offset)

    result = PushSession(PushOptions(source=str(src), address=address), fault=flip_once).run()
    assert flips and not result.errors
    assert (root / "d" / "victim").read_bytes() == (src / "d" / "victim").read_bytes()


def test_persistent_corruption_fails_clearly_and_leaves_no_file(receiver, tmp_path):
    address, root = receiver
    src = _small_tree(tmp_path)

    def flip_always(e, offset, buf):
        if e.path == b"d/victim":
            buf[0] ^= 0x80

    with pytest.raises(IntegrityError) as info:
        PushSession(PushOptions(source=str(src), address=address), fault=flip_always).run()
    assert "d/victim" in str(info.value) and "failed verification" in str(info.value)
    assert not (root / "d" / "victim").exists()
    assert list((root / "d").iterdir()) == []  # the directory landed; no temp file was left


def test_version_mismatch_surfaces_to_the_agent(receiver, tmp_path, monkeypatch):
    address, _ = receiver
    src = _small_tree(tmp_path)
    import cvmigrate.agent.push as push
    monkeypatch.setattr(push, "PROTOCOL_VERSION", 7)
    with pytest.raises(VersionMismatch) as info:
        PushSession(PushOptions(source=str(src), address=address)).run()
    assert "protocol version 7" in str(info.value)
