"""The benchmark suite runs end to end: ``python -m bench.run --quick``.

Tiny workloads (one per code path), one run each, as a subprocess. Asserts the table prints and
every measured row carries numbers (and the JSON agrees); no timing
assertions -- this is a smoke test of the harness, not a benchmark.
Needs root (the rsync daemon runs as uid=root; network namespaces), rsync,
zstd and tar.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.procs import run_group

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the benchmark needs root"),
    pytest.mark.skipif(any(shutil.which(x) is None for x in ("rsync", "zstd", "tar")),
                       reason="rsync, zstd and tar are needed"),
    pytest.mark.timeout(120),
]

REPO = Path(__file__).resolve().parents[2]
#: one workload per code path (fresh copy with all three tools, second pass,
#: kill + resume, many files); 2/3/5 share these paths. Keeps the test well
#: under a minute even on a busy 2-CPU box.
WORKLOADS = "1,4,6,8"
NUMBER = re.compile(r"^\d+(\.\d+)?[KMG]?$")


@pytest.fixture
def cache_dir(tmp_path: Path) -> Iterator[Path]:
    """This run's own sources and targets, on tmpfs when there is one: the suite runs in several
    checkouts at once on one machine, and a shared target directory is emptied under another run's feet."""
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else tmp_path
    path = base / f"cvmigrate-bench-test-{uuid.uuid4().hex[:12]}"
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_bench_quick_prints_a_full_table(tmp_path: Path, cache_dir: Path) -> None:
    out_json = tmp_path / "bench.json"
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    proc = run_group(
        [sys.executable, "-m", "bench.run", "--quick", "--workloads", WORKLOADS, "--json", str(out_json),
         "--cache-dir", str(cache_dir)],
        cwd=REPO, timeout=100, env=env)
    assert proc.returncode == 0, f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr[-8000:]}"

    lines = proc.stdout.splitlines()
    header_i = next(i for i, ln in enumerate(lines) if ln.startswith("workload ") and "| tool" in ln)
    header = [c.strip() for c in lines[header_i].split("|")]
    assert header[:4] == ["workload", "tool", "runs", "wall s"]
    rows = []
    for ln in lines[header_i + 2:]:
        if not ln.strip():
            break
        rows.append([c.strip() for c in ln.split("|")])
    measured = [r for r in rows if not r[3].startswith("not run")]
    workloads = {r[0].split()[0] for r in measured}
    assert workloads == set(WORKLOADS.split(",")), rows
    assert {r[1] for r in measured} >= {"cvmigrate", "rsync", "tar+zstd"}
    numeric = ["wall s", "MB/s", "files/s", "wire B"]
    for r in measured:
        cells = dict(zip(header, r, strict=True))
        for col in numeric:
            assert NUMBER.match(cells[col]), f"{col} of {r[:2]} is {cells[col]!r}"
        for col in ("CPU s snd/rcv", "RSS MB snd/rcv", "RSS MB all snd/rcv"):
            a, b = cells[col].split("/")
            assert NUMBER.match(a) and NUMBER.match(b), f"{col} of {r[:2]} is {cells[col]!r}"
        if cells["tool"] != "tar+zstd":       # tar is a local pipe: no loopback bytes
            assert NUMBER.match(cells["lo B"]), f"lo B of {r[:2]} is {cells['lo B']!r}"
        assert re.match(r"^\d+\.\d+", cells["ratio wall"]), f"ratio of {r[:2]} is {cells['ratio wall']!r}"
    assert "FAILED" not in proc.stdout and "MISMATCH" not in proc.stdout, proc.stdout
    for r in rows:
        if r[3].startswith("not run"):
            assert "not run:" in r[3]     # a reason, not a silent gap

    doc = json.loads(out_json.read_text())
    assert doc["quick"] is True
    for row in doc["rows"]:
        if row["not_run"]:
            continue
        assert row["runs"], row
        for run in row["runs"]:
            assert run["ok"], row
            assert run["wall"] > 0 and run["cpu_send"] >= 0 and run["rss_send"] > 0 and run["rss_recv"] > 0
            # all of a side's processes together hold at least its largest one; every side names its processes
            assert run["rss_send_total"] >= run["rss_send"] and run["rss_recv_total"] >= run["rss_recv"]
            procs = run["extra"]["processes"]
            assert procs["send"] and procs["recv"], procs


@pytest.mark.netns
def test_bench_slow_link_goes_through_the_relay(tmp_path: Path, cache_dir: Path) -> None:
    """Workload 7 at tiny sizes: both tools cross the TUN relay, which delays and drops packets.

    The relay's own counters prove the emulation happened (packets forwarded
    both ways, the 10 ms one-way delay, random drops with 0.5 % loss); the
    copy is checked by the harness (no MISMATCH); the goal column is judged
    against rsync -z --zc=zstd of the same run.
    """
    out_json = tmp_path / "bench7.json"
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    proc = run_group(
        [sys.executable, "-m", "bench.run", "--quick", "--workloads", "7", "--runs", "1", "--json", str(out_json),
         "--cache-dir", str(cache_dir)],
        cwd=REPO, timeout=100, env=env)
    assert proc.returncode == 0, f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr[-8000:]}"
    assert "FAILED" not in proc.stdout and "MISMATCH" not in proc.stdout, proc.stdout
    assert "20 ms RTT, 0.5 % loss (TUN relay" in proc.stdout, proc.stdout
    rows = [r for r in json.loads(out_json.read_text())["rows"] if r["workload"].startswith("7 ")]
    assert {(r["workload"], r["tool"]) for r in rows} == {
        (w, t) for w in ("7 slow python", "7 slow large") for t in ("cvmigrate", "rsync")}, rows
    lost = 0
    for row in rows:
        assert len(row["runs"]) == 1 and row["runs"][0]["ok"], row
        relay = row["runs"][0]["extra"]["relay"]
        assert relay["delay_ms"] == 10.0 and relay["loss"] == 0.005, relay
        for way in ("a_to_b", "b_to_a"):
            assert relay[way]["tx_packets"] > 0, relay
        # every packet is held for the one-way delay: none leaves more than 1 ms early
        assert relay["a_to_b"]["late_mean_ms"] > -1.0, relay
        lost += relay["a_to_b"]["lost_random"] + relay["b_to_a"]["lost_random"]
        assert row["runs"][0]["lo"] > 0       # bytes counted on the TUN ends
    assert lost > 0, "0.5 % loss over thousands of packets dropped nothing"
