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
import operator
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from cvmigrate.common.model import FMT_BY_KIND, Entry, Kind
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
    return _get_xattrs(path, names) if names else ()


def _get_xattrs(path: bytes, names: list[str]) -> tuple[tuple[bytes, bytes], ...]:
    """The values of ``names`` (from listxattr), sorted by name; an attribute removed since is left out."""
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


_S_IFMT, _S_IFDIR = 0o170000, stat.S_IFDIR
_name = operator.itemgetter(0)
_KIND_OF_FMT = {fmt: kind for kind, fmt in FMT_BY_KIND.items()}   # kind_of_mode without a call per entry
_REGULAR, _DIRECTORY, _SYMLINK, _CHARDEV, _BLOCKDEV = (Kind.REGULAR, Kind.DIRECTORY, Kind.SYMLINK, Kind.CHARDEV,
                                                       Kind.BLOCKDEV)


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
        self._no_xattrs: set[int] = set()   # st_dev of filesystems whose listxattr said ENOTSUP
        self._next_id = 1

    def _abs(self, rel: bytes) -> bytes:
        return self.root + b"/" + rel if rel else self.root

    def _entry(self, rel: bytes, st: os.stat_result) -> Entry | None:
        """The entry for ``rel`` from its lstat, counted in ``stats``; None for a socket.

        This runs once per source object, so it is written for the interpreter: one Entry
        constructor call and no helper calls on the common path; listxattr is skipped on a
        filesystem that already answered ENOTSUP.
        """
        mode = st.st_mode
        kind = _KIND_OF_FMT.get(mode & _S_IFMT)
        if kind is None:
            self.stats.sockets_skipped += 1
            return None
        size = st.st_size if kind is _REGULAR else 0
        link = os.readlink(self.root + b"/" + rel if rel else self.root) if kind is _SYMLINK else b""
        rdev = st.st_rdev if kind is _CHARDEV or kind is _BLOCKDEV else 0
        first = b""
        xattrs: tuple[tuple[bytes, bytes], ...] = ()
        if kind is not _DIRECTORY and st.st_nlink > 1:
            key = (st.st_dev, st.st_ino)
            first = self._links.get(key, b"")
            if not first:
                self._links[key] = rel
        if not first:  # another name of an inode already described carries no xattrs (they belong to the inode)
            dev = st.st_dev
            if dev not in self._no_xattrs:
                xattrs = self._xattrs(self.root + b"/" + rel if rel else self.root, dev)
        i = self._next_id
        self._next_id = i + 1
        e = Entry(rel, kind, mode & 0o7777, st.st_uid, st.st_gid, st.st_mtime_ns, size, link, rdev, first, xattrs,
                  st.st_dev, st.st_ino, st.st_ctime_ns, i)
        self.stats.count(e)
        return e

    def _xattrs(self, absolute: bytes, dev: int) -> tuple[tuple[bytes, bytes], ...]:
        """read_xattrs, remembering a filesystem that does not support them (no listxattr per file there)."""
        try:
            names = os.listxattr(absolute, follow_symlinks=False)
        except OSError as exc:
            if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
                self._no_xattrs.add(dev)
                return ()
            if exc.errno == errno.ENOENT:
                return ()
            raise
        return _get_xattrs(absolute, names) if names else ()

    def walk(self) -> Iterator[Entry | DirComplete]:
        """The stream: the root's entry, then per directory its children and a DirComplete."""
        st = os.lstat(self.root)
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(f"source {os.fsdecode(self.root)!r} is not a directory")
        top = self._entry(b"", st)
        assert top is not None
        yield top
        # (directory, st_dev of the filesystem it is on): a subdirectory on the same filesystem as
        # its parent is always entered -- also below an included mount point, whose filesystem is
        # not the root's
        stack: list[tuple[bytes, int]] = [(b"", st.st_dev)]
        rules, entry = self.rules, self._entry
        while stack:
            rel, dir_dev = stack.pop()
            children, complete = self._list(rel)
            subdirs: list[tuple[bytes, int]] = []
            prefix = rel + b"/" if rel else b""
            for name, cst in children:
                child = prefix + name
                is_dir = cst.st_mode & _S_IFMT == _S_IFDIR
                if rules is not None and rules.excluded(child, is_dir):
                    self.stats.excluded += 1
                    continue
                try:
                    e = entry(child, cst)
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
        out.sort(key=_name)
        return out, complete

    def _error(self, rel: bytes, exc: OSError) -> None:
        msg = f"/{os.fsdecode(rel)}: {exc.strerror or exc}"
        logger.warning("cannot read %s", msg)
        self.stats.errors.append(msg)
