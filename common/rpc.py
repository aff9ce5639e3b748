"""The one RPC layer: channel and server options, the server's life, gRPC errors both ways, and retries.

Why one module: the agent, the receiver and the controller all open channels,
serve calls and turn gRPC statuses into our errors; written per side, the
copies drifted (one named a refused certificate, another said "cannot reach";
one matched ``"UNAUTHENTICATED" in str(exc)``).  Here each idea is written once:

- client side: :func:`channel_options` for every channel; :func:`rpc_error`
  turns a ``grpc.RpcError`` into our :class:`~cvmigrate.common.errors.CvmError`
  naming the :class:`Peer` and the fix (connection causes come from
  :mod:`cvmigrate.common.connectfail`);
- server side: :func:`start_server` binds (port 0 = any free port, IPv6 in
  brackets) and starts; :func:`serve_until_signalled` writes the port file,
  waits for SIGTERM/SIGINT and stops gracefully; :func:`abort` ends a call
  with our error's status (the inverse of :func:`rpc_error`);
- both: :class:`RetryPolicy` and :func:`call_with_retry`, the capped,
  jittered backoff every retry loop uses.

Usage, a client call::

    peer = Peer("receiver", address, start="`cvmigrate receive`")
    with security.channel(address, channel_options(proxy)) as ch:
        try:
            stub(ch).Ping(req, metadata=..., timeout=10)
        except grpc.RpcError as exc:
            raise rpc_error(exc, peer, transport=security.transport, probe=security.probe()) from None

and a servicer method: ``except CvmError as exc: abort(context, exc)``.
"""
from __future__ import annotations

import logging
import random
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import grpc

from cvmigrate.common.errors import AuthError, ConfigError, CvmError, PermissionDenied, TransportError, error_for_status
from cvmigrate.common.logsetup import REPORTED

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Largest message either plane sends (a batch of entries or of data segments); servers allow 1 MiB more.
MAX_MESSAGE = 16 << 20
#: Keepalive pings every 10 s with a 10 s timeout detect a dead peer within ~20 s.
_KEEPALIVE: list[tuple[str, Any]] = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


# ============================================================================ client side
def channel_options(proxy: str | None = None) -> list[tuple[str, Any]]:
    """Explicit limits and keepalives for every channel (data and control).

    ``proxy`` ("http://[user:pass@]host:port", see :func:`cvmigrate.common.netaddr.proxy_url`) sends
    the stream through an HTTP CONNECT proxy (client.json Net.Mode 3); without it, gRPC's own
    handling of the http(s)_proxy environment variables is switched off so a proxy meant for the
    cloud API never captures the data path by accident.
    """
    opts: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", MAX_MESSAGE),
        ("grpc.max_receive_message_length", MAX_MESSAGE),
        *_KEEPALIVE,
        ("grpc.http2.max_pings_without_data", 0),
        # a channel of its own is a TCP connection of its own: the streams of a parallel pass must not share one
        ("grpc.use_local_subchannel_pool", 1),
    ]
    if proxy:
        opts.append(("grpc.http_proxy", proxy))
    else:
        opts.append(("grpc.enable_http_proxy", 0))
    return opts


@dataclass(frozen=True)
class Peer:
    """The other end of a channel, as error messages name it."""

    #: "receiver" or "agent"
    role: str
    address: str
    #: how to start it there, e.g. "`cvmigrate receive`"
    start: str
    #: where it must run, for "check that ... runs {where}"
    where: str = "there"

    def __str__(self) -> str:
        return f"the {self.role} at {self.address}"


def status_of(exc: grpc.RpcError) -> tuple[str, str]:
    """(status code name, details) of a failed call; ("UNKNOWN", text) for an error without a status."""
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return (code.name if code is not None else "UNKNOWN"), (details or "")


