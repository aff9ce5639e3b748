"""The stage machine against the emulator through the real SDK, with a real receiver on port 0.

Every migration here runs in-process (bootstrap ``local``: the receiver is
started by the context with this migration's minted certificates and token),
so the call log, the checkpoint and the target tree are all inspectable.
"""
from __future__ import annotations

import json
import logging
import os
import random
import sqlite3
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cvmigrate import cli
from cvmigrate.common.errors import CheckFailed, CvmError, StageTimeout
from cvmigrate.common.tls import MigrationTokens, PkiPaths
from cvmigrate.controller.checkpoint import SCHEMA_VERSION, Checkpoint, StateFileError
from cvmigrate.controller.cloud import CloudAuthError
from cvmigrate.controller.config import load_client_config, load_user_config
from cvmigrate.controller.context import Context, Options
from cvmigrate.controller.demo import start_target_receiver
from cvmigrate.controller.emulator import (
    DEFAULT_INSTANCE_ID,
    DEFAULT_REGION,
    DEFAULT_SECRET_KEY,
    EmulatorHandle,
)
from cvmigrate.controller.rescue_password import new_rescue_password
from cvmigrate.controller.runner import SUBTASK_NAMES, SUBTASKS, run_stages
from cvmigrate.receiver.server import create_server
from cvmigrate.receiver.session import ReceiverConfig
from tests.helpers.cloudemu import cloud_client, write_user_json


class Env:
    """One migration's files: configs, state, source, target, plus the receivers it started."""

    def __init__(self, tmp: Path, emu: EmulatorHandle) -> None:
        self.tmp, self.emu = tmp, emu
        self.src, self.dst, self.tool = tmp / "src", tmp / "dst", tmp / "tool"
        for d in (self.src / "etc", self.src / "srv", self.dst, self.tool):
            d.mkdir(parents=True, exist_ok=True)
        (self.src / "etc" / "os-release").write_text('ID=ubuntu\nID_LIKE=debian\nPRETTY_NAME="Ubuntu 22.04"\n')
        rnd = random.Random(3)
        for i in range(30):
            (self.src / "srv" / f"f{i}.bin").write_bytes(rnd.randbytes(rnd.randint(0, 50_000)))
        os.symlink("f1.bin", self.src / "srv" / "link")
        self.receivers: list[Any] = []
        #: what the migration's "local" bootstrap calls; a test may put another receiver there
        self.local_receiver: Callable[[PkiPaths | None, MigrationTokens | None], str] = self.start_receiver
        self.write_user()
        self.client_json = self.tool / "client.json"
        self.client_json.write_text("{}")
        self.state = self.tool / "cvmigrate-state.db"

    def write_user(self, **over: Any) -> None:
        self.user_json = write_user_json(self.tool, **over)

    def start_receiver(self, pki: PkiPaths | None, tokens: MigrationTokens | None) -> str:
        assert pki is not None, "bootstrap local mints this migration's PKI"
        handle = start_target_receiver(self.dst, pki, tokens)
        self.receivers.append(handle)
        return f"127.0.0.1:{handle.port}"

    def context(self, ckpt: Checkpoint, *, key: str = DEFAULT_SECRET_KEY, **opts: Any) -> Context:
        user = load_user_config(self.user_json)
        client = load_client_config(self.client_json, known_subtasks=SUBTASK_NAMES)
        cloud = cloud_client(self.emu.endpoint, key=key)
        o = Options(source=str(self.src), cutover="after-pass", bootstrap="local", poll_interval=0.05,
                    state_dir=str(self.tool), verify_target=str(self.dst))
        for k, v in opts.items():
            setattr(o, k, v)
        return Context(opts=o, user=user, client=client, cloud=cloud, ckpt=ckpt, local_receiver=self.local_receiver)

    def migrate(self, **opts: Any) -> Any:
        with Checkpoint(self.state) as ckpt:
            try:
                return run_stages(self.context(ckpt, **opts))
            finally:
                self.stop_receivers()

    def stop_receivers(self) -> None:
        while self.receivers:
            self.receivers.pop().stop(grace=1)

    def ok_calls(self, action: str) -> int:
        return sum(1 for c in self.emu.calls(action) if c.error is None)


@pytest.fixture
def env(tmp_path: Path, emu: EmulatorHandle) -> Iterator[Env]:
    e = Env(tmp_path, emu)
    try:
        yield e
    finally:
        e.stop_receivers()


def _status(ck: Checkpoint, name: str) -> str:
    """Sub-task ``name``'s status in the state file (every sub-task is registered before the first runs)."""
    row = ck.subtask(name)
    assert row is not None, f"{ck.path}: no sub-task {name}"
    return row.status


