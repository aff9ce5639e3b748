"""Bootstrap mode ``ssh``: start the receiver inside the target's rescue system.

Why: after ``EnterRescueMode`` the target CVM runs a small Linux we reach only
by SSH with the rescue password we generated.  The receiver (``cvmigrate
receive``) must run there, next to the target disk, so this module logs in,
copies the receiver over, starts it detached and returns its address.

Steps (one deadline, ``timeout``, bounds them all):

1. connect and check the host key *before* sending the password: trust on
   first use (the fingerprint is returned; the caller records it in the
   controller's state) or ``known`` (the caller's recorded fingerprint must
   match).  A changed key is always refused, never silently accepted;
2. log in with the password (``password`` auth, or ``keyboard-interactive``
   when the server only offers that); the password is sent only inside the
   SSH session -- never logged, never part of a command line, never stored;
3. ask the remote for its architecture (``uname -m``); when the one-file
   executable for it is at hand (``tools/build_bundle.sh`` writes
   ``dist/cvmigrate-linux-<arch>``; see :func:`find_executable`), upload it
   (skipped when the remote already holds a file with the same SHA-256) and
   run everything remote with its bundled interpreter: the rescue system
   needs no Python at all.  Otherwise (or with an explicit ``python=``) ask
   the remote Python for its version and libc and
4. build (or reuse from ``~/.cache/cvmigrate/wheels``) a bundle: a wheel of
   this project plus binary wheels of its light dependencies (grpcio,
   protobuf, xxhash, zstandard) for *that* Python and platform;
5. upload by SFTP a small helper script and the wheels or the executable
   (skipping what the remote already holds with the same SHA-256), then the
   TLS files and the token, created mode 0600 before any byte is written;
6. the helper unpacks the wheels into ``WORKDIR/lib/<bundle id>`` (a wheel is
   a zip designed to be unpacked into a ``site-packages`` directory, so this
   needs neither pip nor ``python3 -m venv``/``ensurepip``, which minimal
   rescue systems often lack), checks that everything imports, starts
   ``python3 -m cvmigrate receive --listen 0.0.0.0:PORT --port-file ...`` in
   its own session (``setsid``; stdin/stdout/stderr on files) so it outlives
   the SSH connection, waits for the port file and checks the port accepts;
7. the controller checks it can open a TCP connection to ``HOST:PORT``.

Remote layout (``remote_workdir``, default ``~/.cvmigrate-receiver``, 0700)::

    helper.py           the remote half of this module (REMOTE_HELPER)
    bin/                the one-file executable (executable mode)
    runtime/            where that executable unpacks its interpreter (0700)
    wheels/             uploaded wheels + manifest.json (name -> sha256)
    lib/<bundle id>/    the unpacked wheels (PYTHONPATH of the receiver)
    secrets/            ca.pem server.pem server.key token   (all 0600)
    run/                receiver.pid receiver.port receiver.log

Re-running ``bootstrap_receiver`` is safe: a receiver this module started
before (same pid file, command line checked) is stopped and a new one started;
the receiver's journal on the target disk says where the transfer continues.
``stop_receiver`` stops it and removes ``secrets/``.
"""
from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import logging
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from cvmigrate.common.errors import (
    AuthError,
    CheckFailed,
    ConfigError,
    CvmError,
    StageTimeout,
    TargetError,
    TransportError,
)
from cvmigrate.common.tls import PkiPaths, check_token

logger = logging.getLogger(__name__)

HOST_KEY_POLICIES = ("tofu", "known")
#: The receiver's own ``requires-python``; a rescue system with an older
#: Python cannot run it.
MIN_REMOTE_PYTHON = (3, 11)
DEFAULT_REMOTE_WORKDIR = "~/.cvmigrate-receiver"
#: Architectures we can fetch manylinux wheels for (``platform.machine()``).
SUPPORTED_MACHINES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}
_PROJECT = "cvmigrate"


# --------------------------------------------------------------------- errors
class BootstrapError(CvmError):
    """Starting the receiver over SSH failed."""

    exit_code = 15


class SshUnreachable(BootstrapError, TransportError):
    """The rescue system's SSH port could not be reached (retryable)."""

    exit_code = 15


class SshAuthFailed(BootstrapError, AuthError):
    """The rescue system refused our login."""

    exit_code = 15


class HostKeyChanged(BootstrapError, AuthError):
    """The SSH host key is not the one recorded: possibly someone in the middle."""

    exit_code = 15


class RemotePythonMissing(BootstrapError, CheckFailed):
    """The rescue system has no usable Python for the receiver."""

    exit_code = 15


class RemoteInstallFailed(BootstrapError, TargetError):
    """Copying or installing the receiver on the rescue system failed."""

    exit_code = 15


class ReceiverStartFailed(BootstrapError, TargetError):
    """The receiver did not start (or is not reachable) on the rescue system."""

    exit_code = 15


class BundleError(BootstrapError, ConfigError):
    """The receiver bundle (wheels) could not be built here."""

    exit_code = 15


class BootstrapTimeout(BootstrapError, StageTimeout):
    """A bootstrap step did not finish within the time limit."""

    exit_code = 15


# --------------------------------------------------------------------- result
@dataclass(frozen=True)
class ReceiverEndpoint:
    """A receiver started by ``bootstrap_receiver``.  Holds no secret; safe to checkpoint.

    ``address`` is what the agent dials ("host:port", IPv6 in brackets).
    ``host_key_fingerprint`` ("<key type> SHA256:<base64>", the same digest
    ``ssh-keygen -lf`` prints) must be recorded by the caller and passed back as
    ``known_fingerprint`` to every later SSH connection to this rescue system.
    """

    address: str
    remote_pid: int
    remote_workdir: str
    host_key_fingerprint: str
    ssh_host: str = ""
    ssh_port: int = 22
    username: str = "root"
    listen_port: int = 0
    bundle_id: str = ""
    python: str = "python3"
    #: The shell words that run a Python script remotely (the executable's
    #: bundled interpreter, or ``python``); empty in endpoints from older versions.
    runner: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ReceiverEndpoint":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


# --------------------------------------------------------------------- helpers
class _Deadline:
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


def _format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def _q(s: str) -> str:
    return shlex.quote(s)


