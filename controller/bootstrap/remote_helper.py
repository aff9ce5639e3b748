"""The remote half of the SSH bootstrap: runs on the rescue system, not in the controller.

Why a separate program: the rescue system has no cvmigrate installed, so the
controller uploads this file (read from the package, as it is) and runs it
there as a script -- ``RUNNER -s helper.py COMMAND ...`` -- to check uploads,
unpack the wheels, start the receiver detached and stop it again.  It prints
one JSON object on its last line of stdout; the controller
(controller/bootstrap_ssh.py, ``_helper``) reads it.

Constraints, because of where it runs:
- the standard library only (the receiver's packages may not be installed yet), and the stdlib-only
  modules of ``common`` uploaded beside it (``bootstrap_ssh.remote_helper_files``: ``procstate.py``),
  imported by their file names when it runs as a script;
- CPython 3.11+: it runs either under the one-file executable's bundled 3.11
  or under the rescue system's ``python3``, which ``probe_python`` has checked
  to be CPython 3.11 or newer before this file is used;
- its command line carries only paths and numbers, never a secret (``ps`` and
  sshd logs can show it): the TLS key and the tokens are files it names.

Commands: ``hashes`` (SHA-256 of the uploaded wheels), ``install`` (unpack the
wheels into a ``site-packages``-like directory, check that the receiver
imports), ``start`` (stop a receiver this helper started before, start a new
one in its own session, wait for its port file and check the port accepts),
``stop`` and ``status``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from typing import Any, NoReturn

if __package__:  # imported from the installed package (the controller, tests)
    from cvmigrate.common.procstate import alive
else:  # run as helper.py on the rescue system: the controller uploads common/procstate.py beside it
    from procstate import alive  # type: ignore[import-not-found,no-redef]


def out(obj: dict[str, Any], rc: int = 0) -> NoReturn:
    """The answer: one JSON line, then exit with ``rc``."""
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()
    sys.exit(rc)


def sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def cmd_hashes(a: argparse.Namespace) -> NoReturn:
    res = {}
    if os.path.isdir(a.wheels):
        for n in sorted(os.listdir(a.wheels)):
            if n.endswith(".whl"):
                res[n] = sha256(os.path.join(a.wheels, n))
    out(res)


def _unpack(wheel: str, name: str, dest_dir: str) -> None:
    """Unpack one wheel into ``dest_dir`` (a wheel is a zip designed to be unpacked into site-packages)."""
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            parts = info.filename.split("/")
            if info.filename.startswith("/") or ".." in parts:
                out({"error": f"wheel {name} has an unsafe member {info.filename!r}"}, 3)
            # NAME.data/purelib|platlib/... belongs in site-packages itself
            if len(parts) > 2 and parts[0].endswith(".data"):
                if parts[1] not in ("purelib", "platlib"):
                    continue
                parts = parts[2:]
            if not parts or not parts[-1]:
                continue
            dest = os.path.join(dest_dir, *parts)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with z.open(info) as src, open(dest, "wb") as dst:
                shutil.copyfileobj(src, dst)
            mode = (info.external_attr >> 16) & 0o777
            os.chmod(dest, (mode or 0o644) & 0o755)


def cmd_install(a: argparse.Namespace) -> NoReturn:
    with open(a.manifest) as f:
        manifest: dict[str, str] = json.load(f)
    done = os.path.join(a.lib, ".complete")
    if not os.path.exists(done):
        for name, digest in sorted(manifest.items()):
            p = os.path.join(a.wheels, name)
            if not os.path.isfile(p) or sha256(p) != digest:
                out({"error": f"wheel {name} is missing or corrupt after upload"}, 3)
        tmp = a.lib + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp, mode=0o700)
        for name in sorted(manifest):
            _unpack(os.path.join(a.wheels, name), name, tmp)
        shutil.rmtree(a.lib, ignore_errors=True)
        os.rename(tmp, a.lib)
        open(done, "w").close()
    env = dict(os.environ, PYTHONPATH=a.lib, PYTHONNOUSERSITE="1", PYTHONDONTWRITEBYTECODE="1")
    code = ("import grpc, google.protobuf, xxhash, zstandard, cvmigrate.receiver.cli, cvmigrate.receiver.server;"
            "print(grpc.__version__)")
    r = subprocess.run([sys.executable, "-s", "-c", code], env=env, capture_output=True, text=True,
                       check=False)
    if r.returncode != 0:
        shutil.rmtree(a.lib, ignore_errors=True)
        out({"error": "the installed receiver does not import: " + r.stderr.strip()[-1500:]}, 4)
    out({"ok": True, "grpc": r.stdout.strip()})


def proc_cmdline(pid: int) -> list[bytes] | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return None


def is_ours(pid: int, pidfile: str) -> bool:
    """A receiver started by this helper: its --port-file lies in the pid file's directory."""
    argv = proc_cmdline(pid)
    if not argv:
        return False
    rundir = os.path.dirname(os.path.abspath(pidfile)).encode() + b"/"
    return b"cvmigrate" in argv and b"receive" in argv and any(arg.startswith(rundir) for arg in argv)


