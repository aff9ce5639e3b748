"""Walk a source tree and stream its entries, one directory listing at a time.

Why this shape:
- Memory must not grow with the number of files: the walk is a depth-first
  stack of directory *paths*; each directory is listed, its children are
  emitted, and only then are its subdirectories visited.  The one structure
  that grows is the hard-link map, and only with inodes that have several
  names.
- Because a directory's children are emitted together, the scanner can tell
  the receiver "this directory is complete" right after them, which is when
  the receiver may mirror deletions in it without holding a full file list.
- Symlinks are never followed; other filesystems are not entered unless
  named in ``include_mounts``; sockets are skipped and counted.
- Metadata is read with lstat, listxattr/getxattr (every namespace: ACLs are
  the ``system.posix_acl_*`` attributes, so numeric ids travel as they are).
"""
from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from cvmigrate.common.model import Entry, Kind, kind_of_mode
from cvmigrate.common.passes import TreeCounts
from cvmigrate.common.paths import join

logger = logging.getLogger(__name__)


class Rules(Protocol):
    def excluded(self, path: bytes, is_dir: bool) -> bool: ...


@dataclass(slots=True)
class DirComplete:
    """Every child of ``path`` has been yielded (complete=False: listing failed)."""

    path: bytes
    complete: bool = True


def read_xattrs(path: bytes) -> tuple[tuple[bytes, bytes], ...]:
    """All extended attributes of ``path`` (not following symlinks), sorted by name."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOENT):
            return ()
        raise
    if not names:
        return ()
    out = []
    for name in sorted(names):
        try:
            value = os.getxattr(path, name, follow_symlinks=False)
        except OSError as exc:
            if exc.errno in (errno.ENODATA, errno.ENOTSUP):
                continue
            raise
        out.append((name.encode("utf-8", "surrogateescape"), value))
    return tuple(out)


class Scanner:
    """Yields Entry and DirComplete items for the tree under ``root``."""

    def __init__(self, root: str | bytes, rules: Rules | None = None, *,
                 one_file_system: bool = True, include_mounts: tuple[bytes, ...] = ()) -> None:
        self.root = os.fsencode(os.path.abspath(root))
        self.rules = rules
        self.one_file_system = one_file_system
        # relative paths of mount points the walk may enter
        self.include_mounts = {m.strip(b"/") for m in include_mounts}
        self.stats = TreeCounts()
        self._links: dict[tuple[int, int], bytes] = {}
        self._next_id = 1

    def _abs(self, rel: bytes) -> bytes:
        return self.root + b"/" + rel if rel else self.root

    def _entry(self, rel: bytes, st: os.stat_result) -> Entry | None:
        kind = kind_of_mode(st.st_mode)
        if kind is None:
            self.stats.sockets_skipped += 1
            return None
        absolute = self._abs(rel)
        e = Entry(path=rel, kind=kind, mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid,
                  mtime_ns=st.st_mtime_ns, dev=st.st_dev, ino=st.st_ino, ctime_ns=st.st_ctime_ns)
        if kind is Kind.REGULAR:
            e.size = st.st_size
        elif kind is Kind.SYMLINK:
            e.link_target = os.readlink(absolute)
        elif kind in (Kind.CHARDEV, Kind.BLOCKDEV):
            e.rdev = st.st_rdev
        if kind is not Kind.DIRECTORY and st.st_nlink > 1:
            key = (st.st_dev, st.st_ino)
            first = self._links.get(key)
            if first is None:
                self._links[key] = rel
            else:
                e.hardlink_to = first
                e.size = st.st_size if kind is Kind.REGULAR else 0
                e.id = self._take_id()
                return e  # another name of an inode already described
        e.xattrs = read_xattrs(absolute)
        e.id = self._take_id()
        return e

    def _take_id(self) -> int:
        i = self._next_id
        self._next_id += 1
        return i

    def walk(self) -> Iterator[Entry | DirComplete]:
        """The stream: the root's entry, then per directory its children and a DirComplete."""
        st = os.lstat(self.root)
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(f"source {os.fsdecode(self.root)!r} is not a directory")
        top = self._entry(b"", st)
        assert top is not None
        self.stats.count(top)
        yield top
        # (directory, st_dev of the filesystem it is on): a subdirectory on the same filesystem as
        # its parent is always entered -- also below an included mount point, whose filesystem is
        # not the root's
        stack: list[tuple[bytes, int]] = [(b"", st.st_dev)]
        while stack:
            rel, dir_dev = stack.pop()
            children, complete = self._list(rel)
            subdirs: list[tuple[bytes, int]] = []
            for name, cst in children:
                child = join(rel, name)
                is_dir = stat.S_ISDIR(cst.st_mode)
                if self.rules is not None and self.rules.excluded(child, is_dir):
                    self.stats.excluded += 1
                    continue
                try:
                    e = self._entry(child, cst)
                except OSError as exc:
                    if exc.errno == errno.ENOENT:
                        # vanished between listing and reading: like rsync, not an error for
                        # the entry, but the directory is no longer a complete listing
                        complete = False
                        continue
                    self._error(child, exc)
                    complete = False
                    continue
                if e is None:
                    continue
                self.stats.count(e)
                yield e
                if is_dir:
                    if self.one_file_system and cst.st_dev != dir_dev and child not in self.include_mounts:
                        logger.info("not crossing into mount point /%s (another filesystem)",
                                    os.fsdecode(child))
                        continue
                    subdirs.append((child, cst.st_dev))
            yield DirComplete(rel, complete)
            stack.extend(reversed(subdirs))

    def _list(self, rel: bytes) -> tuple[list[tuple[bytes, os.stat_result]], bool]:
        out: list[tuple[bytes, os.stat_result]] = []
        complete = True
        try:
            with os.scandir(self._abs(rel)) as it:
                for de in it:
                    try:
                        out.append((de.name, de.stat(follow_symlinks=False)))
                    except FileNotFoundError:
                        complete = False
                    except OSError as exc:
                        self._error(join(rel, de.name), exc)
                        complete = False
        except OSError as exc:
            self._error(rel, exc)
            return [], False
        out.sort(key=lambda t: t[0])
        return out, complete

    def _error(self, rel: bytes, exc: OSError) -> None:
        msg = f"/{os.fsdecode(rel)}: {exc.strerror or exc}"
        logger.warning("cannot read %s", msg)
        self.stats.errors.append(msg)
