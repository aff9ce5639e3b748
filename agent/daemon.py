"""`cvmigrate agent`: the agent as a daemon that a controller drives over gRPC (control.proto).

Why a daemon: one admin box drives the migration of a server it is not
running on.  The controller sends a pass (source, receiver address, rules and
the credentials to reach the receiver) and watches its progress; the data
goes from this host straight to the receiver, never through the controller.

Shape (as the receiver's server.py): ``create_server(address, ...) ->
AgentHandle`` binds (port 0 = any) and starts (``common.rpc.start_server``);
``add_arguments``/``run`` are the CLI with ``--listen``/``--port-file`` and
SIGTERM handling (``common.rpc.serve_until_signalled``).  The servicer is
thin: the pass's types are ``common.passes``, validation and conversions are
``common.serde`` (shared with the controller, which never imports this
module), the pass itself is ``agent.push.push``.

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc

from cvmigrate import __version__
from cvmigrate.agent.push import PushOptions, PushSession, push
from cvmigrate.common import metrics
from cvmigrate.common.errors import Busy, ConfigError, CvmError
from cvmigrate.common.model import PROTOCOL_VERSION
from cvmigrate.common.passes import PassCancelled, PassSpec, PassUpdate, PushResult
from cvmigrate.common.rpc import abort, serve_until_signalled, server_options, start_server
from cvmigrate.common.serde import pass_spec_from_proto, pass_update_to_proto
from cvmigrate.proto import control_pb2 as cpb
from cvmigrate.proto import control_pb2_grpc as cpb_grpc

logger = logging.getLogger(__name__)

CANCEL_WAIT = 10.0           # Cancel returns once the pass stopped, or after this long
_CONTROL_MESSAGE = 16 << 20
_REFUSED = "control request refused"     # the log line of a refused control call


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
        except Exception as exc:
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
        except BaseException as exc:  # noqa: BLE001 - the busy lock is released whatever failed; the caller gets it
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
            facts = gather(source, state_dir=request.state_dir) if request.state_dir else gather(source)
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
                  interceptors: tuple[grpc.ServerInterceptor, ...] = ()) -> AgentHandle:
    """Bind (port 0 = any free port) and start; returns the handle with the bound port."""
    service = AgentControlService()
    server, port = start_server(address, lambda srv: cpb_grpc.add_AgentControlServicer_to_server(service, srv),
                                credentials=credentials, interceptors=interceptors, name="cvm-ctl",
                                options=server_options(_CONTROL_MESSAGE))
    return AgentHandle(server, port, service)


# ============================================================================ CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    from cvmigrate.agent import install
    from cvmigrate.security_flags import add_security_arguments

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
    from cvmigrate.security_flags import security_from_args

    if getattr(args, "action", "run") != "run":
        from cvmigrate.agent import install

        return install.run(args)
    if not args.listen:
        from cvmigrate.common.errors import UsageError

        raise UsageError("agent needs --listen HOST:PORT (e.g. 0.0.0.0:7843)")
    from cvmigrate.common.netaddr import format_hostport, parse_hostport

    listen = parse_hostport(args.listen, "--listen", listen=True)
    security = security_from_args(args, "server")  # UsageError with the fix; warns on --insecure
    handle = create_server(str(listen), credentials=security.server_credentials(),
                           interceptors=security.interceptors())
    logger.info("agent listening on %s (%s)", format_hostport(listen.host, handle.port), security.describe())
    if args.metrics_listen:
        logger.info("metrics on http://%s:%d/metrics", args.metrics_listen.rsplit(":", 1)[0],
                    metrics.serve(args.metrics_listen, "agent"))
    serve_until_signalled(handle.stop, port=handle.port, port_file=args.port_file)
    return 0


__all__ = ["AgentControlService", "AgentHandle", "create_server", "add_arguments", "run"]
