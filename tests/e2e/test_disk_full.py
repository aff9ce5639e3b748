"""Target disk full: a clear error naming the path and the bytes missing; nothing
half-written visible; after space is freed the same push resumes and completes."""
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.oracle import assert_identical
from tests.helpers.procs import run_push, start_receiver


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "small"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=10m", "tmpfs", str(mnt)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here: {proc.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_then_resume(tmp_path, small_fs):
    src = tmp_path / "src"
    src.mkdir()
    (src / "small.txt").write_text("fits\n")
    (src / "big.bin").write_bytes(os.urandom(5 << 20))
    (src / "bigger.bin").write_bytes(os.urandom(3 << 20))
    blocker = small_fs / "blocker"
    blocker.write_bytes(b"\0" * (5 << 20))  # leaves too little room for everything
    with start_receiver(small_fs) as rx:
        first = run_push(src, rx.address, "--no-default-excludes", "--retry-for", "0", "--exclude", "/blocker")
        assert first.returncode != 0
        assert "disk full" in first.stderr and "more bytes" in first.stderr and ".bin" in first.stderr
        # no partially written file under a final name, and no temporary file left behind
        for p in small_fs.iterdir():
            if p.name in ("big.bin", "bigger.bin"):
                assert p.read_bytes() == (src / p.name).read_bytes()
            assert not p.name.startswith(".cvm-")
        blocker.unlink()
        second = run_push(src, rx.address, "--no-default-excludes", "--exclude", "/blocker")
        assert second.returncode == 0, second.stderr
        assert second.checked_summary()["resumed"] is True
    assert_identical(src, small_fs)
