"""The controller's side of control.proto: drive an agent daemon (`cvmigrate agent`) on the source server.

Why ``RemotePass``: the pass orchestration (controller/passes.py) runs any
``PassRunner`` in a thread, samples its counters and changes its bandwidth.
``RemotePass`` is the PassRunner whose pass runs in the agent daemon, its
counters fed by the agent's progress stream, so ``--agent`` changes where a
pass runs and nothing else: the same display, checkpoints, retries and time
limits.

Credentials (roles, see common/auth.py): the controller talks to the agent
with its own certificate and the *agent* token, checked against the agent
daemon's own server certificate (``agentd.pem``, valid only for
``cvmigrate-agent``).  It hands the agent only the *data-plane* material to
reach the receiver inside each PassRequest (the agent's certificate and the
data token) -- never the control token nor the receiver's server key, so a
compromised source cannot run the fix-ups nor impersonate the receiver.  With
the admin's own --tls-*/--token-file files there is one credential for all.
"""
from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import grpc

from cvmigrate.agent.push import PushOptions
from cvmigrate.common.closing import Closing
from cvmigrate.common.errors import ConfigError, CvmError, TransportError
from cvmigrate.common.passes import PassCancelled, PassCounters, PassSpec, PassUpdate, PushResult, ReceiverCredentials
from cvmigrate.common.rpc import Peer, RetryPolicy, call_with_retry, channel_options, rpc_error
from cvmigrate.common.serde import pass_spec_to_proto, pass_update_from_proto
from cvmigrate.common.sourcefacts import SourceFacts, facts_from_json
from cvmigrate.proto import control_pb2 as cpb
from cvmigrate.proto import control_pb2_grpc as cpb_grpc

if TYPE_CHECKING:
    from cvmigrate.common.tls import TransportSecurity
    from cvmigrate.controller.context import Context

logger = logging.getLogger(__name__)

#: Waiting for an agent the admin is still starting: no attempt or time limit (the stage's own deadline
#: and Cancel end it), pings 0.5 s apart at first, then about every 5 s.
_AGENT_WAIT = RetryPolicy(max_attempts=1 << 30, base_delay=0.5, max_delay=5.0, max_total=float("inf"))

AGENT_COMMAND = ("cvmigrate agent --listen 0.0.0.0:{port} --tls-ca ca.pem --tls-cert agentd.pem "
                 "--tls-key agentd.key --token-file agent-token")


class PassCall:
    """A running StartPass: iterate for PassUpdates (the last has result or error); ``cancel()`` from any thread."""

    def __init__(self, call: Any, address: str, transport: str | None = None, probe: Any = None) -> None:
        self._call, self._address = call, address
        self._transport, self._probe = transport, probe

    def __iter__(self) -> Iterator[PassUpdate]:
        answered = False
        try:
            for msg in self._call:
                answered = True
                yield pass_update_from_proto(msg)
        except grpc.RpcError as exc:
            # before the first update the connection may never have worked: name its cause
            raise _rpc_error(exc, self._address, None if answered else self._transport, self._probe) from None

    def cancel(self) -> None:
        """Drop the stream; the agent cancels a pass whose controller went away."""
        self._call.cancel()


