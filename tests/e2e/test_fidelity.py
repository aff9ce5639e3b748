"""Fidelity of the data plane, end to end, judged by rsync.

Real processes: ``cvmigrate receive`` on 127.0.0.1:0 and ``cvmigrate push
--json``, then the rsync oracle (``rsync -naHAXc --delete --numeric-ids``,
plus nanosecond mtimes and hard-link sets, see tests/helpers/oracle.py) must
find nothing to change. Needs root (ownership, devices, trusted.*/security.*
xattrs, capabilities).
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers.fstree import (
    SOCKET_REL,
    TreeInfo,
    build_tricky_tree,
    stdlib_tree,
    tree_info,
)
from tests.helpers.oracle import (
    assert_identical,
    assert_sparse_preserved,
    rsync_itemize,
)
from tests.helpers.procs import PushResult, ReceiverProc, run_push, start_receiver

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="fidelity tests need root"),
    pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync (the oracle) is missing"),
]

NO_DEFAULT_EXCLUDES = "--no-default-excludes"


@pytest.fixture
def receivers(tmp_path: Path) -> Iterator[Callable[..., ReceiverProc]]:
    """Start receivers that are always stopped at teardown, even on failure."""
    started: list[ReceiverProc] = []

    def start(root: Path, *args: str) -> ReceiverProc:
        work = tmp_path / f"recv{len(started)}"
        rp = start_receiver(root, *args, work_dir=work)
        started.append(rp)
        return rp

    yield start
    for rp in started:
        rp.stop()


def push_ok(src: Path, recv: ReceiverProc, *args: str, timeout: float = 300) -> PushResult:
    res = run_push(src, recv.address, *args, timeout=timeout)
    assert res.returncode == 0, (
        f"push failed:\n{res.describe()}\n--- receiver log (tail)\n{recv.output()[-8000:]}")
    return res


def assert_all_sparse_preserved(src: Path, dst: Path, rels: list[str]) -> None:
    """Every sparse file keeps its holes (all failures in one message)."""
    problems = []
    for rel in rels:
        try:
            assert_sparse_preserved(src / rel, dst / rel)
        except AssertionError as e:
            problems.append(str(e))
    assert not problems, "\n".join(problems)


def assert_plausible_summary(res: PushResult, info: TreeInfo) -> dict:
    s = res.summary
    assert isinstance(s, dict), f"--json printed no JSON object:\n{res.describe()}"
    missing = {"files", "dirs", "bytes_total", "bytes_sent", "seconds"} - s.keys()
    assert not missing, f"summary lacks {sorted(missing)}: {s}"
    # "files" may count regular files per path or per inode, or every non-dir entry
    assert info.unique_files <= s["files"] <= info.entries, (s, info)
    # the root may or may not be counted
    assert s["dirs"] in (info.dirs, info.dirs + 1), (s["dirs"], info.dirs)
    # apparent size of regular files, hard links counted once (or per path)
    assert s["bytes_total"] in (info.content_bytes, info.content_bytes_all_links), (
        f"bytes_total={s['bytes_total']} but the tree holds {info.content_bytes} bytes "
        f"({info.content_bytes_all_links} counting every hard link)")
    assert s["bytes_sent"] >= 0
    assert 0 <= s["seconds"] <= res.seconds + 1
    return s


# ---------------------------------------------------------------------------
# (1) every entry kind


#: push --streams: the default (what both sides' cores allow), one stream, and more streams than the
#: receiver has worker processes (several shards per worker; parents and children on different streams)
STREAMS = ["default", pytest.param("1", marks=pytest.mark.slow), "5"]


def _streams(streams: str) -> tuple[str, ...]:
    return () if streams == "default" else (f"--streams={streams}",)


@pytest.mark.parametrize("streams", STREAMS)
def test_tricky_tree_is_migrated_exactly(tmp_path, receivers, streams):
    src, dst = tmp_path / "src", tmp_path / "dst"
    info = build_tricky_tree(src, big_sparse=True)
    recv = receivers(dst)

    res = push_ok(src, recv, NO_DEFAULT_EXCLUDES, *_streams(streams))

    assert_identical(src, dst, info.oracle_excludes)
    # sockets are skipped: meaningless without their listening process
    assert info.sockets == [SOCKET_REL]
    assert not os.path.lexists(dst / SOCKET_REL), "a socket was created on the target"
    s = assert_plausible_summary(res, info)
    # the 1 GiB sparse file is mostly hole: its holes are not payload
    assert s["bytes_sent"] < info.content_bytes, s
    # graceful shutdown on SIGTERM
    assert recv.stop() == 0, f"receiver exit code on SIGTERM:\n{recv.output()[-4000:]}"
    assert_all_sparse_preserved(src, dst, info.sparse_files)


# ---------------------------------------------------------------------------
# (2) a real tree nobody here wrote, pushed in place


def _stdlib_push(tmp_path, receivers, *, with_site_packages: bool) -> None:
    src = stdlib_tree()
    dst = tmp_path / "dst"
    args = [NO_DEFAULT_EXCLUDES]
    excludes: tuple[str, ...] = ()
    prune: tuple[str, ...] = ()
    if not with_site_packages and (src / "site-packages").is_dir():
        # third-party packages change under pip; go2tencentcloud-style pattern
        ex = tmp_path / "excludes.txt"
        ex.write_text("/site-packages/*\n")
        args += ["--exclude-from", str(ex)]
        excludes, prune = ("/site-packages/*",), ("site-packages",)
    info = tree_info(src, prune=prune)
    recv = receivers(dst)

    res = push_ok(src, recv, *args, timeout=900)

    assert_identical(src, dst, excludes)
    if not with_site_packages:
        assert (dst / "site-packages").is_dir()
        assert not any((dst / "site-packages").iterdir()), "excluded contents were migrated"
    assert_plausible_summary(res, info)


def test_stdlib_tree_is_migrated_exactly(tmp_path, receivers):
    _stdlib_push(tmp_path, receivers, with_site_packages=False)


@pytest.mark.slow
def test_stdlib_tree_with_site_packages_is_migrated_exactly(tmp_path, receivers):
    _stdlib_push(tmp_path, receivers, with_site_packages=True)


# ---------------------------------------------------------------------------
# (3) an unchanged second push


def test_second_push_without_changes_is_clean(tmp_path, receivers):
    src, dst = tmp_path / "src", tmp_path / "dst"
    info = build_tricky_tree(src, big_sparse=False)
    recv = receivers(dst)
    first = push_ok(src, recv, NO_DEFAULT_EXCLUDES)
    assert_identical(src, dst, info.oracle_excludes)

    second = push_ok(src, recv, NO_DEFAULT_EXCLUDES)

    assert_identical(src, dst, info.oracle_excludes)
    s1 = assert_plausible_summary(first, info)
    s2 = assert_plausible_summary(second, info)
    # nothing changed: (almost) no payload on the wire the second time
    assert s2["bytes_sent"] <= max(64 * 1024, s1["bytes_sent"] // 20), (s1, s2)
    assert_all_sparse_preserved(src, dst, info.sparse_files)


# ---------------------------------------------------------------------------
# (4) mirror semantics: deletes, and --no-delete on either side


def _target_only(dst: Path) -> None:
    (dst / "target_only.txt").write_text("only on the target\n")
    (dst / "target_only_dir" / "nested").mkdir(parents=True)
    (dst / "target_only_dir" / "nested" / "f").write_bytes(b"x" * 1000)
    os.symlink("nowhere", dst / "dirs" / "target_only_link")


def test_mirror_deletes_what_the_source_lost(tmp_path, receivers):
    src, dst = tmp_path / "src", tmp_path / "dst"
    info = build_tricky_tree(src, big_sparse=False)
    recv = receivers(dst)
    push_ok(src, recv, NO_DEFAULT_EXCLUDES)

    (src / "files" / "small.txt").unlink()
    shutil.rmtree(src / "dirs" / "mode_0700")        # a dir with content
    shutil.rmtree(src / "deep" / "n00" / "n01")      # 46 levels below
    (src / "links" / "b" / "three_again").unlink()   # one name of a hard-link group
    _target_only(dst)
    push_ok(src, recv, NO_DEFAULT_EXCLUDES)

    assert_identical(src, dst, info.oracle_excludes)
    assert not (dst / "target_only.txt").exists()
    assert not (dst / "target_only_dir").exists()
    assert os.stat(dst / "links" / "a" / "three").st_nlink == 2


@pytest.mark.parametrize("side", ["push", "receive"])
def test_no_delete_keeps_target_only_entries(tmp_path, receivers, side):
    src, dst = tmp_path / "src", tmp_path / "dst"
    info = build_tricky_tree(src, big_sparse=False)
    recv = receivers(dst)
    push_ok(src, recv, NO_DEFAULT_EXCLUDES)
    if side == "receive":
        assert recv.stop() == 0
        recv = receivers(dst, "--no-delete")
    push_args = [NO_DEFAULT_EXCLUDES] + (["--no-delete"] if side == "push" else [])

    (src / "files" / "small.txt").unlink()
    (src / "files" / "new_on_source.txt").write_text("new\n")
    _target_only(dst)
    push_ok(src, recv, *push_args)

    # everything the source has is there, nothing was deleted
    assert_identical(src, dst, info.oracle_excludes, delete=False)
    assert (dst / "files" / "small.txt").read_bytes() == b"hello, cvmigrate\nsecond line\n"
    assert (dst / "target_only.txt").read_text() == "only on the target\n"
    assert (dst / "target_only_dir" / "nested" / "f").stat().st_size == 1000
    assert os.readlink(dst / "dirs" / "target_only_link") == "nowhere"
    deletions = sorted(line for line in rsync_itemize(src, dst, info.oracle_excludes)
                       if line.startswith("*deleting"))
    assert deletions == sorted([
        "*deleting   files/small.txt",
        "*deleting   target_only.txt",
        "*deleting   target_only_dir/",
        "*deleting   target_only_dir/nested/",
        "*deleting   target_only_dir/nested/f",
        "*deleting   dirs/target_only_link",
    ]), deletions


# ---------------------------------------------------------------------------
# (5) an entry of another type already at the path


def _populate_conflicts(src: Path, dst: Path, outside: Path) -> None:
    """Source and target disagree on the type at every path below t/."""
    (outside / "victim_dir").mkdir(parents=True)
    (outside / "victim_file").write_bytes(b"must stay untouched\n")

    s, d = src / "t", dst / "t"
    s.mkdir(parents=True)
    d.mkdir(parents=True)
    # file on the source, a non-empty dir (with a read-only subdir) on the target
    (s / "file_was_dir").write_bytes(b"now a file\n")
    (d / "file_was_dir" / "ro").mkdir(parents=True)
    (d / "file_was_dir" / "ro" / "inner").write_bytes(b"old\n")
    (d / "file_was_dir" / "x").write_bytes(b"old\n")
    os.chmod(d / "file_was_dir" / "ro", 0o555)
    # dir on the source, a file on the target
    (s / "dir_was_file" / "sub").mkdir(parents=True)
    (s / "dir_was_file" / "sub" / "f").write_bytes(b"in the new dir\n")
    (d / "dir_was_file").write_bytes(b"old file\n")
    # symlink on the source, a dir on the target
    os.symlink("../dir_was_file", s / "symlink_was_dir")
    (d / "symlink_was_dir" / "y").mkdir(parents=True)
    # dir on the source, a symlink to a dir OUTSIDE the root on the target
    (s / "dir_was_symlink").mkdir()
    (s / "dir_was_symlink" / "payload").write_bytes(b"must land inside the root\n")
    os.symlink(outside / "victim_dir", d / "dir_was_symlink")
    # file on the source, a symlink to a file OUTSIDE the root on the target
    (s / "file_was_symlink").write_bytes(b"must not overwrite the victim\n")
    os.symlink(outside / "victim_file", d / "file_was_symlink")
    # symlink on the source, a file on the target
    os.symlink("file_was_dir", s / "symlink_was_file")
    (d / "symlink_was_file").write_bytes(b"old\n")
    # symlink on both, different targets
    os.symlink("new/target", s / "symlink_retargeted")
    os.symlink("old/target", d / "symlink_retargeted")
    # fifo on the source, a file on the target
    os.mkfifo(s / "fifo_was_file")
    (d / "fifo_was_file").write_bytes(b"old\n")
    # file on the source, a fifo on the target (opening it to write would block)
    (s / "file_was_fifo").write_bytes(b"was a fifo\n")
    os.mkfifo(d / "file_was_fifo")
    # file on the source, a character device on the target (writes would vanish)
    (s / "file_was_device").write_bytes(b"was /dev/null\n")
    os.mknod(d / "file_was_device", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    # device on the source, a dir on the target
    os.mknod(s / "device_was_dir", stat.S_IFBLK | 0o660, os.makedev(7, 201))
    (d / "device_was_dir").mkdir()
    # hard-linked pair on the source, two unrelated files on the target
    (s / "link_a").write_bytes(b"linked\n")
    os.link(s / "link_a", s / "link_b")
    (d / "link_a").write_bytes(b"linked\n")
    (d / "link_b").write_bytes(b"linked\n")


def _assert_outside_untouched(outside: Path) -> None:
    assert (outside / "victim_file").read_bytes() == b"must stay untouched\n"
    assert list((outside / "victim_dir").iterdir()) == [], "wrote through a target symlink"


@pytest.mark.parametrize("streams", ["default", "5"])
def test_entries_of_another_type_are_replaced(tmp_path, receivers, streams):
    src, dst, outside = tmp_path / "src", tmp_path / "dst", tmp_path / "outside"
    _populate_conflicts(src, dst, outside)
    recv = receivers(dst)

    push_ok(src, recv, NO_DEFAULT_EXCLUDES, *_streams(streams), timeout=120)

    assert_identical(src, dst)
    _assert_outside_untouched(outside)
    assert not (dst / "t" / "dir_was_symlink").is_symlink()

    # and back again, now that the receiver has its journal: the source
    # changes the types between two passes
    s = src / "t"
    (s / "file_was_dir").unlink()
    (s / "file_was_dir" / "again").mkdir(parents=True)
    shutil.rmtree(s / "dir_was_file")
    (s / "dir_was_file").write_bytes(b"a file again\n")
    (s / "symlink_was_dir").unlink()
    (s / "symlink_was_dir").mkdir()
    shutil.rmtree(s / "dir_was_symlink")
    os.symlink("file_was_symlink", s / "dir_was_symlink")
    (s / "file_was_symlink").unlink()
    os.symlink("dir_was_file", s / "file_was_symlink")
    (s / "fifo_was_file").unlink()
    (s / "fifo_was_file").write_bytes(b"a file again\n")
    (s / "link_b").unlink()
    (s / "link_b").write_bytes(b"linked\n")   # same bytes, no longer the same inode

    push_ok(src, recv, NO_DEFAULT_EXCLUDES, *_streams(streams), timeout=120)

    assert_identical(src, dst)
    _assert_outside_untouched(outside)