# --------------------------------------------------------------------- SSH session
class _Ssh:
    """One authenticated paramiko transport with exec and SFTP helpers."""

    def __init__(self, host: str, port: int, username: str, password: str, *, host_key_policy: str,
                 known_fingerprint: str | None, deadline: _Deadline) -> None:
        try:
            import paramiko
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise BundleError("bootstrap mode ssh needs the 'paramiko' package: "
                              "pip install 'cvmigrate[controller]'") from exc
        self._paramiko = paramiko
        self.host, self.port, self.username = host, port, username
        self.deadline = deadline
        self.where = f"{username}@{_format_address(host, port)}"
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
                        f"the SSH host key of {_format_address(host, port)} CHANGED: recorded {known_fingerprint}, "
                        f"offered {self.fingerprint}; refusing to log in.  If the instance re-entered rescue "
                        "mode its host keys were regenerated: clear the recorded fingerprint and connect "
                        "again; otherwise do not proceed (possible man-in-the-middle)")
                logger.info("SSH host key of %s matches the recorded %s", _format_address(host, port),
                            self.fingerprint)
            else:
                logger.info("SSH host key of %s trusted on first use: %s", _format_address(host, port),
                            self.fingerprint)
            self._authenticate(password)
        except BaseException:
            t.close()
            raise
        self._sftp: Any = None

    # ------------------------------------------------------------ connection
    def _connect_socket(self) -> socket.socket:
        """TCP connect, retried (the rescue system may still be booting) until the deadline."""
        delay = 0.5
        last: OSError | None = None
        while True:
            try:
                left = self.deadline.end - time.monotonic()
                if left <= 0:
                    break
                return socket.create_connection((self.host, self.port), timeout=min(left, 15.0))
            except socket.gaierror as exc:
                raise SshUnreachable(f"cannot resolve {self.host!r} ({exc.strerror}); check the instance's "
                                     "IP address") from None
            except OSError as exc:
                last = exc
                logger.debug("connect to %s failed (%s); retrying", self.where, exc)
            left = self.deadline.end - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(delay, left))
            delay = min(delay * 2, 5.0)
        why = (last.strerror or str(last)) if last is not None else "no time left"
        if isinstance(last, (socket.timeout, TimeoutError)):
            why = "timed out"
        raise SshUnreachable(f"cannot reach the rescue system's SSH server at {_format_address(self.host, self.port)} "
                             f"within {self.deadline.total:.0f}s ({why}); check that the instance is in "
                             "RESCUE_MODE, that its security group allows TCP "
                             f"{self.port} from this host and that the address is right")

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

    def __enter__(self) -> "_Ssh":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

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
        except socket.timeout:
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
        tmp = f"{path}.part"
        try:
            self.sftp.remove(tmp)
        except OSError:
            pass
        with self.sftp.open(tmp, "wb") as f:
            f.chmod(mode)
            f.set_pipelined(True)
            f.write(data)
        self._rename(tmp, path)

    def put_file(self, local: Path, path: str, mode: int = 0o600) -> None:
        tmp = f"{path}.part"
        try:
            self.sftp.remove(tmp)
        except OSError:
            pass
        with open(local, "rb") as src, self.sftp.open(tmp, "wb") as f:
            f.chmod(mode)
            f.set_pipelined(True)
            while True:
                self.deadline.left(f"uploading {local.name}")
                block = src.read(1 << 20)
                if not block:
                    break
                f.write(block)
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


# --------------------------------------------------------------------- remote facts
_PROBE = (
    "import sys, json, os, platform\n"
    "try:\n"
    "    libc = list(platform.libc_ver())\n"
    "except Exception:\n"
    "    libc = ['', '']\n"
    "print(json.dumps({'version': list(sys.version_info[:3]), 'impl': platform.python_implementation(),\n"
    "                  'machine': platform.machine(), 'libc': libc, 'executable': sys.executable,\n"
    "                  'home': os.path.expanduser('~'), 'uid': os.getuid(), 'bits64': sys.maxsize > 2**32}))\n"
)


@dataclass(frozen=True)
class RemotePython:
    """What ``bootstrap_receiver`` learned about the rescue system's Python."""

    version: tuple[int, int, int]
    implementation: str
    machine: str
    libc: tuple[str, str]
    executable: str
    home: str
    uid: int

    @property
    def arch(self) -> str:
        return SUPPORTED_MACHINES.get(self.machine.lower(), self.machine)

    def platform_key(self) -> str:
        lib = f"{self.libc[0] or 'musl'}{self.libc[1]}"
        return f"cp{self.version[0]}{self.version[1]}-{self.arch}-{lib}"


def probe_python(ssh: _Ssh, python: str) -> RemotePython:
    """Ask the remote interpreter for its version, architecture and libc."""
    rc, out, err = ssh.run(f"{_q(python)} -c {_q(_PROBE)}", "asking the remote Python for its version")
    if rc != 0 or not out.strip():
        detail = (err.strip().splitlines() or [f"exit status {rc}"])[-1]
        if rc == 127 or "not found" in err or "No such file" in err:
            raise RemotePythonMissing(
                f"the rescue system at {ssh.where} has no {python!r} ({detail}); the receiver needs CPython "
                f"{MIN_REMOTE_PYTHON[0]}.{MIN_REMOTE_PYTHON[1]}+: install it in the rescue system or pass "
                "python='/path/to/python3.11'")
        raise RemotePythonMissing(f"{python!r} on {ssh.where} did not run ({detail}); pass python= pointing "
                                  f"at a working CPython {MIN_REMOTE_PYTHON[0]}.{MIN_REMOTE_PYTHON[1]}+")
    try:
        d = json.loads(out.strip().splitlines()[-1])
        rp = RemotePython(version=tuple(d["version"]), implementation=d["impl"], machine=d["machine"],
                          libc=(d["libc"][0] or "", d["libc"][1] or ""), executable=d["executable"],
                          home=d["home"], uid=int(d["uid"]))
    except (ValueError, KeyError, IndexError, TypeError):
        raise RemotePythonMissing(f"{python!r} on {ssh.where} printed something unexpected ({out[:200]!r}); "
                                  "pass python= pointing at a working CPython") from None
    if rp.implementation != "CPython" or rp.version[:2] < MIN_REMOTE_PYTHON:
        raise RemotePythonMissing(
            f"{python!r} on {ssh.where} is {rp.implementation} {'.'.join(map(str, rp.version))}; the receiver "
            f"needs CPython {MIN_REMOTE_PYTHON[0]}.{MIN_REMOTE_PYTHON[1]}+: install it in the rescue system or "
            "pass python='/path/to/python3.11'")
    if rp.machine.lower() not in SUPPORTED_MACHINES:
        raise RemotePythonMissing(f"the rescue system at {ssh.where} is {rp.machine}; only "
                                  f"{', '.join(sorted(set(SUPPORTED_MACHINES.values())))} are supported")
    logger.info("remote Python on %s: CPython %s, %s, %s %s", ssh.where, ".".join(map(str, rp.version)),
                rp.arch, rp.libc[0] or "libc?", rp.libc[1])
    return rp


