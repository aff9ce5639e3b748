"""Block-level migration with real processes: `cvmigrate receive --block-target` and
`cvmigrate push --block ... --json`, a loop device as the target, and SIGKILL of the agent
mid-push followed by a resume that stays within the re-send bound.

Re-sent bytes are measured on the wire through the counting TCP proxy:

    resent = W(killed run) + W(resume run) - W(fresh copy)

and must stay within max(64 MiB, 2 % of the image) + SLACK (framing of the extra stream).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.blockimg import device_hash
from tests.helpers.procs import TEST_TOKEN, child_env, parse_summary, start_receiver
from tests.helpers.tcpproxy import TcpProxy

MiB = 1 << 20
SLACK = 4 * MiB


def push_argv(src: Path | str, address: str, target: Path | str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "cvmigrate", "push", "--block", str(src), "--to", address,
            "--target-device", str(target), "--insecure", "--json", *extra]


def run_block_push(src, address, target, *extra, timeout=300):
    p = subprocess.run(push_argv(src, address, target, *extra), capture_output=True, text=True,
                       timeout=timeout, env=child_env({"CVMIGRATE_TOKEN": TEST_TOKEN}))
    return p.returncode, parse_summary(p.stdout), p.stderr


def random_image(path: Path, size: int, hole_every: int = 0) -> None:
    """Random data (incompressible), optionally with an all-zero hole every N MiB."""
    with open(path, "wb") as f:
        f.truncate(size)
        for off in range(0, size, 8 * MiB):
            n = min(8 * MiB, size - off)
            f.seek(off)
            f.write(os.urandom(n))
        if hole_every:
            for off in range(0, size, hole_every * MiB):
                f.seek(off)
                f.write(bytes(MiB))


def test_cli_push_to_loop_device_and_refusals(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("losetup needs root")
    src = tmp_path / "src.img"
    random_image(src, 24 * MiB, hole_every=4)
    dst_img = tmp_path / "dst.img"
    with open(dst_img, "wb") as f:
        f.truncate(32 * MiB)
    small = tmp_path / "small.img"
    with open(small, "wb") as f:
        f.truncate(8 * MiB)
    dev = subprocess.run(["losetup", "-f", "--show", str(dst_img)], check=True, capture_output=True,
                         text=True).stdout.strip()
    try:
        with start_receiver(tmp_path / "root", "--block-target", dev, "--block-target", str(small),
                            "--state-dir", str(tmp_path / "state")) as rp:
            rc, s, err = run_block_push(src, rp.address, dev)
            assert rc == 0, err
            for key in ("blocks_total", "blocks_zero", "blocks_unchanged", "blocks_sent", "bytes_on_wire"):
                assert key in s
            assert (s["blocks_total"], s["blocks_zero"], s["blocks_sent"]) == (24, 6, 18)
            assert s["bytes_on_wire"] >= 18 * MiB                    # random data: sent raw
            assert device_hash(dev, 24 * MiB) == device_hash(src, 24 * MiB)
            rc, s, err = run_block_push(src, rp.address, dev)
            assert rc == 0 and s["blocks_sent"] == 0 and s["blocks_unchanged"] == 18, err

            rc, s, err = run_block_push(src, rp.address, tmp_path / "unknown.img")
            assert rc != 0 and "--block-target" in err and s is not None and s["exit_code"] == rc  # --json on failure
            rc, s, err = run_block_push(src, rp.address, small)
            assert rc != 0 and "at least as large" in err
            p = subprocess.run([sys.executable, "-m", "cvmigrate", "push", "--to", rp.address, "--insecure"],
                               capture_output=True, text=True, env=child_env())
            assert p.returncode == 2 and "--block" in p.stderr
    finally:
        subprocess.run(["losetup", "-d", dev], capture_output=True)


def _kill_and_resume(tmp_path: Path, size: int) -> dict:
    src = tmp_path / "src.img"
    random_image(src, size)
    targets = [tmp_path / "fresh.img", tmp_path / "dst.img"]
    for t in targets:
        with open(t, "wb") as f:
            f.truncate(size)
    bound = max(64 * MiB, size * 2 // 100)
    with start_receiver(tmp_path / "root", *(a for t in targets for a in ("--block-target", str(t))),
                        "--state-dir", str(tmp_path / "state")) as rp, TcpProxy(rp.port) as proxy:
        w0 = proxy.c2s
        rc, fresh, err = run_block_push(src, proxy.address, targets[0])
        assert rc == 0, err
        w_fresh = proxy.c2s - w0

        w0 = proxy.c2s
        agent = subprocess.Popen(push_argv(src, proxy.address, targets[1]), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, env=child_env({"CVMIGRATE_TOKEN": TEST_TOKEN}))
        try:
            deadline = time.monotonic() + 120
            while proxy.c2s - w0 < size * 2 // 5:                     # ~40 % on the wire
                assert agent.poll() is None, agent.communicate()
                assert time.monotonic() < deadline
                time.sleep(0.01)
            agent.send_signal(signal.SIGKILL)
        finally:
            agent.kill()
            agent.communicate()
        time.sleep(0.5)
        w_killed = proxy.c2s - w0

        w0 = proxy.c2s
        rc, resumed, err = run_block_push(src, proxy.address, targets[1])
        assert rc == 0, err
        w_resume = proxy.c2s - w0
    assert resumed["resumed"] and resumed["blocks_unchanged"] > 0
    assert device_hash(targets[1], size) == device_hash(src, size)
    resent = w_killed + w_resume - w_fresh
    assert resent <= bound + SLACK, (f"re-sent {resent / MiB:.1f} MiB after a kill at {w_killed / MiB:.0f} MiB, "
                                     f"bound {bound / MiB:.0f} MiB + slack")
    return {"resent": resent, "killed_at": w_killed, "fresh": w_fresh, "resume": w_resume}


def test_kill_agent_and_resume_keeps_bound(tmp_path):
    _kill_and_resume(tmp_path, 192 * MiB)


@pytest.mark.slow
def test_kill_agent_and_resume_1gib(tmp_path):
    _kill_and_resume(tmp_path, 1024 * MiB)
