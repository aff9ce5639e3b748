"""Builders of file trees for data-plane tests.

``build_tricky_tree`` makes one tree holding every kind of entry and metadata a
Linux root file system can carry, so a single push + oracle comparison covers
them all. Every feature the file system (or the kernel, or the missing
privilege) refuses is skipped and recorded in ``TreeInfo.skipped`` with the
reason, instead of failing the build; tests may print or assert on it.

Only the standard library plus the ``setfacl``, ``setcap`` and ``setfattr``
command-line tools (packages ``acl``, ``libcap2-bin``, ``attr``) are used.

Paths recorded in ``TreeInfo`` are relative to the tree root, as ``str`` (names
that are not valid UTF-8 appear with surrogate escapes, as ``os.fsdecode``
gives them).
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import stat
import subprocess
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

#: Owner and group that exist in no /etc/passwd or /etc/group.
ALIEN_UID = 12345
ALIEN_GID = 23456

#: 1990-06-15 12:34:56.123456789 UTC
PAST_NS = 645_453_296_123_456_789
#: 2100-01-01 00:00:00.987654321 UTC (past 2038: needs 64-bit times end to end)
FUTURE_NS = 4_102_444_800_987_654_321
#: Base of the deterministic per-entry mtimes (2023-11-14, with nanoseconds).
BASE_NS = 1_700_000_000_000_000_000

SELINUX_LABEL = b"system_u:object_r:httpd_sys_content_t:s0\x00"

#: Relative path of the AF_UNIX socket. Sockets are not migrated by cvmigrate
#: (a socket file is meaningless without its listening process), but ``rsync
#: -a`` (``-D`` = ``--devices --specials``) copies them, so the oracle must be
#: told to exclude it: ``assert_identical(src, dst, extra_excludes=info.oracle_excludes)``.
SOCKET_REL = "special/live.sock"


@dataclass
class TreeInfo:
    """What a builder made. Counts come from a walk of the finished tree."""

    root: Path
    #: regular-file paths (every hard link counted)
    files: int = 0
    #: distinct regular-file inodes (hard links counted once)
    unique_files: int = 0
    #: directories, the root excluded
    dirs: int = 0
    symlinks: int = 0
    fifos: int = 0
    char_devices: int = 0
    block_devices: int = 0
    #: sockets present in the source tree (relative paths): must NOT be migrated
    sockets: list[str] = field(default_factory=list)
    #: sum of st_size over distinct regular-file inodes (apparent size)
    content_bytes: int = 0
    #: sum of st_size over regular-file paths (hard links counted every time)
    content_bytes_all_links: int = 0
    #: regular files with holes (relative paths)
    sparse_files: list[str] = field(default_factory=list)
    #: groups of relative paths that are one inode
    hardlink_groups: list[list[str]] = field(default_factory=list)
    #: feature name -> why it could not be made here
    skipped: dict[str, str] = field(default_factory=dict)
    #: feature names that were made
    features: list[str] = field(default_factory=list)

    @property
    def entries(self) -> int:
        """Every entry below the root that cvmigrate migrates (sockets excluded)."""
        return (self.files + self.dirs + self.symlinks + self.fifos
                + self.char_devices + self.block_devices)

    @property
    def oracle_excludes(self) -> tuple[str, ...]:
        """rsync exclude patterns for what cvmigrate deliberately skips."""
        return tuple("/" + s for s in self.sockets)


# --------------------------------------------------------------------------
# small primitives


def _b(p: Path | str | bytes) -> bytes:
    return p if isinstance(p, bytes) else os.fsencode(p)


def _write(path: Path, data: bytes, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)
    return path


def _mkdir(path: Path, mode: int = 0o755) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)
    return path


def _run(*argv: Path | str | bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([_b(a) for a in argv], capture_output=True, check=False)


class _Builder:
    def __init__(self, root: Path, seed: int) -> None:
        self.root = root
        self.rng = random.Random(seed)
        self.skipped: dict[str, str] = {}
        self.features: list[str] = []
        self.sparse: list[str] = []
        self.sockets: list[str] = []
        self.hardlink_groups: list[list[str]] = []
        #: rel path -> mtime_ns, applied at the very end, deepest first
        self.mtimes: dict[str, int] = {}

    # -- bookkeeping
    def ok(self, feature: str) -> None:
        self.features.append(feature)

    def skip(self, feature: str, why: str) -> None:
        self.skipped[feature] = why

    def p(self, rel: str) -> Path:
        return self.root / rel

    def rand(self, n: int) -> bytes:
        return self.rng.randbytes(n)

    def try_(self, feature: str, fn, *args, **kwargs) -> bool:
        try:
            fn(*args, **kwargs)
        except (OSError, subprocess.SubprocessError, RuntimeError) as e:
            self.skip(feature, f"{type(e).__name__}: {e}")
            return False
        self.ok(feature)
        return True

    # -- wrappers around tools that report failure as exit codes
    def setfacl(self, path: Path, *args: str) -> None:
        r = _run("setfacl", *args, path)
        if r.returncode != 0:
            raise RuntimeError(f"setfacl {' '.join(args)}: {r.stderr.decode(errors='replace').strip()}")

    def setcap(self, path: Path, caps: str) -> None:
        r = _run("setcap", caps, path)
        if r.returncode != 0:
            raise RuntimeError(f"setcap {caps}: {r.stderr.decode(errors='replace').strip()}")


# --------------------------------------------------------------------------
# the tricky tree


def build_tricky_tree(root: Path, *, big_sparse: bool = True, seed: int = 20240601) -> TreeInfo:
    """Build a tree holding every entry kind and metadata under ``root``.

    Must run as root for ownership, device nodes, trusted.*/security.* xattrs
    and capabilities (each is skipped with a reason otherwise). ``big_sparse``
    adds a 1 GiB sparse file (1 MiB of data in the middle, a few KiB at the
    end); it costs almost no disk space but a full read costs ~1 GiB of I/O.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    b = _Builder(root, seed)
    is_root = os.geteuid() == 0

    _regular_files(b)
    _directories(b)
    _names(b)
    _ownership_and_modes(b, is_root)
    _hardlinks(b, is_root)
    _specials(b, is_root)
    _symlinks(b, is_root)
    _sparse(b, big_sparse)
    _xattrs(b, is_root)
    _acls(b)
    _capabilities(b, is_root)
    _edge_state_names(b)
    _apply_mtimes(b)
    return _summarise(b)


