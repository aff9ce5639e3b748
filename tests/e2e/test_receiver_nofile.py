"""Bounded descriptors: an incremental pass over many changed files, with the receiver under a hard
``ulimit -n 1024`` (issue 11: the old receiver kept one descriptor per changed file until its data ended
and failed at ~1 000 files, on every retry).  The default run changes 3 000 files; the slow suite 100 000."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.helpers.procs import run_push, start_receiver

LIMIT = ("prlimit", "--nofile=1024:1024")


def _tree(src: Path, n: int, tag: bytes) -> None:
    for i in range(n):
        d = src / f"d{i // 1000:03d}"
        if i % 1000 == 0:
            d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:06d}").write_bytes(tag + b"%d\n" % i * 40)


def _changed_pass(tmp_path: Path, n: int) -> None:
    if not shutil.which("prlimit"):
        pytest.skip("needs prlimit (util-linux)")
    src, dst = tmp_path / "src", tmp_path / "dst"
    _tree(src, n, b"first ")
    with start_receiver(dst, prefix=LIMIT, work_dir=tmp_path / "recv") as rp:
        run_push(src, rp.address, "--no-default-excludes", timeout=1800).check()
        _tree(src, n, b"second")       # every file changes: size and content
        r = run_push(src, rp.address, "--no-default-excludes", timeout=1800)
        assert r.checked_summary()["files_transferred"] == n, r.summary
        assert "Too many open files" not in rp.output()
    for i in (0, n // 2, n - 1):
        rel = f"d{i // 1000:03d}/f{i:06d}"
        assert (dst / rel).read_bytes() == (src / rel).read_bytes()
    assert not [p for p in dst.rglob(".cvm-*.tmp")]


def test_incremental_pass_over_3000_changed_files_under_ulimit_1024(tmp_path):
    _changed_pass(tmp_path, 3000)


@pytest.mark.slow
def test_incremental_pass_over_100000_changed_files_under_ulimit_1024(tmp_path):
    _changed_pass(tmp_path, 100_000)


def test_the_receiver_raises_its_soft_limit(tmp_path):
    """Soft 256, hard 4096: the receiver raises the soft limit to the hard one at start."""
    if not shutil.which("prlimit"):
        pytest.skip("needs prlimit (util-linux)")
    with start_receiver(tmp_path / "dst", prefix=("prlimit", "--nofile=256:4096"), work_dir=tmp_path / "r") as rp:
        limits = Path(f"/proc/{rp.proc.pid}/limits").read_text()
    line = next(ln for ln in limits.splitlines() if ln.startswith("Max open files"))
    assert line.split()[3:5] == ["4096", "4096"], line
    assert os.path.exists(tmp_path / "dst")