# --------------------------------------------------------------------- the one-file executable
EXECUTABLE_PREFIX = "cvmigrate-linux-"


def find_executable(arch: str, given: Path | str | None = None) -> Path | None:
    """The one-file executable for ``arch`` (``cvmigrate-linux-<arch>``), or None.

    Looked for, in order: ``given`` (the file, or a directory holding it);
    ``$CVMIGRATE_EXECUTABLES`` (a directory); the file this controller itself
    runs from when it is that executable and ``arch`` is this machine's
    (``$CVMIGRATE_EXECUTABLE``, set by the launcher); ``dist/`` of the source
    tree this cvmigrate was installed from (a checkout).
    """
    name = f"{EXECUTABLE_PREFIX}{arch}"
    if given is not None:
        g = Path(given)
        cand = g / name if g.is_dir() else g
        if not cand.is_file():
            raise ConfigError(f"no {name} at {os.fspath(cand)!r}: build it with tools/build_bundle.sh --arch {arch} "
                              "and pass the file or its directory")
        return cand
    if os.environ.get("CVMIGRATE_EXECUTABLES"):
        cand = Path(os.environ["CVMIGRATE_EXECUTABLES"]) / name
        if cand.is_file():
            return cand
    own = os.environ.get("CVMIGRATE_EXECUTABLE")
    if own and os.path.isfile(own) and SUPPORTED_MACHINES.get(os.uname().machine) == arch:
        return Path(own)
    try:
        cand = _project_root() / "dist" / name
    except BundleError:
        return None
    return cand if cand.is_file() else None


@dataclass(frozen=True)
class RemoteShell:
    """What a POSIX shell on the rescue system says about itself (no Python needed)."""

    machine: str
    home: str
    uid: int

    @property
    def arch(self) -> str:
        return SUPPORTED_MACHINES.get(self.machine.lower(), self.machine)


def probe_shell(ssh: _Ssh) -> RemoteShell:
    """``uname -m``, ``$HOME`` and ``id -u`` of the remote login."""
    rc, out, err = ssh.run('uname -m; id -u; printf "%s\\n" "$HOME"', "asking the rescue system for its architecture")
    lines = out.splitlines()
    if rc != 0 or len(lines) < 3:
        detail = (err.strip().splitlines() or [f"exit status {rc}"])[-1]
        raise RemoteInstallFailed(f"the rescue system at {ssh.where} did not answer `uname -m; id -u` ({detail}); "
                                  "its login shell must be a POSIX shell")
    try:
        return RemoteShell(machine=lines[0].strip(), uid=int(lines[1]), home=lines[2].strip() or "/")
    except ValueError:
        raise RemoteInstallFailed(f"unexpected answer from {ssh.where} to `uname -m; id -u`: {out[:200]!r}") from None


def _install_executable(ssh: _Ssh, layout: "_Layout", exe: Path) -> tuple[str, str]:
    """Upload ``exe`` unless the remote holds the same bytes; return (runner shell words, sha256)."""
    digest = _sha256(exe)
    remote = f"{layout.workdir}/bin/{exe.name}"
    rc, out, _ = ssh.run(f"sha256sum {_q(remote)} 2>/dev/null", "checking the uploaded executable")
    if rc == 0 and out.split()[:1] == [digest]:
        logger.info("%s already on %s (sha256 %s)", exe.name, ssh.where, digest[:16])
    else:
        try:
            ssh.mkdirs(f"{layout.workdir}/bin", 0o700)
            ssh.put_file(exe, remote, 0o700)
        except OSError as exc:
            raise RemoteInstallFailed(f"uploading {exe.name} to {ssh.where} failed ({exc}); check free space under "
                                      f"{layout.workdir} (df -h) or pass remote_workdir=") from None
        rc, out, _ = ssh.run(f"sha256sum {_q(remote)}", "checking the uploaded executable")
        if rc != 0 or out.split()[:1] != [digest]:
            raise RemoteInstallFailed(f"{remote} on {ssh.where} does not have the SHA-256 of {exe} after the upload "
                                      f"({out.strip()[:80] or 'sha256sum failed'}); retry")
        logger.info("uploaded %s (%d bytes, sha256 %s) to %s", exe.name, exe.stat().st_size, digest[:16], ssh.where)
    runner = (f"env CVMIGRATE_LAUNCHER_PYTHON=1 CVMIGRATE_CACHE_DIR={_q(layout.workdir + '/runtime')} "
              f"{_q(remote)}")
    rc, out, err = ssh.run(f"{runner} -c 'import sys; print(sys.version_info[0])'", "unpacking the executable")
    if rc != 0 or out.strip() != "3":
        detail = "\n".join((err or out).strip().splitlines()[-5:]) or f"exit status {rc}"
        raise RemoteInstallFailed(f"{exe.name} does not run on {ssh.where}:\n{detail}")
    return runner, digest


# --------------------------------------------------------------------- the bundle
def wheel_cache_dir() -> Path:
    """``$CVMIGRATE_CACHE_DIR/wheels`` or ``$XDG_CACHE_HOME/cvmigrate/wheels`` (``~/.cache/...``)."""
    if os.environ.get("CVMIGRATE_CACHE_DIR"):
        return Path(os.environ["CVMIGRATE_CACHE_DIR"]) / "wheels"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cvmigrate" / "wheels"


def platform_tags(remote: RemotePython) -> list[str]:
    """pip ``--platform`` values the remote can load, newest manylinux first."""
    arch = remote.arch
    lib, ver = remote.libc
    if lib == "glibc" and ver:
        try:
            major, minor = (int(x) for x in ver.split(".")[:2])
        except ValueError:
            major, minor = 2, 17
        if major != 2:
            major, minor = 2, 17
        tags = [f"manylinux_2_{m}_{arch}" for m in range(minor, 16, -1)]
        tags.append(f"manylinux2014_{arch}")
        if arch == "x86_64":
            tags += [f"manylinux_2_{m}_{arch}" for m in range(16, 4, -1)]
            tags += [f"manylinux2010_{arch}", f"manylinux1_{arch}"]
        return tags
    # No glibc version: assume musl (Alpine-like rescue systems).
    return [f"musllinux_1_2_{arch}", f"musllinux_1_1_{arch}"]


