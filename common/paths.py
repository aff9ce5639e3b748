"""Validation of the relative paths that travel between agent and receiver.

Why strict: the receiver writes a production disk on behalf of a remote peer.
A path is accepted only as a sequence of plain names -- no '..', no '.', no
empty component, no NUL, no absolute path, no name over NAME_MAX -- before
any file descriptor is opened.  String checks are the first fence; the
receiver's descriptor-based walk (O_NOFOLLOW at every step) is the second.
"""
from __future__ import annotations

from cvmigrate.common.errors import UnsafePath

NAME_MAX = 255
PATH_MAX = 4096


def split_relpath(path: bytes) -> tuple[bytes, ...]:
    """Split a relative path into validated components; b"" is the root itself."""
    if not isinstance(path, bytes):
        raise UnsafePath("path must be bytes", path=path)
    if path == b"":
        return ()
    if len(path) >= PATH_MAX:
        raise UnsafePath(f"longer than {PATH_MAX - 1} bytes", path=path[:64] + b"...")
    if b"\0" in path:
        raise UnsafePath("contains a NUL byte", path=path)
    if path.startswith(b"/"):
        raise UnsafePath("absolute paths are not allowed", path=path)
    parts = tuple(path.split(b"/"))
    # membership tests and max() run in C: this is on the receiver's per-entry hot path
    if b"" in parts or b"." in parts or b".." in parts:
        bad = next(p for p in parts if p in (b"", b".", b".."))
        raise UnsafePath(f"component {bad.decode('latin-1')!r} is not allowed", path=path)
    if max(map(len, parts)) > NAME_MAX:
        raise UnsafePath(f"a component is longer than {NAME_MAX} bytes", path=path[:64] + b"...")
    return parts


def join(parent: bytes, name: bytes) -> bytes:
    """Join a relative parent (b"" = root) and a name."""
    return parent + b"/" + name if parent else name


def parent_of(path: bytes) -> bytes:
    i = path.rfind(b"/")
    return path[:i] if i >= 0 else b""
