"""Bearer-token check for every gRPC service we serve, before any handler runs.

Why an interceptor: the check must happen in exactly one place, for every
method, before a servicer can open the target, create the journal directory
or even read the first request.  A rejected call is answered by a stand-in
handler that aborts at once; the real servicer method is never invoked.

Status codes (see transfer.proto):
- no ``authorization: Bearer <token>`` metadata (or another scheme) ->
  UNAUTHENTICATED: the client did not say who it is;
- a bearer token that is not this migration's -> PERMISSION_DENIED.
Neither is retryable.  The comparison is constant-time (``hmac.compare_digest``)
and neither the expected nor the presented token ever reaches a log line or a
status message; the peer address and the method do, so an operator can see
who knocked.

Open methods: ``Ping`` stays open by default.  It answers version and busy
flag only, never touches the target, and lets an operator (or the
controller's readiness probe) tell "receiver up, token wrong" from "receiver
down".  TLS still applies to it, and with mutual TLS only holders of this
migration's client certificate get that far.  Pass ``open_methods=()`` to
require the token everywhere.
"""
from __future__ import annotations

import hmac
import logging
from typing import Any, Callable, Iterable

import grpc

logger = logging.getLogger(__name__)

#: Full gRPC method names that need no token (see the module docstring).
DEFAULT_OPEN_METHODS: frozenset[str] = frozenset({"/cvmigrate.v1.Receiver/Ping"})

_SCHEME = "bearer"


class TokenAuthInterceptor(grpc.ServerInterceptor):
    """Reject calls without the right ``authorization: Bearer <token>`` metadata."""

    def __init__(self, token: str, *, open_methods: Iterable[str] = DEFAULT_OPEN_METHODS) -> None:
        if not token:
            raise ValueError("TokenAuthInterceptor needs a non-empty token")
        self._expected = token.encode("utf-8")
        self._open = frozenset(open_methods)

    def __repr__(self) -> str:          # never show the token
        return f"TokenAuthInterceptor(open_methods={sorted(self._open)!r})"

    def intercept_service(self, continuation: Callable[[Any], grpc.RpcMethodHandler | None],
                          handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        if method in self._open:
            return continuation(handler_call_details)
        verdict = self._check(handler_call_details.invocation_metadata or ())
        handler = continuation(handler_call_details)    # only looks the handler up; runs nothing
        if verdict is None or handler is None:
            return handler
        code, reason = verdict
        return _rejecting(handler, method, code, reason)

    def _check(self, metadata: Iterable[Any]) -> tuple[grpc.StatusCode, str] | None:
        """None when the token is right, else (status, log-safe reason)."""
        values = [_text(value) for key, value in metadata if key.lower() == "authorization"]
        if not values:
            return grpc.StatusCode.UNAUTHENTICATED, "no authorization metadata"
        if len(values) > 1:
            return grpc.StatusCode.UNAUTHENTICATED, "more than one authorization header"
        scheme, _, presented = values[0].strip().partition(" ")
        if scheme.lower() != _SCHEME or not presented.strip():
            return grpc.StatusCode.UNAUTHENTICATED, "authorization is not a bearer token"
        if not hmac.compare_digest(presented.strip().encode("utf-8", "surrogateescape"), self._expected):
            return grpc.StatusCode.PERMISSION_DENIED, "wrong token"
        return None


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


_MESSAGES = {
    grpc.StatusCode.UNAUTHENTICATED: "authentication required: send this migration's token "
                                     "(--token-file or CVMIGRATE_TOKEN)",
    grpc.StatusCode.PERMISSION_DENIED: "the token is not this migration's: check --token-file or CVMIGRATE_TOKEN",
}


def _rejecting(handler: grpc.RpcMethodHandler, method: str, code: grpc.StatusCode,
               reason: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that aborts before reading any request."""

    def abort(_request: Any, context: grpc.ServicerContext) -> Any:
        logger.warning("refused %s from %s: %s (%s)", method, context.peer(), code.name, reason)
        context.abort(code, _MESSAGES[code])

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort)
    return grpc.unary_unary_rpc_method_handler(abort)
