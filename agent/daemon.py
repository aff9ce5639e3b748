"""`cvmigrate agent`: the agent as a daemon that a controller drives over gRPC (control.proto).

Why a daemon: one admin box drives the migration of a server it is not
running on.  The controller sends a pass (source, receiver address, rules and
the credentials to reach the receiver) and watches its progress; the data
goes from this host straight to the receiver, never through the controller.

Shape (as the receiver's server.py): ``create_server(address, ...) ->
AgentHandle`` binds (port 0 = any) and starts; ``add_arguments``/``run`` are
the CLI with ``--listen``/``--port-file`` and SIGTERM handling.  The servicer
is thin: validation and conversions are the ``*_from_proto``/``*_to_proto``
functions below (the only code outside the servicer that touches generated
types), the pass itself is ``agent.push.push``.

Rules:
- one pass at a time: a second StartPass is refused with ABORTED;
- the pass runs in its own thread, which also frees the agent when it ends,
  so a stream that the client abandons can never leave the agent "busy";
- a controller that disconnects cancels its pass (``context.add_callback``);
  Cancel and SIGTERM do the same; the receiver's journal makes the next pass
  continue where the cancelled one stopped;
- the receiver credentials of a PassRequest are secrets: they stay in memory
  (grpc takes PEM bytes, so no key file is ever written), and no log line,
  repr or status message contains them.
"""
from __future__ import annotations

import argparse
import logging
import os
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterator

import grpc

from cvmigrate import __version__
from cvmigrate.agent.push import PushOptions, PushResult, PushSession, push
from cvmigrate.common import metrics
from cvmigrate.common.errors import Busy, ConfigError, CvmError, error_for_status
from cvmigrate.common.model import PROTOCOL_VERSION
from cvmigrate.common.rpc import abort, channel_options, serve_until_signalled, server_options, start_server
from cvmigrate.common.shards import MAX_STREAMS
from cvmigrate.proto import control_pb2 as cpb
from cvmigrate.proto import control_pb2_grpc as cpb_grpc

logger = logging.getLogger(__name__)

DEFAULT_PROGRESS_INTERVAL = 0.5
CANCEL_WAIT = 10.0           # Cancel returns once the pass stopped, or after this long
MAX_LISTED = 10_000          # paths/errors listed in a PassResult; the rest are counted
_CONTROL_MESSAGE = 16 << 20
_REFUSED = "control request refused"     # the log line of a refused control call


# ============================================================================ dataclasses
@dataclass
class ReceiverCredentials:
    """How the agent reaches the receiver.  Secrets are excluded from repr and comparisons."""

    insecure: bool = False
    ca_pem: bytes = field(default=b"", repr=False)
    client_cert_pem: bytes = field(default=b"", repr=False)
    client_key_pem: bytes = field(default=b"", repr=False, compare=False)
    token: str = field(default="", repr=False, compare=False)
    server_name: str = ""
    data_proxy: str = field(default="", repr=False, compare=False)

    def describe(self) -> str:
        """Log-safe summary."""
        if self.insecure:
            mode = "plaintext"
        else:
            mode = "mutual TLS" if self.client_cert_pem else "TLS"
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
class PassUpdate:
    """One PassProgress; the last one of a pass has ``result`` or ``error``."""

    phase: str = "connecting"       # connecting | transferring | reconnecting | finished | failed
    attempt: int = 0
    elapsed: float = 0.0
    files_scanned: int = 0
    bytes_scanned: int = 0
    files_transferred: int = 0
    files_skipped: int = 0
    bytes_read: int = 0
    bytes_sent: int = 0
    rate: float = 0.0
    wire_rate: float = 0.0
    bwlimit_kbps: int | None = None
    result: PushResult | None = None
    error: CvmError | None = None

    @property
    def final(self) -> bool:
        return self.result is not None or self.error is not None


class PassCancelled(CvmError):
    """The pass was cancelled (Cancel, the controller went away, or the agent is stopping)."""

    grpc_code = "CANCELLED"
    exit_code = 130


