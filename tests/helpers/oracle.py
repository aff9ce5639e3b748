"""rsync as a test-only oracle: "would rsync change anything?".

cvmigrate never uses rsync; tests use it to judge a migrated tree. The oracle
is a dry run of

    rsync -naHAXc --delete --numeric-ids --itemize-changes --exclude=/.cvmigrate SRC/ DST/

that prints one line per entry rsync would create, change or delete. An empty
output means the trees are identical in content (``-c``: full checksums, not
size+mtime), type, permissions (``-p``, implied by ``-A``), POSIX ACLs (``-A``),
extended attributes in every namespace rsync can read (``-X``; as root that is
``user.*``, ``trusted.*`` and ``security.*``, i.e. SELinux labels and file
capabilities; ``system.posix_acl_*`` is covered by ``-A``), numeric owner and
group, mtimes (``-t``: for regular files, directories and symlinks, with
nanoseconds where both sides keep them), device numbers, fifos, symlink targets
and hard-link structure (``-H``).

What the oracle does NOT see, and the helpers here add:

* nanoseconds: this rsync (3.5, local dry run) compares mtimes to the second
  only; ``mtime_ns_diff`` compares ``st_mtime_ns`` of every entry present on
  both sides (root, dirs, files, symlinks, specials) and ``assert_identical``
  appends its lines;
* hard links the target has but the source has not (two equal files merged
  into one inode pass ``-c`` when their mtimes agree): ``mtime_ns_diff``
  also compares the link sets of regular files;
* sparseness (``-c`` compares bytes, not allocation): ``assert_sparse_preserved``;
* sockets: ``rsync -a`` (``-D`` = ``--devices --specials``) copies sockets,
  cvmigrate deliberately skips them; pass their paths in ``extra_excludes`` and
  check their absence on the target separately.

Itemize format (``YXcstpoguax``): Y is ``>`` (transfer), ``c`` (create/change
non-file), ``h`` (hard link), ``.`` (attributes only) or ``*`` (message, e.g.
``*deleting``); X is the type (``f`` file, ``d`` dir, ``L`` symlink, ``D``
device, ``S`` special); then c=checksum, s=size, t=mtime (``T``: set to now),
p=perms, o=owner, g=group, u/n/b=atime/ctime, a=ACL, x=xattr.
"""

from __future__ import annotations

import fnmatch
import os
import stat
import subprocess
from pathlib import Path

RSYNC = "/usr/bin/rsync"

#: The receiver's state directory, never migrated content.
STATE_EXCLUDE = "--exclude=/.cvmigrate"


def _dir_arg(p: Path | str) -> bytes:
    b = os.fsencode(p)
    return b if b.endswith(b"/") else b + b"/"


def rsync_itemize(src: Path, dst: Path, extra_excludes: tuple[str, ...] | list[str] = (),
                  *, delete: bool = True, timeout: float = 600) -> list[str]:
    """Lines rsync would print to make ``dst`` a mirror of ``src`` (empty = identical).

    ``extra_excludes`` are rsync patterns (anchor with a leading ``/`` to mean
    "relative to the tree root"). ``delete=False`` leaves out ``--delete`` (for
    ``--no-delete`` pushes, where target-only entries are expected).
    """
    argv: list[bytes | str] = [RSYNC, "-naHAXc"]
    if delete:
        argv.append("--delete")
    argv += ["--numeric-ids", "--itemize-changes", STATE_EXCLUDE]
    argv += [f"--exclude={pat}" for pat in extra_excludes]
    argv += [_dir_arg(src), _dir_arg(dst)]
    r = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
    # rsync escapes unprintable bytes in names as \#ooo, so lines are ASCII-safe
    out = r.stdout.decode("utf-8", errors="backslashreplace")
    err = r.stderr.decode("utf-8", errors="backslashreplace")
    if r.returncode not in (0,):
        raise AssertionError(
            f"rsync oracle failed (exit {r.returncode}) comparing {src} -> {dst}:\n{err}{out}")
    return [line for line in out.splitlines() if line.strip()]


def _excluded(rel: str, patterns: list[str]) -> bool:
    """rsync-like matching for the simple patterns tests use.

    ``/a/b`` (anchored) excludes root-relative ``a/b`` and everything below it;
    an unanchored pattern matches any path component. Wildcards per fnmatch.
    """
    parts = rel.split("/")
    for pat in patterns:
        pat = pat.rstrip("/")
        if pat.startswith("/"):
            pat = pat[1:]
            n = pat.count("/") + 1
            if len(parts) >= n and fnmatch.fnmatchcase("/".join(parts[:n]), pat):
                return True
        elif any(fnmatch.fnmatchcase(p, pat) for p in parts):
            return True
    return False


