"""Run the `cvmigrate` command as an operator would, and check its one-line failures."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path


def cli(*argv: str, cwd: Path, env_extra: dict[str, str] | None = None,
        timeout: float = 60) -> tuple[int, str, str, float]:
    """Run ``cvmigrate ARGV`` in ``cwd`` without the caller's cloud keys or proxies: (exit, stdout, stderr, seconds)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TENCENTCLOUD_", "CVMIGRATE_")) and k not in ("HTTP_PROXY", "HTTPS_PROXY",
                                                                           "http_proxy", "https_proxy")}
    env["HOME"] = str(cwd)  # no ~/.tencentcloud profile
    env.update(env_extra or {})
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "cvmigrate", *argv], cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr, time.monotonic() - t0


def one_line(err: str) -> str:
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1, f"stderr is not one line:\n{err}"
    assert "Traceback" not in err
    return lines[0]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
