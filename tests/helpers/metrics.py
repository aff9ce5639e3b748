"""Reading a process's Prometheus /metrics the way a scraper does (``--metrics-listen 127.0.0.1:0``)."""
from __future__ import annotations

import re
import urllib.request
from collections.abc import Callable

_METRICS_LINE = re.compile(r"metrics on http://127\.0\.0\.1:(\d+)/metrics")


def metrics_line(read: Callable[[], str]) -> Callable[[], re.Match[str] | None]:
    """A check for ``wait_for``: the "metrics on" line in the log that ``read`` returns (group 1 is the port)."""
    return lambda: _METRICS_LINE.search(read())


def scrape(port: int) -> dict[str, float]:
    """Every ``cvmigrate_*`` sample the endpoint serves, by name."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {m[1]: float(m[2]) for m in re.finditer(r"^(cvmigrate_\w+) ([0-9.e+]+)$", text, re.M)}
