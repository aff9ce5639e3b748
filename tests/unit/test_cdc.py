"""Content-defined chunking (common/cdc.py) and the chunk lists the journal keeps of it."""
import os
import random

import pytest
from pyfastcdc.py import FastCDC as PureFastCDC

from cvmigrate.agent.reader import Chunk, FileChanged, read_cdc_chunks
from cvmigrate.common import cdc
from cvmigrate.common.hashing import FileHasher, chunk_hash
from cvmigrate.receiver.journal import pack_chunk_list, pack_chunks, unpack_chunk_list

KiB = 1 << 10
MiB = 1 << 20


def _content(rnd: random.Random, n: int) -> bytes:
    """Half text-like, half random: both kinds of bytes a server holds."""
    words = [rnd.randbytes(rnd.randint(2, 9)) for _ in range(300)]
    text = b" ".join(rnd.choice(words) for _ in range(n // 10))[: n // 2]
    return text + rnd.randbytes(n - len(text))


def _file(tmp_path, name: str, data: bytes) -> int:
    p = tmp_path / name
    p.write_bytes(data)
    return os.open(p, os.O_RDONLY)


@pytest.mark.parametrize("size,avg", [
    (0, 2 * KiB), (100 * KiB, 2 * KiB), (8 * MiB, 2 * KiB), (8 * MiB + 1, 4 * KiB), (64 * MiB, 16 * KiB),
    (1 << 30, 256 * KiB), (16 << 30, 256 * KiB), ((16 << 30) + 1, 0),
])
def test_the_average_follows_the_size_and_huge_files_stay_on_the_grid(size, avg):
    assert cdc.avg_for(size, native=True) == avg
    assert avg == 0 or (cdc.valid_avg(avg) and 4 * avg <= MiB)  # max chunk within the receiver's bound


def test_without_the_compiled_chunker_only_small_files_are_cut_by_content():
    assert cdc.avg_for(cdc.MAX_PURE_FILE, native=False) == cdc.avg_for(cdc.MAX_PURE_FILE, native=True)
    assert cdc.avg_for(cdc.MAX_PURE_FILE + 1, native=False) == 0


@pytest.mark.parametrize("avg", [0, 1000, 3 * KiB, 512 * KiB, 1 << 40])
def test_averages_this_version_does_not_cut_with_are_invalid(avg):
    assert not cdc.valid_avg(avg)


@pytest.mark.parametrize("avg", [2 * KiB, 16 * KiB])
def test_the_pure_python_fallback_cuts_exactly_where_the_extension_does(tmp_path, avg):
    """Both sides must cut identically, whichever implementation each one loaded."""
    data = _content(random.Random(avg), 400 * KiB)
    fd = _file(tmp_path, "f", data)
    try:
        native = [(off, bytes(v)) for off, v in cdc.cut(fd, len(data), avg)]
    finally:
        os.close(fd)
    pure = [(c.offset, bytes(c.data)) for c in PureFastCDC(avg).cut_buf(data)]
    assert native == pure
    assert b"".join(d for _, d in native) == data
    assert max(len(d) for _, d in native) <= 4 * avg


def test_an_insertion_keeps_every_chunk_but_the_ones_around_it(tmp_path):
    rnd = random.Random(3)
    old = _content(rnd, 2 * MiB)
    new = old[:5000] + rnd.randbytes(37) + old[5000:]
    avg = cdc.avg_for(len(new))
    fd = _file(tmp_path, "old", old)
    try:
        offered = {h: n for _, n, h in cdc.chunk_list(fd, len(old), avg)}
    finally:
        os.close(fd)
    fd = _file(tmp_path, "new", new)
    hasher = FileHasher()
    try:
        items = list(read_cdc_chunks(fd, len(new), avg, hasher, offered))
    finally:
        os.close(fd)
    sent = sum(len(i.data) for i in items if isinstance(i, Chunk))
    reused = sum(i[1] for i in items if not isinstance(i, Chunk))
    assert sent < 8 * avg and sent + reused == len(new)
    assert hasher.digest() == chunk_hash(new)
    # in order and contiguous: the receiver checks offsets only ever grow
    offs = [i.offset if isinstance(i, Chunk) else i[0] for i in items]
    assert offs == sorted(offs) and offs[0] == 0


def test_zero_runs_are_hashed_but_not_sent(tmp_path):
    data = os.urandom(20 * KiB) + bytes(200 * KiB) + os.urandom(20 * KiB)
    fd = _file(tmp_path, "z", data)
    hasher = FileHasher()
    try:
        items = list(read_cdc_chunks(fd, len(data), 2 * KiB, hasher))
    finally:
        os.close(fd)
    chunks = [c for c in items if isinstance(c, Chunk)]
    assert len(chunks) == len(items)                # nothing offered: every chunk is read
    assert sum(len(c.data) for c in chunks) < 60 * KiB
    assert hasher.digest() == chunk_hash(data)


def test_a_file_that_shrank_while_it_was_cut_is_reported(tmp_path):
    fd = _file(tmp_path, "s", os.urandom(50 * KiB))
    try:
        with pytest.raises(FileChanged):
            list(read_cdc_chunks(fd, 60 * KiB, 2 * KiB, FileHasher()))
    finally:
        os.close(fd)


# ------------------------------------------------------------------ journal chunk lists
H1, H2 = b"\x01" * 16, b"\x02" * 16


def test_chunk_lists_round_trip_with_their_chunking():
    chunks = [(0, 3000, H1), (3000, 12345, H2)]
    got = unpack_chunk_list(pack_chunk_list(2 * KiB, chunks), None, MiB)
    assert got is not None and (got.avg, got.chunks) == (2 * KiB, chunks)


def test_a_format_1_grid_list_still_reads_its_last_chunk_length_from_the_size():
    got = unpack_chunk_list(pack_chunks([(0, H1), (MiB, H2)]), MiB + 10, MiB)
    assert got is not None and (got.avg, got.chunks) == (0, [(0, MiB, H1), (MiB, 10, H2)])


@pytest.mark.parametrize("blob", [b"\x02\x00", b"\x02" + bytes(4) + b"x" * 5, b"\x00" * 23])
def test_a_malformed_list_reads_as_none_not_as_garbage(blob):
    assert unpack_chunk_list(blob, 100, MiB) is None
