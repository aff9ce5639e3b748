"""The agent daemon (control.proto) for real: a daemon and a receiver on 127.0.0.1:0, mutual TLS + token.

The controller's client (controller/agent_client.py) drives the daemon; the
daemon pushes to the receiver with credentials it got inside the PassRequest.
The last test runs the whole stage machine with ``--agent`` against the API
emulator.
"""
from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cvmigrate.agent.daemon import AgentHandle, create_server
from cvmigrate.common.errors import AuthError, Busy, CvmError, PermissionDenied
from cvmigrate.common.passes import PassCancelled, PassSpec, PassUpdate
from cvmigrate.common.tls import MigrationTokens, PkiPaths, TransportSecurity, new_token
from cvmigrate.controller.agent_client import AgentClient, credentials_from_security
from cvmigrate.controller.demo import start_target_receiver
from cvmigrate.controller.emulator import DEFAULT_INSTANCE_ID, EmulatorHandle
from cvmigrate.controller.pki import mint_migration_pki
from tests.helpers.cloudemu import cloud_client, write_user_json
from tests.helpers.wire import serving_secured

pytestmark = pytest.mark.timeout(60)


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiPaths:
    return mint_migration_pki(tmp_path_factory.mktemp("pki"), hosts=["127.0.0.1"], migration_id="mig-agent")


@pytest.fixture(scope="module")
def token() -> str:
    return new_token()


@pytest.fixture
def receiver(tmp_path: Path, pki: PkiPaths, token: str) -> Iterator[tuple[str, Path]]:
    yield from serving_secured(tmp_path / "dst", pki, token)


@pytest.fixture
def agent(pki: PkiPaths, token: str) -> Iterator[AgentHandle]:
    # as `cvmigrate agent --tls-cert server.pem --tls-key server.key --tls-ca ca.pem --token-file token`
    sec = TransportSecurity(role="server", ca=pki.ca_cert, cert=pki.server_cert, key=pki.server_key, token=token)
    handle = create_server("127.0.0.1:0", credentials=sec.server_credentials(), interceptors=sec.interceptors())
    try:
        yield handle
    finally:
        handle.stop(grace=1)


@pytest.fixture
def client_security(pki: PkiPaths, token: str) -> TransportSecurity:
    return TransportSecurity.from_pki(pki, "client", token)


@pytest.fixture
def client(agent: AgentHandle, client_security: TransportSecurity) -> Iterator[AgentClient]:
    with AgentClient(f"127.0.0.1:{agent.port}", client_security) as c:
        yield c


def _tree(root: Path, files: int, size: int, seed: int = 1) -> dict[str, bytes]:
    rnd = random.Random(seed)
    out = {}
    for i in range(files):
        rel = f"d{i % 3}/f{i}.bin"
        data = rnd.randbytes(size if size else rnd.randint(0, 40_000))  # incompressible
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        out[rel] = data
    return out


def _spec(src: Path, receiver: tuple[str, Path], sec: TransportSecurity, **kw: Any) -> PassSpec:
    return PassSpec(source=str(src), receiver_address=receiver[0], credentials=credentials_from_security(sec, None),
                    migration_id="mig-agent", progress_interval=0.1, **kw)


def _same(tree: dict[str, bytes], root: Path) -> bool:
    return all((root / rel).is_file() and (root / rel).read_bytes() == data for rel, data in tree.items())


