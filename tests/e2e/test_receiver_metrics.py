"""The receiver's Prometheus counters count passes, not connections (``receive --metrics-listen``).

Real processes: ``cvmigrate receive --metrics-listen 127.0.0.1:0`` and ``cvmigrate push``.  A pass of
several streams is one pass of several streams on the receiver as it is on the agent; a scraper that
alerts on ``passes_total`` must not see a 2-stream pass as two.
"""
from __future__ import annotations

import os
from pathlib import Path

from tests.helpers.fleet import wait_for
from tests.helpers.metrics import metrics_line, scrape
from tests.helpers.oracle import assert_identical
from tests.helpers.procs import run_push, start_receiver


def test_a_pass_of_two_streams_counts_once_and_its_streams_twice(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    for d in range(6):
        (src / f"d{d}").mkdir(parents=True)
        for f in range(5):
            (src / f"d{d}" / f"f{f}").write_bytes(os.urandom(3000 + f))
    with start_receiver(dst, "--metrics-listen", "127.0.0.1:0", work_dir=tmp_path / "recv") as rp:
        port = int(wait_for("receiver metrics", metrics_line(rp.output), 30)[1])
        before = scrape(port)
        assert before["cvmigrate_receiver_passes_total"] == 0 and before["cvmigrate_receiver_streams_total"] == 0

        res = run_push(src, rp.address, "--streams", "2", "--no-default-excludes")
        assert res.checked_summary()["streams"] == 2
        assert_identical(src, dst, ["/.cvmigrate/"])
        two = scrape(port)
        assert (two["cvmigrate_receiver_passes_total"], two["cvmigrate_receiver_streams_total"]) == (1, 2)
        # a fresh target: nothing resumed (the second stream finds the journal the first one made)
        assert two["cvmigrate_receiver_retries_total"] == 0
        assert two["cvmigrate_receiver_files_total"] == 36   # entries committed: 30 files, their 6 directories
        assert two["cvmigrate_receiver_open_sessions"] == 0

        again = run_push(src, rp.address, "--streams", "1", "--no-default-excludes")
        assert again.checked_summary()["bytes_sent"] == 0
        one = scrape(port)
        assert (one["cvmigrate_receiver_passes_total"], one["cvmigrate_receiver_streams_total"]) == (2, 3)
        assert one["cvmigrate_receiver_retries_total"] == 1

        run_push(src, rp.address, "--streams", "2", "--no-default-excludes").checked_summary()
        three = scrape(port)
        assert (three["cvmigrate_receiver_passes_total"], three["cvmigrate_receiver_streams_total"]) == (3, 5)
        assert three["cvmigrate_receiver_retries_total"] == 2   # one resumed pass of two streams counts once
