"""Incremental passes: moved files reuse chunks already on the target, --checksum
compares real content, metadata-only changes travel without content, finalize cleans up."""
import os
import shutil
import sqlite3

import pytest

from cvmigrate.receiver.finalize import finalize
from tests.helpers.oracle import assert_identical
from tests.helpers.wire import push_once

MiB = 1 << 20


def test_moved_and_copied_files_reuse_target_chunks(receiver, tmp_path):
    address, root = receiver
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "a" / "big.img").write_bytes(os.urandom(6 * MiB))
    push_once(src, address)
    (src / "b").mkdir()
    os.rename(src / "a" / "big.img", src / "b" / "moved.img")
    shutil.copy2(src / "b" / "moved.img", src / "b" / "copy.img")  # cp -p: same mtime
    r = push_once(src, address)
    assert r.bytes_sent < MiB // 4, r
    assert r.bytes_reused >= 12 * MiB
    assert_identical(src, root)


def test_checksum_finds_content_changed_behind_an_unchanged_mtime(src, receiver, tmp_path):
    address, root = receiver
    data = bytearray(os.urandom(3 * MiB))
    (src / "f").write_bytes(data)
    push_once(src, address)
    st = os.stat(src / "f")
    data[2 * MiB + 5] ^= 0xFF
    (src / "f").write_bytes(data)
    os.utime(src / "f", ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and mtime
    quick = push_once(src, address)
    assert quick.bytes_sent == 0 and (root / "f").read_bytes() != bytes(data)
    full = push_once(src, address, checksum=True)
    assert 0 < full.bytes_sent <= MiB + 1024  # only the changed chunk travels
    assert (root / "f").read_bytes() == bytes(data)


def test_metadata_only_changes_send_no_content(src, receiver, tmp_path):
    address, root = receiver
    (src / "f").write_bytes(os.urandom(2 * MiB))
    push_once(src, address)
    os.chmod(src / "f", 0o600)
    os.chown(src / "f", 1234, 5678)
    os.setxattr(src / "f", "user.tag", b"v2")
    r = push_once(src, address)
    assert r.bytes_sent == 0 and r.metadata_applied >= 1
    assert_identical(src, root)


def test_finalize_removes_state_and_partials(src, receiver, tmp_path):
    address, root = receiver
    (src / "f").write_text("x")
    push_once(src, address)
    assert (root / ".cvmigrate").is_dir()
    finalize(str(root))
    assert not (root / ".cvmigrate").exists()
    assert sorted(p.name for p in root.iterdir()) == ["f"]


def test_files_unknown_to_the_journal_are_verified_in_place(src, receiver, tmp_path):
    """Journal lost (or the target pre-filled): matching files are hashed where they lie and
    kept, not rewritten; a file that differs in one chunk gets only that chunk."""
    address, root = receiver
    (src / "same.bin").write_bytes(os.urandom(3 * MiB))
    data = bytearray(os.urandom(3 * MiB))
    (src / "changed.bin").write_bytes(data)
    push_once(src, address)
    inode_before = os.stat(root / "same.bin").st_ino
    shutil.rmtree(root / ".cvmigrate")                         # the journal is gone
    data[MiB + 10] ^= 1
    (src / "changed.bin").write_bytes(data)
    os.utime(src / "changed.bin", ns=(1, os.stat(root / "changed.bin").st_mtime_ns))
    r = push_once(src, address)
    assert os.stat(root / "same.bin").st_ino == inode_before  # kept, not rewritten
    assert r.bytes_sent <= MiB + 4096 and r.bytes_reused >= 5 * MiB
    assert_identical(src, root)


def _dirs(top):
    return [top, *(os.path.join(d, n) for d, names, _ in os.walk(top) for n in names)]


@pytest.mark.parametrize("streams", [1, 2])
def test_directories_are_journaled_as_they_end_and_kept_right_when_their_content_changes(receiver, tmp_path,
                                                                                        streams):
    """A directory is journaled after its times are set, so the next pass skips it by the journal (no metadata
    read), and one whose content a pass changes -- a file added, one deleted -- still gets its mtime back."""
    address, root = receiver
    src = tmp_path / "src"
    for d in ("a/b/c", "a/d", "e"):
        (src / d).mkdir(parents=True)
    for f in ("a/b/c/f1", "a/d/f2", "e/f3", "f4", "a/b/gone"):
        (src / f).write_bytes(f.encode() * 100)
    for i, d in enumerate(("a/b/c", "a/b", "a/d", "a", "e", "")):
        os.utime(src / d, ns=(1_600_000_000_000_000_000 + i, 1_600_000_000_000_000_000 + i))
    push_once(src, address, streams=streams)
    assert_identical(src, root)
    with sqlite3.connect(root / ".cvmigrate" / "journal.db") as db:
        rows = dict(db.execute("SELECT path, t_ctime_ns FROM entries"))
    for d in _dirs(str(src))[1:]:
        rel = os.path.relpath(d, src).encode()
        assert rows[rel] == os.lstat(root / rel.decode()).st_ctime_ns, rel   # the record is fresh
    again = push_once(src, address, streams=streams)
    assert again.metadata_applied == 0 and again.bytes_sent == 0, again
    # a pass that changes content: a new file in a/b/c, a deleted one in a/b, a directory's time moved
    # on the target (its record is stale)
    mt = {d: os.lstat(src / d).st_mtime_ns for d in ("a/b/c", "a/b")}
    (src / "a/b/c/new").write_bytes(b"n")
    os.unlink(src / "a/b/gone")
    for d, t in mt.items():
        os.utime(src / d, ns=(t, t))
    os.utime(root / "e", ns=(5, 5))
    push_once(src, address, streams=streams)
    assert_identical(src, root)
    for d in ("a/b/c", "a/b", "e"):
        assert os.lstat(root / d).st_mtime_ns == os.lstat(src / d).st_mtime_ns, d