class AgentClient(Closing):
    """A channel to one agent daemon."""

    def __init__(self, address: str, security: TransportSecurity, *, timeout: float = 15.0) -> None:
        self.address = address
        self._security = security
        self._timeout = timeout
        self._channel = security.channel(address, channel_options())
        self._stub = cpb_grpc.AgentControlStub(self._channel)
        self._md = security.metadata() or None
        self._transport: str | None = security.transport
        self._probe = security.probe()

    def close(self) -> None:
        self._channel.close()

    def ping(self, timeout: float | None = None) -> cpb.AgentPingResponse:
        try:
            pong: cpb.AgentPingResponse = self._stub.Ping(cpb.AgentPingRequest(), metadata=self._md,
                                                          timeout=timeout or self._timeout)
            return pong
        except grpc.RpcError as exc:
            raise _rpc_error(exc, self.address, self._transport, self._probe) from None

    def start_pass(self, spec: PassSpec) -> PassCall:
        """Start a pass; iterate the returned PassCall for progress.  ABORTED (busy) raises Busy while iterating."""
        call = self._stub.StartPass(pass_spec_to_proto(spec), metadata=self._md)
        return PassCall(call, self.address, self._transport, self._probe)

    def cancel(self, migration_id: str = "") -> bool:
        """Cancel the agent's pass (only ``migration_id``'s when given); True when no pass runs any more."""
        try:
            resp: cpb.CancelPassResponse = self._stub.Cancel(cpb.CancelPassRequest(migration_id=migration_id),
                                                             metadata=self._md, timeout=self._timeout + 15)
        except grpc.RpcError as exc:
            raise _rpc_error(exc, self.address, self._transport, self._probe) from None
        return resp.stopped

    def set_bandwidth(self, kbps: int | None) -> bool:
        """Change the running pass's limit (KB/s on the wire; None lifts it); False when no pass runs."""
        try:
            resp: cpb.SetBandwidthResponse = self._stub.SetBandwidth(
                cpb.SetBandwidthRequest(bwlimit_kbps=kbps or 0), metadata=self._md, timeout=self._timeout)
        except grpc.RpcError as exc:
            raise _rpc_error(exc, self.address, self._transport, self._probe) from None
        return resp.applied


    def source_facts(self, source: str, state_dir: str = "", timeout: float | None = None) -> SourceFacts:
        """The agent's report on ``source`` (a path on its host)."""
        try:
            resp = self._stub.GetSourceFacts(cpb.SourceFactsRequest(source=os.fsencode(source), state_dir=state_dir),
                                             metadata=self._md, timeout=timeout or max(self._timeout, 600.0))
        except grpc.RpcError as exc:
            raise _rpc_error(exc, self.address, self._transport, self._probe) from None
        return facts_from_json(resp.facts_json)


def _rpc_error(exc: grpc.RpcError, address: str, transport: str | None = None, probe: Any = None) -> CvmError:
    """Our error for a failed control call; ``transport`` when the call may never have connected."""
    return rpc_error(exc, Peer("agent", address, "`cvmigrate agent`", where="on the source server"),
                     refused=f"agent at {address}", transport=transport, probe=probe,
                     by_code={"CANCELLED": lambda _: PassCancelled(f"the pass on the agent at {address} was "
                                                                   "cancelled")})


def credentials_from_security(security: TransportSecurity, data_proxy: str | None) -> ReceiverCredentials:
    """What the agent needs to reach the receiver, from the controller's client-role TransportSecurity."""
    if security.insecure:
        return ReceiverCredentials(insecure=True, token=security.token or "", data_proxy=data_proxy or "")

    def read(path: str | None) -> bytes:
        if not path:
            return b""
        with open(path, "rb") as f:         # modes were checked when the security was built
            return f.read()

    return ReceiverCredentials(ca_pem=read(security.ca), client_cert_pem=read(security.cert),
                               client_key_pem=read(security.key), token=security.token or "",
                               server_name=security.server_name or "", data_proxy=data_proxy or "")


