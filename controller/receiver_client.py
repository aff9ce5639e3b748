"""The controller's side of the receiver's control calls (transfer.proto): Ping, RunFixups, Finalize.

Why apart from the sub-tasks: they say *when* to ask the receiver; this
module says *how* (channel, credential, metadata, the error a failed call
becomes, through common/rpc.py's one mapping).  Control calls carry the
control token (``security.control_metadata``) except Ping, which any
credential of this migration may send.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import grpc

from cvmigrate.common.rpc import Peer, channel_options, rpc_error
from cvmigrate.proto import transfer_pb2 as pb
from cvmigrate.proto import transfer_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from cvmigrate.common.tls import TransportSecurity


def receiver_peer(address: str) -> Peer:
    """The receiver as error messages name it (it runs in the target's rescue system)."""
    return Peer("receiver", address, "`cvmigrate receive`", where="in the rescue system")


def ping(address: str, security: TransportSecurity, *, timeout: float) -> pb.PingResponse:
    """Ping the receiver.  A failure is named by its cause: TransportError (retry: not up yet, or a
    firewall), AuthError (a refused token or certificate: TlsError for the latter), or another CvmError."""
    channel = security.channel(address, channel_options())
    try:
        pong: pb.PingResponse = pb_grpc.ReceiverStub(channel).Ping(pb.PingRequest(),
                                                                   metadata=security.metadata() or None,
                                                                   timeout=timeout)
        return pong
    except grpc.RpcError as exc:
        raise rpc_error(exc, receiver_peer(address), transport=security.transport, probe=security.probe()) from None
    finally:
        channel.close()


def run_fixups(address: str, security: TransportSecurity, request: pb.FixupsRequest, *,
               data_proxy: str | None) -> pb.FixupsResponse:
    """The post-migration fix-ups on the receiver (control credential); up to 30 minutes."""
    try:
        with security.channel(address, channel_options(data_proxy)) as channel:
            resp: pb.FixupsResponse = pb_grpc.ReceiverStub(channel).RunFixups(
                request, metadata=security.control_metadata() or None, timeout=1800)
            return resp
    except grpc.RpcError as exc:
        raise rpc_error(exc, receiver_peer(address), refused=f"fix-ups on the receiver at {address}",
                        transport=security.transport, probe=security.probe()) from None


def finalize(address: str, security: TransportSecurity, *, timeout: float,
             data_proxy: str | None) -> pb.FinalizeResponse:
    """The receiver removes its journal and our temporary files (control credential)."""
    try:
        with security.channel(address, channel_options(data_proxy)) as channel:
            resp: pb.FinalizeResponse = pb_grpc.ReceiverStub(channel).Finalize(
                pb.FinalizeRequest(), metadata=security.control_metadata() or None, timeout=timeout)
            return resp
    except grpc.RpcError as exc:
        err = rpc_error(exc, receiver_peer(address), refused=f"finalizing the receiver at {address}",
                        transport=security.transport, probe=security.probe())
        raise type(err)(f"{err}; run the same command again (or `cvmigrate receive --root ROOT --finalize` "
                        "in the rescue system)") from None