def _project_root() -> Path:
    """The source tree this cvmigrate was installed from (editable install or a checkout)."""
    import cvmigrate

    here = Path(cvmigrate.__file__).resolve().parent
    for cand in (here.parent, *here.parents):
        if (cand / "pyproject.toml").is_file():
            try:
                text = (cand / "pyproject.toml").read_text()
            except OSError:
                continue
            if 'name = "cvmigrate"' in text:
                return cand
    raise BundleError("cannot find cvmigrate's source tree (pyproject.toml) to build the receiver wheel; "
                      "pass bundle=DIR holding a cvmigrate wheel and its dependency wheels "
                      "(see prepare_bundle)")


def _project_files(root: Path) -> list[Path]:
    """The files that go into the wheel: pyproject, README and every package directory."""
    import tomllib

    meta = tomllib.loads((root / "pyproject.toml").read_text())
    files = [root / "pyproject.toml"]
    readme = meta.get("project", {}).get("readme")
    if isinstance(readme, str) and (root / readme).is_file():
        files.append(root / readme)
    for extra in ("LICENSE", "LICENSE.txt", "setup.cfg", "MANIFEST.in"):
        if (root / extra).is_file():
            files.append(root / extra)
    dirs = sorted(set(meta.get("tool", {}).get("setuptools", {}).get("package-dir", {}).values()))
    for d in dirs:
        base = root / d
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(n for n in dirnames if n != "__pycache__" and not n.startswith("."))
            for n in sorted(filenames):
                if n.endswith((".pyc", ".pyo")) or n.startswith("."):
                    continue
                files.append(Path(dirpath) / n)
    return files


