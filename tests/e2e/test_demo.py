"""`cvmigrate demo` as the README runs it: a real process, no arguments, no account, all three stages."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers.procs import child_env


def _demo(*args: str, cwd: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "cvmigrate", "demo", *args], cwd=cwd, env=child_env(), text=True,
                          capture_output=True, timeout=120)
    return proc, time.monotonic() - t0


def test_demo_without_arguments(tmp_path: Path) -> None:
    proc, seconds = _demo(cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for stage in ("Stage 1/3", "Stage 2/3", "Stage 3/3"):
        assert stage in out
    for sub in ("enter_rescue: done", "wait_rescue: done", "full_pass: done", "exit_rescue: done", "verify: done",
                "msp_finish: done"):
        assert sub in out
    assert re.search(r"verified: +\d+ entries identical on the target", out)
    assert "EnterRescueMode x1" in out and "ExitRescueMode x1" in out and "RegisterMigrationTask x1" in out
    assert "target RUNNING" in out and "finish" in out
    assert "demo migration complete" in out
    assert "Traceback" not in proc.stderr
    assert seconds < 60
    assert os.listdir(tmp_path) == []  # nothing left in the working directory


def test_demo_with_a_source_directory(tmp_path: Path) -> None:
    src = tmp_path / "mysrc"
    (src / "etc").mkdir(parents=True)
    (src / "etc" / "hostname").write_text("web1\n")
    (src / "big.bin").write_bytes(os.urandom(300_000))
    work = tmp_path / "work"
    proc, _ = _demo("--source", str(src), "--workdir", str(work), "--cutover", "now", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (work / "target" / "big.bin").read_bytes() == (src / "big.bin").read_bytes()
    assert "incremental_passes: done" in proc.stdout and "none (--cutover now)" in proc.stdout
    log = (work / "tool" / "log").read_text()
    assert "sub-task msp_finish done" in log
    assert not (work / "source").exists()
