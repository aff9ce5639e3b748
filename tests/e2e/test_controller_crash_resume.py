"""`cvmigrate migrate` as a real process, SIGKILLed at every sub-task boundary, resumed each time.

The emulator runs in the test process (it outlives every controller; its call
log is the witness), the receiver is a real ``cvmigrate receive`` subprocess
with mutual TLS and a token (bootstrap ``manual``: the admin's files are
passed to the controller), and the controller is killed by its own test hook
``CVMIGRATE_TEST_KILL_AFTER=<sub-task>`` right after that sub-task is
checkpointed (``<sub-task>:sent``: after the cloud call, before the checkpoint).
"""
from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cvmigrate.common.tls import new_token
from cvmigrate.controller.emulator import DEFAULT_INSTANCE_ID, DEFAULT_SECRET_KEY, EmulatorHandle
from cvmigrate.controller.pki import mint_migration_pki
from cvmigrate.controller.runner import SUBTASK_NAMES
from cvmigrate.controller.testhooks import KILL_ENV
from tests.helpers.cloudemu import write_user_json
from tests.helpers.procs import ReceiverProc, child_env, start_receiver
from tests.helpers.tcpproxy import TcpProxy

STATE_CHANGING = ("RegisterMigrationTask", "EnterRescueMode", "ExitRescueMode")


@pytest.fixture
def rescue_delay() -> float:
    """The emulator (tests/conftest.py) takes 0.3 s to enter and to leave rescue mode."""
    return 0.3