def _tree_digest(root: Path, files: Iterable[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        rel = f.relative_to(root).as_posix().encode()
        h.update(len(rel).to_bytes(4, "big") + rel)
        data = f.read_bytes()
        h.update(len(data).to_bytes(8, "big") + data)
    return h.hexdigest()[:16]


def _pip(args: Sequence[str], step: str, timeout: float) -> None:
    argv = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", *args]
    logger.debug("running %s", " ".join(argv))
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise BootstrapTimeout(f"{step} did not finish within {timeout:.0f}s; check this host's access to "
                               "PyPI (or its proxy), or pass bundle=DIR prepared in advance") from None
    if r.returncode != 0:
        tail = "\n".join((r.stderr or r.stdout).strip().splitlines()[-8:])
        raise BundleError(f"{step} failed (pip exit {r.returncode}); check this host's access to PyPI (or "
                          f"PIP_INDEX_URL), or pass bundle=DIR prepared in advance:\n{tail}")


def build_project_wheel(cache: Path | None = None, *, timeout: float = 300) -> Path:
    """``pip wheel --no-deps`` of this project, cached by the digest of its sources."""
    cache = cache or wheel_cache_dir()
    root = _project_root()
    files = _project_files(root)
    digest = _tree_digest(root, files)
    out = cache / "self" / digest
    found = sorted(out.glob(f"{_PROJECT}-*.whl"))
    if found:
        return found[-1]
    # Build from a copy: setuptools writes build/ and *.egg-info into the tree it builds.
    with tempfile.TemporaryDirectory(prefix="cvm-wheel-") as tmp:
        src = Path(tmp) / "src"
        for f in files:
            dst = src / f.relative_to(root)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, dst)
        dist = Path(tmp) / "dist"
        args = ["wheel", "--no-deps", "--wheel-dir", str(dist)]
        if importlib.util.find_spec("setuptools") is not None:
            args.append("--no-build-isolation")      # build offline with the local setuptools
        logger.info("building the cvmigrate wheel (sources %s)", digest)
        _pip([*args, str(src)], "building the cvmigrate wheel", timeout)
        wheels = sorted(dist.glob(f"{_PROJECT}-*.whl"))
        if not wheels:
            raise BundleError("pip wheel produced no cvmigrate wheel; pass bundle=DIR prepared in advance")
        out.mkdir(parents=True, exist_ok=True)
        final = out / wheels[-1].name
        shutil.copy2(wheels[-1], out / (final.name + ".tmp"))
        os.replace(out / (final.name + ".tmp"), final)
    return final


def receiver_requirements() -> list[str]:
    """The receiver's runtime requirements: the project's base dependencies (no extras)."""
    from importlib import metadata

    try:
        reqs = metadata.requires(_PROJECT) or []
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        import tomllib
        return list(tomllib.loads((_project_root() / "pyproject.toml").read_text())["project"]["dependencies"])
    return [r.split(";")[0].strip() for r in reqs if "extra ==" not in r]


def download_dependency_wheels(remote: RemotePython, cache: Path | None = None, *,
                               requirements: Sequence[str] | None = None, timeout: float = 300) -> list[Path]:
    """Binary wheels of the receiver's dependencies for the remote's Python and platform (cached)."""
    cache = cache or wheel_cache_dir()
    reqs = sorted(requirements if requirements is not None else receiver_requirements())
    key = hashlib.sha256(json.dumps([remote.platform_key(), reqs]).encode()).hexdigest()[:12]
    out = cache / "deps" / f"{remote.platform_key()}-{key}"
    marker = out / "complete.json"
    if marker.is_file():
        names = json.loads(marker.read_text())["wheels"]
        paths = [out / n for n in names]
        if all(p.is_file() for p in paths):
            return paths
    shutil.rmtree(out, ignore_errors=True)       # an interrupted download: start clean
    out.mkdir(parents=True, exist_ok=True)
    py = f"{remote.version[0]}{remote.version[1]}"
    args = ["download", "--only-binary=:all:", "--dest", str(out), "--python-version", py,
            "--implementation", "cp", "--abi", f"cp{py}", "--abi", "abi3", "--abi", "none"]
    for tag in platform_tags(remote):
        args += ["--platform", tag]
    logger.info("downloading receiver dependency wheels for %s: %s", remote.platform_key(), ", ".join(reqs))
    _pip([*args, *reqs], f"downloading wheels for the rescue system ({remote.platform_key()})", timeout)
    wheels = sorted(out.glob("*.whl"))
    if not wheels:
        raise BundleError(f"pip downloaded no wheels for {remote.platform_key()}; pass bundle=DIR prepared "
                          "in advance")
    marker.write_text(json.dumps({"requirements": reqs, "wheels": [p.name for p in wheels]}))
    return wheels


def prepare_bundle(remote: RemotePython, out_dir: Path | None = None, *, timeout: float = 300) -> list[Path]:
    """All wheels the receiver needs on ``remote``: the project wheel plus its dependencies.

    With ``out_dir`` the wheels are also copied there, so a bundle can be
    prepared on a machine with PyPI access and passed as ``bundle=`` later.
    """
    deadline = time.monotonic() + timeout
    own = build_project_wheel(timeout=timeout)
    deps = download_dependency_wheels(remote, timeout=max(1.0, deadline - time.monotonic()))
    wheels = [own, *deps]
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        for w in wheels:
            shutil.copy2(w, out_dir / w.name)
        return [out_dir / w.name for w in wheels]
    return wheels


def _bundle_from_dir(bundle: Path) -> list[Path]:
    wheels = sorted(Path(bundle).glob("*.whl"))
    if not any(w.name.startswith(f"{_PROJECT}-") for w in wheels):
        raise BundleError(f"the bundle directory {os.fspath(bundle)!r} holds no {_PROJECT}-*.whl; build one "
                          "with prepare_bundle(remote, out_dir) or `pip wheel --no-deps .`")
    return wheels


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------- the remote helper
#: Runs on the rescue system with its python3 (3.11+: it was checked).  Takes
#: only paths and numbers on its command line; secrets are files.
REMOTE_HELPER = r'''
import argparse, hashlib, json, os, shutil, signal, socket, subprocess, sys, time, zipfile


def out(obj, rc=0):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()
    sys.exit(rc)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cmd_hashes(a):
    res = {}
    if os.path.isdir(a.wheels):
        for n in sorted(os.listdir(a.wheels)):
            if n.endswith(".whl"):
                res[n] = sha256(os.path.join(a.wheels, n))
    out(res)


def cmd_install(a):
    with open(a.manifest) as f:
        manifest = json.load(f)
    done = os.path.join(a.lib, ".complete")
    if not os.path.exists(done):
        for name, digest in sorted(manifest.items()):
            p = os.path.join(a.wheels, name)
            if not os.path.isfile(p) or sha256(p) != digest:
                out({"error": "wheel %s is missing or corrupt after upload" % name}, 3)
        tmp = a.lib + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp, mode=0o700)
        for name in sorted(manifest):
            with zipfile.ZipFile(os.path.join(a.wheels, name)) as z:
                for info in z.infolist():
                    parts = info.filename.split("/")
                    if info.filename.startswith("/") or ".." in parts:
                        out({"error": "wheel %s has an unsafe member %r" % (name, info.filename)}, 3)
                    # NAME.data/purelib|platlib/... belongs in site-packages itself
                    if len(parts) > 2 and parts[0].endswith(".data"):
                        if parts[1] not in ("purelib", "platlib"):
                            continue
                        parts = parts[2:]
                    if not parts or not parts[-1]:
                        continue
                    dest = os.path.join(tmp, *parts)
                    os.makedirs(os.path.dirname(dest), exist_ok=True)
                    with z.open(info) as src, open(dest, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                    mode = (info.external_attr >> 16) & 0o777
                    os.chmod(dest, (mode or 0o644) & 0o755)
        shutil.rmtree(a.lib, ignore_errors=True)
        os.rename(tmp, a.lib)
        open(done, "w").close()
    env = dict(os.environ, PYTHONPATH=a.lib, PYTHONNOUSERSITE="1", PYTHONDONTWRITEBYTECODE="1")
    code = ("import grpc, google.protobuf, xxhash, zstandard, cvmigrate.receiver.cli, cvmigrate.receiver.server;"
            "print(grpc.__version__)")
    r = subprocess.run([sys.executable, "-s", "-c", code], env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, universal_newlines=True)
    if r.returncode != 0:
        shutil.rmtree(a.lib, ignore_errors=True)
        out({"error": "the installed receiver does not import: " + r.stderr.strip()[-1500:]}, 4)
    out({"ok": True, "grpc": r.stdout.strip()})


def proc_cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return None


def is_ours(pid, pidfile):
    """A receiver started by this helper: its --port-file lies in the pid file's directory."""
    argv = proc_cmdline(pid)
    rundir = os.path.dirname(os.path.abspath(pidfile)).encode() + b"/"
    return bool(argv) and b"cvmigrate" in argv and b"receive" in argv and \
        any(arg.startswith(rundir) for arg in argv)


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def terminate(pid, grace):
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return "gone"
    end = time.time() + grace
    while time.time() < end:
        if not alive(pid):
            return "terminated"
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return "terminated"
    end = time.time() + 5
    while time.time() < end and alive(pid):
        time.sleep(0.05)
    return "killed"


def read_pid(pidfile):
    try:
        with open(pidfile) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def stop_previous(pidfile):
    pid = read_pid(pidfile)
    if pid and alive(pid) and is_ours(pid, pidfile):
        return {"pid": pid, "result": terminate(pid, 10)}
    return None


def cmd_start(a):
    if not os.path.isdir(a.root):
        out({"error": "the target root %s does not exist on the rescue system (mount the target disk "
                      "there first)" % a.root, "kind": "root"}, 5)
    previous = stop_previous(a.pidfile)
    for p in (a.portfile, a.pidfile):
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass
    env = dict(os.environ, PYTHONPATH=a.lib, PYTHONNOUSERSITE="1", PYTHONUNBUFFERED="1")
    env.pop("CVMIGRATE_TOKEN", None)
    argv = [sys.executable, "-s", "-m", "cvmigrate", "receive",
            "--listen", "0.0.0.0:%d" % a.port, "--root", a.root, "--port-file", a.portfile,
            "--tls-cert", a.cert, "--tls-key", a.key, "--tls-ca", a.ca, "--token-file", a.token]
    if a.control_token:
        argv += ["--control-token-file", a.control_token]
    log = open(a.logfile, "ab")
    devnull = open(os.devnull, "rb")
    os.umask(0o077)
    proc = subprocess.Popen(argv, stdin=devnull, stdout=log, stderr=subprocess.STDOUT, env=env,
                            cwd=a.workdir, close_fds=True, start_new_session=True)
    with open(a.pidfile + ".tmp", "w") as f:
        f.write("%d\n" % proc.pid)
    os.rename(a.pidfile + ".tmp", a.pidfile)
    end = time.time() + a.timeout
    port = None
    while time.time() < end:
        rc = proc.poll()
        if rc is not None:
            out({"error": "the receiver exited with status %d" % rc, "log": tail(a.logfile)}, 6)
        try:
            with open(a.portfile) as f:
                text = f.read().strip()
            if text:
                port = int(text)
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    if port is None:
        terminate(proc.pid, 5)
        out({"error": "the receiver wrote no port file within %ds" % a.timeout, "log": tail(a.logfile)}, 7)
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except OSError as exc:
        terminate(proc.pid, 5)
        out({"error": "the receiver does not accept connections on port %d (%s)" % (port, exc),
             "log": tail(a.logfile)}, 8)
    time.sleep(0.2)
    if proc.poll() is not None:
        out({"error": "the receiver exited right after starting", "log": tail(a.logfile)}, 6)
    out({"pid": proc.pid, "port": port, "previous": previous})


def tail(path, n=4000):
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - n))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def cmd_stop(a):
    pid = read_pid(a.pidfile)
    result = {"pid": pid, "result": "not running"}
    if pid and a.pid and pid != a.pid:
        result = {"pid": pid, "result": "pid file names another receiver (%d, expected %d); left alone"
                  % (pid, a.pid)}
    elif pid and alive(pid):
        if is_ours(pid, a.pidfile):
            result["result"] = terminate(pid, a.grace)
        else:
            result["result"] = "pid %d is not a cvmigrate receiver; left alone" % pid
    if a.purge:
        for p in a.purge:
            shutil.rmtree(p, ignore_errors=True)
    out(result)


def cmd_status(a):
    pid = read_pid(a.pidfile)
    out({"pid": pid, "alive": bool(pid and alive(pid))})


p = argparse.ArgumentParser()
sub = p.add_subparsers(dest="cmd")
h = sub.add_parser("hashes"); h.add_argument("--wheels", required=True)
i = sub.add_parser("install")
for n in ("--wheels", "--lib", "--manifest"):
    i.add_argument(n, required=True)
s = sub.add_parser("start")
for n in ("--workdir", "--lib", "--root", "--portfile", "--pidfile", "--logfile", "--cert", "--key", "--ca", "--token"):
    s.add_argument(n, required=True)
s.add_argument("--control-token", default="")
s.add_argument("--port", type=int, default=0)
s.add_argument("--timeout", type=float, default=30)
t = sub.add_parser("stop")
t.add_argument("--pidfile", required=True)
t.add_argument("--pid", type=int, default=0)
t.add_argument("--grace", type=float, default=10)
t.add_argument("--purge", action="append", default=[])
st = sub.add_parser("status"); st.add_argument("--pidfile", required=True)
args = p.parse_args()
{"hashes": cmd_hashes, "install": cmd_install, "start": cmd_start, "stop": cmd_stop,
 "status": cmd_status}[args.cmd](args)
'''


@dataclass(frozen=True)
class _Layout:
    workdir: str

    @property
    def helper(self) -> str: return f"{self.workdir}/helper.py"
    @property
    def wheels(self) -> str: return f"{self.workdir}/wheels"
    @property
    def manifest(self) -> str: return f"{self.workdir}/wheels/manifest.json"
    def lib(self, bundle_id: str) -> str: return f"{self.workdir}/lib/{bundle_id}"
    @property
    def secrets(self) -> str: return f"{self.workdir}/secrets"
    @property
    def run(self) -> str: return f"{self.workdir}/run"
    @property
    def pidfile(self) -> str: return f"{self.run}/receiver.pid"
    @property
    def portfile(self) -> str: return f"{self.run}/receiver.port"
    @property
    def logfile(self) -> str: return f"{self.run}/receiver.log"


def _resolve_workdir(ssh: _Ssh, remote_workdir: str, home: str) -> str:
    wd = remote_workdir
    if wd == "~":
        wd = home
    elif wd.startswith("~/"):
        wd = f"{home.rstrip('/')}/{wd[2:]}"
    if not wd.startswith("/"):
        raise ConfigError(f"remote_workdir {remote_workdir!r} must be absolute or start with '~/'")
    return wd.rstrip("/") or "/"


def _helper(ssh: _Ssh, runner: str, layout: _Layout, args: Sequence[str], step: str,
            *, error: type[BootstrapError] = RemoteInstallFailed, timeout: float | None = None) -> dict[str, Any]:
    """Run REMOTE_HELPER with ``runner`` (shell words starting a Python interpreter)."""
    cmd = " ".join([runner, "-s", _q(layout.helper), *(_q(a) for a in args)])
    rc, out, err = ssh.run(cmd, step, timeout=timeout)
    try:
        res = json.loads(out.strip().splitlines()[-1]) if out.strip() else None
    except ValueError:
        res = None
    if not isinstance(res, dict):
        detail = "\n".join((err or out).strip().splitlines()[-10:]) or f"exit status {rc}"
        raise error(f"{step} on {ssh.where} failed:\n{detail}")
    if rc != 0 or "error" in res:
        log = res.get("log") or ""
        raise error(f"{step} on {ssh.where} failed: {res.get('error', f'exit status {rc}')}"
                    + (f"\n--- receiver log (tail)\n{log.strip()}" if log.strip() else ""))
    return res


def _upload_secrets(ssh: _Ssh, layout: _Layout, pki: PkiPaths, token: str,
                    control_token: str | None = None) -> dict[str, str]:
    ssh.mkdirs(layout.secrets, 0o700)
    names = {"ca": (pki.ca_cert, "ca.pem"), "cert": (pki.server_cert, "server.pem"),
             "key": (pki.server_key, "server.key")}
    remote: dict[str, str] = {}
    for what, (local, name) in names.items():
        try:
            data = Path(local).read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read the migration's {name} at {local!r} ({exc.strerror}); mint the "
                              "certificates first (mint_migration_pki)") from None
        remote[what] = f"{layout.secrets}/{name}"
        ssh.put_bytes(data, remote[what], 0o600)
    remote["token"] = f"{layout.secrets}/token"
    ssh.put_bytes(token.encode("ascii") + b"\n", remote["token"], 0o600)
    if control_token:
        remote["control_token"] = f"{layout.secrets}/control-token"
        ssh.put_bytes(control_token.encode("ascii") + b"\n", remote["control_token"], 0o600)
    return remote


