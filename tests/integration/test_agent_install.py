"""``cvmigrate agent install --root`` / ``uninstall --root`` write and remove a service, through the CLI.

With ``--root`` the command only writes files (no service manager is called);
a root with ``run/systemd/system`` gets a systemd unit, one without an init
script.  The live path (init script started in a Python-less bullseye chroot,
the controller pings the agent, uninstall leaves nothing) is
tests/e2e/test_bundle.py (marker ``bundle``).
"""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from cvmigrate.common.tls import new_token
from cvmigrate.controller.pki import mint_migration_pki


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cvmigrate", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=60)


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture
def pki_dir(tmp_path: Path) -> Path:
    d = tmp_path / "mig-pki"
    pki = mint_migration_pki(d, hosts=["127.0.0.1"], migration_id="agent-install")
    (d / "agent-token").write_text(new_token() + "\n")
    (d / "agent-token").chmod(0o600)
    assert Path(pki.agentd_key).exists()
    return d


@pytest.mark.parametrize("systemd", [True, False], ids=["systemd", "init-script"])
def test_install_writes_a_service_with_the_migration_certificates_and_uninstall_removes_it(
        tmp_path: Path, pki_dir: Path, systemd: bool) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    if systemd:
        (root / "run/systemd/system").mkdir(parents=True)
    exe = tmp_path / "cvmigrate-linux-x86_64"
    exe.write_bytes(b"\x7fELF stand-in for the one-file executable")
    before = _files(root)

    r = _cli("agent", "install", "--root", str(root), "--pki-dir", str(pki_dir), "--listen", "0.0.0.0:7999",
             env={"CVMIGRATE_EXECUTABLE": str(exe)})
    assert r.returncode == 0, r.stderr
    assert "not started" in r.stdout
    installed = root / "usr/local/lib/cvmigrate/cvmigrate"
    assert installed.read_bytes() == exe.read_bytes() and os.access(installed, os.X_OK)
    conf = root / "etc/cvmigrate/agent"
    assert stat.S_IMODE(conf.stat().st_mode) == 0o700
    for n in ("ca.pem", "agentd.pem", "agentd.key", "agent-token"):
        assert (conf / n).read_bytes() == (pki_dir / n).read_bytes()
        assert stat.S_IMODE((conf / n).stat().st_mode) == 0o600, n
    service = root / ("etc/systemd/system/cvmigrate-agent.service" if systemd else "etc/init.d/cvmigrate-agent")
    text = service.read_text()
    assert "/usr/local/lib/cvmigrate/cvmigrate --log-file /var/lib/cvmigrate/agent/agent.log agent " \
           "--listen 0.0.0.0:7999" in text
    assert "--tls-ca /etc/cvmigrate/agent/ca.pem" in text and "--token-file /etc/cvmigrate/agent/agent-token" in text
    # the source gets the agent daemon's own key and token, never the receiver's key or the other tokens
    assert not (conf / "server.key").exists() and not (conf / "token").exists()
    assert "CVMIGRATE_CACHE_DIR=/var/lib/cvmigrate/agent/runtime" in text
    assert (pki_dir / "agent-token").read_text().strip() not in text          # the token stays in its 0600 file
    if not systemd:
        assert os.access(service, os.X_OK)
        assert subprocess.run(["sh", "-n", str(service)]).returncode == 0

    r = _cli("agent", "uninstall", "--root", str(root))
    assert r.returncode == 0, r.stderr
    assert _files(root) == before


def test_install_without_the_certificates_is_one_clear_line(tmp_path: Path) -> None:
    r = _cli("agent", "install", "--root", str(tmp_path), "--pki-dir", str(tmp_path / "nope"),
             env={"CVMIGRATE_EXECUTABLE": sys.executable})
    assert r.returncode != 0
    assert r.stderr.strip().count("\n") == 0 and "lacks ca.pem, agentd.pem, agentd.key, agent-token" in r.stderr
