"""Process counters of `cvmigrate agent` / `cvmigrate receive`, served with ``--metrics-listen HOST:PORT``.

Why counters here and not prometheus-client objects in the hot paths: the
agent and the receiver run on production servers and in rescue systems with
only the light base dependencies; prometheus-client is imported only when
``--metrics-listen`` is given.  Until then :func:`add` is one boolean test.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

#: name -> (kind, help): counters only grow; gauges go up and down.
METRICS: dict[str, tuple[str, str]] = {
    "bytes_received": ("counter", "bytes of data batches received (receiver)"),
    "bytes_written": ("counter", "bytes written to the target (receiver)"),
    "bytes_sent": ("counter", "bytes sent on the wire by finished passes (agent)"),
    "bytes_read": ("counter", "source content bytes read by finished passes (agent)"),
    "files": ("counter", "entries committed on the target, directories and links included (receiver), or files "
                         "transferred (agent)"),
    "chunks_verified": ("counter", "data segments received and hash-verified (receiver)"),
    "retries": ("counter", "passes resumed against an earlier pass's journal (receiver) or pass reconnects (agent)"),
    "passes": ("counter", "passes finished, with or without error (receiver: a pass of several streams once, "
                          "or once for each of its streams that failed)"),
    "streams": ("counter", "transfer streams ended, refused ones not counted (receiver)"),
    "open_sessions": ("gauge", "transfer sessions (receiver) or passes (agent) open now"),
}

_lock = threading.Lock()
_values: dict[str, float] = dict.fromkeys(METRICS, 0.0)
_enabled = False


def add(name: str, amount: float = 1) -> None:
    """Count ``amount`` (negative for a gauge going down); nothing unless metrics are served."""
    if not _enabled:
        return
    with _lock:
        _values[name] += amount


def values() -> dict[str, float]:
    with _lock:
        return dict(_values)


class _Collector:
    def __init__(self, role: str) -> None:
        self.role = role

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        now = values()
        for name, (kind, help_text) in METRICS.items():
            cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            yield cls(f"cvmigrate_{self.role}_{name}", help_text, value=now[name])


def serve(listen: str, role: str) -> int:
    """Serve /metrics for this process at ``listen`` (port 0 picks one); returns the bound port."""
    global _enabled
    from cvmigrate.common.errors import ConfigError, UsageError

    try:
        from prometheus_client import CollectorRegistry, start_http_server
    except ImportError:
        raise ConfigError("--metrics-listen needs prometheus-client: pip install prometheus-client "
                          "(or cvmigrate[console])") from None
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise UsageError(f"--metrics-listen {listen!r}: expected HOST:PORT, e.g. 127.0.0.1:9101")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(role))
    try:
        server, _thread = start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1", registry=registry)
    except OSError as exc:
        raise UsageError(f"--metrics-listen {listen}: cannot bind: {exc.strerror}") from None
    _enabled = True
    return int(server.server_port)
