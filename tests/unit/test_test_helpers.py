"""Self-tests of the test helpers: the tree builder, the rsync oracle, the process wrappers.

The reference copy is made by rsync itself (``rsync -aHAXS --numeric-ids``);
the oracle must find it identical, then must notice each kind of damage.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.fstree import (
    ALIEN_GID,
    ALIEN_UID,
    FUTURE_NS,
    PAST_NS,
    SOCKET_REL,
    GiB,
    TreeInfo,
    build_small_files,
    build_tricky_tree,
    stdlib_tree,
    tree_info,
)
from tests.helpers.oracle import (
    RSYNC,
    assert_identical,
    assert_sparse_preserved,
    blocks,
    mtime_ns_diff,
    rsync_itemize,
)
from tests.helpers.procs import ReceiverProc, child_env, parse_summary, run_group

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
needs_rsync = pytest.mark.skipif(not os.path.exists(RSYNC), reason="rsync missing")
pytestmark = [needs_rsync]


def rsync_copy(src: Path, dst: Path) -> Path:
    subprocess.run([RSYNC, "-aHAXS", "--numeric-ids", f"{src}/", f"{dst}/"], check=True,
                   capture_output=True)
    return dst


@pytest.fixture(scope="module")
def big_tree(tmp_path_factory: pytest.TempPathFactory) -> TreeInfo:
    src = tmp_path_factory.mktemp("big") / "src"
    return build_tricky_tree(src, big_sparse=True)


@pytest.fixture(scope="module")
def small_tree(tmp_path_factory: pytest.TempPathFactory) -> TreeInfo:
    src = tmp_path_factory.mktemp("small") / "src"
    return build_tricky_tree(src, big_sparse=False)


@pytest.fixture
def copy(small_tree: TreeInfo, tmp_path: Path) -> Path:
    """A fresh rsync copy of the small tricky tree, to damage."""
    return rsync_copy(small_tree.root, tmp_path / "dst")


# ---------------------------------------------------------------------------
# the builder


@needs_root
def test_tricky_tree_holds_every_kind(big_tree):
    info, r = big_tree, big_tree.root
    assert info.skipped == {}, info.skipped
    assert info.files > 50 and info.dirs > 60 and info.symlinks >= 15
    assert info.fifos == 1 and info.char_devices == 2 and info.block_devices == 1
    assert info.sockets == [SOCKET_REL] and stat.S_ISSOCK(os.lstat(r / SOCKET_REL).st_mode)
    assert info.unique_files < info.files
    assert info.content_bytes > GiB
    # sizes at the 1 MiB boundary
    assert (r / "files/exact_1m.bin").stat().st_size == 1 << 20
    assert (r / "files/1m_plus_1.bin").stat().st_size == (1 << 20) + 1
    # modes and owners
    assert stat.S_IMODE(os.lstat(r / "dirs/mode_0555").st_mode) == 0o555
    assert stat.S_IMODE(os.lstat(r / "dirs/sticky_1777").st_mode) == 0o1777
    for name, mode in (("suid_4755", 0o4755), ("sgid_2755", 0o2755),
                       ("suid_sgid_6755", 0o6755), ("sticky_file_1755", 0o1755),
                       ("alien_suid_4750", 0o4750)):
        assert stat.S_IMODE(os.lstat(r / "perm" / name).st_mode) == mode, name
    st = os.lstat(r / "perm/alien_suid_4750")
    assert (st.st_uid, st.st_gid) == (ALIEN_UID, ALIEN_GID)
    st = os.lstat(r / "symlinks/relative_file")
    assert (st.st_uid, st.st_gid) == (ALIEN_UID, ALIEN_GID)
    # hard links
    for group in info.hardlink_groups:
        inodes = {os.lstat(r / p).st_ino for p in group}
        assert len(inodes) == 1 and os.lstat(r / group[0]).st_nlink == len(group), group
    assert stat.S_IMODE(os.lstat(r / "other/suid_link_2").st_mode) == 0o4755
    # devices
    st = os.lstat(r / "special/blk_loop_7_200")
    assert stat.S_ISBLK(st.st_mode) and (os.major(st.st_rdev), os.minor(st.st_rdev)) == (7, 200)
    # xattrs in every namespace, ACLs, capabilities
    f = r / "xattr/file_all_namespaces"
    names = set(os.listxattr(f))
    assert {"user.mime_type", "trusted.cvmigrate_test", "security.selinux"} <= names
    assert os.getxattr(f, "security.selinux").endswith(b"\x00")
    assert "trusted.link_note" in os.listxattr(r / "symlinks/dangling", follow_symlinks=False)
    assert "security.capability" in os.listxattr(r / "caps/ping_like")
    assert "system.posix_acl_default" in os.listxattr(r / "acl/dir_with_default")
    assert "system.posix_acl_access" in os.listxattr(r / "acl/dir_with_default/inherits_acl")
    assert "system.posix_acl_access" in os.listxattr(r / "acl/file_with_acl")
    # names
    names_dir = os.fsencode(r / "names")
    listing = os.listdir(names_dir)
    assert b"bad_\xff\xfe.bin" in listing and b"new\nline" in listing
    assert any(len(n) == 255 and n.startswith("é".encode()) for n in listing)
    assert sum(len(n) == 255 for n in listing) >= 4
    assert b"e\xcc\x81_combining_NFD" in listing and b"\xc3\xa9_combining_NFD" in listing
    # depth
    deepest = max(len(Path(d).relative_to(r).parts) for d, _, _ in os.walk(r))
    assert deepest >= 40
    # mtimes
    assert os.lstat(r / "files/small.txt").st_mtime_ns == PAST_NS
    assert os.lstat(r / "dirs/mode_0555").st_mtime_ns == FUTURE_NS
    assert os.lstat(r / "symlinks/dangling").st_mtime_ns == FUTURE_NS
    assert os.lstat(r / "files/empty").st_mtime_ns % 1_000_000_000 != 0
    # sparse
    assert set(info.sparse_files) >= {"sparse/big_1g", "sparse/hole_at_start"}
    big = os.lstat(r / "sparse/big_1g")
    assert big.st_size == GiB and big.st_blocks * 512 < 2 * (1 << 20)
    with open(r / "sparse/hole_at_start", "rb") as fh:
        assert os.lseek(fh.fileno(), 0, os.SEEK_DATA) > 0, "no hole at the start"


def test_tree_info_counts_and_prunes(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "f").write_bytes(b"12345")
    os.link(tmp_path / "a" / "f", tmp_path / "g")
    os.symlink("a", tmp_path / "l")
    (tmp_path / "a" / "b" / "h").write_bytes(b"1")
    info = tree_info(tmp_path)
    assert (info.files, info.unique_files, info.dirs, info.symlinks) == (3, 2, 2, 1)
    assert (info.content_bytes, info.content_bytes_all_links) == (6, 11)
    pruned = tree_info(tmp_path, prune=("a",))
    assert (pruned.files, pruned.dirs) == (1, 1)


def test_small_files_are_deterministic(tmp_path):
    a = build_small_files(tmp_path / "a", 50, 1000, seed=7, per_dir=16)
    b = build_small_files(tmp_path / "b", 50, 1000, seed=7, per_dir=16)
    assert a.files == 50 and a.dirs == 4
    assert a.content_bytes == b.content_bytes
    assert subprocess.run(["diff", "-r", str(tmp_path / "a"), str(tmp_path / "b")]).returncode == 0


def test_stdlib_tree_is_the_running_stdlib():
    p = stdlib_tree()
    assert (p / "os.py").is_file() and Path(os.__file__).parent == p


# ---------------------------------------------------------------------------
# the oracle: clean on an rsync copy ...


@needs_root
def test_oracle_is_clean_on_an_rsync_copy(big_tree, tmp_path):
    dst = rsync_copy(big_tree.root, tmp_path / "dst")
    assert rsync_itemize(big_tree.root, dst) == []
    assert mtime_ns_diff(big_tree.root, dst) == []
    assert_identical(big_tree.root, dst)
    for rel in big_tree.sparse_files:
        assert_sparse_preserved(big_tree.root / rel, dst / rel)
        assert blocks(dst / rel) == blocks(big_tree.root / rel)


@needs_root
def test_oracle_ignores_receiver_state_but_not_lookalikes(small_tree, copy):
    (copy / ".cvmigrate" / "journal").mkdir(parents=True)
    (copy / ".cvmigrate" / "journal" / "0001").write_bytes(b"state")
    os.utime(copy, ns=(0, os.lstat(small_tree.root).st_mtime_ns))
    assert_identical(small_tree.root, copy)
    p = copy / "sub" / ".cvmigrate" / "looks_like_state"
    with _keep_parent_mtime(p):
        p.unlink()
    assert rsync_itemize(small_tree.root, copy) == [
        ">f+++++++++ sub/.cvmigrate/looks_like_state"]


# ... and noisy on every kind of damage


def _set_mtime(p: Path, ns: int) -> None:
    os.utime(p, ns=(ns, ns), follow_symlinks=False)


def _keep_parent_mtime(p: Path):
    """Context: restore the parent's mtime after changing an entry in it."""
    class _Ctx:
        def __enter__(self):
            self.ns = os.lstat(p.parent).st_mtime_ns

        def __exit__(self, *exc):
            _set_mtime(p.parent, self.ns)
    return _Ctx()