def rpc_error(exc: grpc.RpcError, peer: Peer, *, refused: str = "", transport: str | None = None,
              probe: Callable[[str, bool], str] | None = None,
              by_code: Mapping[str, Callable[[str], CvmError]] | None = None) -> CvmError:
    """Our error for a call to ``peer`` that failed with ``exc``: its class from the status, its message
    naming the peer and the fix.

    ``transport`` (this side's PLAINTEXT/TLS/MUTUAL_TLS, :mod:`~cvmigrate.common.connectfail`) says the
    connection may never have carried a message (a unary call, or a stream before its first reply): such
    a failure is named by its cause (DNS, refused, TLS, ...); leave it None for a link lost mid-stream.
    ``probe`` tells a refused client certificate from a dropped connection.  ``by_code`` maps a status
    name to this call's own error (e.g. UNIMPLEMENTED -> "upgrade the receiver").  Any other status
    becomes :func:`~cvmigrate.common.errors.error_for_status` with ``refused`` (default: the peer) first.
    """
    from cvmigrate.common.connectfail import connect_failure

    name, details = status_of(exc)
    proxy_refused = "response code 407" in details or "Proxy Authentication Required" in details
    if transport is not None and not proxy_refused:
        named = connect_failure(name, details, peer=peer.role, address=peer.address, transport=transport,
                                start_hint=peer.start, probe=probe)
        if named is not None:
            return named
    if proxy_refused:
        # retrying cannot fix refused proxy credentials
        return ConfigError(f"the HTTP proxy refused our credentials ({details}); check the proxy user and "
                           "password (client.json Client.Net.Proxy.User/Password, or --proxy)")
    if by_code and name in by_code:
        return by_code[name](details)
    if name in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
        return TransportError(f"cannot reach {peer}: {details}; check that {peer.start} runs {peer.where} "
                              "and the port is open")
    if name == "UNAUTHENTICATED":
        return AuthError(f"{peer} refused us: {details}; start it with this migration's certificates and token")
    if name == "PERMISSION_DENIED":
        return PermissionDenied(f"{peer} refused us: {details}; start it with this migration's token file")
    return error_for_status(name, f"{refused or peer}: {details}")


# ============================================================================ server side
def status_code(exc: CvmError) -> grpc.StatusCode:
    """The gRPC status our error travels as (its ``grpc_code``; INTERNAL for an unknown name)."""
    return getattr(grpc.StatusCode, exc.grpc_code, grpc.StatusCode.INTERNAL)


def abort(context: grpc.ServicerContext, exc: CvmError, log: str = "") -> NoReturn:
    """End the current call with ``exc``'s status and message (never returns); ``log`` ("transfer
    refused") also logs it as a warning.  The peer's :func:`rpc_error` rebuilds the same class."""
    if log:
        logger.warning("%s: %s", log, exc)
    context.abort(status_code(exc), str(exc))
    raise AssertionError("grpc.ServicerContext.abort returned")   # it raises; for the type checker


def server_options(max_message: int = MAX_MESSAGE, *, max_concurrent_streams: int = 0) -> list[tuple[str, Any]]:
    """Explicit resource limits and keepalive tolerance for a server.

    Clients ping every 10 s (:func:`channel_options`); a server accepts pings every 5 s and never
    strikes a client for them, so an idle but healthy stream is not torn down.  SO_REUSEPORT is off:
    with gRPC's default a second receiver on the same port would bind too and share its connections.
    """
    opts: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", max_message + (1 << 20)),
        ("grpc.max_send_message_length", max_message + (1 << 20)),
        ("grpc.so_reuseport", 0),
    ]
    if max_concurrent_streams:
        opts.append(("grpc.max_concurrent_streams", max_concurrent_streams))
    return opts + [*_KEEPALIVE[:2], ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
                   _KEEPALIVE[2], ("grpc.http2.max_ping_strikes", 0)]


def start_server(address: str, add_services: Callable[[grpc.Server], None], *,
                 credentials: grpc.ServerCredentials | None = None,
                 interceptors: Sequence[grpc.ServerInterceptor] = (),
                 options: Sequence[tuple[str, Any]] | None = None, name: str = "cvm-rpc",
                 max_workers: int = 8, max_concurrent_rpcs: int = 16) -> tuple[grpc.Server, int]:
    """Build a server, let ``add_services`` register its servicers, bind ``address`` and start.

    ``address`` is "host:port" with an IPv6 host in brackets (:func:`cvmigrate.common.netaddr.format_hostport`);
    port 0 picks a free port.  Returns (server, bound port); a port in use or an address not of this
    host is one clear CvmError.  TLS when ``credentials`` is given, plaintext otherwise.
    """
    server = grpc.server(ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=name),
                         options=list(server_options() if options is None else options),
                         interceptors=tuple(interceptors), maximum_concurrent_rpcs=max_concurrent_rpcs)
    add_services(server)
    try:
        port = (server.add_secure_port(address, credentials) if credentials is not None
                else server.add_insecure_port(address))
    except RuntimeError:
        port = 0
    if port == 0:
        raise CvmError(f"cannot listen on {address}: the address is in use or not local to this host")
    server.start()
    return server, int(port)


