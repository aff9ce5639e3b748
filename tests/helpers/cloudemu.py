"""The Tencent Cloud API emulator as the controller's tests use it.

Tests that drive the cloud layer or the stage machine all need the same three
things: an emulator whose instance enters and leaves rescue mode quickly, a
go2tencentcloud ``user.json`` that opens its default instance, and a
``CloudClient`` that reaches it with the default key and retries fast.  The
``emu`` fixture (tests/conftest.py) starts the first; the two functions below
make the others.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cvmigrate.common.rpc import RetryPolicy
from cvmigrate.controller.cloud import CloudClient, Credentials
from cvmigrate.controller.emulator import DEFAULT_REGION, DEFAULT_SECRET_ID, DEFAULT_SECRET_KEY, default_user_json

#: Retries that give up within seconds: a test waits on the emulator's faults, not on real backoff.
FAST_RETRY = RetryPolicy(max_attempts=6, base_delay=0.01, max_delay=0.05, max_total=10.0)


def write_user_json(directory: Path, **extra: Any) -> Path:
    """``directory/user.json`` opening the emulator's default instance (``extra``: more fields, or overrides)."""
    path = directory / "user.json"
    path.write_text(json.dumps(default_user_json(**extra)))
    return path


def cloud_client(endpoint: str, *, key: str = DEFAULT_SECRET_KEY, secret_id: str = DEFAULT_SECRET_ID,
                 retry: RetryPolicy = FAST_RETRY, timeout: float = 5, **kwargs: Any) -> CloudClient:
    """The real SDK client of controller/cloud.py, pointed at ``endpoint`` with the emulator's default key."""
    return CloudClient(Credentials(secret_id, key, source="test"), DEFAULT_REGION, endpoint=endpoint,
                       retry=retry, timeout=timeout, **kwargs)
