"""The tool's own secrets never travel to the target (issue 11).

The common case: the admin unpacks cvmigrate in /root/cvmigrate on the source
server itself and runs ``cvmigrate migrate`` there, so user.json (the
SecretKey), client.json, the state file, the log and the migration's
certificate directory (private keys, the three tokens) all lie inside
``--source``.  The test runs exactly that through the CLI against the API
emulator (the controller mints the certificates; the receiver is started with
the files it wrote, as the admin would in the rescue system), then searches
every byte of the target for each secret.  It also checks stage 3 finalized
the receiver: no journal and no temporary file of ours is left on the target.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from cvmigrate.controller.emulator import DEFAULT_SECRET_KEY, default_config, default_user_json, start_emulator
from tests.helpers.procs import child_env, start_receiver
from tests.helpers.tcpproxy import TcpProxy


def _wait(what: str, cond, proc: subprocess.Popen[str], timeout: float = 60):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = cond()
        if value:
            return value
        if proc.poll() is not None:
            assert proc.stdout is not None and proc.stderr is not None     # both piped
            raise AssertionError(f"migrate exited {proc.returncode} while waiting for {what}:\n"
                                 + proc.stdout.read() + proc.stderr.read())
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_migrate_from_inside_the_source_leaves_no_secret_on_the_target(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    tool = src / "root" / "cvmigrate"
    for d in (tool, src / "etc", src / "srv", dst):
        d.mkdir(parents=True)
    (src / "etc" / "os-release").write_text("ID=debian\nVERSION_ID=12\n")
    (src / "srv" / "data.txt").write_text("application data\n" * 100)
    (tool / "user.json").write_text(json.dumps(default_user_json()))
    (tool / "client.json").write_text("{}")
    os.chmod(tool / "user.json", 0o600)
    emu = start_emulator(default_config(rescue_delay=0.2))
    proxy = TcpProxy(upstream_port=9)      # the receiver's address is known before the receiver runs
    receiver = None
    proc = subprocess.Popen([sys.executable, "-m", "cvmigrate", "migrate", "--source", str(src), "--api-endpoint",
                             emu.endpoint, "--receiver", proxy.address, "--poll-interval", "0.1", "--yes",
                             "--display", "plain", "--cutover", "after-pass"],
                            cwd=tool, env=child_env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        pki = Path(_wait("the minted certificates", lambda: next(
            (p for p in tool.glob("*-pki") if (p / "control-token").exists()), None), proc))
        # the admin starts the receiver in the rescue system with the files the controller wrote
        receiver = start_receiver(dst, "--tls-ca", str(pki / "ca.pem"), "--tls-cert", str(pki / "server.pem"),
                                  "--tls-key", str(pki / "server.key"), "--token-file", str(pki / "token"),
                                  "--control-token-file", str(pki / "control-token"), insecure=False,
                                  work_dir=tmp_path / "recv")
        proxy.upstream = ("127.0.0.1", int(receiver.address.rsplit(":", 1)[1]))
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, out + err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        if receiver is not None:
            receiver.stop()
        proxy.close()
        emu.stop()

    assert (dst / "srv" / "data.txt").read_text() == (src / "srv" / "data.txt").read_text()
    assert (dst / "root").is_dir()                    # /root itself migrated ...
    assert not (dst / "root" / "cvmigrate" / "user.json").exists()   # ... without the tool's files
    secrets = [DEFAULT_SECRET_KEY.encode()]
    for name in ("token", "control-token", "agent-token"):
        if (pki / name).exists():
            secrets.append((pki / name).read_bytes().strip())
    for key in pki.glob("*.key"):
        secrets.append(key.read_bytes())
        body = b"".join(line for line in key.read_bytes().splitlines() if b"-----" not in line)
        secrets.append(body[:40])                     # a fragment of the key material, wherever it landed
    assert len(secrets) >= 1 + 2 + 4
    found = []
    for dirpath, _dirs, filenames in os.walk(dst):
        for n in filenames:
            p = Path(dirpath) / n
            if p.is_symlink() or not p.is_file():
                continue
            data = p.read_bytes()
            found += [f"{p.relative_to(dst)}" for s in secrets if s in data]
    assert found == [], f"secrets of the tool were migrated: {found}"
    # stage 3 finalized the receiver: nothing of ours stays on the migrated disk
    assert not (dst / ".cvmigrate").exists()
    assert not list(dst.rglob(".cvm-*.tmp"))
