"""Conversions between our dataclasses and the generated protobuf types, for both planes (as Flower's ``serde``).

The only module outside the servicers that touches generated classes: the rest of the code works with
:mod:`cvmigrate.common.model` (file plane: entries) and :mod:`cvmigrate.common.passes` (control plane:
a pass's spec, progress and result).  Conversions *from* protobuf validate what a peer may declare, so a
hostile message ends as INVALID_ARGUMENT at the boundary.
"""
from __future__ import annotations

import os
import socket
from typing import Any

from cvmigrate.common.errors import ConfigError, ProtocolError, error_for_status
from cvmigrate.common.model import Entry, Kind
from cvmigrate.common.passes import (
    DEFAULT_PROGRESS_INTERVAL,
    PassCancelled,
    PassSpec,
    PassUpdate,
    PushResult,
    ReceiverCredentials,
)
from cvmigrate.common.paths import PATH_MAX
from cvmigrate.common.shards import MAX_STREAMS
from cvmigrate.proto import control_pb2 as cpb
from cvmigrate.proto import transfer_pb2 as pb

_KINDS = {int(k) for k in Kind}
#: Bounds on what a peer may declare (a hostile agent's extreme values end as INVALID_ARGUMENT,
#: never as an exception from a syscall or hours of hashing a declared hole).
MAX_ID = (1 << 32) - 2            # (uid_t)-1 means "leave unchanged" to chown
MAX_FILE_SIZE = 1 << 44           # 16 TiB: ext4's largest file with 4 KiB blocks
MAX_XATTRS = 1024
MAX_XATTR_BYTES = 1 << 20
_KIND = {int(k): k for k in Kind}


def add_entry(entries: Any, e: Entry) -> pb.Entry:
    """Append ``e`` to a repeated ``Entry`` field (``batch.entries``) and return the new message.

    One constructor call with every scalar (zero values are not serialized): this runs once per
    source entry, and upb sets keyword fields in C, where ten attribute stores would each go
    through the interpreter.
    """
    msg: pb.Entry = entries.add(id=e.id, path=e.path, kind=e.kind, mode=e.mode, uid=e.uid, gid=e.gid,
                                mtime_ns=e.mtime_ns, size=e.size, link_target=e.link_target, rdev=e.rdev,
                                hardlink_to=e.hardlink_to)
    src = msg.source
    src.dev, src.ino, src.ctime_ns = e.dev, e.ino, e.ctime_ns
    if e.xattrs:
        add = msg.xattrs.add
        for n, v in e.xattrs:
            add(name=n, value=v)
    return msg


def entry_to_proto(e: Entry) -> pb.Entry:
    return add_entry(pb.EntryBatch().entries, e)


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


# ============================================================================ control plane (control.proto)
#: Paths and errors listed in a PassResult; the rest are counted (a message stays far below MAX_MESSAGE).
MAX_LISTED = 10_000
_RESULT_COUNTERS = ("files", "dirs", "symlinks", "devices", "fifos", "hardlinks", "sockets_skipped", "excluded",
                    "bytes_total", "bytes_sent", "bytes_read", "bytes_reused", "files_skipped", "files_transferred",
                    "metadata_applied", "deleted", "streams", "placement_retries")
_PHASES = {"connecting": cpb.PASS_PHASE_CONNECTING, "transferring": cpb.PASS_PHASE_TRANSFERRING,
           "reconnecting": cpb.PASS_PHASE_RECONNECTING, "finished": cpb.PASS_PHASE_FINISHED,
           "failed": cpb.PASS_PHASE_FAILED}
_PHASE_NAMES = {v: k for k, v in _PHASES.items()}