# ============================================================================ conversions
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
    """Validate a PassRequest; ConfigError (INVALID_ARGUMENT) names the field and the fix."""
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


_RESULT_COUNTERS = ("files", "dirs", "symlinks", "devices", "fifos", "hardlinks", "sockets_skipped", "excluded",
                    "bytes_total", "bytes_sent", "bytes_read", "bytes_reused", "files_skipped", "files_transferred",
                    "metadata_applied", "deleted", "streams")


def pass_result_to_proto(r: PushResult) -> cpb.PassResult:
    m = cpb.PassResult(resumed=r.resumed, seconds=r.seconds, **{k: max(0, int(getattr(r, k))) for k in _RESULT_COUNTERS})
    m.changed_during_copy.extend(_b(p) for p in r.changed_during_copy[:MAX_LISTED])
    m.changed_during_copy_omitted = max(0, len(r.changed_during_copy) - MAX_LISTED)
    m.errors.extend(_b(e) for e in r.errors[:MAX_LISTED])
    m.errors_omitted = max(0, len(r.errors) - MAX_LISTED)
    return m


def pass_result_from_proto(m: cpb.PassResult) -> PushResult:
    r = PushResult(**{k: getattr(m, k) for k in _RESULT_COUNTERS})
    r.changed_during_copy = [_s(p) for p in m.changed_during_copy]
    if m.changed_during_copy_omitted:
        r.changed_during_copy.append(f"... and {m.changed_during_copy_omitted} more")
    r.errors = [_s(e) for e in m.errors]
    if m.errors_omitted:
        r.errors.append(f"... and {m.errors_omitted} more error(s) (see the agent's log)")
    r.resumed, r.seconds = m.resumed, m.seconds
    return r


_PHASES = {"connecting": cpb.PASS_PHASE_CONNECTING, "transferring": cpb.PASS_PHASE_TRANSFERRING,
           "reconnecting": cpb.PASS_PHASE_RECONNECTING, "finished": cpb.PASS_PHASE_FINISHED,
           "failed": cpb.PASS_PHASE_FAILED}
_PHASE_NAMES = {v: k for k, v in _PHASES.items()}


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
        u.error = PassCancelled(m.error.message) if m.error.code == "CANCELLED" else \
            error_for_status(m.error.code, m.error.message)
    return u


