"""One SSH connection to the rescue system: host key, login, remote commands, SFTP uploads.

Why the host key is checked first: the rescue password is the only thing that
guards the target disk, so it must never reach a server that is not the one we
trusted.  Trust on first use (the fingerprint is returned; the caller records
it in the controller's state) or ``known`` (the caller's recorded fingerprint
must match).  A changed key is always refused, never silently accepted.  Then
the login: ``password`` auth, or ``keyboard-interactive`` when the server only
offers that; the password is sent only inside the SSH session -- never
logged, never part of a command line, never stored.

Every step is bounded by one ``Deadline`` that the whole bootstrap shares.
"""
from __future__ import annotations

import base64
import hashlib
import logging
import socket
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cvmigrate.common.closing import Closing
from cvmigrate.common.errors import ConfigError
from cvmigrate.common.netaddr import format_hostport
from cvmigrate.common.rpc import RetryPolicy, call_with_retry
from cvmigrate.controller.bootstrap.errors import (
    BootstrapTimeout,
    BundleError,
    HostKeyChanged,
    RemoteInstallFailed,
    SshAuthFailed,
    SshUnreachable,
)

logger = logging.getLogger(__name__)

HOST_KEY_POLICIES = ("tofu", "known")

class Deadline:
    """One time limit for a sequence of steps; ``left`` raises BootstrapTimeout naming the step."""

    def __init__(self, seconds: float, what: str) -> None:
        self.end = time.monotonic() + seconds
        self.total = seconds
        self.what = what

    def left(self, step: str, minimum: float = 0.0) -> float:
        rem = self.end - time.monotonic()
        if rem <= minimum:
            raise BootstrapTimeout(f"{self.what}: {step} did not finish within the {self.total:.0f}s limit; "
                                   "raise the timeout or check the rescue system's network and load")
        return rem


