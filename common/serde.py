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


def entry_to_proto(e: Entry) -> pb.Entry:
    msg = pb.Entry(id=e.id, path=e.path, kind=int(e.kind), mode=e.mode, uid=e.uid, gid=e.gid,
                   mtime_ns=e.mtime_ns, size=e.size, link_target=e.link_target, rdev=e.rdev,
                   hardlink_to=e.hardlink_to,
                   source=pb.Fingerprint(dev=e.dev, ino=e.ino, ctime_ns=e.ctime_ns))
    if e.xattrs:
        msg.xattrs.extend(pb.Xattr(name=n, value=v) for n, v in e.xattrs)
    return msg


def entry_from_proto(m: pb.Entry) -> Entry:
    if m.kind not in _KINDS:
        raise ProtocolError(f"entry {m.path!r} has unknown kind {m.kind}")
    if m.mode > 0o7777:
        raise ProtocolError(f"entry {m.path!r} has invalid mode {m.mode:o}")
    src = m.source
    xattrs = tuple((x.name, x.value) for x in m.xattrs) if m.xattrs else ()
    return Entry(m.path, _KIND[m.kind], m.mode, m.uid, m.gid, m.mtime_ns, m.size, m.link_target, m.rdev,
                 m.hardlink_to, xattrs, src.dev, src.ino, src.ctime_ns, m.id)
