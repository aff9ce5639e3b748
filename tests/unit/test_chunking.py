import os

import pytest

from cvmigrate.agent.reader import Chunk, data_extents, grid_chunks, read_chunks
from cvmigrate.common.hashing import FileHasher, chunk_hash, hash_file_content, is_zero

MiB = 1 << 20


@pytest.mark.parametrize("extents,size,expected", [
    ([], 0, []),
    ([(0, 10)], 10, [(0, 10)]),
    ([(0, 3 * MiB)], 3 * MiB, [(0, MiB), (MiB, MiB), (2 * MiB, MiB)]),
    ([(0, MiB + 1)], MiB + 1, [(0, MiB), (MiB, 1)]),
    # two extents inside one chunk give that chunk once
    ([(10, 20), (100, 200)], 5 * MiB, [(0, MiB)]),
    # a hole spanning whole chunks skips them
    ([(0, 10), (4 * MiB, 4 * MiB + 5)], 4 * MiB + 5, [(0, MiB), (4 * MiB, 5)]),
])
def test_grid_chunks(extents, size, expected):
    assert list(grid_chunks(extents, size, MiB)) == expected


def _sparse(tmp_path):
    p = tmp_path / "sparse"
    with open(p, "wb") as f:
        f.truncate(64 * MiB)
        f.seek(20 * MiB + 7)
        f.write(b"data in the middle")
        f.seek(64 * MiB - 3)
        f.write(b"end")
    return p


def test_sparse_file_reads_only_its_data(tmp_path):
    p = _sparse(tmp_path)
    fd = os.open(p, os.O_RDONLY)
    try:
        ext = data_extents(fd, os.fstat(fd).st_size)
        assert sum(e - s for s, e in ext) < 2 * MiB
        h = FileHasher()
        read = list(read_chunks(fd, 64 * MiB, MiB, h))
        chunks = [c for c in read if isinstance(c, Chunk)]
        assert len(chunks) == len(read)             # without a skip map every chunk is read
        assert [c.offset for c in chunks] == [20 * MiB, 63 * MiB]
        assert h.length == 64 * MiB
        assert h.digest() == hash_file_content(fd, 64 * MiB, MiB)
    finally:
        os.close(fd)


def test_zero_chunks_are_not_sent_but_hashed(tmp_path):
    p = tmp_path / "zeros"
    p.write_bytes(bytes(MiB) + b"x" * 100 + bytes(MiB))  # allocated zeros, not holes
    fd = os.open(p, os.O_RDONLY)
    try:
        h = FileHasher()
        read = list(read_chunks(fd, os.fstat(fd).st_size, MiB, h))
        chunks = [c for c in read if isinstance(c, Chunk)]
        assert len(chunks) == len(read)             # without a skip map every chunk is read
        assert [c.offset for c in chunks] == [MiB]
        assert h.digest() == chunk_hash(p.read_bytes())
    finally:
        os.close(fd)


def test_skip_map_turns_known_chunks_into_references(tmp_path):
    p = tmp_path / "f"
    data = os.urandom(3 * MiB)
    p.write_bytes(data)
    known = {0: chunk_hash(data[:MiB]), MiB: b"\0" * 16}
    fd = os.open(p, os.O_RDONLY)
    try:
        items = list(read_chunks(fd, len(data), MiB, FileHasher(), known))
    finally:
        os.close(fd)
    assert items[0] == (0, known[0])
    assert isinstance(items[1], Chunk) and items[1].offset == MiB
    assert isinstance(items[2], Chunk)


def test_is_zero():
    assert is_zero(b"") and is_zero(bytes(5 * MiB))
    assert not is_zero(bytes(5 * MiB) + b"\1")
    assert not is_zero(b"\1" + bytes(10))
