"""Bytes on the wire of a re-sync, through the real push CLI against a real receiver.

Content-defined chunks for changed files (common/cdc.py) make an edit cost the
chunks around it: an 8-byte edit in a 100 KiB file must not re-send the file,
and an insertion at the start of a 4 MiB file must not shift every later chunk.
The content is random (incompressible), so compression cannot hide a chunking
that re-sends too much.
"""
import os
import random

from tests.helpers.oracle import assert_identical
from tests.helpers.procs import run_push, start_receiver

KiB = 1 << 10
MiB = 1 << 20


def _tree(src, rnd: random.Random) -> None:
    (src / "d").mkdir(parents=True)
    (src / "d" / "small.bin").write_bytes(rnd.randbytes(100 * KiB))
    (src / "big.bin").write_bytes(rnd.randbytes(4 * MiB))
    (src / "other.txt").write_bytes(b"unchanged\n" * 1000)


def _push(src, address):
    return run_push(src, address, "--no-default-excludes").checked_summary()


def test_an_edit_costs_the_chunks_around_it_not_the_file(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    rnd = random.Random(15)
    _tree(src, rnd)
    with start_receiver(dst) as rx:
        first = _push(src, rx.address)
        assert first["bytes_sent"] >= 4 * MiB  # random content travels whole the first time

        # 8 bytes overwritten in the middle of the 100 KiB file
        p = src / "d" / "small.bin"
        data = bytearray(p.read_bytes())
        data[50 * KiB:50 * KiB + 8] = rnd.randbytes(8)
        p.write_bytes(bytes(data))
        edit = _push(src, rx.address)
        assert_identical(src, dst)
        assert edit["files_transferred"] == 1, edit
        assert edit["bytes_sent"] < 16 * KiB, edit

        # 100 bytes inserted at the start of the 4 MiB file
        p = src / "big.bin"
        p.write_bytes(rnd.randbytes(100) + p.read_bytes())
        insert = _push(src, rx.address)
        assert_identical(src, dst)
        assert insert["files_transferred"] == 1, insert
        assert insert["bytes_sent"] < 256 * KiB, insert
        assert insert["bytes_reused"] >= 3 * MiB, insert

        # and once more: the content-defined chunk list the receiver journaled is reused as it is
        data = bytearray(p.read_bytes())
        data[3 * MiB:3 * MiB] = rnd.randbytes(10)
        p.write_bytes(bytes(data))
        again = _push(src, rx.address)
        assert_identical(src, dst)
        assert again["bytes_sent"] < 64 * KiB, again
    print(f"\n[re-sync bytes] 8-byte edit in 100 KiB: {edit['bytes_sent']} B; 100 B inserted at the start of "
          f"4 MiB: {insert['bytes_sent']} B; 10 B inserted at 3 MiB: {again['bytes_sent']} B")


def test_a_truncated_and_grown_file_and_a_file_turned_sparse_land_exactly(tmp_path):
    """Content-defined chunks with holes, shrinking and growing: the oracle decides."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    rnd = random.Random(16)
    src.mkdir()
    (src / "a").write_bytes(rnd.randbytes(300 * KiB))
    (src / "b").write_bytes(rnd.randbytes(2 * MiB))
    (src / "c").write_bytes(rnd.randbytes(1 * MiB))
    with start_receiver(dst) as rx:
        _push(src, rx.address)
        (src / "a").write_bytes((src / "a").read_bytes()[:123_457])
        (src / "b").write_bytes((src / "b").read_bytes() + rnd.randbytes(777))
        with open(src / "c", "r+b") as f:  # a zero run in the middle, then a hole past the end
            f.seek(256 * KiB)
            f.write(bytes(300 * KiB))
            f.truncate(8 * MiB)
        os.utime(src / "c", ns=(1, 1_000_000_000))
        r = _push(src, rx.address)
        assert_identical(src, dst)
        assert r["bytes_sent"] < 256 * KiB, r
