"""One zstd stream per connection against a real receiver: the copy is exact, the stream beats
per-segment frames on a tree of similar files, corruption is still caught per file, and a hostile
stream ends the pass instead of inflating in the receiver's memory."""
import random

import grpc
import pytest
import zstandard

from cvmigrate.agent.push import PushOptions, PushSession
from cvmigrate.common import compression
from cvmigrate.common.model import PROTOCOL_VERSION
from cvmigrate.proto import transfer_pb2 as pb
from cvmigrate.proto import transfer_pb2_grpc as pb_grpc
from tests.helpers.oracle import assert_identical
from tests.helpers.wire import push_once

KiB = 1 << 10


def _tree(src) -> None:
    """Two copies of the same 2 MiB library (vendored twice, as real trees do): each file alone is
    incompressible, the second copy is a repeat of bytes sent more than one segment earlier."""
    rnd = random.Random(9)
    files = {f"mod{f}.py": rnd.randbytes(rnd.randint(2 * KiB, 12 * KiB)) for f in range(300)}
    for copy in ("vendor_a", "vendor_b"):
        (src / copy).mkdir(parents=True)
        for name, data in files.items():
            (src / copy / name).write_bytes(data)


def test_the_stream_copies_exactly_and_beats_per_segment_frames(tmp_path, monkeypatch):
    from cvmigrate.receiver.server import create_server
    from cvmigrate.receiver.session import ReceiverConfig

    src = tmp_path / "src"
    _tree(src)
    sent = {}
    for mode, window_log in (("segments", 0), ("stream", compression.MAX_STREAM_WINDOW_LOG)):
        # a receiver that does not take streams makes the agent compress segment by segment
        monkeypatch.setattr(compression, "MAX_STREAM_WINDOW_LOG", window_log)
        dst = tmp_path / mode
        dst.mkdir()
        handle = create_server(ReceiverConfig(root=str(dst)), "127.0.0.1:0")
        try:
            r = push_once(src, f"127.0.0.1:{handle.port}", compress_level=3)
        finally:
            handle.stop(grace=1)
        assert not r.errors, r.errors
        assert_identical(src, dst)
        sent[mode] = r.bytes_sent
    assert sent["stream"] < sent["segments"] * 0.6, sent
    assert sent["stream"] > 1 << 20  # one copy is incompressible: bytes_sent counts the stream's bytes


def test_incompressible_large_files_travel_raw_beside_the_stream(receiver, tmp_path):
    """A random 24 MiB file between compressible ones: most of its segments go raw (not through the stream's
    long-distance matcher), the text after it still compresses in the stream, and the copy is exact."""
    address, root = receiver
    src = tmp_path / "src"
    src.mkdir()
    text = b"".join(b"line %d of a log that repeats itself\n" % (i % 500) for i in range(200_000))
    (src / "a.log").write_bytes(text)
    (src / "b.bin").write_bytes(random.Random(3).randbytes(24 << 20))
    (src / "c.log").write_bytes(text[::-1])
    r = push_once(src, address, compress_level=3)
    assert not r.errors, r.errors
    assert_identical(src, root)
    # the random file costs its size (raw segments and a few stream attempts), the two logs next to nothing
    assert 24 << 20 <= r.bytes_sent < (24 << 20) + 2 * len(text) // 20, r.bytes_sent


def test_corruption_before_the_stream_is_still_caught_per_file(receiver, tmp_path):
    address, root = receiver
    src = tmp_path / "src"
    _tree(src)
    flips: list[int] = []

    def flip_once(e, offset, buf):
        if e.path == b"vendor_b/mod7.py" and not flips:
            flips.append(offset)
            buf[0] ^= 0x01

    r = PushSession(PushOptions(source=str(src), address=address, compress_level=1), fault=flip_once).run()
    assert flips and not r.errors
    assert_identical(src, root)


def _hostile(address, segment: pb.Segment) -> grpc.RpcError:
    entry = pb.Entry(id=1, path=b"f", kind=pb.REGULAR, mode=0o644, size=1000)
    root = pb.Entry(id=0, path=b"", kind=pb.DIRECTORY, mode=0o755)
    segment.chunks.add(file_id=1, offset=0, length=segment.raw_length, hash=b"\0" * 16)

    def requests():
        yield pb.AgentMessage(hello=pb.Hello(protocol_version=PROTOCOL_VERSION, options=pb.Options()))
        yield pb.AgentMessage(entries=pb.EntryBatch(entries=[root, entry]))
        yield pb.AgentMessage(data=pb.DataBatch(segments=[segment]))

    with grpc.insecure_channel(address) as ch, pytest.raises(grpc.RpcError) as info:
        for m in pb_grpc.ReceiverStub(ch).Transfer(requests()):
            if m.WhichOneof("body") == "welcome":
                assert m.welcome.max_window_log == compression.MAX_STREAM_WINDOW_LOG
    return info.value


def test_a_stream_segment_that_inflates_beyond_its_length_ends_the_pass(receiver):
    address, root = receiver
    obj = zstandard.ZstdCompressor(level=19).compressobj()
    bomb = b"".join(obj.compress(bytes(1 << 20)) for _ in range(256)) + obj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
    err = _hostile(address, pb.Segment(codec=pb.ZSTD_STREAM, raw_length=1000, data=bomb))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "more than the 1000 bytes declared" in err.details()
    assert not (root / "f").exists()


def test_a_stream_asking_for_a_larger_window_than_offered_ends_the_pass(receiver):
    address, _ = receiver
    params = zstandard.ZstdCompressionParameters.from_level(1, window_log=compression.MAX_STREAM_WINDOW_LOG + 2)
    obj = zstandard.ZstdCompressor(compression_params=params).compressobj()
    data = obj.compress(b"x" * 1000) + obj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
    err = _hostile(address, pb.Segment(codec=pb.ZSTD_STREAM, raw_length=1000, data=data))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "corrupt zstd stream" in err.details()


def _packed(address, data: bytes) -> grpc.RpcError:
    def requests():
        yield pb.AgentMessage(hello=pb.Hello(protocol_version=PROTOCOL_VERSION, options=pb.Options()))
        yield pb.AgentMessage(packed_entries=data)

    with grpc.insecure_channel(address) as ch, pytest.raises(grpc.RpcError) as info:
        for _ in pb_grpc.ReceiverStub(ch).Transfer(requests()):
            pass
    return info.value


def test_packed_entries_that_inflate_beyond_a_message_end_the_pass(receiver):
    address, _ = receiver
    obj = zstandard.ZstdCompressor(level=19).compressobj()
    bomb = b"".join(obj.compress(bytes(1 << 20)) for _ in range(64)) + obj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
    err = _packed(address, bomb)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "decodes to more than" in err.details()


def test_packed_entries_that_are_not_an_entry_batch_end_the_pass(receiver):
    address, _ = receiver
    err = _packed(address, compression.StreamEncoder(1).encode(b"\xff" * 100))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "EntryBatch" in err.details()


def test_a_pass_sends_its_entries_packed_and_lands_exactly(receiver, tmp_path, monkeypatch):
    """Every receiver of this version takes packed entries: the agent sends them packed (on loopback too)."""
    from cvmigrate.receiver.session import Session

    address, root = receiver
    src = tmp_path / "src"
    _tree(src)
    packed: list[int] = []
    real = Session.packed_entries

    def counting(self: Session, data: bytes) -> list[pb.ReceiverMessage]:
        packed.append(len(data))
        return real(self, data)

    monkeypatch.setattr(Session, "packed_entries", counting)
    r = push_once(src, address)
    assert not r.errors and packed
    assert_identical(src, root)
