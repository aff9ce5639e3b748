"""Test-only crash points for the crash-resume tests (tests/e2e/test_controller_crash_resume.py).

``CVMIGRATE_TEST_KILL_AFTER=<sub-task>`` makes the runner SIGKILL its own
process right after that sub-task is checkpointed, and
``CVMIGRATE_TEST_KILL_AFTER=<sub-task>:sent`` right after its cloud call
returned but before the checkpoint (register_msp, enter_rescue, exit_rescue).
Nothing happens unless the variable is set.
"""
from __future__ import annotations

import logging
import os
import signal
import sys

logger = logging.getLogger(__name__)

KILL_ENV = "CVMIGRATE_TEST_KILL_AFTER"


def kill_point(point: str) -> None:
    """SIGKILL this process at ``point`` when CVMIGRATE_TEST_KILL_AFTER names it."""
    if os.environ.get(KILL_ENV) == point:
        logger.warning("test hook %s=%s: killing this process now", KILL_ENV, point)
        for h in logging.getLogger().handlers:
            h.flush()
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)
