"""A real OpenSSH server and a throwaway login for bootstrap tests.

``SshServer`` runs ``/usr/sbin/sshd -D -e -f <generated sshd_config>`` on
127.0.0.1:<free port> with a freshly generated ed25519 host key, password
logins only, no PAM, and ``AllowUsers`` naming exactly the test user, so
nothing else on this machine can log in through it.  ``TestUser`` creates
that user (``useradd -m``), sets a random password through ``chpasswd``'s
stdin (never argv), and on exit kills that user's leftover processes by pid
and deletes the user and its home.  Root's password is never touched.

Both need root (sshd checks passwords against /etc/shadow and changes uid).
``unavailable_reason()`` says why the tests must be skipped, or None.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

SSHD = "/usr/sbin/sshd"
#: sshd's compiled-in privilege separation directory (Debian).
PRIVSEP_DIR = "/run/sshd"
START_TIMEOUT = 15.0


def unavailable_reason() -> str | None:
    """Why sshd-based tests cannot run here (None = they can)."""
    if os.geteuid() != 0:
        return "needs root (sshd checks passwords in /etc/shadow; the test creates a user)"
    if not os.access(SSHD, os.X_OK):
        return f"{SSHD} is missing: apt-get install -y openssh-server"
    for tool in ("ssh-keygen", "useradd", "userdel", "chpasswd"):
        if shutil.which(tool) is None:
            return f"{tool} is missing"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fingerprint_of(pubkey: Path) -> str:
    """``ssh-keygen -lf``'s SHA256 digest of a public key ("SHA256:...")."""
    out = subprocess.run(["ssh-keygen", "-lf", str(pubkey)], capture_output=True, text=True, check=True).stdout
    return out.split()[1]


class TestUser:
    """A throwaway local user with a random password.  Use as a context manager."""

    __test__ = False  # not a pytest class

    def __init__(self, prefix: str = "cvmt") -> None:
        self.name = f"{prefix}{secrets.token_hex(4)}"
        self.password = secrets.token_urlsafe(18)
        self.created = False

    def create(self) -> TestUser:
        subprocess.run(["useradd", "-m", "-s", "/bin/sh", "-c", "cvmigrate test (temporary)", self.name],
                       check=True, capture_output=True)
        self.created = True
        subprocess.run(["chpasswd"], input=f"{self.name}:{self.password}\n".encode(), check=True,
                       capture_output=True)
        pw = pwd.getpwnam(self.name)
        self.uid, self.gid, self.home = pw.pw_uid, pw.pw_gid, Path(pw.pw_dir)
        return self

    def pids(self) -> list[int]:
        """Processes running as this user (found in /proc)."""
        found = []
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    if os.stat(f"/proc/{d}").st_uid == self.uid:
                        found.append(int(d))
                except OSError:
                    pass
        return found

    def kill_processes(self) -> list[int]:
        """SIGKILL every process of this user, one pid at a time; return the pids."""
        killed = []
        for _ in range(3):
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)
        return killed

    def delete(self) -> None:
        if not self.created:
            return
        self.kill_processes()
        subprocess.run(["userdel", "-r", "-f", self.name], capture_output=True, check=False)
        self.created = False

    def __enter__(self) -> TestUser:
        return self.create()

    def __exit__(self, *exc: Any) -> None:
        self.delete()


class SshServer:
    """``sshd -D`` on 127.0.0.1:<free port> for one user.  Use as a context manager."""

    def __init__(self, allow_user: str, work_dir: Path | None = None, chroot: Path | None = None) -> None:
        self.allow_user = allow_user
        #: ``ChrootDirectory``: the user's sessions (shell, SFTP) see only this tree
        #: (root-owned, no group/other-writable component on its path).
        self.chroot = chroot
        self.dir = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="cvm-sshd-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        self.host_key = self.dir / "ssh_host_ed25519_key"
        self.config = self.dir / "sshd_config"
        self.log_path = self.dir / "sshd.log"
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None
        self._log: Any = None
        self.new_host_key()

    # ------------------------------------------------------------ keys
    def new_host_key(self) -> str:
        """Generate a new ed25519 host key (takes effect at the next start); return its fingerprint."""
        for p in (self.host_key, self.host_key.with_suffix(".pub")):
            p.unlink(missing_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "cvmigrate-test-host",
                        "-f", str(self.host_key)], check=True, capture_output=True)
        return self.fingerprint

    @property
    def fingerprint(self) -> str:
        """``"ssh-ed25519 SHA256:..."``, as bootstrap_ssh reports it."""
        return f"ssh-ed25519 {_fingerprint_of(Path(str(self.host_key) + '.pub'))}"

    # ------------------------------------------------------------ lifecycle
    def _write_config(self, port: int) -> None:
        self.config.write_text("\n".join([
            f"Port {port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {self.host_key}",
            f"PidFile {self.dir / 'sshd.pid'}",
            "PasswordAuthentication yes",
            "KbdInteractiveAuthentication no",
            "PubkeyAuthentication no",
            "AuthorizedKeysFile none",
            "PermitEmptyPasswords no",
            # Only the throwaway user; root may not log in through this server.
            "PermitRootLogin no",
            f"AllowUsers {self.allow_user}",
            "UsePAM no",
            "StrictModes no",
            "X11Forwarding no",
            "AllowTcpForwarding no",
            "PrintMotd no",
            "Subsystem sftp internal-sftp",
            "LogLevel VERBOSE",
            *([f"ChrootDirectory {self.chroot}"] if self.chroot else []),
            "",
        ]))
        os.chmod(self.config, 0o600)

    def start(self, port: int | None = None) -> SshServer:
        """Start sshd (on ``port``, or a free one) and wait until it sends its banner."""
        os.makedirs(PRIVSEP_DIR, mode=0o755, exist_ok=True)
        last = ""
        for _attempt in range(5):
            p = port or _free_port()
            self._write_config(p)
            check = subprocess.run([SSHD, "-t", "-f", str(self.config)], capture_output=True, text=True)
            if check.returncode != 0:
                raise RuntimeError(f"sshd rejects the generated config:\n{check.stderr}")
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - sshd writes it; closed by stop()
            self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.config)], stdin=subprocess.DEVNULL,
                                         stdout=self._log, stderr=subprocess.STDOUT)
            self.port = p
            if self._wait_banner():
                return self
            last = self.log()
            self.stop()
            if port is not None and "Address already in use" not in last:
                break
            if port is not None:
                time.sleep(0.5)   # same port wanted (a restart): wait for it to be free
        raise RuntimeError(f"sshd did not start:\n{last[-4000:]}")

    def _wait_banner(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.settimeout(2)
                    if s.recv(64).startswith(b"SSH-"):
                        return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    def restart_with_new_key(self) -> str:
        """Same address, new host key (what a MITM or a re-entered rescue mode looks like)."""
        port = self.port
        self.stop()
        fp = self.new_host_key()
        self.start(port)
        return fp

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None and not self._log.closed:
            self._log.close()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> SshServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.cleanup()


__all__ = ["SshServer", "TestUser", "unavailable_reason"]
