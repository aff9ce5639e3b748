"""The tree comparison enters the same data-disk mount points the pass entered:
without that, a data disk whose files never arrived would verify as identical."""
from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cvmigrate.agent.verify import compare_trees


@pytest.fixture
def source_with_data_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    src = tmp_path / "src"
    (src / "data").mkdir(parents=True)
    (src / "etc").mkdir()
    (src / "etc" / "hostname").write_text("web1\n")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", f"cvm-verify-{uuid.uuid4().hex[:8]}",
                        str(src / "data")], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        (src / "data" / "orders.db").write_bytes(b"precious" * 100)
        yield src
    finally:
        subprocess.run(["umount", "-l", str(src / "data")], check=True)


def _copy_without_data(src: Path, dst: Path) -> None:
    (dst / "data").mkdir(parents=True)
    (dst / "etc").mkdir()
    (dst / "etc" / "hostname").write_text("web1\n")
    for a, b in ((src, dst), (src / "etc", dst / "etc"), (src / "etc" / "hostname", dst / "etc" / "hostname")):
        st = os.lstat(a)
        os.chmod(b, st.st_mode & 0o7777)
        os.utime(b, ns=(st.st_atime_ns, st.st_mtime_ns))
    st = os.lstat(src / "data")
    os.chmod(dst / "data", st.st_mode & 0o7777)
    os.utime(dst / "data", ns=(st.st_atime_ns, st.st_mtime_ns))


def test_a_data_disk_that_never_arrived_fails_verification(source_with_data_disk, tmp_path):
    dst = tmp_path / "dst"
    _copy_without_data(source_with_data_disk, dst)
    blind = compare_trees(str(source_with_data_disk), str(dst))
    assert blind.ok                                   # the root filesystem alone matches
    report = compare_trees(str(source_with_data_disk), str(dst), include_mounts=(b"data",))
    assert not report.ok
    assert report.differences == ["/data/orders.db: missing on the target"]


def test_a_data_disk_that_arrived_verifies(source_with_data_disk, tmp_path):
    dst = tmp_path / "dst"
    _copy_without_data(source_with_data_disk, dst)
    st = os.lstat(source_with_data_disk / "data" / "orders.db")
    (dst / "data" / "orders.db").write_bytes(b"precious" * 100)
    os.chmod(dst / "data" / "orders.db", st.st_mode & 0o7777)
    os.utime(dst / "data" / "orders.db", ns=(st.st_atime_ns, st.st_mtime_ns))
    # the data directory's own mode and mtime come from the tmpfs root on the source
    sd = os.lstat(source_with_data_disk / "data")
    os.chmod(dst / "data", sd.st_mode & 0o7777)
    os.utime(dst / "data", ns=(sd.st_atime_ns, sd.st_mtime_ns))
    report = compare_trees(str(source_with_data_disk), str(dst), include_mounts=(b"data",))
    assert report.ok, report.differences
    assert report.files_hashed == 2
