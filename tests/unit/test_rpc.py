"""common/rpc.py against a real gRPC server on port 0: our error -> status (abort) -> our error (rpc_error),
binding (IPv6 brackets, a port in use) and the connection-failure causes."""
from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from cvmigrate.common import errors
from cvmigrate.common.connectfail import PLAINTEXT
from cvmigrate.common.rpc import Peer, abort, channel_options, rpc_error, start_server

_METHOD = "/test.Echo/Fail"


def _serve(address: str, raise_: dict[str, errors.CvmError]) -> tuple[grpc.Server, int]:
    """A server whose one method aborts with the error planted in ``raise_["next"]``."""
    def fail(request: bytes, context: grpc.ServicerContext) -> bytes:
        abort(context, raise_["next"])

    handler = grpc.method_handlers_generic_handler("test.Echo", {
        "Fail": grpc.unary_unary_rpc_method_handler(fail, request_deserializer=bytes,
                                                    response_serializer=bytes)})
    return start_server(address, lambda s: s.add_generic_rpc_handlers((handler,)))


@pytest.fixture
def served() -> Iterator[tuple[int, dict[str, errors.CvmError]]]:
    planted: dict[str, errors.CvmError] = {}
    server, port = _serve("127.0.0.1:0", planted)
    yield port, planted
    server.stop(None)


def _call(address: str) -> grpc.RpcError:
    with grpc.insecure_channel(address, options=channel_options()) as ch:
        call = ch.unary_unary(_METHOD, request_serializer=bytes, response_deserializer=bytes)
        with pytest.raises(grpc.RpcError) as info:
            call(b"x", timeout=10)
    return info.value


@pytest.mark.parametrize("cls", [errors.ProtocolError, errors.IntegrityError, errors.Busy, errors.TargetFull,
                                 errors.TargetError, errors.VersionMismatch])
def test_an_error_aborted_with_comes_back_as_its_class(served: Any, cls: type[errors.CvmError]) -> None:
    port, planted = served
    planted["next"] = cls("the reason", path="a/b")
    err = rpc_error(_call(f"127.0.0.1:{port}"), Peer("receiver", f"127.0.0.1:{port}", "`cvmigrate receive`"),
                    refused="receiver refused the test")
    assert type(err) is cls
    assert "the reason" in str(err) and str(err).startswith("receiver refused the test: ")


def test_refused_credentials_name_the_peer_and_the_fix(served: Any) -> None:
    port, planted = served
    peer = Peer("agent", f"127.0.0.1:{port}", "`cvmigrate agent`", where="on the source server")
    planted["next"] = errors.AuthError("no token")
    err = rpc_error(_call(peer.address), peer)
    assert type(err) is errors.AuthError
    assert str(err) == (f"the agent at 127.0.0.1:{port} refused us: no token; start it with this migration's "
                        "certificates and token")
    planted["next"] = errors.PermissionDenied("wrong token")
    assert type(rpc_error(_call(peer.address), peer)) is errors.PermissionDenied
    planted["next"] = errors.TargetError("gone")
    special = rpc_error(_call(peer.address), peer, by_code={"INTERNAL": lambda d: errors.CheckFailed(d)})
    assert type(special) is errors.CheckFailed and str(special) == "gone"


def test_nothing_listening_is_named_as_a_refused_connection() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"     # bound, not listening: refused
        peer = Peer("receiver", address, "`cvmigrate receive`")
        exc = _call(address)
        named = rpc_error(exc, peer, transport=PLAINTEXT)
        assert type(named) is errors.TransportError
        assert "connection refused" in str(named) and "start `cvmigrate receive` there" in str(named)
        # without the transport (a link lost mid-stream) it is the generic "cannot reach"
        generic = rpc_error(exc, peer)
        assert type(generic) is errors.TransportError and str(generic).startswith(f"cannot reach the receiver at "
                                                                                  f"{address}: ")


def test_ipv6_addresses_bind_in_brackets_and_a_busy_port_is_one_clear_error() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    try:
        server, port = _serve("[::1]:0", {"next": errors.Busy("busy")})
    except errors.CvmError:
        pytest.skip("::1 is not configured here")
    try:
        assert port > 0
        assert type(rpc_error(_call(f"[::1]:{port}"), Peer("receiver", f"[::1]:{port}", "x"))) is errors.Busy
        with pytest.raises(errors.CvmError, match=r"cannot listen on \[::1\]:\d+: the address is in use"):
            _serve(f"[::1]:{port}", {})
    finally:
        server.stop(None)
