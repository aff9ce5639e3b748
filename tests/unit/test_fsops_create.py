"""``create_exclusive``: a fresh inode at a name, whatever was planted there.

The receiver creates every temporary file with it.  The common case (a free
name) is one ``open(O_CREAT|O_EXCL)``; a taken name is cleared first and never
opened, so a planted object is replaced, not written through.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from cvmigrate.receiver.fsops import create_exclusive


def _planted(d: Path, kind: str, outside: Path) -> None:
    name = d / "t.tmp"
    if kind == "file":
        name.write_bytes(b"old")
    elif kind == "hardlink":
        os.link(outside, name)
    elif kind == "symlink":
        name.symlink_to(outside)
    elif kind == "dangling":
        name.symlink_to(d / "nowhere")
    elif kind == "fifo":
        os.mkfifo(name)
    elif kind == "dir":
        (name / "sub").mkdir(parents=True)
        (name / "sub" / "f").write_bytes(b"x")


@pytest.mark.parametrize("kind", ["free", "file", "hardlink", "symlink", "dangling", "fifo", "dir"])
def test_create_exclusive_makes_a_fresh_file(tmp_path: Path, kind: str) -> None:
    d = tmp_path / "d"
    d.mkdir()
    outside = tmp_path / "outside"
    outside.write_bytes(b"must not change")
    _planted(d, kind, outside)
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd = create_exclusive(dfd, b"t.tmp")
        try:
            os.write(fd, b"new")
            st = os.fstat(fd)
        finally:
            os.close(fd)
    finally:
        os.close(dfd)
    lst = os.lstat(d / "t.tmp")
    assert stat.S_ISREG(lst.st_mode) and lst.st_nlink == 1 and lst.st_ino == st.st_ino
    assert stat.S_IMODE(lst.st_mode) == 0o600
    assert (d / "t.tmp").read_bytes() == b"new"
    assert outside.read_bytes() == b"must not change"
    assert os.stat(outside).st_nlink == 1
