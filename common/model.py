"""The data model both ends share: one file-system entry and its metadata.

Why a plain slotted dataclass: the scanner makes one per source object and the
receiver one per incoming entry, up to millions per pass, so it must be cheap;
the generated protobuf classes stay at the wire (see serde.py).
"""
from __future__ import annotations

import enum
import stat
import struct
from dataclasses import dataclass, field

import xxhash

#: the chunk grid: 1 MiB.  Large enough that per-chunk Python overhead is
#: negligible and xxhash/zstd release the GIL; small enough that a change in a
#: big file re-sends little and the resume window stays fine-grained.
CHUNK_SIZE = 1 << 20
PROTOCOL_VERSION = 2  # 2: content-defined chunks for changed files (transfer.proto)


class Kind(enum.IntEnum):
    REGULAR = 1
    DIRECTORY = 2
    SYMLINK = 3
    CHARDEV = 4
    BLOCKDEV = 5
    FIFO = 6


_KIND_BY_FMT = {
    stat.S_IFREG: Kind.REGULAR,
    stat.S_IFDIR: Kind.DIRECTORY,
    stat.S_IFLNK: Kind.SYMLINK,
    stat.S_IFCHR: Kind.CHARDEV,
    stat.S_IFBLK: Kind.BLOCKDEV,
    stat.S_IFIFO: Kind.FIFO,
}
FMT_BY_KIND = {v: k for k, v in _KIND_BY_FMT.items()}
#: Entry.signature's layout: the fixed fields and the link target's length, a length, an xattr's two lengths.
_SIG_HEAD = struct.Struct("<BIIIqQQI")
_LEN = struct.Struct("<I")
_XATTR_HEAD = struct.Struct("<II")


def kind_of_mode(st_mode: int) -> Kind | None:
    """The Kind of an lstat mode, or None for sockets and anything unknown."""
    return _KIND_BY_FMT.get(stat.S_IFMT(st_mode))


@dataclass(slots=True)
class Entry:
    """One source object as it travels: metadata only, never content."""

    path: bytes
    kind: Kind
    mode: int  # permission bits incl. setuid/setgid/sticky
    uid: int
    gid: int
    mtime_ns: int
    size: int = 0
    link_target: bytes = b""
    rdev: int = 0
    hardlink_to: bytes = b""
    xattrs: tuple[tuple[bytes, bytes], ...] = ()
    dev: int = 0
    ino: int = 0
    ctime_ns: int = 0
    id: int = 0
    _sig: bytes = field(default=b"", repr=False, compare=False)

    def signature(self) -> bytes:
        """XXH3-128 over everything that must match on the target (computed once).

        Two entries with equal signatures need no work at all; the journal
        stores it so a re-run skips unchanged entries without re-reading them.
        Call ``forget_signature()`` after changing a field.
        """
        if self._sig:
            return self._sig
        # one digest over the concatenation: the same value as feeding the parts one by one, at a third
        # of the cost (it is computed for every entry of every pass)
        lt, hl = self.link_target, self.hardlink_to
        head = _SIG_HEAD.pack(self.kind, self.mode, self.uid, self.gid, self.mtime_ns, self.size, self.rdev,
                              len(lt))
        if not self.xattrs:
            self._sig = xxhash.xxh3_128_digest(b"".join((head, lt, _LEN.pack(len(hl)), hl)))
            return self._sig
        parts = [head, lt, _LEN.pack(len(hl)), hl]
        for name, value in self.xattrs:
            parts += (_XATTR_HEAD.pack(len(name), len(value)), name, value)
        self._sig = xxhash.xxh3_128_digest(b"".join(parts))
        return self._sig

    def forget_signature(self) -> None:
        self._sig = b""

    def source_fingerprint(self) -> tuple[int, int, int]:
        return (self.dev, self.ino, self.ctime_ns)