def _regular_files(b: _Builder) -> None:
    _write(b.p("files/empty"), b"")
    _write(b.p("files/small.txt"), b"hello, cvmigrate\nsecond line\n")
    _write(b.p("files/no_newline.txt"), b"no trailing newline")
    _write(b.p("files/random_10k.bin"), b.rand(10 * KiB + 7))
    _write(b.p("files/incompressible_3m.bin"), b.rand(3 * MiB + 12345))
    _write(b.p("files/exact_1m.bin"), b.rand(MiB))
    _write(b.p("files/1m_plus_1.bin"), b.rand(MiB + 1))
    _write(b.p("files/1m_minus_1.bin"), b.rand(MiB - 1))
    _write(b.p("files/exact_4m.bin"), b.rand(4 * MiB))
    # Zeros written for real (allocated, not sparse): compressible, and a
    # receiver may store them sparse (fewer blocks is fine).
    _write(b.p("files/zeros_2m.bin"), bytes(2 * MiB))
    # Same content in two unrelated files (dedup must not turn them into links).
    same = b.rand(64 * KiB)
    _write(b.p("files/dup_a.bin"), same)
    _write(b.p("files/dup_b.bin"), same)
    _write(b.p("files/mode_0000"), b"unreadable to all but root\n", 0o000)
    _write(b.p("files/mode_0444_readonly"), b"read only\n", 0o444)
    _write(b.p("files/mode_0777"), b"#!/bin/sh\necho hi\n", 0o777)
    _write(b.p("files/mode_0600"), b"secret\n", 0o600)
    b.ok("regular files")


