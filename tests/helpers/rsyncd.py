"""An rsync daemon on 127.0.0.1 for side-by-side comparisons (rsync is a test oracle only).

Through the daemon rsync uses its delta algorithm, which is what a migration
over a network would get; local-to-local rsync would copy whole files.
"""
from __future__ import annotations

import re
import socket
import subprocess
import time
from pathlib import Path


class RsyncDaemon:
    def __init__(self, module_root: Path, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        conf = workdir / "rsyncd.conf"
        conf.write_text(f"[m]\npath = {module_root}\nread only = no\nuid = root\ngid = root\n"
                        "use chroot = no\nnumeric ids = yes\n")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = subprocess.Popen(["rsync", "--daemon", "--no-detach", f"--config={conf}",
                                      f"--port={self.port}", "--address=127.0.0.1"])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("rsync daemon did not start")

    def push(self, src: Path, *extra: str) -> tuple[int, float]:
        """rsync -aHAXS --numeric-ids --delete SRC/ to the module; returns (Total bytes sent, seconds)."""
        t = time.monotonic()
        out = subprocess.run(["rsync", "-aHAXS", "--numeric-ids", "--delete", "--stats", *extra, f"{src}/",
                              f"rsync://127.0.0.1:{self.port}/m/"], capture_output=True, text=True, check=True)
        seconds = time.monotonic() - t
        m = re.search(r"Total bytes sent: ([\d,]+)", out.stdout)
        assert m is not None, f"rsync --stats printed no total:\n{out.stdout}"
        sent = int(m.group(1).replace(",", ""))
        return sent, seconds

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def __enter__(self) -> RsyncDaemon:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