class RemotePass:
    """The PassRunner (controller/passes.py) of a pass that runs in the agent daemon."""

    def __init__(self, client: AgentClient, spec: PassSpec) -> None:
        self.client, self.spec = client, spec
        self._counters = PassCounters()
        self.last: PassUpdate | None = None
        self._call: PassCall | None = None
        self._cancelled = threading.Event()
        self._lock = threading.Lock()

    def counters(self) -> PassCounters:
        """The progress the agent reported last."""
        return self._counters

    def set_bandwidth(self, kbps: int | None) -> None:
        """Change the limit of the pass running on the agent."""
        self.spec.bwlimit_kbps = kbps
        self.client.set_bandwidth(kbps)

    def run(self) -> PushResult:
        try:
            self._wait_for_agent()
            with self._lock:
                if self._cancelled.is_set():
                    raise PassCancelled("the pass was cancelled before it started")
                self._call = self.client.start_pass(self.spec)
            for u in self._call:
                self._update(u)
                if u.error is not None:
                    raise u.error
                if u.result is not None:
                    return u.result
            raise TransportError(f"the agent at {self.client.address} ended the pass without a result; run the same "
                                 "command again to resume")
        finally:
            self.client.close()

    def cancel(self, reason: str = "") -> None:
        with self._lock:
            self._cancelled.set()
            call = self._call
        if call is not None:
            call.cancel()

    def _wait_for_agent(self) -> None:
        """Ping until the agent answers (the admin may still be starting it); refused credentials fail at once."""
        waits = 0

        def ping(_attempt: int) -> Any:
            if self._cancelled.is_set():
                raise PassCancelled("the pass was cancelled before it started")
            return self.client.ping(timeout=5.0)

        def waiting(exc: BaseException, _pause: float) -> None:
            nonlocal waits
            if waits % 10 == 0:
                logger.info("agent not reachable yet (%s); waiting for it", exc)
            waits += 1

        resp = call_with_retry(ping, policy=_AGENT_WAIT, retryable=lambda e: isinstance(e, TransportError),
                               describe=f"ping the agent at {self.client.address}", sleep=self._cancelled.wait,
                               on_retry=waiting)
        logger.info("agent %s on %s at %s%s", resp.agent_version, resp.hostname, self.client.address,
                    f" (busy with migration {resp.migration_id})" if resp.busy else "")

    def _update(self, u: PassUpdate) -> None:
        self.last = u
        self._counters = u


def remote_pass(ctx: Context, opts: PushOptions, *, retry_for: float = 0.0) -> RemotePass:
    """The pass described by ``opts`` (as built for an in-process pass), run by the agent at ``ctx.opts.agent``.

    ``retry_for`` 0: a lost link ends the pass and the stage runner retries it,
    exactly as for an in-process pass.  Mount points (user.json DataDisks) are
    sent as candidates: the agent keeps those that are mount points on its host.
    """
    source = ctx.opts.source
    if not os.path.isabs(source):
        raise ConfigError(f"--source {source!r}: with --agent give the source root as an absolute path on the "
                          "source server")
    mounts = tuple(os.fsencode(d.mount_point.strip("/")) for d in ctx.user.data_disks if d.mount_point.strip("/"))
    spec = PassSpec(source=source, receiver_address=opts.address,
                    credentials=credentials_from_security(ctx.data_security(), ctx.data_proxy()),
                    exclude_lines=tuple(getattr(opts.rules, "lines", ()) or ()), delete=opts.delete,
                    checksum=opts.checksum, include_mounts=mounts, bwlimit_kbps=opts.bwlimit_kbps,
                    migration_id=opts.migration_id, retry_for=retry_for, workers=opts.workers, streams=opts.streams)
    if not ctx.opts.agent:
        raise ConfigError("a remote pass needs --agent HOST:PORT")
    client = AgentClient(ctx.opts.agent, ctx.agent_security())
    announce(ctx, client)
    return RemotePass(client, spec)


def announce(ctx: Context, client: AgentClient) -> None:
    """Once per run: if the agent does not answer yet, tell the admin how to start it."""
    if ctx.notes.get("agent_announced"):
        return
    ctx.notes["agent_announced"] = "yes"
    try:
        client.ping(timeout=2.0)
        return
    except TransportError:
        pass
    pki = ctx.facts.pki_dir
    port = client.address.rsplit(":", 1)[-1]
    if pki:
        from cvmigrate.common.durable import write_secret

        write_secret(os.path.join(pki, "agent-token"), ctx.tokens().agent + "\n")
        how = (f"copy {pki}/{{ca.pem,agentd.pem,agentd.key,agent-token}} there (nothing else: the other keys "
               "and tokens must not reach the source) and run as root\n  " + AGENT_COMMAND.format(port=port))
    else:
        how = (f"run `cvmigrate agent --listen 0.0.0.0:{port}` as root with a server certificate signed by your "
               "--tls-ca, and your --token-file")
    ctx.display.message(f"The passes run on the agent at {client.address}: on the source server, {how}\n"
                        "waiting for it ...")