@contextlib.contextmanager
def _remade(p: Path) -> Iterator[None]:
    """Context: ``p`` is removed for the body to make again; its own and its parent's mtimes stay."""
    with _keep_parent_mtime(p):
        ns = os.lstat(p).st_mtime_ns
        p.unlink()
        yield
        _set_mtime(p, ns)


def _damage_user_xattr(c):
    os.setxattr(c / "xattr/file_all_namespaces", "user.mime_type", b"changed")
    return ".f........x xattr/file_all_namespaces"


def _damage_trusted_xattr_on_symlink(c):
    os.setxattr(c / "symlinks/dangling", "trusted.link_note", b"x", follow_symlinks=False)
    return ".L........x symlinks/dangling -> does/not/exist"


def _damage_selinux(c):
    os.setxattr(c / "xattr/file_all_namespaces", "security.selinux",
                b"system_u:object_r:etc_t:s0\x00")
    return ".f........x xattr/file_all_namespaces"


def _damage_capability(c):
    os.removexattr(c / "caps/ping_like", "security.capability")
    return ".f........x caps/ping_like"


def _damage_mtime(c):
    p = c / "files/random_10k.bin"
    _set_mtime(p, os.lstat(p).st_mtime_ns + 5_000_000_000)
    return ".f..t...... files/random_10k.bin"