def host_key_fingerprint(key: Any) -> str:
    """``"<type> SHA256:<unpadded base64>"`` of a paramiko ``PKey`` (as ``ssh-keygen -lf``)."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return f"{key.get_name()} SHA256:{base64.b64encode(digest).decode('ascii').rstrip('=')}"


def _split_fingerprint(fp: str) -> tuple[str | None, str]:
    parts = fp.strip().split()
    if len(parts) == 2 and parts[1].startswith("SHA256:"):
        return parts[0], parts[1]
    if len(parts) == 1 and parts[0].startswith("SHA256:"):
        return None, parts[0]
    raise ConfigError(f"host key fingerprint {fp!r} is not of the form '<key type> SHA256:<base64>' "
                      "(as returned in ReceiverEndpoint.host_key_fingerprint)")


def _key_algorithms(key_type: str) -> list[str]:
    """Host key algorithms to offer so the server presents the recorded key type."""
    if key_type == "ssh-rsa":
        return ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"]
    return [key_type]


class Ssh(Closing):
    """One authenticated paramiko transport with exec and SFTP helpers."""

    def __init__(self, host: str, port: int, username: str, password: str, *, host_key_policy: str,
                 known_fingerprint: str | None, deadline: Deadline) -> None:
        try:
            import paramiko
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise BundleError("bootstrap mode ssh needs the 'paramiko' package: "
                              "pip install 'cvmigrate[controller]'") from exc
        self._paramiko = paramiko
        self.host, self.port, self.username = host, port, username
        self.deadline = deadline
        self.where = f"{username}@{format_hostport(host, port)}"
        if host_key_policy not in HOST_KEY_POLICIES:
            raise ConfigError(f"host_key_policy must be one of {HOST_KEY_POLICIES}, not {host_key_policy!r}")
        if host_key_policy == "known" and not known_fingerprint:
            raise ConfigError("host_key_policy='known' needs known_fingerprint (the host_key_fingerprint "
                              "recorded at the first connection); use 'tofu' for a first connection")
        want_type, want_digest = _split_fingerprint(known_fingerprint) if known_fingerprint else (None, None)

        sock = self._connect_socket()
        t = paramiko.Transport(sock)
        self.transport = t
        try:
            if want_type:
                # Make the server show the key type we recorded (it may hold several).
                t.get_security_options().key_types = _key_algorithms(want_type)
            t.banner_timeout = t.handshake_timeout = max(1.0, deadline.left("the SSH handshake"))
            try:
                t.start_client(timeout=max(1.0, deadline.left("the SSH handshake")))
            except paramiko.SSHException as exc:
                if want_type and "host key" in str(exc).lower():
                    raise HostKeyChanged(
                        f"{self.where} no longer offers a {want_type} host key (recorded: {known_fingerprint}); "
                        "if the instance re-entered rescue mode its host keys were regenerated: clear the "
                        "recorded fingerprint and connect again; otherwise do not proceed (possible "
                        "man-in-the-middle)") from None
                raise SshUnreachable(f"SSH handshake with {self.where} failed ({exc}); check that the "
                                     "instance is in RESCUE_MODE and that this port is its SSH server") from None
            except (EOFError, OSError) as exc:
                raise SshUnreachable(f"SSH handshake with {self.where} failed ({exc or type(exc).__name__}); "
                                     "check that the instance is in RESCUE_MODE and that this port is its "
                                     "SSH server") from None
            # The host key is checked before the password leaves this process.
            key = t.get_remote_server_key()
            self.fingerprint = host_key_fingerprint(key)
            if want_digest is not None:
                got_type, got_digest = _split_fingerprint(self.fingerprint)
                if got_digest != want_digest or (want_type and got_type != want_type):
                    raise HostKeyChanged(
                        f"the SSH host key of {format_hostport(host, port)} CHANGED: recorded {known_fingerprint}, "
                        f"offered {self.fingerprint}; refusing to log in.  If the instance re-entered rescue "
                        "mode its host keys were regenerated: clear the recorded fingerprint and connect "
                        "again; otherwise do not proceed (possible man-in-the-middle)")
                logger.info("SSH host key of %s matches the recorded %s", format_hostport(host, port),
                            self.fingerprint)
            else:
                logger.info("SSH host key of %s trusted on first use: %s", format_hostport(host, port),
                            self.fingerprint)
            self._authenticate(password)
        except BaseException:
            t.close()
            raise
        self._sftp: Any = None

    # ------------------------------------------------------------ connection
    def _connect_socket(self) -> socket.socket:
        """TCP connect, retried (the rescue system may still be booting) until the deadline."""
        def connect(_attempt: int) -> socket.socket:
            left = self.deadline.end - time.monotonic()
            if left <= 0:
                raise TimeoutError("no time left")
            return socket.create_connection((self.host, self.port), timeout=min(left, 15.0))

        try:
            return call_with_retry(
                connect, policy=RetryPolicy(max_attempts=1 << 30, base_delay=0.5, max_delay=5.0,
                                            max_total=max(0.0, self.deadline.end - time.monotonic())),
                retryable=lambda e: isinstance(e, OSError) and not isinstance(e, socket.gaierror),
                describe=f"connect to {self.where}",
                on_retry=lambda e, _p: logger.debug("connect to %s failed (%s); retrying", self.where, e))
        except socket.gaierror as exc:
            raise SshUnreachable(f"cannot resolve {self.host!r} ({exc.strerror}); check the instance's "
                                 "IP address") from None
        except OSError as last:
            why = "timed out" if isinstance(last, TimeoutError) else (last.strerror or str(last))
            raise SshUnreachable(f"cannot reach the rescue system's SSH server at "
                                 f"{format_hostport(self.host, self.port)} within {self.deadline.total:.0f}s "
                                 f"({why}); check that the instance is in RESCUE_MODE, that its security group "
                                 f"allows TCP {self.port} from this host and that the address is right") from None

    def _authenticate(self, password: str) -> None:
        paramiko = self._paramiko
        t = self.transport
        fix = ("check the username and the rescue password set by EnterRescueMode (rescue mode may still be "
               "starting: wait for RESCUE_MODE)")
        try:
            t.auth_password(self.username, password)
        except paramiko.BadAuthenticationType as exc:
            allowed = list(exc.allowed_types or ())
            if "keyboard-interactive" not in allowed:
                raise SshAuthFailed(f"{self.where} does not accept password logins (it offers "
                                    f"{', '.join(allowed) or 'nothing'}); enable PasswordAuthentication in "
                                    "the rescue system's sshd") from None
            try:
                t.auth_interactive(self.username, lambda _t, _i, prompts: [password for _p in prompts])
            except paramiko.AuthenticationException:
                raise SshAuthFailed(f"{self.where} refused the login; {fix}") from None
        except paramiko.AuthenticationException:
            raise SshAuthFailed(f"{self.where} refused the login; {fix}") from None
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise SshUnreachable(f"the connection to {self.where} broke during login ({exc}); retry") from None
        if not t.is_authenticated():
            raise SshAuthFailed(f"{self.where} refused the login; {fix}")
        logger.info("logged in to %s", self.where)

    def close(self) -> None:
        try:
            if self._sftp is not None:
                self._sftp.close()
        finally:
            self.transport.close()

    # ------------------------------------------------------------ exec
    def run(self, command: str, step: str, *, timeout: float | None = None) -> tuple[int, str, str]:
        """Run ``command`` through the remote login shell; return (exit status, stdout, stderr).

        ``command`` must never contain a secret: sshd logs and ``ps`` on the
        remote can show it.
        """
        left = self.deadline.left(step)
        limit = min(left, timeout) if timeout else left
        try:
            chan = self.transport.open_session(timeout=limit)
        except (self._paramiko.SSHException, EOFError, OSError) as exc:
            raise SshUnreachable(f"{step}: the SSH connection to {self.where} failed ({exc}); retry") from None
        end = time.monotonic() + limit
        out, err = bytearray(), bytearray()
        try:
            chan.settimeout(0.2)
            chan.exec_command(command)
            while True:
                got = False
                while chan.recv_ready():
                    out += chan.recv(65536)
                    got = True
                while chan.recv_stderr_ready():
                    err += chan.recv_stderr(65536)
                    got = True
                if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                    break
                if chan.closed and not got:
                    break
                if time.monotonic() > end:
                    raise BootstrapTimeout(f"{step} on {self.where} did not finish within {limit:.0f}s; "
                                           "raise the timeout or check the rescue system's load")
                if not got:
                    time.sleep(0.02)
            rc = chan.recv_exit_status()
        except TimeoutError:
            raise BootstrapTimeout(f"{step} on {self.where} timed out") from None
        finally:
            chan.close()
        return rc, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")

    # ------------------------------------------------------------ sftp
    @property
    def sftp(self) -> Any:
        if self._sftp is None:
            try:
                self._sftp = self._paramiko.SFTPClient.from_transport(self.transport)
            except (self._paramiko.SSHException, EOFError, OSError) as exc:
                raise RemoteInstallFailed(f"cannot open SFTP on {self.where} ({exc}); the rescue system's "
                                          "sshd needs the sftp subsystem") from None
            self._sftp.get_channel().settimeout(max(1.0, self.deadline.left("SFTP")))
        return self._sftp

    def mkdirs(self, path: str, mode: int = 0o700) -> None:
        parts = path.rstrip("/").split("/")
        cur = "/" if path.startswith("/") else ""
        for p in parts:
            if not p:
                continue
            cur = f"{cur}{p}" if cur.endswith("/") or not cur else f"{cur}/{p}"
            try:
                self.sftp.stat(cur)
            except FileNotFoundError:
                self.sftp.mkdir(cur, mode)
                self.sftp.chmod(cur, mode)

    def put_bytes(self, data: bytes, path: str, mode: int = 0o600) -> None:
        """Write ``data`` to ``path`` atomically; the file is ``mode`` before any byte is written."""
        self._put([data], path, mode)

    def put_file(self, local: Path, path: str, mode: int = 0o600) -> None:
        """Upload ``local`` to ``path`` like ``put_bytes``, 1 MiB at a time, within the deadline."""
        with open(local, "rb") as src:
            self._put(iter(lambda: src.read(1 << 20), b""), path, mode, f"uploading {local.name}")

    def _put(self, chunks: Iterable[bytes], path: str, mode: int, step: str | None = None) -> None:
        tmp = f"{path}.part"
        try:
            self.sftp.remove(tmp)
        except OSError:
            pass
        with self.sftp.open(tmp, "wb") as f:
            f.chmod(mode)
            f.set_pipelined(True)
            for chunk in chunks:
                if step is not None:
                    self.deadline.left(step)
                f.write(chunk)
        self._rename(tmp, path)

    def _rename(self, tmp: str, path: str) -> None:
        try:
            self.sftp.posix_rename(tmp, path)
        except (OSError, self._paramiko.SSHException):
            try:
                self.sftp.remove(path)
            except OSError:
                pass
            self.sftp.rename(tmp, path)