# ============================================================================ one running pass
class _Pass:
    """A pass running in its own thread; the servicer samples it and may cancel it or change its rate."""

    def __init__(self, spec: PassSpec, release: Callable[[], None]) -> None:
        from cvmigrate.common.excludes import ExcludeRules

        self.spec = spec
        rules = ExcludeRules.parse(spec.exclude_lines, origin="the controller's exclude rules")
        mounts = tuple(m for m in spec.include_mounts if os.path.ismount(os.path.join(os.fsencode(spec.source), m)))
        self.opts = PushOptions(source=spec.source, address=spec.receiver_address, rules=rules, delete=spec.delete,
                                checksum=spec.checksum, include_mounts=mounts, migration_id=spec.migration_id,
                                channel_factory=spec.credentials.channel_factory(),
                                metadata=spec.credentials.metadata(), bwlimit_kbps=spec.bwlimit_kbps,
                                streams=spec.streams)
        if spec.workers:
            self.opts.workers = spec.workers
        self._release = release
        self._lock = threading.Lock()
        self._session: PushSession | None = None
        self._base_sent = self._base_read = 0
        self.attempt = 0
        self.cancel_reason: str | None = None
        self._cancelled = threading.Event()
        self.done = threading.Event()
        self.result: PushResult | None = None
        self.error: CvmError | None = None
        self.t0 = time.monotonic()
        self._wire: deque[tuple[float, int]] = deque(maxlen=64)
        self._thread = threading.Thread(target=self._run, name=f"cvm-agent-pass-{spec.migration_id or 'x'}",
                                        daemon=True)

    def start(self) -> None:
        metrics.add("open_sessions")
        self._thread.start()

    # -- the pass thread
    def _run(self) -> None:
        try:
            self.result = push(self.opts, retry_for=self.spec.retry_for, on_session=self._on_session,
                               sleep=self._sleep)
        except CvmError as exc:
            self.error = exc
        except Exception as exc:  # noqa: BLE001 - reported as the pass's error, with the traceback in the log
            logger.exception("pass failed unexpectedly")
            self.error = CvmError(f"the agent failed: {type(exc).__name__}: {exc}")
        if self._cancelled.is_set() and self.result is None:
            self.error = PassCancelled(f"the pass was cancelled ({self.cancel_reason}); the receiver keeps what it "
                                       "committed: start the pass again to continue")
        if self.error is not None:
            logger.warning("pass of migration %s ended: %s", self.spec.migration_id, self.error)
        else:
            assert self.result is not None
            logger.info("pass of migration %s done: %d files, %d sent, %d bytes on the wire, %.1fs",
                        self.spec.migration_id, self.result.files, self.result.files_transferred,
                        self.result.bytes_sent, self.result.seconds)
            for name, value in (("bytes_sent", self.result.bytes_sent), ("bytes_read", self.result.bytes_read),
                                ("files", self.result.files_transferred)):
                metrics.add(name, value)
        metrics.add("open_sessions", -1)
        metrics.add("passes")
        self._release()          # the agent is free before the final message goes out
        self.done.set()

    def _on_session(self, session: PushSession) -> None:
        with self._lock:
            if self._session is not None:
                self._base_sent += self._session.result.bytes_sent
                self._base_read += self._session.result.bytes_read
            self._session = session
            self.attempt += 1
            metrics.add("retries", 1 if self.attempt > 1 else 0)
            # a limit changed live outlives a reconnect
            session.bucket.set_rate(self.opts.bwlimit_kbps * 1024 if self.opts.bwlimit_kbps else None)
            if self._cancelled.is_set():
                session.cancel(f"the pass was cancelled ({self.cancel_reason})")

    def _sleep(self, seconds: float) -> None:
        self._cancelled.wait(seconds)

    # -- from other threads
    def cancel(self, reason: str) -> None:
        if self.done.is_set() or self._cancelled.is_set():
            return
        self.cancel_reason = reason
        self._cancelled.set()
        logger.info("cancelling the pass of migration %s: %s", self.spec.migration_id, reason)
        with self._lock:
            session = self._session
        if session is not None:
            session.cancel(f"the pass was cancelled ({reason})")

    def set_bandwidth(self, kbps: int | None) -> None:
        with self._lock:
            self.opts.bwlimit_kbps = kbps
            if self._session is not None:
                self._session.bucket.set_rate(kbps * 1024 if kbps else None)
        logger.info("bandwidth limit of migration %s set to %s", self.spec.migration_id,
                    f"{kbps} KB/s" if kbps else "unlimited")

    def sample(self, final: bool = True) -> PassUpdate:
        """A progress snapshot; only the ``final`` one reports the outcome (ticks never race it)."""
        with self._lock:
            session, base_sent, base_read = self._session, self._base_sent, self._base_read
        u = PassUpdate(attempt=self.attempt, elapsed=time.monotonic() - self.t0, bwlimit_kbps=self.opts.bwlimit_kbps)
        if session is not None:
            s, r = session.scanner.stats, session.result
            u.files_scanned, u.bytes_scanned = s.files, s.bytes_total
            u.files_transferred, u.files_skipped = r.files_transferred, r.files_skipped
            u.bytes_read, u.bytes_sent = base_read + r.bytes_read, base_sent + r.bytes_sent
            u.phase = "transferring" if getattr(session, "_started", True) else (
                "connecting" if self.attempt <= 1 else "reconnecting")
        now = time.monotonic()
        self._wire.append((now, u.bytes_sent))
        while len(self._wire) > 2 and now - self._wire[0][0] > 3.0:
            self._wire.popleft()
        t_first, b_first = self._wire[0]
        u.wire_rate = (u.bytes_sent - b_first) / (now - t_first) if now > t_first else 0.0
        u.rate = u.bytes_read / u.elapsed if u.elapsed > 0 else 0.0
        if final and self.done.is_set():
            if self.error is not None:
                u.phase, u.error = "failed", self.error
            else:
                u.phase, u.result = "finished", self.result
                if self.result is not None:
                    u.files_scanned, u.bytes_scanned = self.result.files, self.result.bytes_total
                    u.bytes_read, u.bytes_sent = self.result.bytes_read, self.result.bytes_sent
        return u


