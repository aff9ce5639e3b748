"""The controller's side of the receiver's control calls (transfer.proto): Ping, RunFixups, Finalize.

Why apart from the sub-tasks: they say *when* to ask the receiver; this
module says *how* (channel, credential, metadata, the error a failed call
becomes).  Control calls carry the control token (``security.control_metadata``)
except Ping, which any credential of this migration may send.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import grpc

from cvmigrate.common.errors import TransportError
from cvmigrate.common.rpc import channel_options
from cvmigrate.proto import transfer_pb2 as pb
from cvmigrate.proto import transfer_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from cvmigrate.common.tls import TransportSecurity


def ping(address: str, security: TransportSecurity, *, timeout: float) -> pb.PingResponse:
    """Ping the receiver; a refused certificate raises TlsError at once, anything else TransportError."""
    channel = security.channel(address, channel_options())
    try:
        return pb_grpc.ReceiverStub(channel).Ping(pb.PingRequest(), metadata=security.metadata() or None,
                                                  timeout=timeout)
    except grpc.RpcError as exc:
        from cvmigrate.common.connectfail import TlsError, connect_failure

        code = exc.code()
        named = connect_failure(code.name if code else "UNKNOWN", exc.details() or "", peer="receiver",
                                address=address, transport=security.transport, start_hint="`cvmigrate receive`",
                                probe=security.probe())
        if isinstance(named, TlsError):
            raise named from None   # a certificate does not fix itself: fail now, not after the stage's timeout
        raise TransportError(f"receiver at {address}: {code.name if code else '?'}: {exc.details()}") from None
    finally:
        channel.close()


def run_fixups(address: str, security: TransportSecurity, request: pb.FixupsRequest, *,
               data_proxy: str | None) -> pb.FixupsResponse:
    """The post-migration fix-ups on the receiver (control credential); up to 30 minutes."""
    with security.channel(address, channel_options(data_proxy)) as channel:
        return pb_grpc.ReceiverStub(channel).RunFixups(request, metadata=security.control_metadata() or None,
                                                       timeout=1800)


def finalize(address: str, security: TransportSecurity, *, timeout: float,
             data_proxy: str | None) -> pb.FinalizeResponse:
    """The receiver removes its journal and our temporary files (control credential)."""
    try:
        with security.channel(address, channel_options(data_proxy)) as channel:
            return pb_grpc.ReceiverStub(channel).Finalize(pb.FinalizeRequest(),
                                                          metadata=security.control_metadata() or None,
                                                          timeout=timeout)
    except grpc.RpcError as exc:
        code = exc.code()
        raise TransportError(f"finalizing the receiver at {address}: {code.name if code else '?'}: "
                             f"{exc.details()}; run the same command again (or `cvmigrate receive --root ROOT "
                             "--finalize` in the rescue system)") from None
