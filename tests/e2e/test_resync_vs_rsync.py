"""A 1 % change of a real tree, pushed again: the oracle is clean and our bytes on
the wire are reported next to rsync's (daemon mode, so its delta algorithm runs)
for the same change in the same run.  Numbers are printed, not asserted: speed
and size goals live in bench/."""
import os
import random
import shutil
import sysconfig
import time
from pathlib import Path

import pytest

from tests.helpers.oracle import assert_identical
from tests.helpers.procs import run_push, start_receiver
from tests.helpers.rsyncd import RsyncDaemon

STDLIB = Path(sysconfig.get_paths()["stdlib"])
PACKAGES = ["email", "json", "http", "xml", "logging", "asyncio", "unittest", "concurrent", "importlib", "idlelib",
            "lib2to3", "multiprocessing", "encodings", "ctypes", "distutils", "sqlite3", "urllib", "xmlrpc", "html",
            "wsgiref", "curses", "dbm", "tkinter", "pydoc_data"]


def _change_one_percent(src: Path, rnd: random.Random) -> list[str]:
    files = sorted(p for p in src.rglob("*") if p.is_file() and not p.is_symlink())
    picks = rnd.sample(files, max(9, len(files) // 100))
    done = []
    for i, p in enumerate(picks):
        data = p.read_bytes()
        kind = i % 9
        if kind == 0 and len(data) > 200:
            mid = len(data) // 2
            p.write_bytes(data[:mid] + b"# overwritten" + data[mid + 13:])
        elif kind == 1:
            p.write_bytes(data[:50] + b"# inserted near the start\n" + data[50:])
        elif kind == 2:
            p.write_bytes(data + b"\n# appended\n" * 20)
        elif kind == 3:
            p.write_bytes(data[: len(data) * 2 // 3])
        elif kind == 4:
            p.rename(p.with_name(p.name + ".renamed"))
        elif kind == 5:
            p.unlink()
        elif kind == 6:
            os.chmod(p, 0o600)
        elif kind == 7:
            os.chown(p, 4321, 8765)
        else:
            os.setxattr(p, "user.changed", b"yes")
        done.append(f"{kind}:{p.name}")
    return done


@pytest.mark.timeout(600)
def test_one_percent_resync_next_to_rsync(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    for name in PACKAGES:
        if (STDLIB / name).is_dir():
            shutil.copytree(STDLIB / name, src / name, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__"))
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    theirs.mkdir()
    with start_receiver(ours) as rx, RsyncDaemon(theirs, tmp_path / "rsyncd") as rsyncd:
        first = run_push(src, rx.address, "--no-default-excludes")
        assert first.returncode == 0, first.stderr
        rsyncd.push(src)
        changed = _change_one_percent(src, random.Random(1))
        t = time.monotonic()
        second = run_push(src, rx.address, "--no-default-excludes")
        our_seconds = time.monotonic() - t
        assert second.returncode == 0, second.stderr
        rsync_bytes, rsync_seconds = rsyncd.push(src)
    assert_identical(src, ours)
    s = second.checked_summary()
    with capsys.disabled():
        print(f"\n[1% re-sync] {len(changed)} changes over {s['files']} files: cvmigrate sent {s['bytes_sent']} "
              f"content bytes (reused {s['bytes_reused']}) in {our_seconds:.2f} s; rsync daemon 'Total bytes "
              f"sent' {rsync_bytes} in {rsync_seconds:.2f} s; ratio {s['bytes_sent'] / max(rsync_bytes, 1):.2f}")
    assert s["files_skipped"] >= s["files"] * 0.9  # the unchanged 99 % were skipped without reading
