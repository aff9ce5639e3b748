"""Safe file-system operations on the target root, all relative to directory descriptors.

Why descriptors: the receiver writes a production disk for a remote peer.
Paths are validated as strings first (common.paths), then every directory is
opened one component at a time with O_NOFOLLOW|O_DIRECTORY from the root
descriptor, so a symlink planted anywhere on the way -- before or during the
pass -- cannot redirect a write outside the root.  Final names are always
single components handled with ``dir_fd=`` and ``follow_symlinks=False``.
Operations that Python only offers on paths (xattrs of symlinks and device
nodes) go through ``/proc/self/fd/<dirfd>/<name>``, which the kernel resolves
from the held descriptor, not from a path string.
"""
from __future__ import annotations

import ctypes
import errno
import os
import stat
import time
from collections import OrderedDict

import xxhash

from cvmigrate.common.errors import CvmError, TargetError, TargetFull, UnsafePath
from cvmigrate.common.model import FMT_BY_KIND, Entry, Kind

O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: Opening an existing object for data: never follow a link, never block (a FIFO or a device
#: opened without O_NONBLOCK can wait forever), never become a controlling terminal.
O_EXISTING = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
_EUID, _EGID = os.geteuid(), os.getegid()
TMP_PREFIX = b".cvm-"
TMP_SUFFIX = b".tmp"

_libc = ctypes.CDLL(None, use_errno=True)


def syncfs(fd: int) -> None:
    """Flush every dirty page and inode of the filesystem holding ``fd`` (one syscall)."""
    if _libc.syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def tmp_name(name: bytes) -> bytes:
    """The temporary name a file is written under before it is renamed into place.

    Derived from the final name so that a resumed pass finds its partial file;
    short enough to fit NAME_MAX whatever the final name's length.
    """
    return TMP_PREFIX + xxhash.xxh3_64_hexdigest(name).encode() + TMP_SUFFIX


def is_tmp_name(name: bytes) -> bool:
    return name.startswith(TMP_PREFIX) and name.endswith(TMP_SUFFIX) and len(name) == 25


def open_regular(dfd: int, name: bytes, flags: int = os.O_RDONLY, *, ino: int | None = None,
                 nlink: int | None = None, uid: int | None = None) -> tuple[int, os.stat_result] | None:
    """Open an existing regular file for data; None when ``name`` is missing or is something else.

    Why: whatever stands at a name on the target may have been planted there
    (a FIFO that blocks ``open``, a device, a hard link to another inode).  The
    open never blocks and never follows a link, and the object actually opened
    is checked with ``fstat`` -- type, and where the caller knows them its
    inode, link count and owner -- before a byte is read or written.
    """
    try:
        fd = os.open(name, flags | O_EXISTING, dir_fd=dfd)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENXIO, errno.EISDIR, errno.ENOTDIR, errno.EWOULDBLOCK):
            return None
        raise
    st = os.fstat(fd)
    if (not stat.S_ISREG(st.st_mode) or (ino is not None and st.st_ino != ino)
            or (nlink is not None and st.st_nlink != nlink) or (uid is not None and st.st_uid != uid)):
        os.close(fd)
        return None
    return fd, st


def create_exclusive(dfd: int, name: bytes, mode: int = 0o600, flags: int = os.O_RDWR) -> int:
    """Create a new regular file at ``name`` (whatever stood there is unlinked first, never opened).

    ``O_EXCL`` guarantees the descriptor is a fresh inode this process made:
    a planted hard link, symlink or device at the name is replaced, not written through.
    """
    flags |= os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        # the usual case, a free name: one syscall (O_EXCL fails on anything there, a dangling symlink too)
        return os.open(name, flags, mode, dir_fd=dfd)
    except FileExistsError:
        pass
    try:
        os.unlink(name, dir_fd=dfd)
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        _rmtree_at(dfd, name)
    except PermissionError:  # a directory on some kernels answers EPERM to unlink
        _rmtree_at(dfd, name)
    return os.open(name, flags, mode, dir_fd=dfd)


