"""Parallel passes against a receiver with worker processes (``receive --workers N``), end to end.

Real processes: ``cvmigrate receive --workers`` (a supervisor forking gRPC
servers on one SO_REUSEPORT port) and ``cvmigrate push --streams``; rsync is
the oracle.  A worker SIGKILLed mid-pass costs its streams: the agent opens
the pass again, the supervisor starts the worker again, the result is exact.
Placement: every stream of a pass gets a worker of its own while one is free
(a stream the kernel put beside another is refused and connects again).
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.oracle import assert_identical
from tests.helpers.procs import TEST_TOKEN, child_env, parse_summary, run_push, start_receiver

pytestmark = pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync (the oracle) is missing")

EXCLUDES = ["/.cvmigrate/"]


def build(root: Path, dirs: int, files: int, size: int) -> None:
    for d in range(dirs):
        sub = root / f"dir{d:03}" / "sub"
        sub.mkdir(parents=True)
        for f in range(files):
            (sub / f"file{f}.bin").write_bytes(os.urandom(size))
        (root / f"dir{d:03}" / "note.txt").write_text(f"directory {d}\n")
    os.link(root / "dir000" / "note.txt", root / "note-link")


def workers_of(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(x) for x in f.read().split()]


def admissions(log: str) -> dict[str, list[int]]:
    """Pass id (its first 12 characters) -> the worker pid of each of its admitted streams, from the log."""
    passes: dict[str, list[int]] = {}
    for pass_id, pid in re.findall(r"stream \d+ of \d+ of pass (\w+) admitted in worker (\d+)", log):
        passes.setdefault(pass_id, []).append(int(pid))
    return passes


def test_streams_spread_over_worker_processes(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    build(src, 30, 5, 20_000)
    with start_receiver(dst, "--workers", "3", work_dir=tmp_path / "recv") as rp:
        assert len(workers_of(rp.proc.pid)) == 3
        res = run_push(src, rp.address, "--streams", "4", "--no-default-excludes")
        assert res.checked_summary()["streams"] == 4
        assert_identical(src, dst, EXCLUDES)
        pids = set(re.findall(r"admitted in worker (\d+)", rp.output()))
        # four streams on three workers: each worker serves at least one (one serves two)
        assert pids == {str(p) for p in workers_of(rp.proc.pid)}, rp.output()[-3000:]
        again = run_push(src, rp.address, "--streams", "2", "--no-default-excludes")
        assert again.checked_summary()["bytes_sent"] == 0, again.describe()


def test_each_stream_of_a_pass_is_served_by_a_worker_of_its_own(tmp_path):
    """The kernel's hash alone puts both streams of a pass on one of two workers about every other pass;
    placement sends the second on, so every pass runs on both (the agent counts its reconnects).

    Every pass carries new content under a --bwlimit that makes it last about a second: a stream that
    lands beside one whose work is already finished is rightly taken where it lands (nothing runs in
    parallel any more), so a pass must stay open long enough for its streams to overlap.
    """
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    build(src, 12, 3, 20_000)
    files = sorted(src.glob("dir*/sub/*.bin"))
    with start_receiver(dst, "--workers", "2", work_dir=tmp_path / "recv") as rp:
        retries = 0
        for _ in range(8):
            for f in files:
                f.write_bytes(os.urandom(20_000))
            res = run_push(src, rp.address, "--streams", "2", "--no-default-excludes", "--bwlimit", "700")
            summary = res.checked_summary()
            assert summary["streams"] == 2
            retries += summary["placement_retries"]
        log = rp.output()
        passes = admissions(log)
        assert len(passes) == 8, log[-3000:]
        for pass_id, pids in passes.items():
            assert len(pids) == 2 and len(set(pids)) == 2, f"pass {pass_id}: streams on workers {pids}"
        assert set().union(*map(set, passes.values())) == set(workers_of(rp.proc.pid))
        # every refusal the receiver logged is a reconnect the agent counted, and no other
        assert retries == len(re.findall(r"placement: stream \d of 2 of pass", log)), log[-3000:]
        assert_identical(src, dst, EXCLUDES)


def test_a_receiver_without_workers_never_refuses_a_stream(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    build(src, 6, 2, 10_000)
    with start_receiver(dst, "--workers", "1", work_dir=tmp_path / "recv") as rp:
        for _ in range(3):
            res = run_push(src, rp.address, "--streams", "2", "--no-default-excludes")
            assert res.checked_summary()["placement_retries"] == 0
        log = rp.output()
        passes = admissions(log)
        assert len(passes) == 3 and all(pids == [rp.proc.pid] * 2 for pids in passes.values()), log[-3000:]
        assert "placement:" not in log
        assert_identical(src, dst, EXCLUDES)


@pytest.mark.slow
def test_worker_killed_mid_pass_resumes_exactly(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    build(src, 16, 4, 1 << 20)     # 64 MiB: at 8 MB/s the pass takes about 8 s
    with start_receiver(dst, "--workers", "2", work_dir=tmp_path / "recv") as rp:
        argv = [sys.executable, "-m", "cvmigrate", "push", str(src), "--to", rp.address, "--streams", "2",
                "--no-default-excludes", "--bwlimit", "8000", "--insecure", "--json"]
        push = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=child_env({"CVMIGRATE_TOKEN": TEST_TOKEN}))
        deadline = time.monotonic() + 60
        while not any(dst.glob("dir*/sub/*")) and time.monotonic() < deadline and push.poll() is None:
            time.sleep(0.05)
        # the worker serving a stream of this pass (the kernel may put both streams on one worker, and
        # killing an idle one would test nothing)
        while time.monotonic() < deadline and not re.search(r"admitted in worker (\d+)", rp.output()):
            time.sleep(0.05)
        serving = re.search(r"admitted in worker (\d+)", rp.output())
        assert serving, rp.output()[-2000:]
        victim = int(serving.group(1))
        assert victim in workers_of(rp.proc.pid)
        os.kill(victim, signal.SIGKILL)
        out, err = push.communicate(timeout=300)
        assert push.returncode == 0, err.decode(errors="replace")[-4000:]
        summary = parse_summary(out.decode())
        assert summary is not None and summary["resumed"] is True, out.decode()[-4000:]
        assert_identical(src, dst, EXCLUDES)
        deadline = time.monotonic() + 10
        while len(workers_of(rp.proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert victim not in workers_of(rp.proc.pid) and len(workers_of(rp.proc.pid)) == 2


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare")
def test_without_shared_memory_the_receiver_serves_from_one_process(tmp_path):
    """A rescue system without a usable /dev/shm (sem_open fails; in a qemu-user chroot with ENOSYS):
    the receiver says so once and serves from one process; a parallel pass still arrives exact."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    build(src, 6, 3, 10_000)
    no_shm = ("unshare", "--mount", "sh", "-c", 'mount -t tmpfs -o ro,size=1m tmpfs /dev/shm && exec "$@"', "sh")
    with start_receiver(dst, "--workers", "3", work_dir=tmp_path / "recv", prefix=no_shm) as rp:
        assert workers_of(rp.proc.pid) == []
        res = run_push(src, rp.address, "--streams", "3", "--no-default-excludes")
        assert res.returncode == 0, res.describe()
        assert_identical(src, dst, EXCLUDES)
        assert "serving from one process: worker processes need shared memory" in rp.output()
