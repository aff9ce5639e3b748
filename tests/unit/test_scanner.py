"""The scanner (agent/scanner.py) on real trees in tmp_path: what it yields, in which order.

The invariants under test are the ones docs/design.md states for the walk:
parents before children, a directory's DirComplete after every child of it,
one full entry per inode (other names carry ``hardlink_to``), symlinks never
followed, other filesystems not entered unless named, sockets skipped.
"""
from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cvmigrate.agent.scanner import DirComplete, Scanner, read_xattrs
from cvmigrate.common.excludes import ExcludeRules
from cvmigrate.common.model import Entry, Kind

IS_ROOT = os.geteuid() == 0


def _walk(root: Path, **kw) -> tuple[list[Entry | DirComplete], Scanner]:
    sc = Scanner(str(root), **kw)
    return list(sc.walk()), sc


def _entries(items: list[Entry | DirComplete]) -> dict[bytes, Entry]:
    return {i.path: i for i in items if isinstance(i, Entry)}


def _make(root: Path, spec: list[str]) -> None:
    """``dir/`` makes a directory, anything else a small file."""
    root.mkdir(exist_ok=True)
    for p in spec:
        if p.endswith("/"):
            (root / p).mkdir(parents=True, exist_ok=True)
        else:
            (root / p).parent.mkdir(parents=True, exist_ok=True)
            (root / p).write_bytes(p.encode())


def _check_order(items: list[Entry | DirComplete]) -> None:
    """The stream contract the receiver relies on (parents first, completion after children)."""
    seen: set[bytes] = set()
    completed: set[bytes] = set()
    for it in items:
        if isinstance(it, DirComplete):
            assert it.path in seen, f"DirComplete({it.path!r}) before the directory's own entry"
            assert it.path not in completed, f"{it.path!r} completed twice"
            completed.add(it.path)
            continue
        if it.path:
            parent = it.path.rpartition(b"/")[0]
            assert parent in seen, f"{it.path!r} yielded before its parent"
            assert parent not in completed, f"{it.path!r} yielded after DirComplete({parent!r})"
        seen.add(it.path)


# ------------------------------------------------------------------ order and completion
@pytest.mark.parametrize("spec", [
    [],
    ["a"],
    ["a/", "b", "c/", "c/d/", "c/d/e"],
    ["z/y/x/w/v", "a", "m/"],
    ["d1/f1", "d1/f2", "d2/f3", "d2/sub/f4", "d3/"],
    [f"wide/f{i:03d}" for i in range(150)] + ["wide/sub/deep"],
])
def test_parents_first_and_each_directory_completed_after_its_children(tmp_path, spec):
    _make(tmp_path / "src", spec)
    items, sc = _walk(tmp_path / "src")
    _check_order(items)
    dirs = {i.path for i in items if isinstance(i, Entry) and i.kind is Kind.DIRECTORY}
    assert {i.path for i in items if isinstance(i, DirComplete)} == dirs
    assert all(i.complete for i in items if isinstance(i, DirComplete))
    first = items[0]
    assert isinstance(first, Entry) and first.path == b"" and first.kind is Kind.DIRECTORY
    expected = {p.rstrip("/").encode() for p in spec}
    expected |= {b"/".join(p.split(b"/")[:n]) for p in expected for n in range(1, p.count(b"/") + 1)}
    assert set(_entries(items)) - {b""} == expected
    assert sc.stats.dirs == len(dirs)


def test_exact_stream_children_sorted_then_subdirectories_depth_first(tmp_path):
    _make(tmp_path / "src", ["b", "a/", "a/y", "a/x/", "a/x/1", "c/"])
    items, _ = _walk(tmp_path / "src")
    got = [(type(i).__name__, i.path) for i in items]
    assert got == [
        ("Entry", b""),
        ("Entry", b"a"), ("Entry", b"b"), ("Entry", b"c"), ("DirComplete", b""),
        ("Entry", b"a/x"), ("Entry", b"a/y"), ("DirComplete", b"a"),
        ("Entry", b"a/x/1"), ("DirComplete", b"a/x"),
        ("DirComplete", b"c"),
    ]


