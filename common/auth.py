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

Roles (which credential may call what):
- the **data plane** token is the agent's: it may call only ``DATA_METHODS``
  (``Receiver/Transfer``, ``BlockReceiver/BlockTransfer``);
- the **control plane** token is the controller's: it may call every method
  (``RunFixups``, ``Finalize``, and the transfers, which the controller runs
  itself in all-in-one mode).
A data token calling a control method gets PERMISSION_DENIED.  The role is
carried by the token -- it is required on every non-open method, plaintext
included -- because the token is what the controller hands out per role; the
minted client certificates are per role too (``cvmigrate agent`` /
``cvmigrate controller`` in their common name), and a peer presenting the
agent's certificate is refused control methods even with the right token
(defence in depth: only the token can be checked on a plaintext channel).
A server given only one token (no control token: a hand-run ``receive``
without ``--control-token-file``) lets that token call everything; the
controller's minted setup always separates them.  The agent daemon checks its
own token (controller -> agent), which is neither of the two above.

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
from collections.abc import Callable, Iterable
from typing import Any

import grpc

logger = logging.getLogger(__name__)

#: Full gRPC method names that need no token (see the module docstring).
DEFAULT_OPEN_METHODS: frozenset[str] = frozenset({"/cvmigrate.v1.Receiver/Ping"})
#: Full gRPC method names the data-plane (agent) credential may call; every other needs the control role.
DATA_METHODS: frozenset[str] = frozenset({"/cvmigrate.v1.Receiver/Transfer",
                                          "/cvmigrate.v1.BlockReceiver/BlockTransfer"})
ROLE_DATA = "data"
ROLE_CONTROL = "control"
#: Common-name prefix of the client certificate minted for the agent (data plane only).
AGENT_CERT_CN = "cvmigrate agent "

_SCHEME = "bearer"


class TokenAuthInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]  # grpc ships no types
    """Reject calls without the right ``authorization: Bearer <token>`` metadata."""

    def __init__(self, token: str, *, control_token: str | None = None,
                 open_methods: Iterable[str] = DEFAULT_OPEN_METHODS,
                 data_methods: Iterable[str] = DATA_METHODS) -> None:
        if not token:
            raise ValueError("TokenAuthInterceptor needs a non-empty token")
        if control_token is not None and (not control_token or control_token == token):
            raise ValueError("the control token must be non-empty and differ from the data token")
        self._expected = token.encode("utf-8")
        self._control = control_token.encode("utf-8") if control_token else None
        self._open = frozenset(open_methods)
        self._data_methods = frozenset(data_methods)

    def __repr__(self) -> str:          # never show the token
        return (f"TokenAuthInterceptor(open_methods={sorted(self._open)!r}, "
                f"roles={'separate' if self._control else 'one token'})")

    def intercept_service(self, continuation: Callable[[Any], grpc.RpcMethodHandler | None],
                          handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        if method in self._open:
            return continuation(handler_call_details)
        verdict = self._check(handler_call_details.invocation_metadata or ())
        handler = continuation(handler_call_details)    # only looks the handler up; runs nothing
        if handler is None:
            return handler
        if isinstance(verdict, str):
            if verdict == ROLE_CONTROL or method in self._data_methods:
                return handler if method in self._data_methods else _control_only(handler, method)
            return _rejecting(handler, method, grpc.StatusCode.PERMISSION_DENIED, "data-plane token",
                              f"the agent's data-plane credential may not call {method.rsplit('/', 1)[-1]}: "
                              "it needs the controller's control credential")
        code, reason = verdict
        return _rejecting(handler, method, code, reason)

    def _check(self, metadata: Iterable[Any]) -> tuple[grpc.StatusCode, str] | str:
        """The caller's role when the token is right, else (status, log-safe reason)."""
        values = [_text(value) for key, value in metadata if key.lower() == "authorization"]
        if not values:
            return grpc.StatusCode.UNAUTHENTICATED, "no authorization metadata"
        if len(values) > 1:
            return grpc.StatusCode.UNAUTHENTICATED, "more than one authorization header"
        scheme, _, presented = values[0].strip().partition(" ")
        if scheme.lower() != _SCHEME or not presented.strip():
            return grpc.StatusCode.UNAUTHENTICATED, "authorization is not a bearer token"
        raw = presented.strip().encode("utf-8", "surrogateescape")
        if self._control is not None and hmac.compare_digest(raw, self._control):
            return ROLE_CONTROL
        if hmac.compare_digest(raw, self._expected):
            return ROLE_DATA if self._control is not None else ROLE_CONTROL
        return grpc.StatusCode.PERMISSION_DENIED, "wrong token"


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


_MESSAGES = {
    grpc.StatusCode.UNAUTHENTICATED: "authentication required: send this migration's token "
                                     "(--token-file or CVMIGRATE_TOKEN)",
    grpc.StatusCode.PERMISSION_DENIED: "the token is not this migration's: check --token-file or CVMIGRATE_TOKEN",
}


def _peer_is_agent(context: grpc.ServicerContext) -> bool:
    """Did the peer present the certificate minted for the agent (data plane only)?"""
    names = context.auth_context().get("x509_common_name") or []
    return any(n.decode("utf-8", "replace").startswith(AGENT_CERT_CN) for n in names)


def _control_only(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    """``handler``, refusing a peer that holds the agent's certificate (whatever token it sent)."""
    message = (f"the agent's certificate may not call {method.rsplit('/', 1)[-1]}: it needs the controller's "
               "control credential")

    def guard(behavior: Callable[..., Any]) -> Callable[..., Any]:
        def checked(request: Any, context: grpc.ServicerContext) -> Any:
            if _peer_is_agent(context):
                logger.warning("refused %s from %s: PERMISSION_DENIED (agent certificate)", method, context.peer())
                context.abort(grpc.StatusCode.PERMISSION_DENIED, message)
            return behavior(request, context)
        return checked

    kw = dict(request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(guard(handler.stream_stream), **kw)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(guard(handler.stream_unary), **kw)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(guard(handler.unary_stream), **kw)
    return grpc.unary_unary_rpc_method_handler(guard(handler.unary_unary), **kw)


def _rejecting(handler: grpc.RpcMethodHandler, method: str, code: grpc.StatusCode,
               reason: str, message: str | None = None) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that aborts before reading any request."""

    def abort(_request: Any, context: grpc.ServicerContext) -> Any:
        logger.warning("refused %s from %s: %s (%s)", method, context.peer(), code.name, reason)
        context.abort(code, message or _MESSAGES[code])

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort)
    return grpc.unary_unary_rpc_method_handler(abort)