def _secrets(path: Path) -> dict[str, str]:
    db = sqlite3.connect(path)
    try:
        return dict(db.execute("SELECT key, value FROM secrets").fetchall())
    finally:
        db.close()


# ---------------------------------------------------------------------------- happy path
def test_happy_path_three_stages(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    outcome = env.migrate()
    assert outcome.completed and outcome.ran == list(SUBTASK_NAMES)
    assert (env.dst / "srv" / "f7.bin").read_bytes() == (env.src / "srv" / "f7.bin").read_bytes()
    assert os.readlink(env.dst / "srv" / "link") == "f1.bin"
    # each state-changing action exactly once, the target back to RUNNING, MSP finished
    assert env.ok_calls("EnterRescueMode") == 1 and env.ok_calls("ExitRescueMode") == 1
    assert env.ok_calls("RegisterMigrationTask") == 1
    assert env.emu.instance_state(DEFAULT_INSTANCE_ID) == "RUNNING"
    (task,) = env.emu.tasks().values()
    assert json.dumps(task).count("finish") >= 1
    # the checkpoint: 0600, every sub-task done, secrets in their own table, never in the log
    assert stat.S_IMODE(env.state.stat().st_mode) == 0o600
    with Checkpoint(env.state, readonly=True) as ck:
        snap = ck.snapshot()
        assert all(r["status"] == "done" for r in snap["subtasks"])
        assert snap["facts"]["verification"]["compared_entries"] > 30
        assert [p["kind"] for p in snap["passes"]] == ["full", "final"]
    secrets = _secrets(env.state)
    assert set(secrets) == {"rescue_password", "token", "control_token", "agent_token"}
    text = caplog.text + json.dumps(snap)
    for value in (*secrets.values(), DEFAULT_SECRET_KEY):
        assert value not in text
    # a second run finds everything done and calls nothing that changes state
    before = len(env.emu.calls())
    again = env.migrate()
    assert again.completed and again.ran == [] and len(env.emu.calls()) == before


def test_generated_passwords_pass_the_rescue_rules() -> None:
    from cvmigrate.controller.emulator.actions_cvm import check_password

    for _ in range(200):
        check_password(new_rescue_password(), "Ubuntu")
        check_password(new_rescue_password(), "Windows Server 2019")


# ---------------------------------------------------------------------------- faults
def test_throttling_and_internal_errors_are_retried(env: Env) -> None:
    env.emu.inject("DescribeInstancesStatus", error="RequestLimitExceeded", count=3)
    env.emu.inject("DescribeInstances", error="InternalError", count=1)
    env.emu.inject("RegisterMigrationTask", error="RequestLimitExceeded", count=1)
    env.emu.inject("EnterRescueMode", error="InternalError", count=1)
    env.emu.inject("ExitRescueMode", error="RequestLimitExceeded", count=2)
    assert env.migrate().completed
    errors = [c.error for c in env.emu.calls() if c.error]
    assert errors.count("RequestLimitExceeded") == 6 and errors.count("InternalError") == 2
    assert env.ok_calls("EnterRescueMode") == 1 and env.ok_calls("ExitRescueMode") == 1
    assert env.ok_calls("RegisterMigrationTask") == 1


def test_auth_failure_is_clear_and_changes_nothing(env: Env) -> None:
    with pytest.raises(CloudAuthError) as info:
        env.migrate(key="wrong-key-wrong-key-wrong-key")
    assert info.value.exit_code != 0
    assert "AuthFailure" in str(info.value) and "SecretKey" in str(info.value)
    assert env.emu.calls("EnterRescueMode") == [] and env.emu.calls("RegisterMigrationTask") == []
    assert env.emu.instance_state(DEFAULT_INSTANCE_ID) == "RUNNING"
    with Checkpoint(env.state, readonly=True) as ck:
        assert _status(ck, "check_credentials") == "failed"
        assert _status(ck, "enter_rescue") == "pending"


def test_auth_failure_through_the_cli(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    env.write_user(SecretKey="not-the-right-key-at-all")
    rc = cli.main(["migrate", "--user-json", str(env.user_json), "--source", str(env.src), "--api-endpoint",
                   env.emu.endpoint, "--log-file", str(env.tmp / "log"), "--yes", "--display", "none",
                   "--receiver", "127.0.0.1:9", "--insecure"])
    err = capsys.readouterr().err
    assert rc == 5
    last = err.strip().splitlines()[-1]
    assert last.startswith("cvmigrate migrate: error: ") and "AuthFailure" in last
    assert "not-the-right-key-at-all" not in err + (env.tmp / "log").read_text()
    assert env.emu.calls("EnterRescueMode") == []


# ---------------------------------------------------------------------------- wrong states
def test_instance_already_in_rescue_mode_is_not_sent_enter_again(env: Env) -> None:
    env.emu.set_instance_state(DEFAULT_INSTANCE_ID, "RESCUE_MODE")  # an earlier run crashed, state file lost
    assert env.migrate().completed
    assert env.emu.calls("EnterRescueMode") == []
    assert env.ok_calls("ExitRescueMode") == 1
    with Checkpoint(env.state, readonly=True) as ck:
        assert ck.fact("enter_rescue_sent") is False and ck.fact("enter_rescue_found") == "RESCUE_MODE"


def test_instance_already_in_rescue_mode_ssh_without_password_says_clean(env: Env) -> None:
    env.emu.set_instance_state(DEFAULT_INSTANCE_ID, "RESCUE_MODE")
    with pytest.raises(CheckFailed, match="cvmigrate clean"):
        env.migrate(bootstrap="ssh")
    assert env.emu.calls("EnterRescueMode") == []


def test_instance_in_a_dead_state_is_refused(env: Env) -> None:
    env.emu.set_instance_state(DEFAULT_INSTANCE_ID, "SHUTDOWN")
    with pytest.raises(CheckFailed, match="SHUTDOWN"):
        env.migrate()
    assert env.emu.calls("EnterRescueMode") == []


def test_data_disk_index_beyond_the_target_names_the_field(env: Env) -> None:
    (env.src / "data").mkdir()
    env.write_user(DataDisks=[{"Index": 2, "Size": 50, "MountPoint": "/data"}])
    with pytest.raises(CheckFailed, match=r"DataDisks\[0\]\.Index is 2 but target .* has 1 data disk"):
        env.migrate()
    assert env.emu.calls("EnterRescueMode") == []


# ---------------------------------------------------------------------------- timeouts and resume
def test_timeout_from_client_json_then_resume(env: Env) -> None:
    env.emu.state.delays["enter_rescue"] = 1.5
    env.client_json.write_text(json.dumps({"Cvmigrate": {"Timeouts": {"wait_rescue": 0.3}}}))
    with pytest.raises(StageTimeout):
        env.migrate()
    with Checkpoint(env.state, readonly=True) as ck:
        assert _status(ck, "enter_rescue") == "done" and _status(ck, "wait_rescue") == "failed"
    env.client_json.write_text("{}")
    outcome = env.migrate()
    assert outcome.completed and outcome.ran[0] == "wait_rescue"
    assert env.ok_calls("EnterRescueMode") == 1 and env.ok_calls("ExitRescueMode") == 1


def test_unknown_timeout_name_is_a_config_error(env: Env) -> None:
    env.client_json.write_text(json.dumps({"Cvmigrate": {"Timeouts": {"wait_rescu": 10}}}))
    with pytest.raises(CvmError, match=r"Cvmigrate\.Timeouts\.wait_rescu.*"
                                       r"did you mean Cvmigrate\.Timeouts\.wait_rescue"):
        load_client_config(env.client_json, known_subtasks=SUBTASK_NAMES)


def test_receiver_failure_then_resume_keeps_cloud_actions_single(env: Env) -> None:
    broken = {"n": 0}
    good = env.local_receiver

    def flaky(pki: PkiPaths | None, tokens: MigrationTokens | None) -> str:
        broken["n"] += 1
        if broken["n"] == 1:
            raise CvmError("receiver did not start (injected)")
        return good(pki, tokens)

    env.local_receiver = flaky
    with pytest.raises(CvmError, match="injected"):
        env.migrate()
    assert env.migrate().completed
    assert env.ok_calls("EnterRescueMode") == 1 and env.ok_calls("RegisterMigrationTask") == 1
    statuses = [json.dumps(t) for t in env.emu.tasks().values()]
    assert "fail" in statuses[0] and "finish" in statuses[0]  # failed, then set back and finished


def test_a_receiver_that_refuses_our_token_fails_reach_receiver_at_once(env: Env) -> None:
    """reach_receiver: a token the receiver refuses (another migration's receiver, Ping closed to tokenless
    callers) fails the sub-task now, naming the fix -- not after 30 minutes of retries -- and no pass starts."""
    from cvmigrate.common.auth import TokenAuthInterceptor
    from cvmigrate.common.tls import TransportSecurity, new_token

    def foreign(pki: PkiPaths | None, tokens: MigrationTokens | None) -> str:
        assert pki is not None
        sec = TransportSecurity.from_pki(pki, "server", tokens)
        handle = create_server(ReceiverConfig(root=str(env.dst)), "127.0.0.1:0",
                               credentials=sec.server_credentials(),
                               interceptors=(TokenAuthInterceptor(new_token(), open_methods=()),))
        env.receivers.append(handle)
        return f"127.0.0.1:{handle.port}"

    env.local_receiver = foreign
    t0 = time.monotonic()
    with pytest.raises(CheckFailed, match="refused us.*this migration's"):
        env.migrate()
    assert time.monotonic() - t0 < 60
    with Checkpoint(env.state, readonly=True) as ck:
        assert _status(ck, "reach_receiver") == "failed" and ck.passes() == []
    assert os.listdir(env.dst) == []


def test_a_pass_that_loses_the_receiver_is_retried_and_completes(env: Env) -> None:
    """passes.py: the receiver goes away just before the full pass and is back a second later on the same port;
    the failed attempt is checkpointed with its error, the retry (after the policy's pause) completes the pass."""
    import threading

    from cvmigrate.controller.progress import Display

    started: dict[str, Any] = {}
    plain_receiver = env.local_receiver

    def local(pki: PkiPaths | None, tokens: MigrationTokens | None) -> str:
        started.update(address=plain_receiver(pki, tokens), pki=pki, tokens=tokens)
        return str(started["address"])

    def come_back(port: int) -> None:
        time.sleep(1.0)
        env.receivers.append(start_target_receiver(env.dst, started["pki"], started["tokens"],
                                                   address=f"127.0.0.1:{port}"))

    class Outage(Display):
        def subtask_finished(self, name: str, seconds: float, note: str = "") -> None:
            if name == "reach_receiver":
                env.stop_receivers()
                port = int(started["address"].rsplit(":", 1)[1])
                threading.Thread(target=come_back, args=(port,), daemon=True).start()

    env.local_receiver = local
    with Checkpoint(env.state) as ckpt:
        ctx = env.context(ckpt)
        ctx.display = Outage()
        try:
            assert run_stages(ctx).completed
        finally:
            env.stop_receivers()
        passes = [p for p in ckpt.passes() if p["kind"] == "full"]
    assert len(passes) >= 2 and "error" in passes[0]["result"], passes
    assert passes[-1]["result"]["files"] == 31 and passes[-1]["result"]["errors"] == []


def test_cutover_manual_ends_when_the_file_appears(env: Env) -> None:
    flag = env.tmp / "cutover-now"
    flag.write_text("")  # already there: one incremental round, then the final pass
    assert env.migrate(cutover="manual", cutover_file=str(flag), cutover_key=False, pass_interval=0.1).completed
    with Checkpoint(env.state, readonly=True) as ck:
        assert [p["kind"] for p in ck.passes()] == ["full", "final"]


# ---------------------------------------------------------------------------- checkpoint file
def test_checkpoint_refuses_a_newer_schema_and_keeps_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with Checkpoint(path) as ck:
        ck.register_subtasks((s.name, s.stage) for s in SUBTASKS)
        ck.start("validate_config")
        ck.finish("validate_config", {"a": [1, 2]})
        first = ck.first_unfinished()
        assert ck.fact("a") == [1, 2] and first is not None and first.name == "check_credentials"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    os.chmod(path, 0o644)
    with Checkpoint(path):
        pass
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    db.commit()
    db.close()
    with pytest.raises(StateFileError, match="newer cvmigrate"):
        Checkpoint(path)


def test_cutover_now_then_a_state_file_of_another_instance_is_refused(env: Env) -> None:
    assert env.migrate(cutover="now").completed
    with Checkpoint(env.state, readonly=True) as ck:
        assert [p["kind"] for p in ck.passes()] == ["full"]
    env.emu.add_instance({"InstanceId": "ins-other001", "Region": DEFAULT_REGION, "InstanceState": "RUNNING",
                          "OsName": "Ubuntu Server 22.04 LTS 64bit"})
    env.write_user(InstanceId="ins-other001")
    with pytest.raises(CvmError, match="belongs to the migration to ins-cvmemu01"):
        env.migrate()


def test_check_flag_changes_nothing(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli.main(["migrate", "--check", "--user-json", str(env.user_json), "--source", str(env.src),
                   "--api-endpoint", env.emu.endpoint, "--log-file", str(env.tmp / "log"), "--display", "plain"])
    out = capsys.readouterr().out
    assert rc == 0 and "pre-checks passed" in out and "check_capacity: done" in out
    assert not env.state.exists()
    assert env.emu.calls("EnterRescueMode") == [] and env.emu.calls("RegisterMigrationTask") == []


def test_bwlimit_command_changes_a_running_pass(tmp_path):
    """`cvmigrate bwlimit` writes the override; the stage runner applies it to the live pass."""
    import argparse
    import types

    from cvmigrate.controller import passes
    from cvmigrate.controller.checkpoint import Checkpoint
    from cvmigrate.controller.config import ClientConfig, RsyncConfig
    from cvmigrate.controller.migrate import run_bwlimit
    from tests.helpers.context import offline_context

    state = tmp_path / "state.db"
    ckpt = Checkpoint(state)
    ctx = offline_context(client=ClientConfig(rsync=RsyncConfig(bandwidth_limit_kbps=100)), ckpt=ckpt)
    assert passes.bwlimit(ctx) == 100
    run_bwlimit(argparse.Namespace(kbps=2048, state=str(state), user_json="user.json"))
    rates: list[int | None] = []
    runner = types.SimpleNamespace(set_bandwidth=rates.append)   # the PassRunner's limit knob
    assert passes.apply_bwlimit_change(ctx, runner, 100) == 2048
    assert rates == [2048]
    run_bwlimit(argparse.Namespace(kbps=0, state=str(state), user_json="user.json"))
    assert passes.apply_bwlimit_change(ctx, runner, 2048) is None and rates[-1] is None
    ckpt.close()


def test_block_disk_is_copied_alongside_the_files(env: Env) -> None:
    """--block-disk SRC=DST: each transfer pass also copies the disk block by block."""
    src_img, dst_img = env.tmp / "disk-src.img", env.tmp / "disk-dst.img"
    rnd = random.Random(9)
    with open(src_img, "wb") as f:
        f.truncate(24 << 20)
        for off in (0, 5 << 20, 17 << 20):
            f.seek(off)
            f.write(rnd.randbytes(300_000))
    with open(dst_img, "wb") as f:
        f.truncate(24 << 20)

    def receiver_with_block_target(pki: PkiPaths | None, tokens: MigrationTokens | None) -> str:
        assert pki is not None
        handle = start_target_receiver(env.dst, pki, tokens, block_targets=(str(dst_img),))
        env.receivers.append(handle)
        return f"127.0.0.1:{handle.port}"

    env.local_receiver = receiver_with_block_target
    outcome = env.migrate(block_disks=((str(src_img), str(dst_img)),))
    assert outcome.completed
    assert dst_img.read_bytes() == src_img.read_bytes()
    assert (env.dst / "srv" / "f7.bin").read_bytes() == (env.src / "srv" / "f7.bin").read_bytes()
    with Checkpoint(env.state, readonly=True) as ck:
        facts = ck.snapshot()["facts"]
    (full,) = facts["full_pass"]["block"]
    assert full["blocks_sent"] == 3 and full["blocks_zero"] == 21
    final = json.dumps(facts)
    assert '"blocks_unchanged": 3' in final  # the final pass found every data block in place


def test_live_rate_follows_the_bwlimit(env: Env) -> None:
    """Client.Rsync.BandwidthLimit 512 KB/s: the live wire rate (moving window) sits near the limit, and bytes are
    counted when they leave the limiter (never more than the limiter let through)."""
    from cvmigrate.controller.progress import Display, TransferProgress

    limit = 512 * 1024
    rnd = random.Random(5)
    big = env.src / "big"
    big.mkdir()
    for i in range(6):
        (big / f"{i}.bin").write_bytes(rnd.randbytes(512 * 1024))     # 3 MiB that do not compress
    env.client_json.write_text(json.dumps({"Client": {"Rsync": {"BandwidthLimit": "512"}}}))
    samples: list[TransferProgress] = []

    class Capture(Display):
        def transfer(self, progress: TransferProgress) -> None:
            samples.append(progress)

    with Checkpoint(env.state) as ckpt:
        ctx = env.context(ckpt, cutover="now")
        ctx.display = Capture()
        try:
            assert run_stages(ctx).completed
        finally:
            env.stop_receivers()
    full = [p for p in samples if p.pass_no == 1]
    assert full[-1].elapsed > 4.0, "the limit did not pace the pass"
    burst = 0.25 * limit + 2 * 65536        # the bucket's burst and one message
    for p in full:
        assert p.bytes_sent <= limit * p.elapsed + burst, (p.elapsed, p.bytes_sent)
    live = [p.wire_rate for p in full if 2.5 < p.elapsed < full[-1].elapsed - 0.5]
    assert live and all(0.6 * limit < r < 1.3 * limit for r in live), [round(r / 1024) for r in live]
    assert all(p.eta is not None for p in full if p.elapsed > 1.0 and p.rate > 0)