def _damage_dir_mtime(c):
    _set_mtime(c / "dirs/empty", PAST_NS + 1_000_000_000)
    return ".d..t...... dirs/empty/"


def _damage_missing_hardlink(c):
    p = c / "links/b/three_again"
    with _keep_parent_mtime(p):
        shutil.copy2(p, c / "links/b/tmp")
        os.replace(c / "links/b/tmp", p)
    return "hf          links/b/three_again => links/a/three"


def _damage_acl(c):
    subprocess.run(["setfacl", "-m", "u:999:r", str(c / "acl/file_with_acl")], check=True)
    return ".f.......a. acl/file_with_acl"


def _damage_default_acl(c):
    subprocess.run(["setfacl", "-d", "-m", "u:998:r", str(c / "acl/dir_with_default")],
                   check=True)
    return ".d.......a. acl/dir_with_default/"


def _damage_owner(c):
    os.chown(c / "perm/alien_owned", ALIEN_UID + 1, ALIEN_GID)
    return ".f....o.... perm/alien_owned"


def _damage_setuid_lost(c):
    os.chmod(c / "perm/suid_4755", 0o755)
    return ".f...p..... perm/suid_4755"


def _damage_dir_mode(c):
    os.chmod(c / "dirs/mode_0555", 0o755)
    return ".d...p..... dirs/mode_0555/"


def _damage_content_same_size_and_mtime(c):
    p = c / "files/exact_1m.bin"
    ns = os.lstat(p).st_mtime_ns
    with open(p, "r+b") as f:
        f.seek(12345)
        b = f.read(1)
        f.seek(12345)
        f.write(bytes([b[0] ^ 1]))
    _set_mtime(p, ns)
    return ">fc........ files/exact_1m.bin"


