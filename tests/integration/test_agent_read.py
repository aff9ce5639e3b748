"""The agent's read of a file the receiver asked for, when the file changes between the scan and the read.

A small file is read with one read and one fstat, the scan's lstat standing in for the fstat before the
read (agent/push.py ``_read_whole``); these tests change the file at exactly that moment -- after its entry
left, before its content is read -- and check that the target still ends up equal to the source, or the
pass says which file changed, and never hangs.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cvmigrate.agent.push import PushOptions, PushSession
from cvmigrate.common.passes import PushResult
from tests.helpers.oracle import assert_identical


class _ChangeBeforeRead(PushSession):
    """A session that runs ``change(path)`` just before it reads each file named in ``changes``."""

    def __init__(self, opts: PushOptions, changes: dict[bytes, Callable[[Path], None]]) -> None:
        super().__init__(opts)
        self.changes = changes

    def _read_file(self, job: Any, packer: Any) -> None:
        change = self.changes.pop(job.entry.path, None)
        if change is not None:
            change(Path(os.fsdecode(self._src + b"/" + job.entry.path)))
        super()._read_file(job, packer)


def _run(src: Path, address: str, changes: dict[bytes, Callable[[Path], None]]) -> PushResult:
    session = _ChangeBeforeRead(PushOptions(source=str(src), address=address), changes)
    result = session.run()
    assert not changes, f"not read: {sorted(changes)}"
    return result


def _grow(p: Path) -> None:
    with open(p, "ab") as f:
        f.write(b" and more")


def _rewrite_same_size(p: Path) -> None:
    st = p.stat()
    p.write_bytes(b"Z" * st.st_size)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def _shrink(p: Path) -> None:
    os.truncate(p, 3)


def _replace(p: Path) -> None:
    parent = p.parent.stat()   # the directory's own entry has left already: keep its times as scanned
    tmp = p.with_name(p.name + ".new")
    tmp.write_bytes(b"another inode, same size!"[: p.stat().st_size].ljust(p.stat().st_size, b"."))
    os.replace(tmp, p)
    os.utime(p.parent, ns=(parent.st_atime_ns, parent.st_mtime_ns))


@pytest.mark.parametrize("change", [_grow, _rewrite_same_size, _shrink, _replace])
@pytest.mark.parametrize("size", [0, 100, 4096, 1 << 20])
def test_a_small_file_changed_after_the_scan_lands_as_it_is_now(receiver: tuple[str, Path], tmp_path: Path,
                                                                change: Callable[[Path], None], size: int) -> None:
    address, root = receiver
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(os.urandom(size))
    (src / "zeros").write_bytes(bytes(size))
    (src / "same").write_bytes(b"untouched")
    r = _run(src, address, {b"f": change, b"zeros": change})
    assert not r.errors and not r.changed_during_copy, r
    assert r.files_transferred == 3
    assert_identical(src, root)


def _to_fifo(p: Path) -> None:
    p.unlink()
    os.mkfifo(p)


def _to_directory(p: Path) -> None:
    p.unlink()
    p.mkdir()


def _gone(p: Path) -> None:
    p.unlink()


@pytest.mark.parametrize("change", [_to_fifo, _to_directory, _gone])
def test_a_file_that_is_no_longer_a_file_is_reported_not_read(receiver: tuple[str, Path], tmp_path: Path,
                                                              change: Callable[[Path], None]) -> None:
    """A fifo must not hang the read (nobody writes it); a directory or a vanished name is not data."""
    address, root = receiver
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x" * 100)
    (src / "g").write_bytes(b"kept")
    r = _run(src, address, {b"f": change})
    assert r.changed_during_copy == ["/f"] and not r.errors, r
    assert (root / "g").read_bytes() == b"kept"
    assert not os.path.lexists(root / "f")


def test_the_unchanged_files_of_a_tree_land_byte_for_byte(receiver: tuple[str, Path], tmp_path: Path) -> None:
    """The one-read path over many files of every small size, zeros, holes and a file of exactly one chunk."""
    address, root = receiver
    src = tmp_path / "src"
    for d in range(4):
        (src / f"d{d}").mkdir(parents=True)
        for i in range(50):
            (src / f"d{d}" / f"f{i}").write_bytes(os.urandom(i * 37 + d))
    (src / "exactly-one-chunk").write_bytes(os.urandom(1 << 20))
    (src / "one-chunk-plus-one").write_bytes(os.urandom((1 << 20) + 1))
    (src / "zeros").write_bytes(bytes(5000))
    with open(src / "sparse", "wb") as f:
        f.truncate(300_000)
        f.seek(100_000)
        f.write(b"data in the middle")
    r = _run(src, address, {})
    assert not r.errors and not r.changed_during_copy, r
    assert_identical(src, root)
    shutil.rmtree(src / "d0")
    r = _run(src, address, {})
    assert r.files_transferred == 0 and r.deleted == 1, r   # the directory, with its subtree
    assert_identical(src, root)