def _directories(b: _Builder) -> None:
    _mkdir(b.p("dirs/empty"))
    _mkdir(b.p("dirs/empty_0700"), 0o700)
    # children first, then tighten the mode (the receiver must do the same)
    _write(b.p("dirs/mode_0555/inside.txt"), b"inside a read-only dir\n")
    os.chmod(b.p("dirs/mode_0555"), 0o555)
    _write(b.p("dirs/mode_0700/inside.txt"), b"private\n")
    os.chmod(b.p("dirs/mode_0700"), 0o700)
    _write(b.p("dirs/sticky_1777/tmpfile"), b"in a sticky dir\n")
    os.chmod(b.p("dirs/sticky_1777"), 0o1777)
    _write(b.p("dirs/setgid_2775/child"), b"in a setgid dir\n")
    os.chmod(b.p("dirs/setgid_2775"), 0o2775)
    # deep nesting: 48 levels, a file and a relative symlink at the bottom
    deep = b.p("deep")
    for i in range(48):
        deep = deep / f"n{i:02d}"
    _write(deep / "bottom.txt", b"48 levels down\n")
    os.symlink("../" * 48 + "files/small.txt", deep / "up_to_small")
    b.ok("directories (empty, 0555, 0700, 1777, 2775, 48 levels deep)")


def _names(b: _Builder) -> None:
    d = _mkdir(b.p("names"))
    names = [
        "中文文件名.txt",
        "日本語ディレクトリ",
        "emoji_😀🎉🚀.bin",
        "e\u0301_combining_NFD",   # é as e + combining acute
        "\u00e9_combining_NFD",    # é precomposed: a different name, same glyph
        "with space",
        " leading space",
        "trailing space ",
        "new\nline",
        "tab\there",
        "back\\slash",
        "-rf",
        "--help",
        "-",
        ".hidden",
        "...",
        "colon:and;semicolon",
        "glob*?[x]{a,b}",
        "quote'double\"",
        "dollar$HOME`cmd`",
        "percent%s%n",
        "a" * 255,                  # 255 bytes, ASCII
        "é" * 127 + "x",            # 255 bytes, 2-byte UTF-8 characters
        "\u3042" * 85,              # 255 bytes, 3-byte UTF-8 characters
    ]
    for i, name in enumerate(names):
        if name == "日本語ディレクトリ":
            _write(d / name / "ファイル", f"{i}\n".encode())
        else:
            _write(d / name, f"name #{i}: {name!r}\n".encode())
    # a directory with a 255-byte name holding a 255-byte file name
    _write(d / ("D" * 255) / ("f" * 255), b"long in long\n")
    # names that are not valid UTF-8
    bad = [b"bad_\xff\xfe.bin", b"latin1_caf\xe9", b"\xc3\x28_invalid_2byte", b"\x80"]
    for i, raw in enumerate(bad):
        _write(Path(os.fsdecode(_b(d) + b"/" + raw)), b"not utf-8 %d\n" % i)
    bad_dir = Path(os.fsdecode(_b(d) + b"/dir_\xfe\xff"))
    _write(bad_dir / os.fsdecode(b"inner_\xff"), b"bad in bad\n")
    b.ok("unicode, non-UTF-8, 255-byte and awkward names")


def _ownership_and_modes(b: _Builder, is_root: bool) -> None:
    _write(b.p("perm/suid_4755"), b"#!/bin/sh\n", 0o755)
    _write(b.p("perm/sgid_2755"), b"#!/bin/sh\n", 0o755)
    _write(b.p("perm/suid_sgid_6755"), b"#!/bin/sh\n", 0o755)
    _write(b.p("perm/sticky_file_1755"), b"#!/bin/sh\n", 0o755)
    _write(b.p("perm/alien_owned"), b"owned by nobody we know\n", 0o640)
    _write(b.p("perm/alien_suid_4750"), b"#!/bin/sh\n", 0o750)
    _mkdir(b.p("perm/alien_dir_0750"), 0o750)
    _write(b.p("perm/alien_dir_0750/child"), b"x\n", 0o600)
    _write(b.p("perm/root_owned"), b"root\n", 0o644)
    if is_root:
        for rel in ("perm/alien_owned", "perm/alien_suid_4750", "perm/alien_dir_0750",
                    "perm/alien_dir_0750/child"):
            os.chown(b.p(rel), ALIEN_UID, ALIEN_GID)
        os.chown(b.p("perm/sgid_2755"), 0, ALIEN_GID)
        os.chown(b.p("perm/root_owned"), 0, 0)
        b.ok(f"numeric uid/gid {ALIEN_UID}:{ALIEN_GID} and root")
    else:
        b.skip("numeric uid/gid", "not running as root")
    # chmod after chown: chown clears set-id bits
    for rel, mode in (("perm/suid_4755", 0o4755), ("perm/sgid_2755", 0o2755),
                      ("perm/suid_sgid_6755", 0o6755), ("perm/sticky_file_1755", 0o1755),
                      ("perm/alien_suid_4750", 0o4750)):
        os.chmod(b.p(rel), mode)
    b.ok("setuid/setgid/sticky files")


