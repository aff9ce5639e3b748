"""End-to-end test hooks: print the resume-fault measurements in the terminal summary.

Tests record one line per case with ``record_property("resume_fault", line)``;
they are shown (passed or failed) after the run, so the re-sent bytes of every
seeded kill are visible without ``-s``.
"""

from __future__ import annotations

import pytest

_KEY = "resume_fault"
_lines: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when != "call":
        return
    for key, value in report.user_properties:
        if key == _KEY:
            _lines.append(f"{value}  [{report.outcome}]")


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if _lines:
        terminalreporter.section("resume faults: bytes re-sent per seeded run")
        for line in _lines:
            terminalreporter.write_line(line)
