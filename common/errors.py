"""The one exception hierarchy of cvmigrate.

Why one hierarchy: every failure must surface the same way everywhere -- as a
gRPC status at a service boundary and as a one-line message plus exit code at
the CLI.  Each class carries its message template (the docstring's first line
is *not* used; ``template`` is), the gRPC status code name, whether a caller
may retry, and the CLI exit code -- given as class keywords where the class is
declared (``class Busy(CvmError, grpc_code="ABORTED", retryable=True,
exit_code=6)``), the rest inherited.  This module is a leaf: it imports nothing
from the project and nothing from grpc (status codes are kept as names so the
receiver, agent and controller map them in exactly one place each).
"""
from __future__ import annotations

import os
from typing import Any, ClassVar


class CvmError(Exception):
    """Base of every error cvmigrate raises on purpose."""

    template: ClassVar[str] = "{message}"
    grpc_code: ClassVar[str] = "INTERNAL"
    retryable: ClassVar[bool] = False
    exit_code: ClassVar[int] = 1

    def __init_subclass__(cls, *, template: str | None = None, grpc_code: str | None = None,
                          retryable: bool | None = None, exit_code: int | None = None, **kwargs: Any) -> None:
        """``class X(Base, grpc_code=..., exit_code=...)``: a subclass states on one line what it changes and
        inherits the rest (assigning the class attributes in its body works too)."""
        super().__init_subclass__(**kwargs)
        for name, value in (("template", template), ("grpc_code", grpc_code), ("retryable", retryable),
                            ("exit_code", exit_code)):
            if value is not None:
                setattr(cls, name, value)

    def __init__(self, message: str = "", **fields: Any) -> None:
        # file names travel as bytes; shown decoded (the templates' !r still escapes control characters)
        self.fields = {k: os.fsdecode(v) if isinstance(v, bytes) else v for k, v in fields.items()}
        self.fields["message"] = message
        try:
            text = self.template.format(**self.fields)
        except (KeyError, IndexError):
            text = message or self.template
        super().__init__(text)

    @property
    def message(self) -> str:
        return str(self)


class ConfigError(CvmError, grpc_code="INVALID_ARGUMENT", exit_code=2):
    """A configuration file, flag or environment value is wrong."""


class UsageError(ConfigError):
    """The command line itself is wrong."""


class ProtocolError(CvmError, grpc_code="INVALID_ARGUMENT", exit_code=3):
    """The peer sent a message that breaks the protocol contract."""


class VersionMismatch(ProtocolError, grpc_code="FAILED_PRECONDITION"):
    """The peer speaks a protocol (or journal format) version we do not know."""


class UnsafePath(ProtocolError, template="refused path {path!r}: {message}", grpc_code="INVALID_ARGUMENT"):
    """A path would escape the target root or is not a valid file name."""


class IntegrityError(CvmError, grpc_code="DATA_LOSS", retryable=True, exit_code=4):
    """Data did not match its hash."""


class AuthError(CvmError, grpc_code="UNAUTHENTICATED", exit_code=5):
    """The peer could not be authenticated."""


class PermissionDenied(AuthError, grpc_code="PERMISSION_DENIED"):
    """The peer is authenticated but may not do this."""


class Busy(CvmError, grpc_code="ABORTED", retryable=True, exit_code=6):
    """The receiver already serves another session."""


class Misplaced(CvmError, grpc_code="ALREADY_EXISTS", retryable=True, exit_code=10):
    """A stream of a parallel pass reached a receiver worker that already serves another of its streams while
    another worker serves none: refused before any data, so the agent opens it again on a new connection
    (receiver/shards.py).  ALREADY_EXISTS: no other status names it, so the agent tells it from Busy."""


class TargetFull(CvmError, template="target disk full writing {path!r}: {message}", grpc_code="RESOURCE_EXHAUSTED",
                 retryable=True, exit_code=7):
    """The target filesystem ran out of space."""


class TargetError(CvmError, grpc_code="INTERNAL", exit_code=8):
    """Writing the target failed for a reason other than space."""


class SourceError(CvmError, exit_code=9):
    """Reading the source failed."""


class TransportError(CvmError, grpc_code="UNAVAILABLE", retryable=True, exit_code=10):
    """The connection to a peer failed or was lost."""


class TransferIncomplete(CvmError, exit_code=11):
    """The transfer ended with entries that were not committed and verified."""


class CloudError(CvmError, template="Tencent Cloud API {action} failed: {code}: {message}", exit_code=12):
    """A Tencent Cloud API call failed."""

    def __init__(self, message: str = "", *, action: str = "?", code: str = "?", request_id: str = "",
                 **fields: Any) -> None:
        self.action, self.code, self.request_id = action, code, request_id
        super().__init__(message, action=action, code=code, request_id=request_id, **fields)


class CheckFailed(CvmError, exit_code=13):
    """A pre-check failed."""


class StageTimeout(CvmError, grpc_code="DEADLINE_EXCEEDED", exit_code=14):
    """A migration sub-task did not finish within its time limit."""


#: gRPC status code name -> error class used when a status arrives from a peer.
_BY_CODE: dict[str, type[CvmError]] = {
    "INVALID_ARGUMENT": ProtocolError,
    "FAILED_PRECONDITION": VersionMismatch,
    "DATA_LOSS": IntegrityError,
    "UNAUTHENTICATED": AuthError,
    "PERMISSION_DENIED": PermissionDenied,
    "ABORTED": Busy,
    "ALREADY_EXISTS": Misplaced,
    "RESOURCE_EXHAUSTED": TargetFull,
    "UNAVAILABLE": TransportError,
    "DEADLINE_EXCEEDED": TransportError,
}


def error_for_status(code_name: str, details: str) -> CvmError:
    """Rebuild a CvmError from a gRPC status received from a peer."""
    return _BY_CODE.get(code_name, TargetError)(details)


#: Exit statuses of every command (also in the README).  Classes in cvmigrate.common.errors carry them.
EXIT_CODES: tuple[tuple[int, str], ...] = (
    (0, "success"),
    (1, "failure without a more specific code (an unexpected error: rerun with --debug and report it)"),
    (2, "usage or configuration error (flags, user.json, client.json, addresses)"),
    (3, "protocol error (the peer broke the protocol)"),
    (4, "integrity error (data did not match its hash)"),
    (5, "authentication refused (API keys, certificates, token)"),
    (6, "the receiver is busy with another session"),
    (7, "the target disk is full"),
    (8, "writing the target failed"),
    (9, "reading the source failed"),
    (10, "network: the receiver, agent or API could not be reached or the link was lost"),
    (11, "the transfer ended with entries not committed and verified"),
    (12, "a Tencent Cloud API call failed"),
    (13, "a pre-check failed"),
    (14, "a sub-task ran out of time"),
    (15, "the receiver bundle for the ssh bootstrap could not be built here"),
    (130, "interrupted (Ctrl-C); run the same command again to resume"),
    (141, "stdout was closed early (e.g. piped into head); nothing is reported"),
)


def exit_code_help() -> str:
    """The exit status table for --help epilogs (the README has the same table)."""
    return "exit status:\n" + "\n".join(f"  {code:>3}  {text}" for code, text in EXIT_CODES)
