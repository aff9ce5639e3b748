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

    helper.py           the remote half of this module (controller/bootstrap/remote_helper.py)
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

The pieces live in controller/bootstrap/: ``transport`` (steps 1-2, and
every remote command and upload), ``bundle`` (steps 3-4 and the remote
layout), ``remote_helper`` (step 6, the program run on the rescue system),
``errors``.  This module runs them in order.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from shlex import quote
from typing import Any

from cvmigrate.common.errors import ConfigError
from cvmigrate.common.netaddr import format_hostport
from cvmigrate.common.tls import PkiPaths, check_token
from cvmigrate.controller.bootstrap.bundle import (
    EXECUTABLE_PREFIX,
    SUPPORTED_MACHINES,
    RemoteLayout,
    RemotePython,
    bundle_from_dir,
    find_executable,
    install_executable,
    platform_tags,
    prepare_bundle,
    probe_python,
    probe_shell,
    sha256_of,
    wheel_cache_dir,
)
from cvmigrate.controller.bootstrap.errors import (
    BootstrapError,
    BootstrapTimeout,
    BundleError,
    HostKeyChanged,
    ReceiverStartFailed,
    RemoteInstallFailed,
    RemotePythonMissing,
    SshAuthFailed,
    SshUnreachable,
)
from cvmigrate.controller.bootstrap.transport import Deadline, Ssh, host_key_fingerprint

logger = logging.getLogger(__name__)

DEFAULT_REMOTE_WORKDIR = "~/.cvmigrate-receiver"



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
    def from_dict(cls, d: dict[str, Any]) -> ReceiverEndpoint:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

# --------------------------------------------------------------------- the remote helper
def remote_helper_files() -> dict[str, bytes]:
    """What is uploaded to the remote work directory to run the helper, as it is in the package:
    controller/bootstrap/remote_helper.py as ``helper.py``, and beside it the stdlib-only ``common``
    modules it imports by file name (it runs where cvmigrate is not installed)."""
    return {"helper.py": resources.files("cvmigrate.controller.bootstrap").joinpath("remote_helper.py").read_bytes(),
            "procstate.py": resources.files("cvmigrate.common").joinpath("procstate.py").read_bytes()}


def _resolve_workdir(ssh: Ssh, remote_workdir: str, home: str) -> str:
    wd = remote_workdir
    if wd == "~":
        wd = home
    elif wd.startswith("~/"):
        wd = f"{home.rstrip('/')}/{wd[2:]}"
    if not wd.startswith("/"):
        raise ConfigError(f"remote_workdir {remote_workdir!r} must be absolute or start with '~/'")
    return wd.rstrip("/") or "/"


def _helper(ssh: Ssh, runner: str, layout: RemoteLayout, args: Sequence[str], step: str,
            *, error: type[BootstrapError] = RemoteInstallFailed, timeout: float | None = None) -> dict[str, Any]:
    """Run the remote helper (bootstrap/remote_helper.py) with ``runner`` (shell words starting a Python)."""
    cmd = " ".join([runner, "-s", quote(layout.helper), *(quote(a) for a in args)])
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


def _upload_secrets(ssh: Ssh, layout: RemoteLayout, pki: PkiPaths, token: str,
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
    wheels_given = bundle_from_dir(bundle) if bundle is not None else None
    deadline = Deadline(timeout, f"starting the receiver on {format_hostport(host, port)}")

    with Ssh(host, port, username, password, host_key_policy=host_key_policy,
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
        layout = RemoteLayout(_resolve_workdir(ssh, remote_workdir, shell.home))
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
            for name, data in remote_helper_files().items():
                ssh.put_bytes(data, f"{layout.workdir}/{name}", 0o600)  # helper.py is layout.helper
        except OSError as exc:
            raise RemoteInstallFailed(f"cannot create {layout.workdir} on {ssh.where} ({exc}); check that the "
                                      "rescue system has a writable home or pass remote_workdir=") from None
        if exe is not None:
            runner, digest = install_executable(ssh, layout, exe)
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


def _install_wheels_and_start(ssh: Ssh, python: str, layout: RemoteLayout, remote: RemotePython,
                              wheels_given: list[Path] | None, host: str, port: int, username: str,
                              target_root: str, listen_port: int, pki: PkiPaths, token: str,
                              control_token: str | None, deadline: Deadline) -> ReceiverEndpoint:
    """The remote-Python route: upload and unpack the wheels, then start the receiver."""
    # -- the bundle (local, cached)
    wheels = wheels_given or prepare_bundle(remote, timeout=deadline.left("preparing the receiver bundle"))
    digests = {w.name: sha256_of(w) for w in wheels}
    bundle_id = hashlib.sha256(json.dumps(sorted(digests.items())).encode()).hexdigest()[:16]
    runner = quote(python)

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


def _start(ssh: Ssh, runner: str, layout: RemoteLayout, lib: str, bundle_id: str, python: str, host: str, port: int,
           username: str, target_root: str, listen_port: int, pki: PkiPaths, token: str,
           control_token: str | None, deadline: Deadline) -> ReceiverEndpoint:
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
    endpoint = ReceiverEndpoint(address=format_hostport(host, rport), remote_pid=pid,
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
    deadline = Deadline(timeout, f"stopping the receiver on {endpoint.ssh_host}")
    layout = RemoteLayout(endpoint.remote_workdir)
    with Ssh(endpoint.ssh_host, endpoint.ssh_port, endpoint.username, password, host_key_policy="known",
              known_fingerprint=endpoint.host_key_fingerprint, deadline=deadline) as ssh:
        del password
        args = ["stop", "--pidfile", layout.pidfile, "--pid", str(endpoint.remote_pid), "--grace", str(grace)]
        if remove_workdir:
            args += ["--purge", layout.workdir]
        elif purge_secrets:
            args += ["--purge", layout.secrets]
        runner = quote(python) if python else (endpoint.runner or quote(endpoint.python))
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
