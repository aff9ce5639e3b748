"""How the admin says "cut over now" during --cutover manual: a file appears, or Enter on a terminal."""
from __future__ import annotations

import os
import sys
import threading
import time


class CutoverSignal:
    """cutover manual: the admin ends the incremental passes by creating a file (or pressing Enter on a terminal)."""

    def __init__(self, path: str | None, *, key: bool) -> None:
        self.path = path
        self._event = threading.Event()
        if key and key_available():
            threading.Thread(target=self._read_key, name="cvm-cutover-key", daemon=True).start()

    def _read_key(self) -> None:
        try:
            sys.stdin.readline()
        except (OSError, ValueError):
            return
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set() or bool(self.path and os.path.exists(self.path))

    def wait(self, seconds: float) -> bool:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if self.is_set():
                return True
            time.sleep(min(0.2, max(0.0, end - time.monotonic())))
        return self.is_set()


def key_available() -> bool:
    """Standard input is a terminal: pressing Enter can signal the cut-over."""
    return sys.stdin is not None and sys.stdin.isatty()