def test_ids_are_unique_and_ascending_from_one(tmp_path):
    _make(tmp_path / "src", ["a/", "a/b", "c", "d/e/f"])
    items, _ = _walk(tmp_path / "src")
    ids = [i.id for i in items if isinstance(i, Entry)]
    assert ids == list(range(1, len(ids) + 1))


def test_root_that_is_not_a_directory_is_refused(tmp_path):
    (tmp_path / "file").write_bytes(b"x")
    (tmp_path / "dir").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "dir")   # a symlinked root is not followed either
    for name in ("file", "link"):
        with pytest.raises(NotADirectoryError):
            list(Scanner(str(tmp_path / name)).walk())


def test_non_utf8_names_travel_as_bytes(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    raw = os.fsencode(src) + b"/caf\xe9-\xff"
    with open(raw, "wb") as f:
        f.write(b"latin-1 name")
    items, _ = _walk(src)
    e = _entries(items)[b"caf\xe9-\xff"]
    assert e.kind is Kind.REGULAR and e.size == len(b"latin-1 name")


# ------------------------------------------------------------------ metadata
def test_regular_file_metadata_comes_from_lstat(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    f = src / "f"
    f.write_bytes(b"x" * 1234)
    os.chmod(f, 0o4751)
    os.utime(f, ns=(1_000_000_000, 1_234_567_891_011))
    e = _entries(_walk(src)[0])[b"f"]
    st = os.lstat(f)
    assert (e.kind, e.mode, e.size, e.mtime_ns) == (Kind.REGULAR, 0o4751, 1234, 1_234_567_891_011)
    assert (e.uid, e.gid, e.dev, e.ino, e.ctime_ns) == (st.st_uid, st.st_gid, st.st_dev, st.st_ino, st.st_ctime_ns)


def test_sparse_file_reports_its_apparent_size(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "sparse", "wb") as f:
        f.truncate(64 << 20)
        f.seek(32 << 20)
        f.write(b"data")
    st = os.lstat(src / "sparse")
    assert st.st_blocks * 512 < 1 << 20, "the filesystem did not keep the file sparse"
    items, sc = _walk(src)
    assert _entries(items)[b"sparse"].size == 64 << 20
    assert sc.stats.bytes_total == 64 << 20


@pytest.mark.parametrize("size,extents", [
    (64 << 20, [(32 << 20, b"data")]),                         # one small extent in a big hole
    (8 << 20, [(0, b"head"), ((8 << 20) - 3, b"end")]),        # data at both ends
    ((3 << 20) + 5, [((1 << 20) + 7, b"x" * 5000)]),           # a short last chunk, extent off the grid
    (4 << 20, []),                                              # all hole
])
def test_reader_reads_only_the_chunks_that_hold_data(tmp_path, size, extents):
    """The scanner reports a sparse file's apparent size; the reader (agent/reader.py) then
    reads only grid chunks that touch data, and the file hash still covers the holes as zeros."""
    from cvmigrate.agent.reader import Chunk, read_chunks
    from cvmigrate.common.hashing import FileHasher, chunk_hash, hash_file_content

    path = tmp_path / "sparse"
    with open(path, "wb") as f:
        f.truncate(size)
        for off, data in extents:
            f.seek(off)
            f.write(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        hasher = FileHasher()
        read = list(read_chunks(fd, size, 1 << 20, hasher))
        got = [c for c in read if isinstance(c, Chunk)]
        assert len(got) == len(read)                # without a skip map every chunk is read
        assert hasher.length == size
        assert hasher.digest() == hash_file_content(fd, size)
    finally:
        os.close(fd)
    want_offsets = sorted({(off + i) // (1 << 20) * (1 << 20) for off, data in extents for i in (0, len(data) - 1)})
    assert [c.offset for c in got] == want_offsets
    for c in got:
        assert c.hash == chunk_hash(c.data)
        assert len(c.data) == min(1 << 20, size - c.offset)


@pytest.mark.parametrize("attrs", [
    {},
    {"user.one": b"1"},
    {"user.zz": b"last", "user.aa": b"first", "user.mm": b"\x00binary\xff"},
    {"user.empty": b""},
])
def test_xattrs_are_read_in_every_given_name_and_sorted(tmp_path, attrs):
    src = tmp_path / "src"
    src.mkdir()
    f = src / "f"
    f.write_bytes(b"x")
    for k, v in attrs.items():
        os.setxattr(f, k, v)
    e = _entries(_walk(src)[0])[b"f"]
    want = tuple(sorted((k.encode(), v) for k, v in attrs.items()))
    # the filesystem may add its own (an LSM label): ours must all be there, in name order
    assert tuple(x for x in e.xattrs if x[0].startswith(b"user.")) == want
    assert list(e.xattrs) == sorted(e.xattrs)


@pytest.mark.skipif(not IS_ROOT, reason="trusted.* xattrs need root")
def test_trusted_namespace_is_read_too(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    os.setxattr(src / "f", "trusted.cvm", b"t")
    assert (b"trusted.cvm", b"t") in _entries(_walk(src)[0])[b"f"].xattrs


def test_read_xattrs_of_a_symlink_are_the_links_not_the_targets(tmp_path):
    (tmp_path / "target").write_bytes(b"x")
    os.setxattr(tmp_path / "target", "user.secret", b"of the target")
    (tmp_path / "link").symlink_to(tmp_path / "target")
    assert (b"user.secret", b"of the target") in read_xattrs(os.fsencode(tmp_path / "target"))
    assert not any(n == b"user.secret" for n, _ in read_xattrs(os.fsencode(tmp_path / "link")))


def test_read_xattrs_of_a_vanished_path_is_empty(tmp_path):
    assert read_xattrs(os.fsencode(tmp_path / "gone")) == ()


# ------------------------------------------------------------------ symlinks
def test_symlinks_are_entries_and_never_followed(tmp_path):
    outside = tmp_path / "outside"
    _make(outside, ["secret/", "secret/passwd"])
    src = tmp_path / "src"
    _make(src, ["real/", "real/f"])
    (src / "to_outside").symlink_to(outside / "secret")
    (src / "to_inside").symlink_to("real")
    (src / "dangling").symlink_to("nowhere/at/all")
    (src / "loop").symlink_to("loop")
    items, sc = _walk(src)
    _check_order(items)
    es = _entries(items)
    for name, target in [(b"to_outside", os.fsencode(outside / "secret")), (b"to_inside", b"real"),
                         (b"dangling", b"nowhere/at/all"), (b"loop", b"loop")]:
        assert es[name].kind is Kind.SYMLINK and es[name].link_target == target
    assert not any(p.startswith((b"to_outside/", b"to_inside/")) for p in es)
    assert not any(b"passwd" in p for p in es)
    assert not any(isinstance(i, DirComplete) and i.path in (b"to_outside", b"to_inside") for i in items)
    assert sc.stats.symlinks == 4


# ------------------------------------------------------------------ hard links
@pytest.mark.parametrize("names", [
    ["a", "b"],
    ["x/one", "y/two", "three"],          # across directories: walk order decides the first name
    ["d/f", "d/g", "d/h", "e/i"],
])
def test_hard_link_group_one_full_entry_the_others_point_at_it(tmp_path, names):
    src = tmp_path / "src"
    src.mkdir()
    first = src / names[0]
    first.parent.mkdir(parents=True, exist_ok=True)
    first.write_bytes(b"shared content")
    os.setxattr(first, "user.k", b"v")
    for n in names[1:]:
        (src / n).parent.mkdir(parents=True, exist_ok=True)
        os.link(first, src / n)
    (src / "single").write_bytes(b"alone")
    items, sc = _walk(src)
    group = [i for i in items if isinstance(i, Entry) and i.path in {n.encode() for n in names}]
    assert len(group) == len(names)
    head, others = group[0], group[1:]      # in stream order
    assert head.hardlink_to == b"" and head.xattrs == ((b"user.k", b"v"),)
    for o in others:
        assert o.hardlink_to == head.path
        assert o.size == len(b"shared content")
        assert o.xattrs == ()                  # described once, with the inode's first name
    assert _entries(items)[b"single"].hardlink_to == b""
    assert sc.stats.hardlinks == len(names) - 1
    assert sc.stats.bytes_total == len(b"shared content") + len(b"alone")   # the group's bytes count once


def test_hard_linked_symlinks_and_fifos_form_groups_too(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "s1").symlink_to("anywhere")
    os.link(src / "s1", src / "s2", follow_symlinks=False)
    os.mkfifo(src / "p1")
    os.link(src / "p1", src / "p2")
    es = _entries(_walk(src)[0])
    assert es[b"s2"].hardlink_to == b"s1" and es[b"s2"].kind is Kind.SYMLINK
    assert es[b"p2"].hardlink_to == b"p1" and es[b"p2"].kind is Kind.FIFO


def test_directories_never_become_hard_links(tmp_path):
    _make(tmp_path / "src", ["d/", "d/sub1/", "d/sub2/"])  # d has nlink 4
    es = _entries(_walk(tmp_path / "src")[0])
    assert os.lstat(tmp_path / "src" / "d").st_nlink > 1
    assert all(e.hardlink_to == b"" for e in es.values())


# ------------------------------------------------------------------ special files
def test_sockets_are_skipped_and_counted_fifos_kept(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    os.mkfifo(src / "fifo", 0o640)
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(os.fsdecode(src / "sock"))
        items, sc = _walk(src)
    finally:
        sock.close()
    es = _entries(items)
    assert b"sock" not in es and sc.stats.sockets_skipped == 1
    assert es[b"fifo"].kind is Kind.FIFO and es[b"fifo"].mode == 0o640 and sc.stats.fifos == 1


@pytest.mark.skipif(not IS_ROOT, reason="mknod needs root")
def test_device_nodes_carry_their_device_number(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    os.mknod(src / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(src / "blk", stat.S_IFBLK | 0o600, os.makedev(7, 200))
    items, sc = _walk(src)
    es = _entries(items)
    assert (es[b"null"].kind, es[b"null"].rdev) == (Kind.CHARDEV, os.makedev(1, 3))
    assert (es[b"blk"].kind, es[b"blk"].rdev) == (Kind.BLOCKDEV, os.makedev(7, 200))
    assert sc.stats.devices == 2


# ------------------------------------------------------------------ exclusions
@pytest.mark.parametrize("rules,gone,kept", [
    (["- /b"], [b"b", b"b/inner"], [b"a", b"c.log", b"a/b"]),
    (["- *.log"], [b"c.log", b"a/d.log"], [b"b", b"a/b"]),
    (["- b/"], [b"b", b"b/inner", b"a/b"], [b"a", b"c.log"]),          # directories named b anywhere
    (["- /a/*"], [b"a/b", b"a/d.log"], [b"a", b"b/inner"]),
])
def test_excluded_entries_are_neither_yielded_nor_entered(tmp_path, rules, gone, kept):
    _make(tmp_path / "src", ["a/", "a/b/", "a/d.log", "b/", "b/inner", "c.log"])
    items, sc = _walk(tmp_path / "src", rules=ExcludeRules.parse(rules))
    _check_order(items)
    es = _entries(items)
    for p in gone:
        assert p not in es
    for p in kept:
        assert p in es
    assert sc.stats.excluded >= 1


# ------------------------------------------------------------------ a tree that changes under the walk
class _Mutator:
    """Exclusion rules that change the tree when the walk asks about a path: the scanner asks about
    each child after listing its directory and before reading it, so the timing is exact."""

    def __init__(self, root: Path, actions: dict[bytes, Callable[[Path], object]]) -> None:
        self.root, self.actions = root, actions

    def excluded(self, path: bytes, is_dir: bool) -> bool:
        act = self.actions.pop(path, None)
        if act is not None:
            act(self.root)
        return False


@pytest.mark.parametrize("actions,incomplete,missing", [
    # a symlink removed between the listing and its readlink: skipped, its directory incomplete
    ({b"d/link": lambda r: (r / "d" / "link").unlink()}, {b"d"}, {b"d/link"}),
    # a subdirectory removed after its parent's listing: its own listing fails
    ({b"e": lambda r: shutil.rmtree(r / "d")}, {b"d"}, {b"d/f", b"d/link"}),
])
def test_a_directory_whose_listing_changed_is_reported_incomplete(tmp_path, actions, incomplete, missing):
    src = tmp_path / "src"
    _make(src, ["d/", "d/f", "e/", "e/g"])
    (src / "d" / "link").symlink_to("f")
    items, sc = _walk(src, rules=_Mutator(src, dict(actions)))
    _check_order(items)
    done = {i.path: i.complete for i in items if isinstance(i, DirComplete)}
    assert {p for p, ok in done.items() if not ok} == incomplete
    assert done[b""] and done[b"e"]                   # the rest of the tree is unaffected
    es = _entries(items)
    assert not (missing & set(es)) and b"e/g" in es


def test_a_listing_error_is_counted_and_named(tmp_path):
    src = tmp_path / "src"
    _make(src, ["d/", "d/f", "e/"])
    items, sc = _walk(src, rules=_Mutator(src, {b"e": lambda r: shutil.rmtree(r / "d")}))
    assert len(sc.stats.errors) == 1 and sc.stats.errors[0].startswith("/d: ")


# ------------------------------------------------------------------ mount boundaries
def _mount_tmpfs(where: Path) -> None:
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", f"cvm-scan-{uuid.uuid4().hex[:8]}", str(where)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")


@pytest.fixture
def mounted_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """``src/mnt`` is a tmpfs of its own (another st_dev) holding ``inner/file``, and ``mnt/nested``
    is a third filesystem holding ``deep``."""
    if not IS_ROOT:
        pytest.skip("mounting a tmpfs needs root")
    src = tmp_path / "src"
    _make(src, ["before", "mnt/", "zafter/", "zafter/f"])
    mnt = src / "mnt"
    _mount_tmpfs(mnt)
    try:
        _make(mnt, ["top", "inner/", "inner/file", "inner/sub/", "inner/sub/f2", "nested/"])
        _mount_tmpfs(mnt / "nested")
        (mnt / "nested" / "deep").write_bytes(b"d")
        assert len({os.lstat(p).st_dev for p in (src, mnt, mnt / "nested")}) == 3
        yield src
    finally:
        subprocess.run(["umount", "-R", "-l", str(mnt)], check=True)


@pytest.mark.parametrize("kw,entered,nested", [
    ({}, False, False),                                        # one_file_system is the default
    ({"include_mounts": (b"mnt",)}, True, False),              # a mount inside it is another filesystem
    ({"include_mounts": (b"/mnt/",)}, True, False),            # slashes around the name are ignored
    ({"include_mounts": (b"mnt", b"mnt/nested")}, True, True),
    ({"include_mounts": (b"mnt/nested",)}, False, False),     # never reached: its parent is not entered
    ({"include_mounts": (b"other",)}, False, False),
    ({"one_file_system": False}, True, True),
])
def test_other_filesystems_are_entered_only_when_named(mounted_tmpfs, kw, entered, nested):
    items, _ = _walk(mounted_tmpfs, **kw)
    _check_order(items)
    es = _entries(items)
    assert es[b"mnt"].kind is Kind.DIRECTORY           # the mount point itself always travels
    # an included mount is walked whole: its files and its subdirectories at any depth
    for p in (b"mnt/top", b"mnt/inner", b"mnt/inner/file", b"mnt/inner/sub/f2", b"mnt/nested"):
        assert (p in es) is entered, p
    assert (b"mnt/nested/deep" in es) is nested
    # a directory not entered is never reported complete: the receiver must not delete in it
    completed = {i.path for i in items if isinstance(i, DirComplete)}
    assert (b"mnt" in completed) is entered
    assert (b"mnt/nested" in completed) is nested
    assert b"zafter/f" in es and b"before" in es
