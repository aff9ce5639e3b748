import time

from cvmigrate.common.ratelimit import TokenBucket


def test_unlimited_never_sleeps():
    slept: list[float] = []
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


def test_rate_window_shows_the_current_rate_not_the_average():
    import pytest

    from cvmigrate.controller.progress import RateWindow

    w = RateWindow(seconds=5.0)
    assert w.add(0.0, 0) == 0.0                       # one sample: no rate yet
    total = 0
    for t in range(1, 11):                            # 10 s at 10 MB/s ...
        total += 10_000_000
        w.add(float(t), total)
    for t in range(11, 31):                           # ... then 20 s at 0.8 MB/s
        total += 800_000
        rate = w.add(float(t), total)
    assert rate == pytest.approx(800_000)             # the whole-pass average would say 3.9 MB/s
    assert total / 30 > 3 * rate
    w.add(31.0, total)                                # a stall shows at once as a falling rate
    assert w.rate < 800_000
