"""go2tencentcloud parity through the `cvmigrate` command: bare invocation, --no-console/ToolMode, Daemon,
Net.Mode 3 (API through the proxy, data direct), Proxy.IPv6, any positive BandwidthLimit.

The full migration here is what an operator runs by hand: the API emulator as
the cloud, `cvmigrate pki init` material, a real `cvmigrate receive` process as
the target's rescue system, and `cvmigrate migrate --receiver ...` driving it.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cvmigrate.controller.emulator.server import EmulatorHandle, start_emulator
from cvmigrate.controller.emulator.state import (
    DEFAULT_INSTANCE_ID,
    DEFAULT_SECRET_ID,
    DEFAULT_SECRET_KEY,
    default_config,
    default_instance,
)
from tests.helpers.cliproc import cli, one_line

KEYS = {"SecretId": DEFAULT_SECRET_ID, "SecretKey": DEFAULT_SECRET_KEY}


@pytest.fixture
def emu() -> Iterator[EmulatorHandle]:
    config = default_config()
    config["delays"] = {"enter_rescue": 0.2, "exit_rescue": 0.2}
    inst = default_instance()
    inst["IPv6Addresses"] = ["2001:db8::10"]
    config["instances"] = [inst]
    handle = start_emulator(config)
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture
def tool(tmp_path: Path) -> Path:
    """go2tencentcloud's directory: user.json, and a source tree that looks like a server."""
    d = tmp_path / "tool"
    d.mkdir()
    (d / "user.json").write_text(json.dumps({"Region": "ap-guangzhou", "InstanceId": DEFAULT_INSTANCE_ID, **KEYS}))
    src = tmp_path / "src"
    (src / "etc").mkdir(parents=True)
    (src / "etc" / "os-release").write_text('ID=ubuntu\nID_LIKE=debian\nPRETTY_NAME="Ubuntu 22.04"\n')
    (src / "srv").mkdir()
    for i in range(5):
        (src / "srv" / f"f{i}.txt").write_text(f"file {i}\n" * (i + 1))
    return d


@pytest.mark.parametrize("argv", [["--check"], ["--no-console", "--check"], ["--debug", "--check"]])
def test_bare_invocation_is_migrate(tool: Path, emu: EmulatorHandle, argv: list[str]) -> None:
    rc, out, err, _ = cli(*argv, "--source", str(tool.parent / "src"), "--api-endpoint", emu.endpoint,
                          "--display", "plain", cwd=tool)
    assert rc == 0, err
    assert "pre-checks passed" in out
    assert [c.action for c in emu.calls()][0] == "DescribeRegions"
    assert emu.calls("EnterRescueMode") == []


def test_bare_invocation_without_user_json_says_so(tmp_path: Path) -> None:
    rc, _, err, _ = cli(cwd=tmp_path)
    assert rc == 2 and one_line(err).startswith("cvmigrate migrate: error: user.json not found at ")


def test_bare_clean(tool: Path, emu: EmulatorHandle) -> None:
    rc, out, err, _ = cli("--clean", "--yes", "--api-endpoint", emu.endpoint, cwd=tool)
    assert rc == 0, err
    assert f"target {DEFAULT_INSTANCE_ID} is RUNNING" in out


