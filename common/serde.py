"""Conversions between the model dataclasses and the generated protobuf types.

The only module outside the servicers that touches generated classes: the
rest of the code works with common.model.
"""
from __future__ import annotations

from cvmigrate.common.errors import ProtocolError
from cvmigrate.common.model import Entry, Kind
from cvmigrate.proto import transfer_pb2 as pb

_KINDS = {int(k) for k in Kind}
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
    src = m.source
    xattrs = tuple((x.name, x.value) for x in m.xattrs) if m.xattrs else ()
    return Entry(m.path, _KIND[m.kind], m.mode, m.uid, m.gid, m.mtime_ns, m.size, m.link_target, m.rdev,
                 m.hardlink_to, xattrs, src.dev, src.ino, src.ctime_ns, m.id)
