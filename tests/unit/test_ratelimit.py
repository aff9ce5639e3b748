import time

from cvmigrate.common.ratelimit import TokenBucket


def test_unlimited_never_sleeps():
    slept = []
    b = TokenBucket(None)
    for _ in range(1000):
        b.take(1 << 20, sleep=slept.append)
    assert slept == []


def test_long_run_rate_holds_within_5_percent():
    rate = 4 << 20  # 4 MiB/s
    b = TokenBucket(rate)
    sent = 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < 2.0:
        b.take(256 << 10)
        sent += 256 << 10
    elapsed = time.monotonic() - t0
    assert abs(sent / elapsed - rate) / rate < 0.05, sent / elapsed


def test_rate_can_change_mid_stream():
    b = TokenBucket(1 << 20)
    b.set_rate(None)
    t0 = time.monotonic()
    for _ in range(100):
        b.take(1 << 20)
    assert time.monotonic() - t0 < 0.5