def _check_reachable(host: str, port: int, seconds: float) -> OSError | None:
    end = time.monotonic() + seconds
    last: OSError | None = None
    while True:
        try:
            socket.create_connection((host, port), timeout=max(0.5, min(5.0, end - time.monotonic()))).close()
            return None
        except OSError as exc:
            last = exc
        if time.monotonic() >= end:
            return last
        time.sleep(0.3)


# --------------------------------------------------------------------- public API
def bootstrap_receiver(host: str, *, port: int = 22, username: str = "root", password: str, target_root: str,
                       listen_port: int = 0, pki_dir: Path, token: str, control_token: str | None = None,
                       timeout: float = 120,
                       host_key_policy: str = "tofu", known_fingerprint: str | None = None,
                       python: str | None = None, bundle: Path | None = None,
                       executable: Path | str | None = None,
                       remote_workdir: str = DEFAULT_REMOTE_WORKDIR,
                       check_reachable: bool = True) -> ReceiverEndpoint:
    """Log into the rescue system, install and start the receiver there; return its address.

    ``host_key_policy``: ``"tofu"`` accepts the key on first use (no
    ``known_fingerprint``) and checks it otherwise; ``"known"`` requires
    ``known_fingerprint``.  Either way a key that differs from
    ``known_fingerprint`` raises ``HostKeyChanged`` before the password is
    sent.  ``pki_dir`` holds ``ca.pem``, ``server.pem`` and ``server.key``
    (``mint_migration_pki``); the receiver requires client certificates signed
    by that CA *and* ``token`` (with ``control_token`` the receiver keeps
    fix-ups and finalize for that second token, which the agent never holds).
    The receiver runs from the one-file
    executable for the remote's architecture when one is found
    (``executable``: the file or its directory; else :func:`find_executable`)
    and neither ``python`` nor ``bundle`` is given; the rescue system then
    needs no Python.  Otherwise it runs under the remote ``python`` (default
    ``python3``, 3.11+) from wheels: ``bundle`` is a directory of them prepared
    in advance (``prepare_bundle``); without it they are built/downloaded here
    and cached under ``wheel_cache_dir()``.  ``check_reachable`` also checks
    that this process can open a TCP connection to the receiver.

    Raises SshUnreachable, SshAuthFailed, HostKeyChanged, RemotePythonMissing,
    BundleError, RemoteInstallFailed, ReceiverStartFailed, BootstrapTimeout or
    ConfigError, each naming the fix.
    """
    token = check_token(token, "the migration token")
    if control_token is not None:
        control_token = check_token(control_token, "the migration's control token")
    if not password:
        raise ConfigError("no rescue password given: pass the password set with EnterRescueMode")
    if not target_root.startswith("/"):
        raise ConfigError(f"target_root {target_root!r} must be an absolute path on the rescue system")
    if not 0 <= listen_port < 65536:
        raise ConfigError(f"listen_port {listen_port} is not a TCP port (0 picks a free one)")
    pki = PkiPaths.in_dir(pki_dir)
    for f in (pki.ca_cert, pki.server_cert, pki.server_key):
        if not os.path.isfile(f):
            raise ConfigError(f"the migration's certificate directory {pki.directory!r} lacks "
                              f"{os.path.basename(f)}; mint it with mint_migration_pki first")
    wheels_given = _bundle_from_dir(bundle) if bundle is not None else None
    deadline = _Deadline(timeout, f"starting the receiver on {_format_address(host, port)}")

    with _Ssh(host, port, username, password, host_key_policy=host_key_policy,
              known_fingerprint=known_fingerprint, deadline=deadline) as ssh:
        del password
        shell = probe_shell(ssh)
        exe = None
        if python is None and bundle is None:
            if shell.machine.lower() not in SUPPORTED_MACHINES:
                raise RemoteInstallFailed(f"the rescue system at {ssh.where} is {shell.machine}; only "
                                          f"{', '.join(sorted(set(SUPPORTED_MACHINES.values())))} are supported")
            exe = find_executable(shell.arch, executable)
        if exe is None:
            auto = python is None
            python = python or "python3"
            try:
                remote = probe_python(ssh, python)
            except RemotePythonMissing as exc:
                if not auto:
                    raise
                raise RemotePythonMissing(
                    f"{exc}; or let the receiver run without Python there: no {EXECUTABLE_PREFIX}{shell.arch} was "
                    f"found here -- build it with tools/build_bundle.sh --arch {shell.arch} and pass its directory "
                    "(--executables DIR, $CVMIGRATE_EXECUTABLES)") from None
        layout = _Layout(_resolve_workdir(ssh, remote_workdir, shell.home))
        root_prefix = target_root.rstrip("/") + "/"
        if (layout.workdir + "/").startswith(root_prefix):
            # The receiver mirrors the source into target_root and deletes what the source lacks.
            raise ConfigError(f"the remote work directory {layout.workdir} lies inside the target root "
                              f"{target_root}: the receiver would overwrite or delete it; pass "
                              "remote_workdir= outside the target disk")

        try:
            ssh.mkdirs(layout.workdir, 0o700)
            ssh.sftp.chmod(layout.workdir, 0o700)
            for d in (layout.wheels, f"{layout.workdir}/lib", layout.run):
                ssh.mkdirs(d, 0o700)
            ssh.put_bytes(REMOTE_HELPER.encode(), layout.helper, 0o600)
        except OSError as exc:
            raise RemoteInstallFailed(f"cannot create {layout.workdir} on {ssh.where} ({exc}); check that the "
                                      "rescue system has a writable home or pass remote_workdir=") from None
        if exe is not None:
            runner, digest = _install_executable(ssh, layout, exe)
            endpoint = _start(ssh, runner, layout, f"{layout.workdir}/lib/none", digest[:16], exe.name, host, port,
                              username, target_root, listen_port, pki, token, control_token, deadline)
        else:
            assert python is not None
            endpoint = _install_wheels_and_start(ssh, python, layout, remote, wheels_given, host, port, username,
                                                 target_root, listen_port, pki, token, control_token, deadline)

    if check_reachable:
        unreachable = _check_reachable(host, endpoint.listen_port,
                                       min(10.0, max(2.0, deadline.end - time.monotonic())))
        if unreachable is not None:
            raise ReceiverStartFailed(
                f"the receiver runs on {host} (pid {endpoint.remote_pid}) and listens on port {endpoint.listen_port}, "
                f"but this controller cannot reach {endpoint.address} ({unreachable.strerror or unreachable}); "
                f"allow TCP {endpoint.listen_port} from here (and from the source server) in the instance's "
                "security group, or choose listen_port= that is open")
    return endpoint


