"""What every emulated action shares: its request context and its error.

Why a module of its own: the CVM and MSP action modules and the server all
need them, and none of those should import another.  Actions raise ApiError, and the server turns it into the
real error shape ``{"Response": {"Error": {"Code", "Message"}, "RequestId"}}``
in exactly one place.  It is part of cvmigrate's one hierarchy (a CvmError) so
that nothing in the project catches a bare Exception to find it.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cvmigrate.common.errors import CvmError

if TYPE_CHECKING:
    from cvmigrate.controller.emulator.state import EmulatorState


@dataclass(frozen=True)
class RequestContext:
    """Who asked, where: the request's region and the RequestId it will be answered with."""

    region: str
    request_id: str


#: An action: (state, context, params) -> the Response body without RequestId.
Handler = Callable[["EmulatorState", RequestContext, dict[str, Any]], dict[str, Any]]


class ApiError(CvmError, template="{code}: {message}"):
    """An emulated Tencent Cloud API error."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.api_message = message
        super().__init__(message, code=code)
