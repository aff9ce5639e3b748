"""Fixtures shared by the integration and end-to-end suites."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from cvmigrate.controller.emulator import EmulatorHandle, default_config, start_emulator


@pytest.fixture
def rescue_delay() -> float:
    """Seconds the emulated instance takes to enter and leave rescue mode (a module overrides it to change)."""
    return 0.2


@pytest.fixture
def emu(rescue_delay: float) -> Iterator[EmulatorHandle]:
    """The Tencent Cloud API emulator on 127.0.0.1:0 with its default instance; stopped after the test."""
    with start_emulator(default_config(rescue_delay=rescue_delay)) as handle:
        yield handle