def _install_wheels_and_start(ssh: _Ssh, python: str, layout: _Layout, remote: RemotePython,
                              wheels_given: list[Path] | None, host: str, port: int, username: str,
                              target_root: str, listen_port: int, pki: PkiPaths, token: str,
                              control_token: str | None, deadline: _Deadline) -> ReceiverEndpoint:
    """The remote-Python route: upload and unpack the wheels, then start the receiver."""
    # -- the bundle (local, cached)
    wheels = wheels_given or prepare_bundle(remote, timeout=deadline.left("preparing the receiver bundle"))
    digests = {w.name: _sha256(w) for w in wheels}
    bundle_id = hashlib.sha256(json.dumps(sorted(digests.items())).encode()).hexdigest()[:16]
    runner = _q(python)

    # -- upload: wheels the remote lacks, manifest
    have = _helper(ssh, runner, layout, ["hashes", "--wheels", layout.wheels], "listing uploaded wheels")
    sent = 0
    for w in wheels:
        if have.get(w.name) == digests[w.name]:
            continue
        try:
            ssh.put_file(w, f"{layout.wheels}/{w.name}", 0o644)
        except OSError as exc:
            raise RemoteInstallFailed(f"uploading {w.name} to {ssh.where} failed ({exc}); check free space "
                                      f"under {layout.workdir} (df -h) or pass remote_workdir=") from None
        sent += w.stat().st_size
    logger.info("uploaded %d bytes of wheels to %s (%d already there)", sent, ssh.where,
                sum(1 for w in wheels if have.get(w.name) == digests[w.name]))
    ssh.put_bytes(json.dumps(digests).encode(), layout.manifest, 0o600)

    # -- install (unpack + import check)
    lib = layout.lib(bundle_id)
    res = _helper(ssh, runner, layout, ["install", "--wheels", layout.wheels, "--lib", lib,
                                        "--manifest", layout.manifest], "installing the receiver")
    logger.info("receiver installed on %s in %s (grpcio %s)", ssh.where, lib, res.get("grpc", "?"))
    return _start(ssh, runner, layout, lib, bundle_id, python, host, port, username, target_root, listen_port,
                  pki, token, control_token, deadline)


