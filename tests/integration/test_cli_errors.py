"""Every failure is one line on stderr and a documented exit code, through the `cvmigrate` command itself.

Each test runs the CLI as a subprocess (what an operator types), against the
real SDK and the API emulator, a closed port, an unresolvable name or a proxy
that is not there, and checks the exact exit status and that stderr is exactly
one line naming the cause (no traceback, no urllib3 text repeated).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cvmigrate.controller.emulator.server import EmulatorHandle, start_emulator
from cvmigrate.controller.emulator.state import DEFAULT_INSTANCE_ID, DEFAULT_SECRET_ID, DEFAULT_SECRET_KEY
from tests.helpers.cliproc import cli, closed_port, one_line

KEYS = {"SecretId": DEFAULT_SECRET_ID, "SecretKey": DEFAULT_SECRET_KEY}


@pytest.fixture
def emu() -> Iterator[EmulatorHandle]:
    handle = start_emulator()
    try:
        yield handle
    finally:
        handle.stop()


def write_user(tmp_path: Path, **fields: object) -> Path:
    data = {"Region": "ap-guangzhou", "InstanceId": DEFAULT_INSTANCE_ID, **fields}
    path = tmp_path / "user.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("command", [["migrate", "--check"], ["check"]])
def test_no_credentials_anywhere_is_one_line(tmp_path: Path, command: list[str]) -> None:
    write_user(tmp_path)
    rc, _, err, _ = cli(*command, "--user-json", "user.json", "--api-endpoint", "http://127.0.0.1:9", cwd=tmp_path)
    line = one_line(err)
    assert rc == 5
    assert "no Tencent Cloud API key" in line and "TENCENTCLOUD_SECRET_ID" in line and "TKE_REGION" not in line


def test_rejected_keys_are_one_line(tmp_path: Path, emu: EmulatorHandle) -> None:
    write_user(tmp_path, SecretId=DEFAULT_SECRET_ID, SecretKey="not-the-key")
    rc, _, err, _ = cli("migrate", "--check", "--user-json", "user.json", "--api-endpoint", emu.endpoint, cwd=tmp_path)
    line = one_line(err)
    assert rc == 5 and "AuthFailure.SignatureFailure" in line and "not-the-key" not in err


def test_dns_failure_fails_fast_with_the_cause(tmp_path: Path) -> None:
    write_user(tmp_path, **KEYS)
    rc, _, err, took = cli("migrate", "--check", "--user-json", "user.json",
                           "--api-endpoint", "http://cvmigrate-no-such-host.invalid", cwd=tmp_path)
    line = one_line(err)
    assert rc == 10 and "DNS lookup of cvmigrate-no-such-host.invalid failed" in line and "resolv.conf" in line
    assert took < 20, f"took {took:.1f} s: the first call must not be retried"


def test_refused_endpoint_fails_fast(tmp_path: Path) -> None:
    write_user(tmp_path, **KEYS)
    rc, _, err, took = cli("check", "--user-json", "user.json", "--api-endpoint",
                           f"http://127.0.0.1:{closed_port()}", cwd=tmp_path)
    line = one_line(err)
    assert rc == 10 and "refused the connection" in line and took < 20


@pytest.mark.parametrize("command", [["migrate", "--check"], ["check"]])
def test_mode3_proxy_is_used_by_check_and_migrate_check_alike(tmp_path: Path, emu: EmulatorHandle,
                                                              command: list[str]) -> None:
    """client.json beside user.json (not in the cwd) is found, and its proxy is used by both commands."""
    conf = tmp_path / "conf"
    conf.mkdir()
    write_user(conf, **KEYS)
    (conf / "client.json").write_text(json.dumps(
        {"Client": {"Net": {"Mode": 3, "Proxy": {"Ip": "127.0.0.1", "Port": str(closed_port())}}}}))
    rc, _, err, _ = cli(*command, "--user-json", str(conf / "user.json"), "--api-endpoint", emu.endpoint,
                        cwd=tmp_path)
    line = one_line(err)
    assert rc == 10 and "HTTP proxy http://127.0.0.1:" in line and "Client.Net.Proxy" in line
    assert emu.calls() == []


def test_unknown_region_is_refused_before_any_other_call(tmp_path: Path, emu: EmulatorHandle) -> None:
    write_user(tmp_path, Region="ap-guangzou", **KEYS)
    rc, _, err, took = cli("migrate", "--check", "--user-json", "user.json", "--api-endpoint", emu.endpoint,
                           cwd=tmp_path)
    line = one_line(err)
    assert rc == 2 and "'ap-guangzou'" in line and "did you mean ap-guangzhou?" in line
    assert [c.action for c in emu.calls()] == ["DescribeRegions"] and took < 20


def test_check_without_user_json_is_an_error(tmp_path: Path) -> None:
    rc, _, err, _ = cli("check", "--user-json", "missing/user.json", cwd=tmp_path)
    line = one_line(err)
    assert rc == 2 and "user.json not found" in line


def test_check_accepts_the_old_endpoint_spelling_and_passes(tmp_path: Path, emu: EmulatorHandle) -> None:
    write_user(tmp_path, **KEYS)
    rc, out, err, _ = cli("check", "--user-json", "user.json", "--endpoint", emu.endpoint, "--json", cwd=tmp_path)
    report = json.loads(out)
    assert rc in (0, 13), err
    assert (rc == 0) == report["ok"]
    assert any(c["name"] == "capacity system" for c in report["checks"])  # the target was checked
    assert [c.action for c in emu.calls()][:1] == ["DescribeRegions"]


def test_status_json_into_a_closed_pipe_is_quiet(tmp_path: Path) -> None:
    from cvmigrate.controller.checkpoint import Checkpoint

    ck = Checkpoint(tmp_path / "st.db")
    ck.register_subtasks([("validate_config", 1)])
    ck.set_facts(big={str(i): "x" * 60 for i in range(5000)})
    ck.close()
    env = dict(os.environ)
    p = subprocess.Popen([sys.executable, "-m", "cvmigrate", "status", "--state", str(tmp_path / "st.db"), "--json"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert p.stdout is not None and p.stderr is not None
    p.stdout.read(10)
    p.stdout.close()
    err = p.stderr.read().decode()
    rc = p.wait(timeout=30)
    assert err == "" and rc == 141


def test_log_file_is_json_per_line_and_rotated_per_run(tmp_path: Path, emu: EmulatorHandle) -> None:
    write_user(tmp_path, **KEYS)
    (tmp_path / "src").mkdir()
    argv = ["--log-format", "json", "migrate", "--check", "--user-json", "user.json", "--api-endpoint", emu.endpoint,
            "--source", "src", "--log-file", "mig.log", "--display", "none"]
    for _ in range(2):
        rc, _, err, _ = cli(*argv, cwd=tmp_path)
        assert rc in (0, 13), err
    current, previous = tmp_path / "mig.log", tmp_path / "mig.log.1"
    assert previous.exists() and current.exists() and not (tmp_path / "mig.log.2").exists()
    for path in (current, previous):
        records = [json.loads(line) for line in path.read_text().splitlines()]
        assert records and all({"time", "level", "migration", "stage", "logger", "message"} <= r.keys()
                               for r in records)
        assert any("sub-task validate_config done" in r["message"] for r in records)
    assert DEFAULT_SECRET_KEY not in current.read_text() + previous.read_text()