class Site:
    def __init__(self, tmp: Path, emu: EmulatorHandle) -> None:
        self.tmp, self.emu = tmp, emu
        self.tool, self.src, self.dst = tmp / "tool", tmp / "src", tmp / "dst"
        for d in (self.tool, self.src / "etc", self.src / "data", self.dst):
            d.mkdir(parents=True)
        (self.src / "etc" / "os-release").write_text("ID=ubuntu\nID_LIKE=debian\n")
        for i in range(20):
            (self.src / "data" / f"{i}.txt").write_text(f"file {i}\n" * (i * 100))
        write_user_json(self.tool)
        self.pki = mint_migration_pki(tmp / "pki", hosts=["127.0.0.1"], migration_id="e2e-test")
        self.token = new_token()
        self.token_file = tmp / "pki" / "token"
        fd = os.open(self.token_file, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, self.token.encode())
        os.close(fd)
        self.outputs: list[str] = []

    def receiver(self) -> ReceiverProc:
        return start_receiver(self.dst, "--tls-ca", self.pki.ca_cert, "--tls-cert", self.pki.server_cert,
                              "--tls-key", self.pki.server_key, "--token-file", str(self.token_file),
                              insecure=False, work_dir=self.tmp / "recv")

    def cvmigrate(self, *args: str, kill: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        env = child_env()
        env.pop(KILL_ENV, None)
        if kill:
            env[KILL_ENV] = kill
        proc = subprocess.run([sys.executable, "-m", "cvmigrate", *args], cwd=self.tool, env=env, text=True,
                              capture_output=True, timeout=timeout)
        self.outputs += [proc.stdout, proc.stderr]
        return proc

    def migrate(self, address: str, *, kill: str | None = None) -> subprocess.CompletedProcess[str]:
        return self.cvmigrate(
            "migrate", "--source", str(self.src), "--api-endpoint", self.emu.endpoint, "--receiver", address,
            "--tls-ca", self.pki.ca_cert, "--tls-cert", self.pki.client_cert, "--tls-key", self.pki.client_key,
            "--token-file", str(self.token_file), "--poll-interval", "0.1", "--yes", "--display", "plain",
            kill=kill)

    def ok_calls(self, action: str) -> int:
        return sum(1 for c in self.emu.calls(action) if c.error is None)

    def secrets(self) -> dict[str, str]:
        db = sqlite3.connect(self.tool / "cvmigrate-state.db")
        try:
            return dict(db.execute("SELECT key, value FROM secrets"))
        finally:
            db.close()

    def assert_no_secret_written(self) -> None:
        written = "\n".join(self.outputs)
        written += (self.tool / "log").read_text()
        for value in (DEFAULT_SECRET_KEY, self.token, *self.secrets().values()):
            assert value not in written


@pytest.fixture
def site(tmp_path: Path, emu: EmulatorHandle) -> Site:
    return Site(tmp_path, emu)


def _kill_points() -> list[str]:
    """After every sub-task but the last, plus between each rescue-mode call and its checkpoint."""
    points = []
    for name in SUBTASK_NAMES[:-1]:
        if name in ("enter_rescue", "exit_rescue"):
            points.append(f"{name}:sent")  # the call landed, the checkpoint did not
        points.append(name)
    return points


#: The default run's chain: the boundaries around every cloud action and both passes.
QUICK_POINTS = ["enter_rescue:sent", "wait_rescue", "reach_receiver", "full_pass", "exit_rescue:sent", "wait_running"]


@pytest.mark.parametrize("points", [
    pytest.param(QUICK_POINTS, id="cloud-boundaries"),
    pytest.param(_kill_points(), id="every-boundary", marks=pytest.mark.slow),
])
def test_sigkill_at_subtask_boundaries_in_turn_then_resume(site: Site, points: list[str]) -> None:
    """One migration, killed at each point in turn (each run resumes and dies at the next point)."""
    with site.receiver() as receiver:
        for point in points:
            proc = site.migrate(receiver.address, kill=point)
            assert proc.returncode == -signal.SIGKILL, f"{point}: {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        final = site.migrate(receiver.address)
        assert final.returncode == 0, final.stdout + final.stderr
        assert "complete" in final.stdout
    for action in STATE_CHANGING:
        assert site.ok_calls(action) == 1, (action, [c for c in site.emu.calls(action)])
    assert site.emu.instance_state(DEFAULT_INSTANCE_ID) == "RUNNING"
    assert (site.dst / "data" / "19.txt").read_text() == (site.src / "data" / "19.txt").read_text()
    # the resumed runs started where the killed ones stopped: every sub-task ran once, enter/exit twice
    db = sqlite3.connect(site.tool / "cvmigrate-state.db")
    attempts = dict(db.execute("SELECT name, attempts FROM subtasks"))
    db.close()
    assert attempts.pop("enter_rescue") == 2 and attempts.pop("exit_rescue") == 2
    assert set(attempts.values()) == {1}, attempts

    status = site.cvmigrate("status", "--json")
    assert status.returncode == 0
    snap = json.loads(status.stdout)
    assert all(r["status"] == "done" for r in snap["subtasks"])
    assert snap["facts"]["enter_rescue_found"] in ("ENTER_RESCUE_MODE", "RESCUE_MODE")
    assert snap["facts"]["exit_rescue_found"] in ("EXIT_RESCUE_MODE", "RUNNING")
    assert "rescue_password" not in json.dumps(snap["facts"])
    text = site.cvmigrate("status")
    assert "complete" in text.stdout and "full_pass" in text.stdout
    site.assert_no_secret_written()


def test_clean_forces_the_target_out_of_rescue_mode(site: Site) -> None:
    with site.receiver() as receiver:
        proc = site.migrate(receiver.address, kill="reach_receiver")
        assert proc.returncode == -signal.SIGKILL
    assert site.emu.instance_state(DEFAULT_INSTANCE_ID) == "RESCUE_MODE"
    secrets = site.secrets()
    clean = site.cvmigrate("migrate", "--clean", "--api-endpoint", site.emu.endpoint, "--yes",
                           "--poll-interval", "0.1")
    assert clean.returncode == 0, clean.stderr
    assert "ExitRescueMode sent" in clean.stdout
    assert site.emu.instance_state(DEFAULT_INSTANCE_ID) == "RUNNING"
    assert not (site.tool / "cvmigrate-state.db").exists()
    assert "fail" in json.dumps(list(site.emu.tasks().values()))
    assert site.ok_calls("ExitRescueMode") == 1
    missing = site.cvmigrate("status")
    assert missing.returncode != 0 and "no migration state" in missing.stderr
    written = "\n".join(site.outputs) + (site.tool / "log").read_text()
    for value in (DEFAULT_SECRET_KEY, site.token, *secrets.values()):
        assert value not in written


def test_clean_without_yes_and_no_terminal_refuses(site: Site) -> None:
    proc = site.cvmigrate("clean", "--api-endpoint", site.emu.endpoint)
    assert proc.returncode != 0 and "--yes" in proc.stderr
    assert site.emu.calls("ExitRescueMode") == []


@pytest.mark.slow
@pytest.mark.parametrize("point", _kill_points())
def test_sigkill_at_one_boundary_of_a_fresh_migration(site: Site, point: str) -> None:
    """Slow variant: a fresh migration per kill point, killed once, then resumed to the end."""
    with site.receiver() as receiver:
        proc = site.migrate(receiver.address, kill=point)
        assert proc.returncode == -signal.SIGKILL
        final = site.migrate(receiver.address)
        assert final.returncode == 0, final.stdout + final.stderr
    for action in STATE_CHANGING:
        assert site.ok_calls(action) == 1, action
    site.assert_no_secret_written()


# ------------------------------------------------------------------ faults mid-pass, then the controller dies
class AgentSite(Site):
    """Admin-box layout: `cvmigrate agent` serves the source, the link to the receiver and to the agent are proxies.

    The agent reaches the receiver through ``link`` (cut it to lose the data
    plane), the controller reaches the agent through ``control`` (so a
    restarted agent on a new port is found at the same address, as a
    restarted daemon on a fixed port would be).
    """

    FILES, FILE_SIZE, BWLIMIT_KBPS = 128, 256 * 1024, 4096

    def __init__(self, tmp: Path, emu: EmulatorHandle) -> None:
        super().__init__(tmp, emu)
        import random as _random

        rnd = _random.Random(1234)
        big = self.src / "big"
        big.mkdir()
        for i in range(self.FILES):
            (big / f"{i:02d}.bin").write_bytes(rnd.randbytes(self.FILE_SIZE))
        (self.tool / "client.json").write_text(json.dumps(
            {"Client": {"Rsync": {"BandwidthLimit": str(self.BWLIMIT_KBPS)}}}))
        self.agent_proc: ReceiverProc | None = None
        self.recv: ReceiverProc | None = None

    def start_agent(self) -> ReceiverProc:
        work = self.tmp / "agent"
        work.mkdir(exist_ok=True)
        port_file = work / "agent.port"
        port_file.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "cvmigrate", "agent", "--listen", "127.0.0.1:0", "--port-file", str(port_file),
                "--tls-ca", self.pki.ca_cert, "--tls-cert", self.pki.server_cert, "--tls-key", self.pki.server_key,
                "--token-file", str(self.token_file)]
        self.agent_proc = ReceiverProc(self.src, argv, port_file, work / f"agent-{time.monotonic_ns()}.log",
                                       child_env()).wait_ready()
        return self.agent_proc

    def start_receiver(self) -> ReceiverProc:
        (self.tmp / "recv" / "receiver.port").unlink(missing_ok=True)
        self.recv = self.receiver()
        return self.recv

    def migrate_agent(self, receiver: str, agent: str) -> subprocess.Popen[str]:
        env = child_env()
        env.pop(KILL_ENV, None)
        return subprocess.Popen(
            [sys.executable, "-m", "cvmigrate", "migrate", "--source", str(self.src), "--agent", agent,
             "--api-endpoint", self.emu.endpoint, "--receiver", receiver,
             "--tls-ca", self.pki.ca_cert, "--tls-cert", self.pki.client_cert, "--tls-key", self.pki.client_key,
             "--token-file", str(self.token_file), "--poll-interval", "0.1", "--yes", "--display", "plain"],
            cwd=self.tool, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


FAULTS = ("agent", "receiver", "link")


def _moved_past(link: TcpProxy, threshold: int, proc: subprocess.Popen) -> Callable[[], bool]:
    """A condition for _wait_for: the link carried more than ``threshold`` bytes, or the controller ended."""
    return lambda: link.c2s > threshold or proc.poll() is not None


def _run_fault_scenario(site: AgentSite, seed: int) -> None:
    """Each run: the controller starts (or resumes), the seed's faults hit mid-pass, then it is SIGKILLed."""
    rnd = random.Random(seed)
    runs = rnd.randint(1, 2)
    total = site.FILES * site.FILE_SIZE
    site.start_receiver()
    site.start_agent()
    assert site.recv is not None and site.agent_proc is not None
    with TcpProxy(site.recv.port) as link, TcpProxy(site.agent_proc.port) as control:
        for run in range(runs):
            faults = rnd.sample(FAULTS, rnd.randint(1, len(FAULTS)))
            proc = site.migrate_agent(link.address, control.address)
            start = link.c2s
            try:
                for fault in faults:
                    # mid-pass: data is flowing on the link (a share of the tree, never all of it)
                    threshold = start + int(total * rnd.uniform(0.015, 0.04))
                    _wait_for(_moved_past(link, threshold, proc), 120, f"data before {fault}")
                    assert proc.poll() is None, (f"seed {seed}: controller ended early:\n"
                                                 f"{proc.stdout.read() if proc.stdout else ''}")
                    if fault == "agent":
                        site.agent_proc.kill()
                        time.sleep(rnd.uniform(0.1, 1.0))
                        control.set_upstream(site.start_agent().port)
                    elif fault == "receiver":
                        site.recv.kill()
                        time.sleep(rnd.uniform(0.1, 1.0))
                        link.set_upstream(site.start_receiver().port)
                    else:
                        link.cut(hold_for=rnd.uniform(0.2, 1.5))
                    start = link.c2s
                # the controller dies once the pass moves again after the last fault
                threshold = start + int(total * 0.02)
                _wait_for(_moved_past(link, threshold, proc), 120, "data after the faults")
                assert proc.poll() is None, f"seed {seed} run {run}: controller ended early"
                proc.kill()
            finally:
                if proc.poll() is None:
                    proc.kill()
                out = proc.communicate()[0]
                site.outputs.append(out)
            assert proc.returncode == -signal.SIGKILL, f"seed {seed} run {run} ({faults}): {proc.returncode}\n{out}"
        final = site.migrate_agent(link.address, control.address)
        out = final.communicate(timeout=300)[0]
        site.outputs.append(out)
        assert final.returncode == 0, f"seed {seed}: the resumed run failed:\n{out}"
        assert "complete" in out
    site.agent_proc.stop()
    site.recv.stop()
    for action in STATE_CHANGING:
        assert site.ok_calls(action) == 1, (seed, action, site.emu.calls(action))
    assert site.emu.instance_state(DEFAULT_INSTANCE_ID) == "RUNNING"
    for f in sorted((site.src / "big").iterdir()):
        assert (site.dst / "big" / f.name).read_bytes() == f.read_bytes(), f.name
    site.assert_no_secret_written()


def test_agent_receiver_and_link_faults_mid_pass_then_controller_killed(tmp_path: Path, emu: EmulatorHandle) -> None:
    """The default case: agent, receiver and link all fail mid-pass, the controller is killed, the re-run completes."""
    _run_fault_scenario(AgentSite(tmp_path, emu), seed=3)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(100, 106))
def test_seeded_faults_mid_pass_then_controller_killed(tmp_path: Path, emu: EmulatorHandle, seed: int) -> None:
    _run_fault_scenario(AgentSite(tmp_path, emu), seed=seed)
