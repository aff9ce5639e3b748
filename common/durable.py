"""Durable, exclusive file writes: the one place that replaces a file (borg's ``SaveFile``).

Why one helper: every file cvmigrate writes -- the receiver's port file, token
and key files, a fix-up's rewritten ``/etc/fstab`` -- must be seen whole or not
at all, even across a crash, and must never be written *through* something
already standing at a guessable name.  So:

1. the temporary file gets an unpredictable name and is created with
   ``O_CREAT|O_EXCL|O_NOFOLLOW`` relative to an open directory descriptor
   (a planted symlink or hard link at any name cannot be written through);
2. its mode is set explicitly with ``fchmod`` (the umask does not decide);
3. the data is written with a full write loop, then ``fsync``;
4. it is renamed over the final name inside the same directory descriptor,
   and the directory is ``fsync``'ed so the rename itself is durable.

The directory-descriptor form (:func:`write_at`) is what code working inside
an untrusted tree uses (the receiver's fix-ups): the caller opened the
directory component by component with ``O_NOFOLLOW``.  :func:`write_file`
opens the parent of a trusted path (the admin's own files) and delegates.
"""
from __future__ import annotations

import os
import secrets

_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def write_at(dir_fd: int, name: str | bytes, data: bytes | str, mode: int = 0o644, *,
             uid: int = -1, gid: int = -1) -> None:
    """Replace ``name`` (one component) in the directory ``dir_fd`` with ``data``, durably and atomically.

    ``uid``/``gid`` (default: unchanged) are applied to the new file before it
    is renamed into place, so a replaced file can keep its owner.
    """
    raw = data.encode() if isinstance(data, str) else data
    bname = os.fsencode(name)
    if not bname or b"/" in bname or bname in (b".", b".."):
        raise ValueError(f"{bname!r} is not a single file name")
    tmp = b".%s.%s.tmp" % (bname[:200], secrets.token_hex(8).encode())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    try:
        try:
            if uid != -1 or gid != -1:
                os.fchown(fd, uid, gid)
            os.fchmod(fd, mode)          # explicit: after fchown, which clears setuid/setgid bits
            view = memoryview(raw)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, bname, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        raise
    os.fsync(dir_fd)


def write_file(path: str | os.PathLike[str], data: bytes | str, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file, never a part.

    For files in the caller's own directories (port, token, key files); the
    final component is replaced, never followed.
    """
    p = os.fspath(path)
    parent, name = os.path.split(os.path.abspath(p))
    dfd = os.open(parent, _O_DIR)
    try:
        write_at(dfd, name, data, mode)
    finally:
        os.close(dfd)


def write_secret(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Write a token, key or credentials file: mode 0600 from creation, complete or absent.

    The one secret-file writer: the temporary file is 0600 before a byte of the secret is in it
    (:func:`write_at`), so no reader ever sees it with a wider mode, even for an instant.
    """
    write_file(path, data, 0o600)