# ============================================================================ the servicer
class AgentControlService(cpb_grpc.AgentControlServicer):
    def __init__(self) -> None:
        self._busy = threading.Lock()
        self._guard = threading.Lock()
        self._current: _Pass | None = None

    @property
    def current(self) -> _Pass | None:
        return self._current

    def StartPass(self, request: cpb.PassRequest, context: grpc.ServicerContext) -> Iterator[cpb.PassProgress]:
        try:
            spec = pass_spec_from_proto(request)
        except CvmError as exc:
            abort(context, exc, log=_REFUSED)
        if not self._busy.acquire(blocking=False):
            running = self._current
            abort(context, Busy("this agent is already running a pass"
                                + (f" (migration {running.spec.migration_id})" if running else "")
                                + "; wait for it to end or Cancel it"), log=_REFUSED)
        try:
            p = _Pass(spec, self._finished)
        except BaseException as exc:
            self._busy.release()
            err = exc if isinstance(exc, CvmError) else CvmError(f"{type(exc).__name__}: {exc}")
            abort(context, err, log=_REFUSED)
        with self._guard:
            self._current = p
        logger.info("pass of migration %s: %s -> %s (%s%s%s)", spec.migration_id, spec.source, spec.receiver_address,
                    spec.credentials.describe(), ", checksum" if spec.checksum else "",
                    f", bwlimit {spec.bwlimit_kbps} KB/s" if spec.bwlimit_kbps else "")
        if not context.add_callback(lambda: p.cancel("the controller disconnected")):
            p.cancel("the controller disconnected")
        p.start()
        yield pass_update_to_proto(p.sample(final=False))      # at once: the pass was accepted
        while not p.done.wait(spec.progress_interval):
            yield pass_update_to_proto(p.sample(final=False))
        p.done.wait()
        yield pass_update_to_proto(p.sample(final=True))

    def _finished(self) -> None:
        with self._guard:
            self._current = None
        self._busy.release()

    def Cancel(self, request: cpb.CancelPassRequest, context: grpc.ServicerContext) -> cpb.CancelPassResponse:
        p = self._current
        if p is None:
            return cpb.CancelPassResponse(was_running=False, stopped=True)
        if request.migration_id and request.migration_id != p.spec.migration_id:
            return cpb.CancelPassResponse(was_running=False, stopped=False)   # another migration's pass: untouched
        p.cancel("cancelled by the controller")
        return cpb.CancelPassResponse(was_running=True, stopped=p.done.wait(CANCEL_WAIT))

    def SetBandwidth(self, request: cpb.SetBandwidthRequest,
                     context: grpc.ServicerContext) -> cpb.SetBandwidthResponse:
        p = self._current
        if p is None:
            return cpb.SetBandwidthResponse(applied=False)
        p.set_bandwidth(request.bwlimit_kbps or None)
        return cpb.SetBandwidthResponse(applied=True)

    def Ping(self, request: cpb.AgentPingRequest, context: grpc.ServicerContext) -> cpb.AgentPingResponse:
        p = self._current
        return cpb.AgentPingResponse(agent_version=__version__, protocol_versions=[PROTOCOL_VERSION],
                                     busy=p is not None, migration_id=p.spec.migration_id if p else "",
                                     hostname=socket.gethostname())

    def GetSourceFacts(self, request: cpb.SourceFactsRequest,
                       context: grpc.ServicerContext) -> cpb.SourceFactsResponse:
        from cvmigrate.agent.sourcefacts import gather
        from cvmigrate.common.sourcefacts import facts_to_json

        source = os.fsdecode(request.source)
        if not source or not os.path.isabs(source):
            abort(context, ConfigError(f"source root {source!r}: give an absolute path on the source server"),
                  log=_REFUSED)
        try:
            facts = gather(source, **({"state_dir": request.state_dir} if request.state_dir else {}))
        except CvmError as exc:
            abort(context, exc, log=_REFUSED)
        return cpb.SourceFactsResponse(facts_json=facts_to_json(facts))

    def shutdown(self, wait: float = CANCEL_WAIT) -> None:
        """Cancel the running pass (SIGTERM) and wait a little for it to stop."""
        p = self._current
        if p is not None:
            p.cancel("the agent is shutting down")
            p.done.wait(wait)