def oserror_to_cvm(exc: OSError, what: str, path: bytes) -> CvmError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return TargetFull(f"{exc.strerror} while {what}; free space on the target disk (or map this mount "
                          "to a data disk with DataDisks) and run the same push again", path=path)
    return TargetError(f"{what} /{os.fsdecode(path)} failed: {exc.strerror or exc}")


def dir_cache_size() -> int:
    """How many directory descriptors a tree keeps open (a sixteenth of the soft limit, 256 to 4096)."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(256, min(4096, (soft if soft != resource.RLIM_INFINITY else 65536) // 16))


class TargetTree:
    """The target root, with a small cache of open directory descriptors."""

    def __init__(self, root: str | bytes, cache_size: int | None = None) -> None:
        self.root = os.fsencode(os.path.abspath(root))
        self.root_fd = os.open(self.root, O_DIR)
        self._cache: OrderedDict[bytes, int] = OrderedDict()
        # directories are reopened when evicted: a pass over a tree of many directories whose files' data
        # arrives after their decisions would reopen each several times with too small a cache
        self._cache_size = cache_size or dir_cache_size()
        # Can a new file get xattrs we did not set?  With an active LSM (SELinux labels) or any
        # default ACL under the root, yes; then new files are checked like existing ones.
        self.inherits_xattrs = os.path.exists("/sys/fs/selinux/enforce")
        #: (st_dev, st_ino) of the receiver's state directory, and of it plus every directory holding it
        #: under the root: no message may reach into the first nor remove any of them.
        self.state_id: tuple[int, int] | None = None
        self.protected: frozenset[tuple[int, int]] = frozenset()

    def protect(self, state_dir: str | bytes) -> None:
        """Make the state directory unreachable from messages, wherever it is (checked by device and inode).

        Why by inode: a name check on the first component misses a nested
        ``--state-dir`` and any second name (a hard link, a bind mount) for it.
        """
        sd = os.fsencode(os.path.abspath(state_dir))
        st = os.stat(sd, follow_symlinks=False)
        self.state_id = (st.st_dev, st.st_ino)
        ids = {self.state_id}
        while sd.startswith(self.root + b"/"):
            sd = os.path.dirname(sd)
            if sd == self.root:
                break
            pst = os.stat(sd, follow_symlinks=False)
            ids.add((pst.st_dev, pst.st_ino))
        self.protected = frozenset(ids)
        self.forget(b"")  # descriptors cached before the protection are checked again on their next use

    def make_state_dir(self, state_dir: str | bytes) -> None:
        """Create the state directory (mode 0700); under the root, one component at a time without following links.

        Why: the target may hold anything an earlier pass or the source left there; a
        symlink on the way to a nested ``--state-dir`` must not move the journal elsewhere.
        """
        sd = os.fsencode(os.path.abspath(state_dir))
        if not sd.startswith(self.root + b"/"):
            os.makedirs(sd, mode=0o700, exist_ok=True)
            return
        from cvmigrate.common.paths import split_relpath

        parts = split_relpath(sd[len(self.root) + 1:])
        for i in range(len(parts)):
            parent = self.dir_fd(parts[:i])
            try:
                os.mkdir(parts[i], 0o700, dir_fd=parent)
            except FileExistsError:
                pass
            self.dir_fd(parts[:i + 1])  # UnsafePath when it is a symlink or not a directory

    def is_protected(self, st: os.stat_result | None) -> bool:
        """Is ``st`` the state directory or a directory holding it?"""
        return st is not None and (st.st_dev, st.st_ino) in self.protected

    def close(self) -> None:
        for fd in self._cache.values():
            os.close(fd)
        self._cache.clear()
        os.close(self.root_fd)

    # -------------------------------------------------------------- directories
    def dir_fd(self, parts: tuple[bytes, ...]) -> int:
        """Descriptor of the directory at ``parts`` (validated components).

        Raises UnsafePath when a component is a symlink or not a directory, and
        FileNotFoundError when it does not exist.
        """
        return self.dir_fd_of(b"/".join(parts)) if parts else self.root_fd

    def parent_fd(self, path: bytes) -> int:
        """Descriptor of the directory holding the (validated, non-root) ``path``."""
        cut = path.rfind(b"/")
        return self.dir_fd_of(path[:cut]) if cut > 0 else self.root_fd

    def dir_fd_of(self, key: bytes) -> int:
        """Descriptor of the directory at the validated relative path ``key``."""
        if not key:
            return self.root_fd
        fd = self._cache.get(key)
        if fd is not None:
            self._cache.move_to_end(key)
            return fd
        cut = key.rfind(b"/")
        parent = self.dir_fd_of(key[:cut]) if cut > 0 else self.root_fd
        try:
            fd = os.open(key[cut + 1:], O_DIR, dir_fd=parent)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise UnsafePath("a parent component is a symlink or not a directory on the target",
                                 path=key) from None
            raise
        if self.state_id is not None:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) == self.state_id:
                os.close(fd)
                raise UnsafePath("is inside the receiver's state directory", path=key)
        self._cache[key] = fd
        if len(self._cache) > self._cache_size:
            _, old = self._cache.popitem(last=False)
            os.close(old)
        return fd

    def forget(self, path: bytes) -> None:
        """Drop cached descriptors at or below ``path`` (it was removed or replaced)."""
        prefix = path + b"/"
        for key in [k for k in self._cache if k == path or k.startswith(prefix) or not path]:
            os.close(self._cache.pop(key))

    # -------------------------------------------------------------- inspection
    @staticmethod
    def lstat(dfd: int, name: bytes) -> os.stat_result | None:
        try:
            return os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    @staticmethod
    def proc_path(dfd: int, name: bytes) -> bytes:
        return b"/proc/self/fd/%d/%s" % (dfd, name)

    # -------------------------------------------------------------- removal
    def remove(self, dfd: int, name: bytes, rel: bytes) -> None:
        """Remove whatever is at ``name`` (a whole tree for a directory)."""
        st = self.lstat(dfd, name)
        if st is None:
            return
        if self.is_protected(st):
            raise UnsafePath("is the receiver's state directory or holds it; it is never removed", path=rel)
        if stat.S_ISDIR(st.st_mode):
            self.forget(rel)
            _rmtree_at(dfd, name)
        else:
            os.unlink(name, dir_fd=dfd)

    # -------------------------------------------------------------- metadata
    def apply_metadata(self, ref: int | bytes, e: Entry, *, is_symlink: bool = False, set_times: bool = True,
                       fresh: bool = False) -> None:
        """Owner, then xattrs (ACLs included), then mode, then times -- in that order.

        chown clears setuid/setgid and security.capability, so those come
        after it; setting an access ACL rewrites the group bits, so the mode is
        set after the ACL (the source's mode already agrees with its ACL mask).
        ``ref`` is an open descriptor, or a /proc path for symlinks and nodes.
        """
        follow = not isinstance(ref, bytes)
        # ``fresh``: a file this process just created -- already ours (skip a no-op chown) and
        # carrying no xattrs unless the kernel added some (inherited default ACL, LSM label)
        if not (fresh and e.uid == _EUID and e.gid == _EGID):
            os.chown(ref, e.uid, e.gid, follow_symlinks=follow)
        if e.xattrs or not fresh or self.inherits_xattrs:
            sync_xattrs(ref, e.xattrs, follow)
        if not is_symlink:
            if isinstance(ref, int):
                os.fchmod(ref, e.mode)
            else:
                os.chmod(ref, e.mode)
        if set_times:
            set_mtime(ref, e.mtime_ns, follow)

    def make_node(self, dfd: int, name: bytes, e: Entry) -> None:
        """Create a symlink, device or fifo at a temporary name, finish it, rename it into place."""
        tmp = tmp_name(name)
        try:
            os.unlink(tmp, dir_fd=dfd)
        except FileNotFoundError:
            pass
        if e.kind is Kind.SYMLINK:
            os.symlink(e.link_target, tmp, dir_fd=dfd)
        elif e.kind is Kind.FIFO:
            os.mkfifo(tmp, 0o600, dir_fd=dfd)
        else:
            os.mknod(tmp, FMT_BY_KIND[e.kind] | 0o600, e.rdev, dir_fd=dfd)
        try:
            self.apply_metadata(self.proc_path(dfd, tmp), e, is_symlink=e.kind is Kind.SYMLINK)
            self.replace(dfd, tmp, name, e.path)
        except BaseException:
            _unlink_quiet(dfd, tmp)
            raise

    def replace(self, dfd: int, tmp: bytes, name: bytes, rel: bytes) -> None:
        """Rename ``tmp`` over ``name``; a directory in the way is removed first."""
        try:
            os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except OSError as exc:
            if exc.errno not in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                raise
            self.remove(dfd, name, rel)
            os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)

    def ensure_dir(self, dfd: int, name: bytes, rel: bytes, st: os.stat_result | None) -> bool:
        """Make ``name`` a directory (``st``: what stands there, None when nothing or unknown); True when created."""
        if st is not None and stat.S_ISDIR(st.st_mode):
            return False
        if st is not None:
            os.unlink(name, dir_fd=dfd)
        try:
            os.mkdir(name, 0o700, dir_fd=dfd)
        except FileExistsError:
            if st is not None:
                raise
            # the caller did not look (a name sent twice into a directory this pass made): look now
            return self.ensure_dir(dfd, name, rel, self.lstat(dfd, name))
        return True


def sync_xattrs(ref: int | bytes, wanted: tuple[tuple[bytes, bytes], ...], follow: bool) -> None:
    """Make the target's extended attributes exactly ``wanted`` (extra ones removed)."""
    try:
        have = os.listxattr(ref, follow_symlinks=follow)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP) and not wanted:
            return
        raise
    want = {os.fsdecode(n): v for n, v in wanted}
    for name in have:
        if name not in want:
            try:
                os.removexattr(ref, name, follow_symlinks=follow)
            except OSError as exc:
                if exc.errno != errno.ENODATA:
                    raise
    for name, value in want.items():
        if name in have:
            try:
                if os.getxattr(ref, name, follow_symlinks=follow) == value:
                    continue
            except OSError:
                pass
        os.setxattr(ref, name, value, follow_symlinks=follow)