class Runner(threading.Thread):
    """Iterates a StartPass in the background, keeping every update."""

    def __init__(self, client: AgentClient, spec: PassSpec) -> None:
        super().__init__(daemon=True)
        self.call = client.start_pass(spec)
        self.updates: list[PassUpdate] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for u in self.call:
                self.updates.append(u)
        except BaseException as exc:  # noqa: BLE001 - inspected by the test
            self.error = exc

    def wait_started(self, timeout: float = 10.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if any(u.attempt and u.phase == "transferring" for u in self.updates):
                return
            assert self.error is None, self.error
            time.sleep(0.05)
        raise AssertionError(f"the pass did not start: {self.updates[-1:]}")

    @property
    def final(self) -> PassUpdate:
        assert self.updates and self.updates[-1].final, (self.error, self.updates[-1:])
        return self.updates[-1]


# ------------------------------------------------------------------ tests
def test_pass_streams_progress_and_the_full_result(tmp_path: Path, receiver: tuple[str, Path], client: AgentClient,
                                                   client_security: TransportSecurity,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    src = tmp_path / "src"
    tree = _tree(src, 40, 0)
    (src / "skip.tmp").write_bytes(b"excluded")
    os.symlink("d0/f0.bin", src / "link")
    # ~0.8 MB at 2 MB/s: a few progress messages before the result
    updates = list(client.start_pass(_spec(src, receiver, client_security, exclude_lines=("- *.tmp",),
                                           bwlimit_kbps=2048)))
    final = updates[-1]
    assert final.result is not None and final.error is None and final.phase == "finished"
    assert len(updates) >= 3 and all(not u.final for u in updates[:-1])
    assert any(u.phase == "transferring" and u.files_scanned for u in updates[:-1])
    assert [u.bytes_sent for u in updates] == sorted(u.bytes_sent for u in updates)
    r = final.result
    assert r.files == 40 and r.symlinks == 1 and r.excluded == 1 and r.files_transferred == 40 and not r.errors
    assert r.bytes_total == sum(map(len, tree.values())) and r.bytes_read == r.bytes_total
    assert _same(tree, receiver[1]) and os.readlink(receiver[1] / "link") == "d0/f0.bin"
    assert not (receiver[1] / "skip.tmp").exists()
    assert client.ping().busy is False
    # secrets never reach the agent's log
    assert client_security.token is not None and client_security.key is not None
    for secret in (client_security.token, (Path(client_security.key).read_text().splitlines()[1])):
        assert secret not in caplog.text
    # a second pass finds everything in place, also split over the streams the controller asks for
    again = list(client.start_pass(_spec(src, receiver, client_security, exclude_lines=("- *.tmp",),
                                         streams=3)))[-1].result
    assert again is not None and again.files_skipped == 40 and again.files_transferred == 0
    assert again.streams == 3 and 1 <= r.streams <= 8   # the spec default: what both sides' cores allow


def test_second_pass_is_aborted_and_cancel_stops_a_pass_that_then_resumes(
        tmp_path: Path, receiver: tuple[str, Path], client: AgentClient,
        client_security: TransportSecurity) -> None:
    src = tmp_path / "src"
    tree = _tree(src, 6, 400_000)                    # 2.4 MB: about 40 s at 64 KB/s
    first = Runner(client, _spec(src, receiver, client_security, bwlimit_kbps=64))
    first.start()
    first.wait_started()
    assert client.ping().busy and client.ping().migration_id == "mig-agent"

    # one pass at a time
    with pytest.raises(Busy) as info:
        list(client.start_pass(_spec(src, receiver, client_security)))
    assert "already running a pass" in str(info.value)

    # cancel mid-pass: prompt, reported as cancelled, the agent free again
    time.sleep(0.3)
    t0 = time.monotonic()
    assert client.cancel("other-migration") is False  # not its pass: nothing happens
    assert not first.updates[-1].final
    assert client.cancel("mig-agent") is True
    first.join(10)
    assert time.monotonic() - t0 < 5
    assert isinstance(first.final.error, PassCancelled) and first.final.phase == "failed"
    assert not _same(tree, receiver[1])
    assert client.ping().busy is False
    assert client.cancel() is True                    # nothing runs: stopped
    assert client.set_bandwidth(10) is False

    # a new pass continues (the receiver may still be closing the cancelled stream: retry_for)
    updates = list(client.start_pass(_spec(src, receiver, client_security, retry_for=10)))
    result = updates[-1].result
    assert result is not None and not result.errors and result.resumed
    assert _same(tree, receiver[1])


def test_set_bandwidth_changes_the_running_pass(tmp_path: Path, receiver: tuple[str, Path], client: AgentClient,
                                                client_security: TransportSecurity, agent: AgentHandle) -> None:
    src = tmp_path / "src"
    tree = _tree(src, 6, 400_000)                    # 2.4 MB: minutes at 8 KB/s
    run = Runner(client, _spec(src, receiver, client_security, bwlimit_kbps=8))
    run.start()
    run.wait_started()
    time.sleep(1.0)
    assert not run.updates[-1].final and run.updates[-1].bwlimit_kbps == 8
    session = agent.service.current._session  # type: ignore[union-attr]
    assert session is not None and session.bucket.rate == 8 * 1024
    t0 = time.monotonic()
    assert client.set_bandwidth(8192) is True
    assert session.bucket.rate == 8192 * 1024
    run.join(15)
    assert time.monotonic() - t0 < 6, "the new limit did not take effect"
    assert any(u.bwlimit_kbps == 8192 for u in run.updates)
    assert run.final.result is not None and _same(tree, receiver[1])


def test_a_dropped_controller_cancels_its_pass(tmp_path: Path, receiver: tuple[str, Path], client: AgentClient,
                                               client_security: TransportSecurity, agent: AgentHandle) -> None:
    src = tmp_path / "src"
    _tree(src, 4, 400_000)
    run = Runner(client, _spec(src, receiver, client_security, bwlimit_kbps=64))
    run.start()
    run.wait_started()
    run.call.cancel()
    end = time.monotonic() + 5
    while agent.service.current is not None and time.monotonic() < end:
        time.sleep(0.05)
    assert agent.service.current is None and client.ping().busy is False


def test_tokens_are_required(agent: AgentHandle, pki: PkiPaths, tmp_path: Path,
                             client_security: TransportSecurity) -> None:
    address = f"127.0.0.1:{agent.port}"
    with AgentClient(address, TransportSecurity.from_pki(pki, "client", None)) as anonymous:
        with pytest.raises(AuthError) as info:
            anonymous.ping()
        assert type(info.value) is AuthError
        with pytest.raises(AuthError):
            list(anonymous.start_pass(PassSpec(source=str(tmp_path), receiver_address="127.0.0.1:9")))
    with (AgentClient(address, TransportSecurity.from_pki(pki, "client", new_token())) as wrong,
          pytest.raises(PermissionDenied)):
        wrong.cancel()
    # a request the agent cannot use is refused before anything runs
    with AgentClient(address, client_security) as ok:
        with pytest.raises(CvmError) as bad:
            list(ok.start_pass(PassSpec(source=str(tmp_path / "missing"), receiver_address="127.0.0.1:9",
                                        credentials=credentials_from_security(client_security, None))))
        assert "PassRequest.source" in str(bad.value)
        assert ok.ping().busy is False


# ------------------------------------------------------------------ the stage machine with --agent
def test_stages_run_their_passes_on_the_agent(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                              emu: EmulatorHandle) -> None:
    from cvmigrate.controller.checkpoint import Checkpoint
    from cvmigrate.controller.config import load_client_config, load_user_config
    from cvmigrate.controller.context import Context, Options
    from cvmigrate.controller.runner import SUBTASK_NAMES, run_stages

    caplog.set_level(logging.INFO)
    src, dst, tool = tmp_path / "src", tmp_path / "dst", tmp_path / "tool"
    for d in (src / "etc", dst, tool):
        d.mkdir(parents=True)
    (src / "etc" / "os-release").write_text('ID=ubuntu\nID_LIKE=debian\nPRETTY_NAME="Ubuntu 22.04"\n')
    tree = _tree(src, 25, 0, seed=7)
    write_user_json(tool)
    (tool / "client.json").write_text("{}")
    started: list[Any] = []
    try:
        with Checkpoint(tool / "cvmigrate-state.db") as ckpt:
            cloud = cloud_client(emu.endpoint)
            opts = Options(source=str(src), cutover="after-pass", bootstrap="local", poll_interval=0.05,
                           state_dir=str(tool), verify_target=str(dst))
            ctx = Context(opts=opts, user=load_user_config(tool / "user.json"),
                          client=load_client_config(tool / "client.json", known_subtasks=SUBTASK_NAMES),
                          cloud=cloud, ckpt=ckpt)

            def local_receiver(pki: PkiPaths | None, tokens: MigrationTokens | None) -> str:
                # the receiver in the "rescue system", and the admin starting `cvmigrate agent` on the source
                # with the files the controller minted for it (agentd.pem/agentd.key/ca.pem + agent-token)
                assert pki is not None and tokens is not None, "bootstrap local mints the PKI and the tokens"
                rcv = start_target_receiver(dst, pki, tokens)
                agent_sec = TransportSecurity.agent_daemon(pki, tokens)
                agt = create_server("127.0.0.1:0", credentials=agent_sec.server_credentials(),
                                    interceptors=agent_sec.interceptors())
                started.extend([rcv, agt])
                ctx.opts.agent = f"127.0.0.1:{agt.port}"
                return f"127.0.0.1:{rcv.port}"

            ctx.local_receiver = local_receiver
            outcome = run_stages(ctx)
            assert outcome.completed and outcome.ran == list(SUBTASK_NAMES)
            assert [p["kind"] for p in ckpt.passes()] == ["full", "final"]
            assert ckpt.passes()[0]["result"]["files_transferred"] == 26  # 25 + os-release
            assert ckpt.fact("verification")["compared_entries"] > 25
            token = ckpt.secret("token")
    finally:
        for h in reversed(started):
            h.stop(grace=1)
    assert _same(tree, dst)
    assert emu.instance_state(DEFAULT_INSTANCE_ID) == "RUNNING"
    agent_done = [r for r in caplog.records if r.name == "cvmigrate.agent.daemon" and "done" in r.getMessage()]
    assert len(agent_done) == 2, "both passes ran on the agent"
    assert token and token not in caplog.text


# ------------------------------------------------------------------ source facts from the agent
def test_source_facts_come_from_the_agent(client: AgentClient, tmp_path: Path) -> None:
    src = tmp_path / "img"
    (src / "etc").mkdir(parents=True)
    (src / "etc/os-release").write_text('ID=debian\nVERSION_ID="12"\nPRETTY_NAME="Debian GNU/Linux 12"\n')
    (src / "etc/hostname").write_text("src-host\n")
    facts = client.source_facts(str(src))
    assert facts.root == os.path.realpath(src) and not facts.whole_server
    assert facts.hostname == "src-host" and facts.os_family == "debian"
    assert [f.mount_point for f in facts.filesystems] == ["/"]
    with pytest.raises(CvmError, match="absolute path"):
        client.source_facts("relative/dir")
    with pytest.raises(CvmError, match="not a directory"):
        client.source_facts(str(tmp_path / "missing"))


def test_check_with_an_agent_that_does_not_answer_fails_clearly(tmp_path: Path, pki: PkiPaths, token: str,
                                                                emu: EmulatorHandle) -> None:
    """`migrate --check --agent HOST:PORT` asks the agent for the source facts; nobody there is an error, not a pass."""
    import socket
    import subprocess
    import sys

    with socket.socket() as s:      # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    write_user_json(tmp_path)
    token_file = tmp_path / "token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    proc = subprocess.run(
        [sys.executable, "-m", "cvmigrate", "migrate", "--check", "--agent", dead, "--source", "/srv/only-there",
         "--api-endpoint", emu.endpoint, "--tls-ca", pki.ca_cert, "--tls-cert", pki.client_cert,
         "--tls-key", pki.client_key, "--token-file", str(token_file), "--display", "plain"],
        cwd=tmp_path, capture_output=True, text=True, timeout=50)
    assert proc.returncode != 0, proc.stdout
    assert "pre-checks passed" not in proc.stdout
    assert f"no agent answers at {dead}" in proc.stderr, proc.stderr
    # --source names a path on the source server: this host never looked at it
    assert "not a directory" not in proc.stderr
