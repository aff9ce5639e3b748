"""A Tencent Cloud API emulator (CVM 2017-03-12 and MSP 2018-03-19 subsets) for tests and the demo.

Why: migrations must be testable end to end -- and demonstrable -- without a
Tencent Cloud account, and the cloud layer must be tested against the real
wire protocol, not mocks.  The emulator is an HTTP server that checks
TC3-HMAC-SHA256 signatures, answers with the real JSON and error shapes, runs
the rescue-mode state machine with delays, injects faults, keeps a call log
and can persist itself to a file.  The real SDK reaches it through an
endpoint override.

Python API::

    handle = start_emulator(config)      # config: see state.default_config()
    handle.endpoint                      # "http://127.0.0.1:PORT"
    handle.calls()                       # [Call(seq, time, action, ..., error, request_id)]
    handle.inject("DescribeInstances", error="RequestLimitExceeded", count=2)
    handle.stop()
"""
from __future__ import annotations

from cvmigrate.controller.emulator.server import EmulatorHandle, create_server, start_emulator
from cvmigrate.controller.emulator.state import (
    DEFAULT_INSTANCE_ID,
    DEFAULT_REGION,
    DEFAULT_SECRET_ID,
    DEFAULT_SECRET_KEY,
    Call,
    default_config,
    default_instance,
    default_user_json,
)

__all__ = [
    "Call",
    "DEFAULT_INSTANCE_ID",
    "DEFAULT_REGION",
    "DEFAULT_SECRET_ID",
    "DEFAULT_SECRET_KEY",
    "EmulatorHandle",
    "create_server",
    "default_config",
    "default_instance",
    "default_user_json",
    "start_emulator",
]