# ============================================================================ server
@dataclass
class AgentHandle:
    server: grpc.Server
    port: int
    service: AgentControlService

    def stop(self, grace: float | None = 5.0) -> None:
        self.service.shutdown(wait=min(grace or 0.0, CANCEL_WAIT))
        self.server.stop(grace).wait()


def create_server(address: str, credentials: grpc.ServerCredentials | None = None,
                  interceptors: tuple = ()) -> AgentHandle:
    """Bind (port 0 = any free port) and start; returns the handle with the bound port."""
    service = AgentControlService()
    server, port = start_server(address, lambda srv: cpb_grpc.add_AgentControlServicer_to_server(service, srv),
                                credentials=credentials, interceptors=interceptors, name="cvm-ctl",
                                options=server_options(_CONTROL_MESSAGE))
    return AgentHandle(server, port, service)


# ============================================================================ CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    from cvmigrate.agent import install
    from cvmigrate.common.tls import add_security_arguments

    p.add_argument("action", nargs="?", choices=("run", "install", "uninstall"), default="run",
                   help="run (default) the agent in the foreground; install it as a service (systemd unit or init "
                        "script) with this migration's certificates; uninstall that service and its files")
    p.add_argument("--listen", metavar="HOST:PORT",
                   help="address the controller connects to (port 0 picks a free port; see --port-file); "
                        f"install's default: {install.DEFAULT_LISTEN}")
    p.add_argument("--port-file", help="write the bound port number here once listening")
    p.add_argument("--metrics-listen", metavar="HOST:PORT",
                   help="serve Prometheus /metrics here (bytes, files, retries, open passes)")
    add_security_arguments(p, "server")
    install.add_arguments(p)
    p.epilog = ("Run as root on the source server. With `cvmigrate migrate --agent HOST:PORT` use the files the "
                "controller mints in its <migration>-pki directory: --tls-cert agentd.pem --tls-key agentd.key "
                "--tls-ca ca.pem --token-file agent-token (mutual TLS: only this migration's controller gets in). The "
                "controller sends each pass's source, rules and receiver credentials over this channel.")


def run(args: argparse.Namespace) -> int:
    from cvmigrate.common.tls import TransportSecurity

    if getattr(args, "action", "run") != "run":
        from cvmigrate.agent import install

        return install.run(args)
    if not args.listen:
        from cvmigrate.common.errors import UsageError

        raise UsageError("agent needs --listen HOST:PORT (e.g. 0.0.0.0:7843)")
    from cvmigrate.common.netaddr import format_hostport, parse_hostport

    listen = parse_hostport(args.listen, "--listen", listen=True)
    security = TransportSecurity.from_args(args, "server")  # UsageError with the fix; warns on --insecure
    handle = create_server(str(listen), credentials=security.server_credentials(),
                           interceptors=security.interceptors())
    logger.info("agent listening on %s (%s)", format_hostport(listen.host, handle.port), security.describe())
    if args.metrics_listen:
        logger.info("metrics on http://%s:%d/metrics", args.metrics_listen.rsplit(":", 1)[0],
                    metrics.serve(args.metrics_listen, "agent"))
    serve_until_signalled(handle.stop, port=handle.port, port_file=args.port_file)
    return 0


__all__ = ["AgentControlService", "AgentHandle", "PassCancelled", "PassSpec", "PassUpdate", "ReceiverCredentials",
           "create_server", "pass_result_from_proto", "pass_result_to_proto", "pass_spec_from_proto",
           "pass_spec_to_proto", "pass_update_from_proto", "pass_update_to_proto", "add_arguments", "run"]
