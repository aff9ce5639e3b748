"""Conversions between the model dataclasses and the generated protobuf types.

The only module outside the servicers that touches generated classes: the
rest of the code works with common.model.
"""
from __future__ import annotations

import os

from cvmigrate.common.errors import ProtocolError
from cvmigrate.common.model import Entry, Kind
from cvmigrate.common.paths import PATH_MAX
from cvmigrate.proto import transfer_pb2 as pb

_KINDS = {int(k) for k in Kind}
#: Bounds on what a peer may declare (a hostile agent's extreme values end as INVALID_ARGUMENT,
#: never as an exception from a syscall or hours of hashing a declared hole).
MAX_ID = (1 << 32) - 2            # (uid_t)-1 means "leave unchanged" to chown
MAX_FILE_SIZE = 1 << 44           # 16 TiB: ext4's largest file with 4 KiB blocks
MAX_XATTRS = 1024
MAX_XATTR_BYTES = 1 << 20
_KIND = {int(k): k for k in Kind}


def fill_entry(msg: pb.Entry, e: Entry) -> pb.Entry:
    """Write ``e`` into ``msg`` (typically ``batch.entries.add()``: no intermediate copy)."""
    msg.id, msg.path, msg.kind, msg.mode, msg.uid, msg.gid = e.id, e.path, e.kind, e.mode, e.uid, e.gid
    msg.mtime_ns = e.mtime_ns
    if e.size:
        msg.size = e.size
    if e.link_target:
        msg.link_target = e.link_target
    if e.rdev:
        msg.rdev = e.rdev
    if e.hardlink_to:
        msg.hardlink_to = e.hardlink_to
    src = msg.source
    src.dev, src.ino, src.ctime_ns = e.dev, e.ino, e.ctime_ns
    for n, v in e.xattrs:
        msg.xattrs.add(name=n, value=v)
    return msg


def entry_to_proto(e: Entry) -> pb.Entry:
    return fill_entry(pb.Entry(), e)


def entry_from_proto(m: pb.Entry) -> Entry:
    if m.kind not in _KINDS:
        raise ProtocolError(f"entry {m.path!r} has unknown kind {m.kind}")
    if m.mode > 0o7777:
        raise ProtocolError(f"entry {m.path!r} has invalid mode {m.mode:o}")
    if m.uid > MAX_ID or m.gid > MAX_ID:
        raise ProtocolError(f"entry {m.path!r} has owner {m.uid}:{m.gid}; ids above {MAX_ID} are not valid")
    if m.size > MAX_FILE_SIZE:
        raise ProtocolError(f"entry {m.path!r} declares {m.size} bytes, above the {MAX_FILE_SIZE}-byte limit")
    if m.link_target and (b"\0" in m.link_target or len(m.link_target) >= PATH_MAX):
        raise ProtocolError(f"entry {m.path!r}: a link target must be under {PATH_MAX} bytes without NUL")
    if m.rdev and (os.major(m.rdev) >= 1 << 12 or os.minor(m.rdev) >= 1 << 20 or m.rdev >= 1 << 32):
        raise ProtocolError(f"entry {m.path!r}: device number {m.rdev:#x} is not a Linux device number")
    src = m.source
    xattrs = tuple((x.name, x.value) for x in m.xattrs) if m.xattrs else ()
    if xattrs:
        if len(xattrs) > MAX_XATTRS or sum(len(n) + len(v) for n, v in xattrs) > MAX_XATTR_BYTES:
            raise ProtocolError(f"entry {m.path!r} carries more extended attributes than Linux can store")
        for n, v in xattrs:
            if not n or b"\0" in n or len(n) > 255 or b"." not in n or len(v) > 65536:
                raise ProtocolError(f"entry {m.path!r}: extended attribute {n[:64]!r} is not a valid name "
                                    "(1-255 bytes, 'namespace.name', no NUL) or its value exceeds 64 KiB")
    return Entry(m.path, _KIND[m.kind], m.mode, m.uid, m.gid, m.mtime_ns, m.size, m.link_target, m.rdev,
                 m.hardlink_to, xattrs, src.dev, src.ino, src.ctime_ns, m.id)