def serve_until_signalled(stop: Callable[[float], None], *, port: int, port_file: str | None = None,
                          grace: float = 5.0) -> None:
    """Write ``port`` to ``port_file`` (if any), wait for SIGTERM or SIGINT, then ``stop(grace)``.

    The handlers are in place before the port file appears, so a supervisor that signals as soon as
    it reads the port never kills the process mid-startup.  Main thread only (signal handlers).
    """
    from cvmigrate.common.durable import write_file

    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    if port_file:
        write_file(port_file, f"{port}\n")
    stopping.wait()
    logger.info("shutting down")
    stop(grace)


# ============================================================================ retries
@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry: capped, jittered exponential backoff.

    Why our own and not the SDK's StandardRetryer: the SDK sleeps 2**n seconds without a cap or
    jitter and retries neither InternalError nor on a time budget.  Tencent Cloud throttles per
    account and per action (EnterRescueMode: 20 requests/s), so many controllers retrying in
    lockstep would keep each other throttled; "equal jitter" (half the delay fixed, half random)
    spreads them while still guaranteeing a wait.  Whether an error is retryable is the caller's
    decision (a predicate), so the policy knows nothing about error codes.

    ``max_attempts`` counts the first try; ``max_total`` bounds the time spent sleeping plus calling
    (no retry starts after it); the n-th delay is drawn from [d/2, d] with
    d = min(max_delay, base_delay * 2**n).
    """

    max_attempts: int = 8
    base_delay: float = 0.5
    max_delay: float = 30.0
    max_total: float = 300.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("RetryPolicy.max_attempts must be >= 1")
        if self.base_delay < 0 or self.max_delay < 0 or self.max_total < 0:
            raise ValueError("RetryPolicy delays must be >= 0")

    def delay(self, retry_number: int, rng: random.Random | None = None) -> float:
        """Seconds to sleep before retry ``retry_number`` (0 for the first retry)."""
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** min(retry_number, 62))
        return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)


#: No retries at all (tests of non-retry behaviour, or a caller that retries itself).
NO_RETRY = RetryPolicy(max_attempts=1)


def call_with_retry(
    fn: Callable[[int], T],
    *,
    policy: RetryPolicy,
    retryable: Callable[[BaseException], bool],
    describe: str = "call",
    sleep: Callable[[float], object] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    rng: random.Random | None = None,
    on_retry: Callable[[BaseException, float], None] | None = None,
) -> T:
    """Call ``fn(attempt)`` (attempt counts from 1) until it returns or fails for good.

    A non-retryable exception propagates at once; a retryable one propagates when attempts or the
    time budget run out.  ``on_retry(exc, pause)`` replaces the default log line before each sleep
    (a caller that says "reconnecting" rather than "retrying").
    """
    start = clock()
    attempt = 1
    while True:
        try:
            return fn(attempt)
        except Exception as exc:
            if not retryable(exc):
                raise
            if attempt >= policy.max_attempts:
                logger.warning("%s: giving up after %d attempts: %s", describe, attempt, exc, extra=REPORTED)
                raise
            pause = policy.delay(attempt - 1, rng)
            if clock() - start + pause > policy.max_total:
                logger.warning("%s: giving up after %.1f s (retry budget %.0f s): %s",
                               describe, clock() - start, policy.max_total, exc, extra=REPORTED)
                raise
            if on_retry is not None:
                on_retry(exc, pause)
            else:
                logger.info("%s: attempt %d failed (%s); retrying in %.2f s", describe, attempt, exc, pause)
            sleep(pause)
            attempt += 1