def test_bandwidth_limit_above_the_console_slider_is_accepted(tool: Path, emu: EmulatorHandle) -> None:
    (tool / "client.json").write_text(json.dumps({"Client": {"Rsync": {"BandwidthLimit": "30000"}}}))
    rc, out, err, _ = cli("--check", "--source", str(tool.parent / "src"), "--api-endpoint", emu.endpoint,
                          "--display", "plain", cwd=tool)
    assert rc == 0, err


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    d = tmp_path / "pki"
    rc, _, err, _ = cli("pki", "init", str(d), "--host", "127.0.0.1", cwd=tmp_path)
    assert rc == 0, err
    root = tmp_path / "target"
    root.mkdir()
    port_file = tmp_path / "rport"
    proc = subprocess.Popen([sys.executable, "-m", "cvmigrate", "receive", "--root", str(root), "--listen",
                             "127.0.0.1:0", "--port-file", str(port_file), "--tls-cert", str(d / "server.pem"),
                             "--tls-key", str(d / "server.key"), "--tls-ca", str(d / "ca.pem"), "--token-file",
                             str(d / "token"), "--control-token-file", str(d / "control-token")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        yield f"127.0.0.1:{port_file.read_text().strip()}", d, root
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def migrate_argv(tool: Path, emu: EmulatorHandle, address: str, d: Path) -> list[str]:
    return ["migrate", "--yes", "--source", str(tool.parent / "src"), "--api-endpoint", emu.endpoint,
            "--receiver", address, "--tls-ca", str(d / "ca.pem"), "--tls-cert", str(d / "client.pem"),
            "--tls-key", str(d / "client.key"), "--token-file", str(d / "token"), "--control-token-file",
            str(d / "control-token"), "--poll-interval", "0.1",
            "--display", "none"]


def test_no_console_migration_registers_nothing_in_msp(tool: Path, emu: EmulatorHandle, receiver) -> None:
    address, d, root = receiver
    rc, out, err, _ = cli(*migrate_argv(tool, emu, address, d), "--no-console", "--json", cwd=tool, timeout=300)
    assert rc == 0, err
    summary = json.loads(out)
    assert summary["complete"] is True and summary["files"] >= 5 and summary["exit_code"] == 0
    assert (root / "srv" / "f3.txt").read_text() == "file 3\n" * 4
    assert emu.calls("RegisterMigrationTask") == [] and emu.calls("ModifyMigrationTaskStatus") == []
    assert len([c for c in emu.calls("EnterRescueMode") if c.error is None]) == 1


def test_tool_mode_in_client_json_is_the_same_as_no_console(tool: Path, emu: EmulatorHandle, receiver) -> None:
    address, d, _ = receiver
    (tool / "client.json").write_text(json.dumps({"Client": {"ToolMode": True}}))
    rc, _, err, _ = cli(*migrate_argv(tool, emu, address, d), cwd=tool, timeout=300)
    assert rc == 0, err
    assert emu.calls("RegisterMigrationTask") == []


def test_daemon_detaches_logs_to_the_file_and_status_follows(tool: Path, emu: EmulatorHandle, receiver) -> None:
    address, d, root = receiver
    (tool / "client.json").write_text(json.dumps({"Client": {"Extra": {"Daemon": True}}}))
    t0 = time.monotonic()
    rc, out, err, _ = cli(*migrate_argv(tool, emu, address, d), cwd=tool, timeout=60)
    assert rc == 0 and err == "", err
    assert "running in the background (pid " in out and "cvmigrate status --state" in out
    pid = int(out.split("(pid ", 1)[1].split(")", 1)[0])
    try:
        state = None
        while time.monotonic() - t0 < 240:
            rc, sout, serr, _ = cli("status", "--json", "--state", str(tool / "cvmigrate-state.db"), cwd=tool)
            if rc == 0:
                state = json.loads(sout)
                assert state["schema"] >= 1 and state["state"] in ("running", "waiting", "complete", "failed")
                if state["state"] in ("complete", "failed"):
                    break
            time.sleep(0.5)
        assert state is not None and state["state"] == "complete", state
        assert state["percent"] == 100.0
        log = (tool / "log").read_text()
        assert "running in the background as pid" in log and "sub-task msp_finish done" in log
        assert (root / "srv" / "f0.txt").exists()
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_mode3_data_goes_direct_unless_asked(tmp_path: Path) -> None:
    """Net.Mode 3: the proxy carries the API calls; the data stream only with --data-via-proxy."""
    from cvmigrate.controller.config import parse_client_config
    from cvmigrate.controller.context import Options
    from tests.helpers.context import offline_context

    client = parse_client_config({"Client": {"Net": {"Mode": 3, "Proxy": {"Ip": "10.0.0.8", "Port": "3128"}}}})
    ctx = offline_context(client=client)
    assert ctx.data_proxy() is None
    ctx = offline_context(opts=Options(data_via_proxy=True), client=client)
    assert ctx.data_proxy() == "http://10.0.0.8:3128"


def test_proxy_ipv6_sends_data_to_the_targets_ipv6_address(tool: Path, emu: EmulatorHandle) -> None:
    """Client.Net.Proxy.IPv6: the receiver address printed for the operator is the target's IPv6 address."""
    (tool / "client.json").write_text(json.dumps({"Client": {"Net": {"Proxy": {"IPv6": True}}}}))
    proc = subprocess.Popen([sys.executable, "-m", "cvmigrate", "migrate", "--yes", "--source",
                             str(tool.parent / "src"), "--api-endpoint", emu.endpoint, "--poll-interval", "0.1",
                             "--display", "plain", "--no-console"], cwd=tool, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        seen = ""
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            seen += line
            if "waiting for it at" in line or not line:
                break
        assert "waiting for it at [2001:db8::10]:443" in seen, seen
    finally:
        proc.kill()
        proc.wait(timeout=10)
        rc, _, _, _ = cli("--clean", "--yes", "--api-endpoint", emu.endpoint, "--poll-interval", "0.1", cwd=tool)


def test_a_receiver_with_other_certificates_fails_the_stage_at_once(tmp_path: Path, tool: Path, emu: EmulatorHandle,
                                                                    receiver) -> None:
    """reach_receiver waits for a receiver that is not up yet, but a certificate mismatch is named at once."""
    address, _, _ = receiver
    other = tmp_path / "other-pki"
    rc, _, err, _ = cli("pki", "init", str(other), "--host", "127.0.0.1", cwd=tmp_path)
    assert rc == 0, err
    rc, _, err, took = cli(*migrate_argv(tool, emu, address, other), "--no-console", cwd=tool, timeout=120)
    line = one_line(err)
    assert rc == 5 and "TLS: this side refused the receiver" in line and "not signed by the CA" in line
    assert took < 60