def _damage_symlink_target(c):
    p = c / "symlinks/relative_file"
    with _remade(p):
        os.symlink("../files/empty", p)
        os.chown(p, ALIEN_UID, ALIEN_GID, follow_symlinks=False)
    return "symlinks/relative_file -> ../files/small.txt"


def _damage_extra_file(c):
    p = c / "files/extra"
    with _keep_parent_mtime(p):
        p.write_bytes(b"extra")
    return "*deleting   files/extra"


def _damage_missing_fifo(c):
    p = c / "special/fifo"
    with _keep_parent_mtime(p):
        p.unlink()
    return "cS+++++++++ special/fifo"


def _damage_device_numbers(c):
    p = c / "special/blk_loop_7_200"
    with _remade(p):
        os.mknod(p, stat.S_IFBLK | 0o660, os.makedev(7, 201))
        os.chmod(p, 0o660)
    return "cDc........ special/blk_loop_7_200"


def _damage_non_utf8_name_missing(c):
    p = Path(os.fsdecode(os.fsencode(c / "names") + b"/bad_\xff\xfe.bin"))
    with _keep_parent_mtime(p):
        p.unlink()
    return ">f+++++++++ names/bad_\\#377\\#376.bin"


DAMAGE = {f.__name__.removeprefix("_damage_"): f for f in (
    _damage_user_xattr, _damage_trusted_xattr_on_symlink, _damage_selinux,
    _damage_capability, _damage_mtime, _damage_dir_mtime, _damage_missing_hardlink,
    _damage_acl, _damage_default_acl, _damage_owner, _damage_setuid_lost,
    _damage_dir_mode, _damage_content_same_size_and_mtime, _damage_symlink_target,
    _damage_extra_file, _damage_missing_fifo, _damage_device_numbers,
    _damage_non_utf8_name_missing,
)}


@needs_root
@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_oracle_detects(small_tree, copy, kind):
    expected = DAMAGE[kind](copy)
    lines = rsync_itemize(small_tree.root, copy)
    assert any(expected in line for line in lines), lines
    assert len(lines) <= 3, lines  # the damage, not collateral noise
    with pytest.raises(AssertionError, match="itemized changes"):
        assert_identical(small_tree.root, copy)


@needs_root
def test_nanosecond_mtime_is_caught_beside_rsync(small_tree, copy):
    for rel in ("files/random_10k.bin", "dirs/empty", "symlinks/relative_file", "."):
        p = copy / rel
        _set_mtime(p, os.lstat(p).st_mtime_ns + 1)
    assert rsync_itemize(small_tree.root, copy) == []  # rsync compares seconds only
    lines = mtime_ns_diff(small_tree.root, copy)
    assert len(lines) == 4 and all(line.startswith("mtime_ns ") for line in lines), lines
    with pytest.raises(AssertionError, match="mtime_ns 'dirs/empty'"):
        assert_identical(small_tree.root, copy)
    assert_identical(small_tree.root, copy, nsec=False)


@needs_root
def test_merged_hardlink_is_caught_beside_rsync(small_tree, copy):
    # two equal files merged into one inode on the target
    a, b = copy / "files/dup_a.bin", copy / "files/dup_b.bin"
    with _keep_parent_mtime(b):
        b.unlink()
        os.link(a, b)
    lines = mtime_ns_diff(small_tree.root, copy)
    assert "links 'files/dup_a.bin' src=['files/dup_a.bin'] " \
        "dst=['files/dup_a.bin', 'files/dup_b.bin']" in lines, lines


@needs_root
def test_socket_is_reported_unless_excluded(small_tree, copy):
    p = copy / SOCKET_REL
    with _keep_parent_mtime(p):
        p.unlink()
    assert rsync_itemize(small_tree.root, copy) == [f"cS+++++++++ {SOCKET_REL}"]
    assert_identical(small_tree.root, copy, small_tree.oracle_excludes)


@needs_root
def test_no_delete_mode_of_the_oracle(small_tree, copy):
    _damage_extra_file(copy)
    assert rsync_itemize(small_tree.root, copy) == ["*deleting   files/extra"]
    assert_identical(small_tree.root, copy, delete=False)


