"""Incremental passes: moved files reuse chunks already on the target, --checksum
compares real content, metadata-only changes travel without content, finalize cleans up."""
import os
import shutil

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
