"""A pass as both ends of the control plane see it (control.proto): what the controller asks for, what it
watches, what it gets back.

Why in common: the controller builds a :class:`PassSpec` and reads :class:`PassUpdate`s; the agent daemon
reads the spec and produces the updates; an in-process pass (``agent.push``) returns the same
:class:`PushResult`.  Kept here (with their protobuf conversions in :mod:`cvmigrate.common.serde`), the
controller needs nothing from the agent's server to drive a remote pass.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import grpc

from cvmigrate.common.errors import CvmError
from cvmigrate.common.model import Entry, Kind
from cvmigrate.common.rpc import channel_options

#: How often the agent reports a running pass unless the controller asks otherwise.
DEFAULT_PROGRESS_INTERVAL = 0.5


@dataclass
class TreeCounts:
    """What a walk of the source found: the scanner counts as it walks, a pass's result reports the totals."""

    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    devices: int = 0
    fifos: int = 0
    hardlinks: int = 0
    sockets_skipped: int = 0
    excluded: int = 0
    bytes_total: int = 0            # regular files' sizes, each hard-linked file once
    errors: list[str] = field(default_factory=list)

    def count(self, e: Entry) -> None:
        """Count one entry the walk yields."""
        k = e.kind
        if e.hardlink_to:
            self.hardlinks += 1
        if k is Kind.REGULAR:
            self.files += 1
            if not e.hardlink_to:
                self.bytes_total += e.size
        elif k is Kind.DIRECTORY:
            self.dirs += 1
        elif k is Kind.SYMLINK:
            self.symlinks += 1
        elif k is Kind.FIFO:
            self.fifos += 1
        else:
            self.devices += 1


@dataclass
class TransferCounts:
    """What the sending side has done: a running pass's progress and, at its end, part of its result."""

    files_transferred: int = 0
    files_skipped: int = 0
    bytes_read: int = 0
    bytes_sent: int = 0


@dataclass
class PassCounters(TransferCounts):
    """How far a running pass is (what the display and the checkpoint's transfer_progress show)."""

    files_scanned: int = 0
    bytes_scanned: int = 0

    @classmethod
    def of(cls, scan: TreeCounts, sent: TransferCounts) -> PassCounters:
        """The progress of a pass in this process, from its scanner's counts and its result so far."""
        return cls(files_scanned=scan.files, bytes_scanned=scan.bytes_total,
                   **{f.name: getattr(sent, f.name) for f in fields(TransferCounts)})


@dataclass
class PushResult(TreeCounts, TransferCounts):
    """What one pass did (the push CLI's summary, a checkpoint's pass record, the control plane's PassResult)."""

    bytes_reused: int = 0
    metadata_applied: int = 0
    deleted: int = 0
    changed_during_copy: list[str] = field(default_factory=list)
    resumed: bool = False
    seconds: float = 0.0
    streams: int = 1                     # streams (shards) the pass ran over (agent/shards.py)
    placement_retries: int = 0           # streams opened again: their receiver worker served another of the pass

    def as_json(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["changed_during_copy"] = len(self.changed_during_copy)
        d["changed_during_copy_paths"] = self.changed_during_copy[:100]
        d["seconds"] = round(self.seconds, 3)
        return d

    def take_scan(self, scan: TreeCounts) -> None:
        """Report the scanner's totals: its counts replace ours, its errors join ours."""
        for f in fields(TreeCounts):
            if f.name != "errors":
                setattr(self, f.name, getattr(scan, f.name))
        self.errors.extend(scan.errors)


@dataclass
class ReceiverCredentials:
    """How the agent reaches the receiver.  Secrets are excluded from repr and comparisons.

    They travel inside a PassRequest and stay in memory on the agent: grpc takes PEM bytes, so no key
    file is ever written there.
    """

    insecure: bool = False
    ca_pem: bytes = field(default=b"", repr=False)
    client_cert_pem: bytes = field(default=b"", repr=False)
    client_key_pem: bytes = field(default=b"", repr=False, compare=False)
    token: str = field(default="", repr=False, compare=False)
    server_name: str = ""
    data_proxy: str = field(default="", repr=False, compare=False)

    def describe(self) -> str:
        """Log-safe summary."""
        mode = "plaintext" if self.insecure else ("mutual TLS" if self.client_cert_pem else "TLS")
        return f"{mode}, token {'sent' if self.token else 'none'}{', via proxy' if self.data_proxy else ''}"

    def channel_factory(self) -> Callable[[str], grpc.Channel]:
        """For PushOptions.channel_factory: credentials built from bytes, nothing written to disk."""
        opts = channel_options(self.data_proxy or None)
        if self.insecure:
            return lambda address: grpc.insecure_channel(address, options=opts)
        from cvmigrate.common.tls import channel_credentials

        creds = channel_credentials(self.ca_pem or None, self.client_cert_pem or None, self.client_key_pem or None)
        if self.server_name:
            opts = [*opts, ("grpc.ssl_target_name_override", self.server_name)]
        return lambda address: grpc.secure_channel(address, creds, options=opts)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()


@dataclass
class PassSpec:
    """One pass as the controller asks for it (PassRequest)."""

    source: str
    receiver_address: str
    credentials: ReceiverCredentials = field(default_factory=ReceiverCredentials)
    exclude_lines: tuple[str, ...] = ()
    delete: bool = True
    checksum: bool = False
    include_mounts: tuple[bytes, ...] = ()
    bwlimit_kbps: int | None = None
    migration_id: str = ""
    retry_for: float = 0.0
    workers: int = 0
    streams: int = 0                # parallel streams; 0 = what both sides' cores allow
    progress_interval: float = DEFAULT_PROGRESS_INTERVAL


@dataclass
class PassUpdate(PassCounters):
    """One PassProgress (the counters so far); the last one of a pass has ``result`` or ``error``."""

    phase: str = "connecting"       # connecting | transferring | reconnecting | finished | failed
    attempt: int = 0
    elapsed: float = 0.0
    rate: float = 0.0
    wire_rate: float = 0.0
    bwlimit_kbps: int | None = None
    result: PushResult | None = None
    error: CvmError | None = None

    @property
    def final(self) -> bool:
        return self.result is not None or self.error is not None


class PassCancelled(CvmError, grpc_code="CANCELLED", exit_code=130):
    """The pass was cancelled (Cancel, the controller went away, or the agent is stopping)."""