def _walk(root: Path, patterns: list[str]) -> dict[str, os.stat_result]:
    out: dict[str, os.stat_result] = {".": os.lstat(root)}
    for dirpath, dirnames, filenames in os.walk(root):
        keep = []
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            if _excluded(rel, patterns):
                continue
            st = os.lstat(full)
            out[rel] = st
            if stat.S_ISDIR(st.st_mode):
                keep.append(name)
        dirnames[:] = [d for d in dirnames if d in keep]
    return out


def mtime_ns_diff(src: Path, dst: Path, extra_excludes: tuple[str, ...] | list[str] = ()) -> list[str]:
    """What rsync's oracle misses: nanosecond mtimes and extra hard links.

    Returns one line per entry present on both sides whose ``st_mtime_ns``
    differs (``mtime_ns <rel> src=... dst=...``), and per regular file whose set
    of hard-link names differs (``links <rel> src=[...] dst=[...]``). Entries on
    one side only are rsync's business.
    """
    patterns = ["/.cvmigrate", *extra_excludes]
    a, b = _walk(Path(src), patterns), _walk(Path(dst), patterns)

    def groups(tree: dict[str, os.stat_result]) -> dict[str, tuple[str, ...]]:
        by_ino: dict[tuple[int, int], list[str]] = {}
        for rel, st in tree.items():
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                by_ino.setdefault((st.st_dev, st.st_ino), []).append(rel)
        out = {}
        for names in by_ino.values():
            for n in names:
                out[n] = tuple(sorted(names))
        return out

    ga, gb = groups(a), groups(b)
    lines = []
    for rel in sorted(a.keys() & b.keys()):
        sa, sb = a[rel], b[rel]
        if stat.S_IFMT(sa.st_mode) != stat.S_IFMT(sb.st_mode):
            continue  # rsync reports type changes
        shown = rel.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        if sa.st_mtime_ns != sb.st_mtime_ns:
            lines.append(f"mtime_ns {shown!r} src={sa.st_mtime_ns} dst={sb.st_mtime_ns}")
        if stat.S_ISREG(sa.st_mode):
            la, lb = ga.get(rel, (rel,)), gb.get(rel, (rel,))
            if la != lb:
                lines.append(f"links {shown!r} src={list(la)!r} dst={list(lb)!r}")
    return lines


def assert_identical(src: Path, dst: Path, extra_excludes: tuple[str, ...] | list[str] = (),
                     *, delete: bool = True, nsec: bool = True) -> None:
    """Fail with rsync's itemized lines unless ``dst`` mirrors ``src`` exactly.

    With ``nsec`` (default) the lines of :func:`mtime_ns_diff` are added.
    """
    lines = rsync_itemize(src, dst, extra_excludes, delete=delete)
    if nsec:
        lines += mtime_ns_diff(src, dst, extra_excludes)
    if lines:
        shown = "\n".join(lines[:200])
        more = f"\n... and {len(lines) - 200} more" if len(lines) > 200 else ""
        raise AssertionError(
            f"target differs from source ({len(lines)} itemized changes; rsync -naHAXc "
            f"--delete --numeric-ids {src}/ {dst}/):\n{shown}{more}")


def blocks(path: Path | str) -> int:
    """Allocated 512-byte blocks (``st_blocks``) of ``path`` (not following symlinks)."""
    return os.lstat(path).st_blocks


def assert_sparse_preserved(src_file: Path | str, dst_file: Path | str) -> None:
    """The target copy must not allocate more than the source (holes kept)."""
    s, d = os.lstat(src_file), os.lstat(dst_file)
    assert d.st_size == s.st_size, (
        f"{dst_file}: size {d.st_size} != source size {s.st_size}")
    assert d.st_blocks <= s.st_blocks, (
        f"{dst_file}: holes not preserved: {d.st_blocks} blocks "
        f"({d.st_blocks * 512} bytes allocated) > source {s.st_blocks} blocks "
        f"({s.st_blocks * 512} bytes) for a {s.st_size}-byte file")


__all__ = ["RSYNC", "assert_identical", "assert_sparse_preserved", "blocks", "mtime_ns_diff",
           "rsync_itemize"]