def _start(ssh: _Ssh, runner: str, layout: _Layout, lib: str, bundle_id: str, python: str, host: str, port: int,
           username: str, target_root: str, listen_port: int, pki: PkiPaths, token: str,
           control_token: str | None, deadline: _Deadline) -> ReceiverEndpoint:
    """Upload the secrets (SFTP, 0600) and start the receiver detached; return its endpoint."""
    secrets_remote = _upload_secrets(ssh, layout, pki, token, control_token)
    start_wait = max(5.0, min(60.0, deadline.left("starting the receiver") - 2))
    res = _helper(ssh, runner, layout,
                  ["start", "--workdir", layout.workdir, "--lib", lib, "--root", target_root,
                   "--portfile", layout.portfile, "--pidfile", layout.pidfile, "--logfile", layout.logfile,
                   "--cert", secrets_remote["cert"], "--key", secrets_remote["key"],
                   "--ca", secrets_remote["ca"], "--token", secrets_remote["token"],
                   *(["--control-token", secrets_remote["control_token"]] if control_token else []),
                   "--port", str(listen_port), "--timeout", f"{start_wait:.0f}"],
                  "starting the receiver", error=ReceiverStartFailed)
    if res.get("previous"):
        logger.info("stopped the receiver a previous bootstrap left running (pid %s: %s)",
                    res["previous"].get("pid"), res["previous"].get("result"))
    pid, rport = int(res["pid"]), int(res["port"])
    endpoint = ReceiverEndpoint(address=_format_address(host, rport), remote_pid=pid,
                                remote_workdir=layout.workdir, host_key_fingerprint=ssh.fingerprint,
                                ssh_host=host, ssh_port=port, username=username, listen_port=rport,
                                bundle_id=bundle_id, python=python, runner=runner)
    logger.info("receiver running on %s (pid %d), serving %s", endpoint.address, pid, target_root)
    return endpoint


def stop_receiver(endpoint: ReceiverEndpoint, *, password: str, timeout: float = 60, grace: float = 10,
                  purge_secrets: bool = True, remove_workdir: bool = False, python: str | None = None) -> str:
    """Stop a receiver started by ``bootstrap_receiver`` (SIGTERM, then SIGKILL after ``grace``).

    Logs in again with the same host key check (``endpoint.host_key_fingerprint``
    is required to match).  ``purge_secrets`` removes the uploaded TLS key and
    token; ``remove_workdir`` removes the whole remote work directory.  Returns
    what happened ("terminated", "killed", "not running", ...).
    """
    deadline = _Deadline(timeout, f"stopping the receiver on {endpoint.ssh_host}")
    layout = _Layout(endpoint.remote_workdir)
    with _Ssh(endpoint.ssh_host, endpoint.ssh_port, endpoint.username, password, host_key_policy="known",
              known_fingerprint=endpoint.host_key_fingerprint, deadline=deadline) as ssh:
        del password
        args = ["stop", "--pidfile", layout.pidfile, "--pid", str(endpoint.remote_pid), "--grace", str(grace)]
        if remove_workdir:
            args += ["--purge", layout.workdir]
        elif purge_secrets:
            args += ["--purge", layout.secrets]
        runner = _q(python) if python else (endpoint.runner or _q(endpoint.python))
        res = _helper(ssh, runner, layout, args, "stopping the receiver",
                      error=ReceiverStartFailed, timeout=grace + 15)
    logger.info("receiver on %s (pid %s): %s", endpoint.address, res.get("pid"), res.get("result"))
    return str(res.get("result"))


__all__ = [
    "BootstrapError", "BootstrapTimeout", "BundleError", "HostKeyChanged", "ReceiverEndpoint",
    "ReceiverStartFailed", "RemoteInstallFailed", "RemotePython", "RemotePythonMissing", "SshAuthFailed",
    "SshUnreachable", "bootstrap_receiver", "find_executable", "host_key_fingerprint", "platform_tags",
    "prepare_bundle", "probe_shell",
    "stop_receiver", "wheel_cache_dir",
]