def _hardlinks(b: _Builder, is_root: bool) -> None:
    a = _write(b.p("links/a/three"), b.rand(20 * KiB))
    for rel in ("links/b/three_again", "links/c/deeper/three_third"):
        b.p(rel).parent.mkdir(parents=True, exist_ok=True)
        os.link(a, b.p(rel))
    b.hardlink_groups.append(["links/a/three", "links/b/three_again", "links/c/deeper/three_third"])

    s = _write(b.p("links/suid_link_1"), b"#!/bin/sh\necho suid\n", 0o755)
    if is_root:
        os.chown(s, ALIEN_UID, ALIEN_GID)
    os.chmod(s, 0o4755)
    b.p("other").mkdir(exist_ok=True)
    os.link(s, b.p("other/suid_link_2"))
    b.hardlink_groups.append(["links/suid_link_1", "other/suid_link_2"])

    e = _write(b.p("links/empty_link_1"), b"")
    os.link(e, b.p("links/b/empty_link_2"))
    b.hardlink_groups.append(["links/empty_link_1", "links/b/empty_link_2"])

    # a hard link whose second name is not UTF-8 and lives in the names dir
    u = _write(b.p("links/to_bad_name"), b"linked to a bad name\n")
    bad = os.fsdecode(b"names/link_\xff")
    os.link(u, b.p(bad))
    b.hardlink_groups.append(["links/to_bad_name", bad])
    b.ok("hard links (3 dirs; setuid; empty; non-UTF-8 name)")


def _specials(b: _Builder, is_root: bool) -> None:
    d = _mkdir(b.p("special"))
    os.mkfifo(d / "fifo", 0o640)
    os.chmod(d / "fifo", 0o640)
    if is_root:
        os.chown(d / "fifo", ALIEN_UID, ALIEN_GID)
    b.ok("fifo")
    for name, kind, major, minor in (("chr_null_1_3", stat.S_IFCHR, 1, 3),
                                     ("blk_loop_7_200", stat.S_IFBLK, 7, 200),
                                     ("chr_big_minor", stat.S_IFCHR, 240, 70000)):
        if b.try_(f"device node {name}", os.mknod, d / name, kind | 0o660,
                  os.makedev(major, minor)):
            os.chmod(d / name, 0o660)
    # AF_UNIX socket: bind through a relative path (sun_path is 108 bytes,
    # tmp paths can be longer), fall back to mknod(S_IFSOCK).
    sock_path = b.p(SOCKET_REL)
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.getcwd()
        try:
            os.chdir(sock_path.parent)
            s.bind(sock_path.name)
        finally:
            os.chdir(old)
            s.close()
        b.ok("socket (bound AF_UNIX)")
    except OSError as e:
        try:
            os.mknod(sock_path, stat.S_IFSOCK | 0o755)
            b.ok(f"socket (mknod S_IFSOCK; bind failed: {e})")
        except OSError as e2:
            b.skip("socket", f"bind: {e}; mknod: {e2}")
            return
    b.sockets.append(SOCKET_REL)


def _symlinks(b: _Builder, is_root: bool) -> None:
    d = _mkdir(b.p("symlinks"))
    os.symlink("does/not/exist", d / "dangling")
    os.symlink("/etc/passwd", d / "absolute_outside")
    os.symlink("/", d / "absolute_root")
    os.symlink("../files/small.txt", d / "relative_file")
    os.symlink("../dirs/mode_0700", d / "to_dir")
    os.symlink("../dirs", d / "to_dir_with_children")
    os.symlink("self_loop", d / "self_loop")
    os.symlink("loop_b", d / "loop_a")
    os.symlink("loop_a", d / "loop_b")
    os.symlink("目标/😀 target with spaces", d / "unicode_target")
    os.symlink(os.fsdecode(b"target_\xff\xfe"), d / "non_utf8_target")
    os.symlink("x" * 200 + "/" + "y" * 200 + "/" + "z" * 1000, d / "long_target")
    os.symlink(".", d / "dot")
    os.symlink("..", d / "dotdot")
    os.symlink("../names/" + "a" * 255, d / "to_255_name")
    os.symlink("dangling", d / "chain_to_dangling")
    os.symlink("../links/b/three_again", d / "to_hardlink")
    os.symlink("../special/fifo", d / "to_fifo")
    b.ok("symlinks (dangling, absolute, relative, to dir, loops, odd targets)")
    if is_root:
        os.chown(d / "relative_file", ALIEN_UID, ALIEN_GID, follow_symlinks=False)
        b.ok("symlink with numeric owner")
    try:
        os.setxattr(d / "dangling", "trusted.link_note", b"xattr on a symlink",
                    follow_symlinks=False)
        b.ok("trusted.* xattr on a symlink")
    except OSError as e:
        b.skip("trusted.* xattr on a symlink", str(e))
    # symlinks get explicit (past) mtimes: lutimes must be preserved too
    b.mtimes["symlinks/absolute_outside"] = PAST_NS
    b.mtimes["symlinks/dangling"] = FUTURE_NS


