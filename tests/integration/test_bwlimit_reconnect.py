"""Bandwidth limit on a real push, and reconnect-and-resume after the receiver goes away."""
import os
import threading
import time

import pytest

from cvmigrate.agent.push import PushOptions, push
from cvmigrate.common.errors import TransportError
from cvmigrate.receiver.server import create_server
from cvmigrate.receiver.session import ReceiverConfig


def test_bwlimit_paces_the_wire(receiver, tmp_path):
    """A pass under --bwlimit 1024 sends at 1 MiB/s.  Its fixed costs (connect, scan, journal, the last
    commit) are no part of the pacing and grow with the machine's load, so they are measured by the same
    pass without a limit, just before, and taken off the paced pass's time for the lower bound; the upper
    bound uses the whole time (a limiter that does not limit shows many times the rate either way)."""
    address, root = receiver
    src = tmp_path / "src"
    src.mkdir()
    (src / "blob").write_bytes(os.urandom(3 << 20))  # incompressible: wire bytes == content
    t0 = time.monotonic()
    free = push(PushOptions(source=str(src), address=address))
    fixed = time.monotonic() - t0                     # fixed costs and 3 MiB at loopback speed
    assert free.bytes_sent >= 3 << 20
    (src / "blob").write_bytes(os.urandom(3 << 20))  # new content: the paced pass sends it all again
    t0 = time.monotonic()
    result = push(PushOptions(source=str(src), address=address, bwlimit_kbps=1024))
    elapsed = time.monotonic() - t0
    limit = 1024 * 1024
    assert result.bytes_sent >= 3 << 20
    # the first burst (0.25 s worth) is free: allow 15 %
    assert result.bytes_sent / elapsed <= 1.15 * limit, (result.bytes_sent, elapsed)
    assert result.bytes_sent / max(elapsed - fixed, 0.1) >= 0.85 * limit, (result.bytes_sent, elapsed, fixed)
    assert (root / "blob").read_bytes() == (src / "blob").read_bytes()


def test_push_reconnects_when_the_receiver_comes_back(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(20):
        (src / f"f{i}").write_bytes(os.urandom(200_000))
    root = tmp_path / "dst"
    root.mkdir()
    # reserve a port, then start the receiver on it only after the agent's first attempts fail
    first = create_server(ReceiverConfig(root=str(root)), "127.0.0.1:0")
    port = first.port
    first.stop(grace=0)
    handles = []

    def start_later():
        time.sleep(2.5)
        handles.append(create_server(ReceiverConfig(root=str(root)), f"127.0.0.1:{port}"))

    t = threading.Thread(target=start_later)
    t.start()
    try:
        with pytest.raises(TransportError, match="connection refused"):   # by default the first attempt fails fast
            push(PushOptions(source=str(src), address=f"127.0.0.1:{port}"), retry_for=30)
        result = push(PushOptions(source=str(src), address=f"127.0.0.1:{port}"), retry_for=30,
                      wait_for_receiver=True)
    finally:
        t.join()
        for h in handles:
            h.stop(grace=1)
    assert not result.errors
    assert sorted(p.name for p in root.iterdir() if p.name != ".cvmigrate") == sorted(f"f{i}" for i in range(20))