def _b(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _s(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def pass_spec_to_proto(spec: PassSpec) -> cpb.PassRequest:
    c = spec.credentials
    return cpb.PassRequest(
        migration_id=spec.migration_id, receiver_address=spec.receiver_address, source=os.fsencode(spec.source),
        exclude_rules=[_b(line) for line in spec.exclude_lines], delete=spec.delete, checksum=spec.checksum,
        include_mounts=list(spec.include_mounts), bwlimit_kbps=spec.bwlimit_kbps or 0,
        retry_for_seconds=spec.retry_for, workers=spec.workers, streams=spec.streams,
        progress_interval_ms=int(spec.progress_interval * 1000),
        credentials=cpb.ReceiverCredentials(insecure=c.insecure, ca_pem=c.ca_pem, client_cert_pem=c.client_cert_pem,
                                            client_key_pem=c.client_key_pem, token=c.token,
                                            server_name=c.server_name, data_proxy=c.data_proxy))


def pass_spec_from_proto(m: cpb.PassRequest) -> PassSpec:
    """Validate a PassRequest (on the agent's host: the source must exist there); ConfigError
    (INVALID_ARGUMENT) names the field and the fix."""
    address = m.receiver_address.strip()
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"PassRequest.receiver_address {address!r} is not HOST:PORT")
    source = os.fsdecode(m.source)
    if not os.path.isabs(source) or not os.path.isdir(source):
        raise ConfigError(f"PassRequest.source {source!r} is not an existing absolute directory on the agent's host "
                          f"({socket.gethostname()}); give the source root as this host sees it")
    c = m.credentials
    if not c.insecure and not c.ca_pem:
        raise ConfigError("PassRequest.credentials.ca_pem is empty: the agent needs the CA that signed the receiver's "
                          "certificate (or insecure for a plaintext data channel)")
    if bool(c.client_cert_pem) != bool(c.client_key_pem):
        raise ConfigError("PassRequest.credentials: client_cert_pem and client_key_pem go together")
    if m.retry_for_seconds < 0:
        raise ConfigError("PassRequest.retry_for_seconds must not be negative")
    for mount in m.include_mounts:
        if mount.startswith(b"/") or b"\0" in mount or b".." in mount.split(b"/"):
            raise ConfigError(f"PassRequest.include_mounts {mount!r}: give paths relative to the source, "
                              "without '..'")
    creds = ReceiverCredentials(insecure=c.insecure, ca_pem=c.ca_pem, client_cert_pem=c.client_cert_pem,
                                client_key_pem=c.client_key_pem, token=c.token, server_name=c.server_name,
                                data_proxy=c.data_proxy)
    return PassSpec(source=source, receiver_address=address, credentials=creds,
                    exclude_lines=tuple(_s(r) for r in m.exclude_rules), delete=m.delete, checksum=m.checksum,
                    include_mounts=tuple(m.include_mounts), bwlimit_kbps=m.bwlimit_kbps or None,
                    migration_id=m.migration_id, retry_for=m.retry_for_seconds, workers=m.workers,
                    streams=min(m.streams, MAX_STREAMS),
                    progress_interval=(m.progress_interval_ms / 1000.0) if m.progress_interval_ms
                    else DEFAULT_PROGRESS_INTERVAL)


def pass_result_to_proto(r: PushResult) -> cpb.PassResult:
    m = cpb.PassResult(resumed=r.resumed, seconds=r.seconds)
    for k in _RESULT_COUNTERS:
        setattr(m, k, max(0, int(getattr(r, k))))
    m.changed_during_copy.extend(_b(p) for p in r.changed_during_copy[:MAX_LISTED])
    m.changed_during_copy_omitted = max(0, len(r.changed_during_copy) - MAX_LISTED)
    m.errors.extend(_b(e) for e in r.errors[:MAX_LISTED])
    m.errors_omitted = max(0, len(r.errors) - MAX_LISTED)
    return m


def pass_result_from_proto(m: cpb.PassResult) -> PushResult:
    r = PushResult()
    for k in _RESULT_COUNTERS:
        setattr(r, k, getattr(m, k))
    r.changed_during_copy = [_s(p) for p in m.changed_during_copy]
    if m.changed_during_copy_omitted:
        r.changed_during_copy.append(f"... and {m.changed_during_copy_omitted} more")
    r.errors = [_s(e) for e in m.errors]
    if m.errors_omitted:
        r.errors.append(f"... and {m.errors_omitted} more error(s) (see the agent's log)")
    r.resumed, r.seconds = m.resumed, m.seconds
    return r


def pass_update_to_proto(u: PassUpdate) -> cpb.PassProgress:
    m = cpb.PassProgress(phase=_PHASES[u.phase], attempt=u.attempt, elapsed_seconds=u.elapsed,
                         files_scanned=u.files_scanned, bytes_scanned=u.bytes_scanned,
                         files_transferred=u.files_transferred, files_skipped=u.files_skipped,
                         bytes_read=u.bytes_read, bytes_sent=u.bytes_sent, rate_bytes_per_s=u.rate,
                         wire_bytes_per_s=u.wire_rate, bwlimit_kbps=u.bwlimit_kbps or 0)
    if u.result is not None:
        m.result.CopyFrom(pass_result_to_proto(u.result))
    elif u.error is not None:
        m.error.CopyFrom(cpb.PassError(code=u.error.grpc_code, message=str(u.error), retryable=u.error.retryable))
    return m


def pass_update_from_proto(m: cpb.PassProgress) -> PassUpdate:
    u = PassUpdate(phase=_PHASE_NAMES.get(m.phase, "transferring"), attempt=m.attempt, elapsed=m.elapsed_seconds,
                   files_scanned=m.files_scanned, bytes_scanned=m.bytes_scanned,
                   files_transferred=m.files_transferred, files_skipped=m.files_skipped, bytes_read=m.bytes_read,
                   bytes_sent=m.bytes_sent, rate=m.rate_bytes_per_s, wire_rate=m.wire_bytes_per_s,
                   bwlimit_kbps=m.bwlimit_kbps or None)
    kind = m.WhichOneof("final")
    if kind == "result":
        u.result = pass_result_from_proto(m.result)
    elif kind == "error":
        u.error = (PassCancelled(m.error.message) if m.error.code == "CANCELLED"
                   else error_for_status(m.error.code, m.error.message))
    return u