def _make_sparse(path: Path, size: int, extents: list[tuple[int, bytes]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)
        for off, data in extents:
            f.seek(off)
            f.write(data)
    os.chmod(path, 0o644)


def _is_sparse(path: Path) -> bool:
    st = os.stat(path)
    return st.st_blocks * 512 < st.st_size


def _sparse(b: _Builder, big: bool) -> None:
    made: list[tuple[str, int, list[tuple[int, bytes]]]] = [
        # hole at the start, data at the end
        ("sparse/hole_at_start", 8 * MiB + 64 * KiB, [(8 * MiB, b.rand(64 * KiB))]),
        # data, hole, data (not 4 KiB aligned at either end), hole at the end
        ("sparse/holes_mixed", 32 * MiB,
         [(0, b.rand(10_000)), (5 * MiB + 123, b.rand(300 * KiB + 5)),
          (20 * MiB, b.rand(4096))]),
        # a file that is one big hole
        ("sparse/all_hole", 16 * MiB, []),
    ]
    if big:
        made.append(("sparse/big_1g", GiB,
                     [(GiB // 2, b.rand(MiB)), (GiB - 5000, b.rand(5000))]))
    else:
        b.skip("1 GiB sparse file", "big_sparse=False")
    for rel, size, extents in made:
        _make_sparse(b.p(rel), size, extents)
        if _is_sparse(b.p(rel)):
            b.sparse.append(rel)
        else:
            b.skip(f"sparse file {rel}", "file system allocated the holes")
    if b.sparse:
        b.ok("sparse files")


def _xattrs(b: _Builder, is_root: bool) -> None:
    f = _write(b.p("xattr/file_all_namespaces"), b"xattrs everywhere\n")
    d = _mkdir(b.p("xattr/dir_with_xattrs"))
    _write(d / "child", b"child\n")
    wanted = [
        ("user.* on a file", f, "user.mime_type", b"text/plain"),
        ("user.* empty value", f, "user.empty", b""),
        ("user.* binary value", f, "user.binary", bytes(range(256))),
        ("user.* 2 KiB value", f, "user.big", b.rand(2048)),
        ("user.* unicode name", f, "user.名前", "値".encode()),
        ("user.* on a dir", d, "user.dir_note", b"directory xattr"),
        ("trusted.* on a file", f, "trusted.cvmigrate_test", b"trusted value"),
        ("trusted.* on a dir", d, "trusted.overlay.opaque", b"y"),
        ("security.selinux label", f, "security.selinux", SELINUX_LABEL),
        ("security.selinux on a dir", d, "security.selinux",
         b"system_u:object_r:var_t:s0\x00"),
        ("trusted.* on a fifo", b.p("special/fifo"), "trusted.fifo_note", b"fifo"),
        ("trusted.* on a device", b.p("special/chr_null_1_3"), "trusted.dev_note", b"dev"),
        ("user.* on a hard-linked file", b.p("links/a/three"), "user.linked", b"shared inode"),
        ("user.* on a setuid file", b.p("perm/suid_4755"), "user.suid_note", b"keep me"),
    ]
    for feature, path, name, value in wanted:
        if not os.path.lexists(path):
            b.skip(feature, "target entry was not created")
            continue
        b.try_(feature, os.setxattr, path, name, value, 0, follow_symlinks=False)


def _acls(b: _Builder) -> None:
    d = _mkdir(b.p("acl/dir_with_default"), 0o770)
    try:
        b.setfacl(d, "-m", f"u:{ALIEN_UID}:rwx,g:{ALIEN_GID}:r-x,m::rwx")
        b.setfacl(d, "-d", "-m", f"u::rwx,g::r-x,o::---,u:{ALIEN_UID}:rwx,g:{ALIEN_GID}:rx")
        # created after the default ACL: inherits an access ACL
        _write(d / "inherits_acl", b"inherited\n", 0o640)
        os.mkdir(d / "subdir_inherits")
        b.ok("POSIX ACL: access + default on a dir, inherited by children")
    except RuntimeError as e:
        b.skip("POSIX ACL on a dir", str(e))
    f = _write(b.p("acl/file_with_acl"), b"acl\n", 0o640)
    try:
        b.setfacl(f, "-m", f"u:1000:r--,u:{ALIEN_UID}:rw-,g:2000:rw-,m::rw-")
        b.ok("POSIX ACL: access ACL on a file")
    except RuntimeError as e:
        b.skip("POSIX ACL on a file", str(e))
    # ACL + xattr + setgid on one dir
    g = _mkdir(b.p("acl/setgid_acl_dir"), 0o2770)
    try:
        b.setfacl(g, "-m", f"g:{ALIEN_GID}:rwx")
        os.chmod(g, 0o2770)
        b.ok("POSIX ACL on a setgid dir")
    except RuntimeError as e:
        b.skip("POSIX ACL on a setgid dir", str(e))


def _capabilities(b: _Builder, is_root: bool) -> None:
    elf = shutil.which("true") or "/bin/true"
    dst = b.p("caps/ping_like")
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(elf, dst)
    os.chmod(dst, 0o755)
    if not is_root:
        b.skip("security.capability", "not running as root")
        return
    try:
        b.setcap(dst, "cap_net_raw+ep")
        b.ok("security.capability via setcap cap_net_raw+ep")
    except RuntimeError as e:
        try:
            # VFS_CAP_REVISION_2, effective, permitted = CAP_NET_RAW (bit 13)
            raw = (0x02000001).to_bytes(4, "little") + (1 << 13).to_bytes(4, "little") + bytes(12)
            os.setxattr(dst, "security.capability", raw)
            b.ok(f"security.capability via raw xattr (setcap failed: {e})")
        except OSError as e2:
            b.skip("security.capability", f"setcap: {e}; raw xattr: {e2}")
    # a capability on a file owned by someone else (chown clears capabilities)
    dst2 = b.p("caps/alien_cap")
    shutil.copyfile(elf, dst2)
    os.chown(dst2, ALIEN_UID, ALIEN_GID)
    os.chmod(dst2, 0o750)
    try:
        b.setcap(dst2, "cap_net_bind_service,cap_sys_time+eip")
        b.ok("security.capability on an alien-owned file")
    except RuntimeError as e:
        b.skip("security.capability on an alien-owned file", str(e))


def _edge_state_names(b: _Builder) -> None:
    # Names a receiver might mistake for its own state or temp files. Only
    # <root>/.cvmigrate is the receiver's; these are ordinary content.
    _write(b.p("sub/.cvmigrate/looks_like_state"), b"content, not receiver state\n")
    _write(b.p("sub/.cvmigrate.tmp"), b"content\n")
    _write(b.p(".cvmigrate_not_state"), b"content\n")
    b.ok("names resembling receiver state below the root")


def _apply_mtimes(b: _Builder) -> None:
    """Give every entry a distinct nanosecond mtime; parents after children."""
    special = {
        "files/small.txt": PAST_NS,
        "files/incompressible_3m.bin": FUTURE_NS,
        "dirs/empty": PAST_NS,
        "dirs/mode_0555": FUTURE_NS,
        "links/a/three": PAST_NS,
        "special/fifo": PAST_NS,
    }
    special.update(b.mtimes)
    entries: list[tuple[str, int]] = []
    for dirpath, dirnames, filenames in os.walk(b.root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            entries.append((os.path.relpath(full, b.root), full.count(os.sep)))
    # deepest first so setting a child's time never disturbs a parent's
    entries.sort(key=lambda e: -e[1])
    for i, (rel, _) in enumerate(entries):
        ns = special.get(rel, BASE_NS + i * 1_000_000_007 + 123_456_789)
        try:
            os.utime(b.root / rel, ns=(ns, ns), follow_symlinks=False)
        except OSError as e:
            b.skip(f"mtime of {rel!r}", str(e))
    # the root last (rsync, comparing to the second, would not fix a root
    # whose mtime is "now" in a reference copy made within the same second)
    os.utime(b.root, ns=(BASE_NS - 123_456_789, BASE_NS - 123_456_789))
    b.ok("nanosecond mtimes, 1990 and 2100 mtimes, symlink mtimes")


def _summarise(b: _Builder) -> TreeInfo:
    info = tree_info(b.root)
    info.sparse_files = b.sparse
    info.hardlink_groups = b.hardlink_groups
    info.skipped = b.skipped
    info.features = b.features
    return info


def tree_info(root: Path, *, prune: tuple[str, ...] = ()) -> TreeInfo:
    """Count what a tree holds (any tree, e.g. a real one).

    ``prune`` lists root-relative directories whose contents are not counted
    (the directory itself is), like the exclude pattern ``/DIR/*``.
    """
    root = Path(root)
    info = TreeInfo(root=root)
    seen: set[tuple[int, int]] = set()
    pruned = {os.path.normpath(p.strip("/")) for p in prune}
    for dirpath, dirnames, filenames in os.walk(root):
        if os.path.relpath(dirpath, root) in pruned:
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            m = st.st_mode
            if stat.S_ISDIR(m):
                info.dirs += 1
            elif stat.S_ISREG(m):
                info.files += 1
                info.content_bytes_all_links += st.st_size
                key = (st.st_dev, st.st_ino)
                if key not in seen:
                    seen.add(key)
                    info.unique_files += 1
                    info.content_bytes += st.st_size
            elif stat.S_ISLNK(m):
                info.symlinks += 1
            elif stat.S_ISFIFO(m):
                info.fifos += 1
            elif stat.S_ISCHR(m):
                info.char_devices += 1
            elif stat.S_ISBLK(m):
                info.block_devices += 1
            elif stat.S_ISSOCK(m):
                info.sockets.append(os.path.relpath(full, root))
    return info


# --------------------------------------------------------------------------
# benchmark trees and real trees


def build_small_files(root: Path, n: int, size: int = 4 * KiB, seed: int = 0,
                      *, per_dir: int = 256) -> TreeInfo:
    """``n`` small files of about ``size`` bytes, ``per_dir`` per directory.

    Contents are mixed so compression has something realistic to do: a third
    random (incompressible), a third text-like (compressible), a third
    repeated blocks shared between files (deduplicable). Sizes vary ±50 % around
    ``size`` (deterministic for a given ``seed``).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    words = [b"server", b"migration", b"tencent", b"cloud", b"config", b"log", b"error",
             b"=", b"\n", b"127.0.0.1", b"GET /index.html", b"200", b"true", b"false"]
    shared = [rng.randbytes(max(size, 1)) for _ in range(8)]
    for i in range(n):
        d = root / f"d{i // per_dir:04d}"
        if i % per_dir == 0:
            d.mkdir(exist_ok=True)
        sz = max(0, int(size * (0.5 + rng.random())))
        kind = i % 3
        if kind == 0:
            data = rng.randbytes(sz)
        elif kind == 1:
            parts, total = [], 0
            while total < sz:
                w = rng.choice(words)
                parts.append(w + b" ")
                total += len(w) + 1
            data = b"".join(parts)[:sz]
        else:
            data = (shared[rng.randrange(len(shared))] * 2)[:sz]
        with open(d / f"f{i:07d}.dat", "wb") as f:
            f.write(data)
    return tree_info(root)


def stdlib_tree() -> Path:
    """The running interpreter's standard library: a real tree nobody here wrote.

    Use it read-only, in place, as a push source (never copy or modify it).
    It holds ``site-packages`` (third-party, mutable while pip runs); exclude
    ``/site-packages`` unless a test really wants it.
    """
    return Path(sysconfig.get_paths()["stdlib"])


def copy_real_tree() -> Path:
    """Alias of :func:`stdlib_tree`: nothing is copied; push from it in place."""
    return stdlib_tree()


__all__ = [
    "ALIEN_GID", "ALIEN_UID", "FUTURE_NS", "GiB", "KiB", "MiB", "PAST_NS", "SOCKET_REL",
    "TreeInfo", "build_small_files", "build_tricky_tree", "copy_real_tree", "stdlib_tree",
    "tree_info",
]
