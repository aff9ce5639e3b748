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
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from cvmigrate.common.tls import mint_migration_pki, new_token
from cvmigrate.controller.emulator import (DEFAULT_INSTANCE_ID, DEFAULT_REGION, DEFAULT_SECRET_ID, DEFAULT_SECRET_KEY,
                                           EmulatorHandle, default_config, start_emulator)
from cvmigrate.controller.stages import KILL_ENV, SUBTASK_NAMES
from tests.helpers.procs import ReceiverProc, child_env, start_receiver

STATE_CHANGING = ("RegisterMigrationTask", "EnterRescueMode", "ExitRescueMode")


@pytest.fixture
def emu() -> Iterator[EmulatorHandle]:
    config = default_config()
    config["delays"] = {"enter_rescue": 0.3, "exit_rescue": 0.3}
    handle = start_emulator(config)
    try:
        yield handle
    finally:
        handle.stop()


class Site:
    def __init__(self, tmp: Path, emu: EmulatorHandle) -> None:
        self.tmp, self.emu = tmp, emu
        self.tool, self.src, self.dst = tmp / "tool", tmp / "src", tmp / "dst"
        for d in (self.tool, self.src / "etc", self.src / "data", self.dst):
            d.mkdir(parents=True)
        (self.src / "etc" / "os-release").write_text("ID=ubuntu\nID_LIKE=debian\n")
        for i in range(20):
            (self.src / "data" / f"{i}.txt").write_text(f"file {i}\n" * (i * 100))
        (self.tool / "user.json").write_text(json.dumps({
            "SecretId": DEFAULT_SECRET_ID, "SecretKey": DEFAULT_SECRET_KEY, "Region": DEFAULT_REGION,
            "InstanceId": DEFAULT_INSTANCE_ID}))
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
    assert site.emu.instance(DEFAULT_INSTANCE_ID)["InstanceState"] == "RUNNING"
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
    assert site.emu.instance(DEFAULT_INSTANCE_ID)["InstanceState"] == "RESCUE_MODE"
    secrets = site.secrets()
    clean = site.cvmigrate("migrate", "--clean", "--api-endpoint", site.emu.endpoint, "--yes",
                           "--poll-interval", "0.1")
    assert clean.returncode == 0, clean.stderr
    assert "ExitRescueMode sent" in clean.stdout
    assert site.emu.instance(DEFAULT_INSTANCE_ID)["InstanceState"] == "RUNNING"
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