def terminate(pid: int, grace: float) -> str:
    """SIGTERM, then SIGKILL after ``grace`` seconds; what happened."""
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


def read_pid(pidfile: str) -> int | None:
    try:
        with open(pidfile) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def stop_previous(pidfile: str) -> dict[str, Any] | None:
    pid = read_pid(pidfile)
    if pid and alive(pid) and is_ours(pid, pidfile):
        return {"pid": pid, "result": terminate(pid, 10)}
    return None


def cmd_start(a: argparse.Namespace) -> NoReturn:
    if not os.path.isdir(a.root):
        out({"error": f"the target root {a.root} does not exist on the rescue system (mount the target disk "
                      "there first)", "kind": "root"}, 5)
    previous = stop_previous(a.pidfile)
    for p in (a.portfile, a.pidfile):
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass
    env = dict(os.environ, PYTHONPATH=a.lib, PYTHONNOUSERSITE="1", PYTHONUNBUFFERED="1")
    env.pop("CVMIGRATE_TOKEN", None)
    argv = [sys.executable, "-s", "-m", "cvmigrate", "receive",
            "--listen", f"0.0.0.0:{a.port}", "--root", a.root, "--port-file", a.portfile,
            "--tls-cert", a.cert, "--tls-key", a.key, "--tls-ca", a.ca, "--token-file", a.token]
    if a.control_token:
        argv += ["--control-token-file", a.control_token]
    log = open(a.logfile, "ab")  # noqa: SIM115 - handed to the detached receiver, which outlives us
    devnull = open(os.devnull, "rb")  # noqa: SIM115 - as above
    os.umask(0o077)
    proc = subprocess.Popen(argv, stdin=devnull, stdout=log, stderr=subprocess.STDOUT, env=env,
                            cwd=a.workdir, close_fds=True, start_new_session=True)
    with open(a.pidfile + ".tmp", "w") as f:
        f.write(f"{proc.pid}\n")
    os.rename(a.pidfile + ".tmp", a.pidfile)
    end = time.time() + a.timeout
    port = None
    while time.time() < end:
        rc = proc.poll()
        if rc is not None:
            out({"error": f"the receiver exited with status {rc}", "log": tail(a.logfile)}, 6)
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
        out({"error": f"the receiver wrote no port file within {int(a.timeout)}s", "log": tail(a.logfile)}, 7)
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except OSError as exc:
        terminate(proc.pid, 5)
        out({"error": f"the receiver does not accept connections on port {port} ({exc})",
             "log": tail(a.logfile)}, 8)
    time.sleep(0.2)
    if proc.poll() is not None:
        out({"error": "the receiver exited right after starting", "log": tail(a.logfile)}, 6)
    out({"pid": proc.pid, "port": port, "previous": previous})


def tail(path: str, n: int = 4000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - n))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def cmd_stop(a: argparse.Namespace) -> NoReturn:
    pid = read_pid(a.pidfile)
    result: dict[str, Any] = {"pid": pid, "result": "not running"}
    if pid and a.pid and pid != a.pid:
        result = {"pid": pid, "result": f"pid file names another receiver ({pid}, expected {a.pid}); left alone"}
    elif pid and alive(pid):
        if is_ours(pid, a.pidfile):
            result["result"] = terminate(pid, a.grace)
        else:
            result["result"] = f"pid {pid} is not a cvmigrate receiver; left alone"
    for p in a.purge:
        shutil.rmtree(p, ignore_errors=True)
    out(result)


def cmd_status(a: argparse.Namespace) -> NoReturn:
    pid = read_pid(a.pidfile)
    out({"pid": pid, "alive": bool(pid and alive(pid))})


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="helper.py")
    sub = p.add_subparsers(dest="cmd", required=True)
    h = sub.add_parser("hashes")
    h.add_argument("--wheels", required=True)
    i = sub.add_parser("install")
    for n in ("--wheels", "--lib", "--manifest"):
        i.add_argument(n, required=True)
    s = sub.add_parser("start")
    for n in ("--workdir", "--lib", "--root", "--portfile", "--pidfile", "--logfile", "--cert", "--key", "--ca",
              "--token"):
        s.add_argument(n, required=True)
    s.add_argument("--control-token", default="")
    s.add_argument("--port", type=int, default=0)
    s.add_argument("--timeout", type=float, default=30)
    t = sub.add_parser("stop")
    t.add_argument("--pidfile", required=True)
    t.add_argument("--pid", type=int, default=0)
    t.add_argument("--grace", type=float, default=10)
    t.add_argument("--purge", action="append", default=[])
    st = sub.add_parser("status")
    st.add_argument("--pidfile", required=True)
    return p


COMMANDS: dict[str, Callable[[argparse.Namespace], NoReturn]] = {
    "hashes": cmd_hashes, "install": cmd_install, "start": cmd_start, "stop": cmd_stop, "status": cmd_status,
}


def main(argv: list[str] | None = None) -> NoReturn:
    args = parser().parse_args(argv)
    COMMANDS[args.cmd](args)


if __name__ == "__main__":
    main()