def read_xattrs_at(ref: int | bytes, follow: bool) -> tuple[tuple[bytes, bytes], ...]:
    try:
        names = os.listxattr(ref, follow_symlinks=follow)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return ()
        raise
    out = []
    for name in sorted(names):
        try:
            out.append((os.fsencode(name), os.getxattr(ref, name, follow_symlinks=follow)))
        except OSError as exc:
            if exc.errno != errno.ENODATA:
                raise
    return tuple(out)


def set_mtime(ref: int | bytes, mtime_ns: int, follow: bool = True) -> None:
    os.utime(ref, ns=(time.time_ns(), mtime_ns), follow_symlinks=follow)


def _unlink_quiet(dfd: int, name: bytes) -> None:
    try:
        os.unlink(name, dir_fd=dfd)
    except FileNotFoundError:
        pass


def _rmtree_at(parent_fd: int, name: bytes) -> None:
    """Remove a directory tree without ever following a symlink."""
    try:
        fd = os.open(name, O_DIR, dir_fd=parent_fd)
    except OSError as exc:
        if exc.errno in (errno.ENOTDIR, errno.ELOOP):
            os.unlink(name, dir_fd=parent_fd)
            return
        raise
    try:
        with os.scandir(fd) as it:
            entries = [(os.fsencode(de.name), de.is_dir(follow_symlinks=False)) for de in it]
        for child, is_dir in entries:
            if is_dir:
                _rmtree_at(fd, child)
            else:
                os.unlink(child, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent_fd)


def list_names(dfd: int) -> list[tuple[bytes, bool]]:
    """(name, is_dir) of every entry of an open directory."""
    with os.scandir(dfd) as it:
        return [(os.fsencode(de.name), de.is_dir(follow_symlinks=False)) for de in it]
