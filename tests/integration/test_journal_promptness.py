"""What the receiver has verified reaches its journal before a crash or a broken link can lose it.

A file the journal does not know is compared on the next pass (the receiver cannot trust it): both sides read
all of it again.  So a large file is journaled the moment it is complete, and a stream that ends before Done
journals what it verified.  Real receiver (gRPC on port 0), real protocol messages, the journal read back
with sqlite3; no timing: each test waits for a message that can only come after the step it checks.
"""
from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc

from cvmigrate.common.hashing import FileHasher, chunk_hash
from cvmigrate.common.model import CHUNK_SIZE, PROTOCOL_VERSION
from cvmigrate.common.rpc import channel_options
from cvmigrate.proto import transfer_pb2 as pb
from cvmigrate.proto import transfer_pb2_grpc as pb_grpc
from cvmigrate.receiver.session import COMMIT_FILE_SIZE, MAX_INFLIGHT

MTIME = 1_600_000_000_000_000_000
HELLO = pb.AgentMessage(hello=pb.Hello(protocol_version=PROTOCOL_VERSION, options=pb.Options()))


def _entry(path: bytes, file_id: int, kind: pb.Kind = pb.REGULAR, size: int = 0) -> pb.Entry:
    mode = 0o755 if kind == pb.DIRECTORY else 0o644
    return pb.Entry(path=path, kind=kind, id=file_id, size=size, mode=mode, uid=os.geteuid(), gid=os.getegid(),
                    mtime_ns=MTIME)


def _entries(*es: pb.Entry) -> pb.AgentMessage:
    return pb.AgentMessage(entries=pb.EntryBatch(entries=list(es)))


def _content(file_id: int, data: bytes, per_batch: int = 4) -> Iterator[pb.AgentMessage]:
    """The file in 1 MiB segments, ``per_batch`` to a message, its FileEnd with the last."""
    h = FileHasher()
    h.update(data)
    segs = [pb.Segment(codec=pb.RAW, raw_length=len(c), data=c,
                       chunks=[pb.ChunkRef(file_id=file_id, offset=o, length=len(c), hash=chunk_hash(c))])
            for o in range(0, len(data), CHUNK_SIZE) for c in (data[o:o + CHUNK_SIZE],)]
    for i in range(0, len(segs), per_batch):
        last = i + per_batch >= len(segs)
        ends = [pb.FileEnd(file_id=file_id, size=len(data), hash=h.digest())] if last else []
        yield pb.AgentMessage(data=pb.DataBatch(segments=segs[i:i + per_batch], ends=ends))


def _journaled(root: Path, path: bytes) -> bool:
    db = sqlite3.connect(f"file:{root / '.cvmigrate' / 'journal.db'}?mode=ro", uri=True)
    try:
        return db.execute("SELECT 1 FROM entries WHERE path=?", (path,)).fetchone() is not None
    finally:
        db.close()


def test_a_large_file_is_journaled_as_soon_as_it_is_complete(receiver: tuple[str, Path]) -> None:
    """40 MiB: the 32 MiB byte threshold commits once inside the file; its last 8 MiB and its end would wait
    for more data (or Done) -- and a receiver killed meanwhile would lose the record."""
    address, root = receiver
    assert COMMIT_FILE_SIZE <= 40 << 20 < MAX_INFLIGHT
    data = os.urandom(40 << 20)
    acked, done_sent = threading.Event(), threading.Event()

    def messages() -> Iterator[pb.AgentMessage]:
        yield HELLO
        yield _entries(_entry(b"", 1, pb.DIRECTORY), _entry(b"big.bin", 9, size=len(data)))
        yield from _content(9, data)
        acked.wait(15)   # nothing more until the receiver says the file is durable (or 15 s passed)
        done_sent.set()
        yield pb.AgentMessage(done=pb.Done())

    with grpc.insecure_channel(address, options=channel_options()) as ch:
        for msg in pb_grpc.ReceiverStub(ch).Transfer(messages(), timeout=60):
            if msg.WhichOneof("body") == "committed" and 9 in msg.committed.ids and not done_sent.is_set():
                assert _journaled(root, b"big.bin")   # durable when acknowledged, not at the next commit
                acked.set()
    assert acked.is_set(), "the 40 MiB file was acknowledged only with Done"
    assert (root / "big.bin").read_bytes() == data


def test_a_stream_that_breaks_journals_what_it_verified(receiver: tuple[str, Path]) -> None:
    """A 2 MiB file arrives complete, then the link breaks (the call is cancelled) before any commit: the
    receiver journals the file as the stream ends, so the next pass skips it."""
    address, root = receiver
    data = os.urandom(2 << 20)
    decided = threading.Event()
    hang = threading.Event()

    def messages() -> Iterator[pb.AgentMessage]:
        yield HELLO
        yield _entries(_entry(b"", 1, pb.DIRECTORY), _entry(b"a.bin", 9, size=len(data)))
        yield from _content(9, data)
        # its Decisions come back only once everything above was handled (messages are taken in order)
        yield _entries(_entry(b"later", 10, pb.DIRECTORY))
        hang.wait(30)

    with grpc.insecure_channel(address, options=channel_options()) as ch:
        call = pb_grpc.ReceiverStub(ch).Transfer(messages(), timeout=60)
        decisions = 0
        for msg in call:
            assert msg.WhichOneof("body") != "committed", "committed before the link broke: nothing to test"
            decisions += msg.WhichOneof("body") == "decisions"
            if decisions == 2:
                decided.set()
                break
        assert decided.is_set()
        assert (root / "a.bin").read_bytes() == data
        call.cancel()   # the link breaks
        hang.set()
    deadline = time.monotonic() + 20
    while not _journaled(root, b"a.bin"):
        assert time.monotonic() < deadline, "the verified file was not journaled when its stream broke"
        time.sleep(0.05)