def test_sparse_check_fails_on_a_filled_copy(tmp_path):
    src = tmp_path / "sparse"
    with open(src, "wb") as f:
        f.truncate(16 << 20)
        f.seek(8 << 20)
        f.write(b"x" * 4096)
    dense = tmp_path / "dense"
    subprocess.run(["cp", "--sparse=never", str(src), str(dense)], check=True)
    assert blocks(dense) > blocks(src)
    assert_sparse_preserved(src, src)
    with pytest.raises(AssertionError, match="holes not preserved"):
        assert_sparse_preserved(src, dense)


# ---------------------------------------------------------------------------
# procs


@pytest.mark.parametrize("stdout,expected", [
    ('{"files": 1}\n', {"files": 1}),
    ('log line\n{"files": 2, "dirs": 3}\n', {"files": 2, "dirs": 3}),
    ('progress {x}\n{\n  "files": 4,\n  "nested": {"a": 1}\n}\n', {"files": 4, "nested": {"a": 1}}),
    ("", None),
    ("no json here\n", None),
    ('{"files": 1}\ntrailing garbage\n', None),
    ("[1, 2]\n", None),
])
def test_parse_summary(stdout, expected):
    assert parse_summary(stdout) == expected


FAKE_RECEIVER = textwrap.dedent("""
    import os, signal, sys, time
    port_file, mode = sys.argv[1], sys.argv[2]
    if mode == "die":
        print("boom: cannot bind", file=sys.stderr); sys.exit(3)
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    tmp = port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write("40123\\n")
    os.rename(tmp, port_file)
    print("listening", flush=True)
    while True:
        time.sleep(0.05)
""")


def _fake(tmp_path: Path, mode: str) -> ReceiverProc:
    script = tmp_path / "fake.py"
    script.write_text(FAKE_RECEIVER)
    pf = tmp_path / f"{mode}.port"
    return ReceiverProc(tmp_path / "root", [sys.executable, str(script), str(pf), mode], pf,
                        tmp_path / f"{mode}.log", child_env())


def test_receiver_proc_ready_and_graceful_stop(tmp_path):
    with _fake(tmp_path, "ok").wait_ready(10) as rp:
        assert rp.address == "127.0.0.1:40123" and rp.running
    assert not rp.running and rp.proc.returncode == 0
    assert "listening" in rp.output()


def test_receiver_proc_is_killed_when_sigterm_is_ignored(tmp_path):
    rp = _fake(tmp_path, "stubborn").wait_ready(10)
    assert rp.stop(timeout=0.5) == -signal.SIGKILL


def test_receiver_proc_reports_early_death(tmp_path):
    rp = _fake(tmp_path, "die")
    with pytest.raises(RuntimeError, match="boom: cannot bind"):
        rp.wait_ready(10)
    assert not rp.running


def test_child_env_keeps_the_stdlib_free_of_bytecode():
    assert child_env()["PYTHONDONTWRITEBYTECODE"] == "1"


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper that may be slow, or absent in a container, counts as gone)."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat_line.rsplit(")", 1)[1].split()[0] != "Z"


def test_run_group_returns_what_the_program_printed(tmp_path):
    done = run_group([sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"],
                     timeout=30, cwd=tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\n")


@pytest.mark.parametrize("ignores_term", [False, True])
def test_run_group_ends_the_whole_group_on_timeout(tmp_path, ignores_term):
    """A grandchild (as bench.run's receivers) does not outlive the timeout; SIGTERM comes first, so a
    harness can clean up; a program that ignores it is killed after the grace period."""
    pid_file = tmp_path / "grandchild.pid"
    trap = "trap '' TERM; " if ignores_term else "trap 'echo cleaned; exit 0' TERM; "
    script = f"{trap}sleep 300 & echo $! > {pid_file}; echo started; while :; do sleep 0.1; done"
    with pytest.raises(subprocess.TimeoutExpired) as info:
        run_group(["sh", "-c", script], timeout=1.5, grace=1.0)
    grandchild = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild)
    assert "started" in info.value.output
    assert ("cleaned" in info.value.output) is not ignores_term
