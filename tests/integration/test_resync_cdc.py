"""Re-sync with content-defined chunks against a real receiver: journals written by the previous
format still resume and reuse, the pure-Python chunker is a working fallback, and a reuse
reference the receiver never offered is refused."""
import os
import random
import sqlite3

import grpc
import pytest

from cvmigrate.agent.scanner import Scanner
from cvmigrate.common import cdc
from cvmigrate.common.hashing import chunk_hash
from cvmigrate.common.model import PROTOCOL_VERSION, Entry
from cvmigrate.common.serde import add_entry
from cvmigrate.proto import transfer_pb2 as pb
from cvmigrate.proto import transfer_pb2_grpc as pb_grpc
from cvmigrate.receiver.fsops import tmp_name
from cvmigrate.receiver.journal import Journal, Partial, pack_chunks
from tests.helpers.oracle import assert_identical
from tests.helpers.wire import push_once

KiB = 1 << 10
MiB = 1 << 20


def _entries(src) -> dict[bytes, Entry]:
    return {e.path: e for e in Scanner(str(src)).walk() if isinstance(e, Entry)}


def test_a_partial_copy_journaled_by_format_1_resumes_on_its_grid(src, receiver, tmp_path):
    """An upgrade mid-migration: the earlier version left 2 of 3 grid chunks durable."""
    address, root = receiver
    data = random.Random(1).randbytes(3 * MiB - 1000)
    (src / "big.bin").write_bytes(data)
    e = _entries(src)[b"big.bin"]
    tmp = tmp_name(b"big.bin")
    (root / os.fsdecode(tmp)).write_bytes(data[:2 * MiB])
    os.chmod(root / os.fsdecode(tmp), 0o600)
    j = Journal(str(root / ".cvmigrate"))
    j.commit([], [Partial(b"big.bin", tmp, e.signature(), e.ino, e.ctime_ns,
                          pack_chunks([(0, chunk_hash(data[:MiB])), (MiB, chunk_hash(data[MiB:2 * MiB]))]))], [], [])
    j.db.execute("UPDATE meta SET value='1' WHERE key='format_version'")
    j.close()

    r = push_once(src, address)
    assert_identical(src, root)
    assert r.bytes_reused == 2 * MiB, r
    assert r.bytes_sent < MiB, r          # the third chunk only (uncompressed random bytes)
    db = sqlite3.connect(root / ".cvmigrate" / "journal.db")
    assert db.execute("SELECT value FROM meta WHERE key='format_version'").fetchone() == ("2",)
    db.close()


def test_a_file_journaled_on_the_grid_by_format_1_is_cut_by_content_when_it_changes(src, receiver, tmp_path):
    address, root = receiver
    rnd = random.Random(2)
    (src / "f").write_bytes(rnd.randbytes(3 * MiB))
    push_once(src, address)
    # turn the record into what the previous version wrote: a 24-byte-per-chunk grid list
    db = sqlite3.connect(root / ".cvmigrate" / "journal.db")
    data = (src / "f").read_bytes()
    legacy = pack_chunks([(o, chunk_hash(data[o:o + MiB])) for o in range(0, len(data), MiB)])
    db.execute("UPDATE entries SET chunks=? WHERE path=?", (legacy, b"f"))
    db.execute("UPDATE meta SET value='1' WHERE key='format_version'")
    db.commit()
    db.close()
    (src / "f").write_bytes(rnd.randbytes(64) + data)  # an insertion shifts every grid chunk
    r = push_once(src, address)
    assert_identical(src, root)
    assert r.bytes_sent < 64 * KiB and r.bytes_reused >= 2 * MiB, r


def test_the_pure_python_chunker_is_a_working_fallback(src, receiver, tmp_path, monkeypatch):
    """Where the compiled chunker cannot load (a bundle on another platform), both sides fall
    back to pyfastcdc's pure-Python FastCDC: same cut points, same protocol."""
    from pyfastcdc.py import FastCDC as PureFastCDC

    address, root = receiver
    rnd = random.Random(3)
    (src / "f").write_bytes(rnd.randbytes(300 * KiB))
    (src / "big").write_bytes(rnd.randbytes(9 * MiB))
    push_once(src, address)
    monkeypatch.setattr(cdc, "_FastCDC", PureFastCDC)
    monkeypatch.setattr(cdc, "NATIVE", False)
    data = bytearray((src / "f").read_bytes())
    data[1000:1000] = b"inserted"
    (src / "f").write_bytes(bytes(data))
    with open(src / "big", "r+b") as f:  # above MAX_PURE_FILE: stays on the grid, one chunk travels
        f.seek(5 * MiB + 3)
        f.write(b"changed")
    r = push_once(src, address)
    assert_identical(src, root)
    assert r.bytes_sent < MiB + 32 * KiB, r
    assert r.bytes_reused >= 8 * MiB + 250 * KiB, r


def test_a_reuse_reference_the_receiver_did_not_offer_is_refused(src, receiver, tmp_path):
    address, root = receiver
    (src / "f").write_bytes(os.urandom(200 * KiB))
    push_once(src, address)
    (src / "f").write_bytes(os.urandom(200 * KiB))
    entries = _entries(src)
    channel = grpc.insecure_channel(address)
    stub = pb_grpc.ReceiverStub(channel)
    decided: list[pb.Decision] = []

    def requests():
        yield pb.AgentMessage(hello=pb.Hello(protocol_version=PROTOCOL_VERSION, options=pb.Options()))
        msg = pb.AgentMessage()
        for e in entries.values():
            add_entry(msg.entries.entries, e)
        yield msg
        while not decided:
            import time
            time.sleep(0.05)
        fid = entries[b"f"].id
        # a hash never offered, and one offered but with another length
        bogus = pb.ChunkRef(file_id=fid, offset=0, length=4096, hash=b"\x07" * 16, reuse=True)
        yield pb.AgentMessage(data=pb.DataBatch(segments=[pb.Segment(raw_length=0, chunks=[bogus])]))

    with pytest.raises(grpc.RpcError) as info:
        for m in stub.Transfer(requests()):
            if m.WhichOneof("body") == "decisions":
                decided.extend(d for d in m.decisions.decisions if d.action == pb.NEED)
                need = decided[0]
                assert need.cdc_avg == cdc.avg_for(200 * KiB)
                assert need.have and all(h.length > 0 for h in need.have)
    channel.close()
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "did not offer" in info.value.details()
    assert (root / "f").stat().st_size == 200 * KiB  # the old version stays until a verified new one lands
