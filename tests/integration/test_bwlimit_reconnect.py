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
    address, root = receiver
    src = tmp_path / "src"
    src.mkdir()
    (src / "blob").write_bytes(os.urandom(3 << 20))  # incompressible: wire bytes == content
    t0 = time.monotonic()
    result = push(PushOptions(source=str(src), address=address, bwlimit_kbps=1024))
    elapsed = time.monotonic() - t0
    rate = result.bytes_sent / elapsed
    # the first burst (0.25 s worth) is free and the pass has fixed costs: allow 15 % on a 3 s run
    assert 0.85 * 1024 * 1024 <= rate <= 1.15 * 1024 * 1024, rate
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
