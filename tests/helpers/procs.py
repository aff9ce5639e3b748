"""Real cvmigrate processes for end-to-end tests.

``start_receiver`` runs ``python -m cvmigrate receive`` as a subprocess on a
free port (port 0; the receiver writes the bound port to ``--port-file``), and
``run_push`` runs ``python -m cvmigrate push ... --json`` to completion.

No fixed ports, ever. Every receiver started here is stopped when its ``with``
block ends, when the test's fixture finalises, or, as a last resort, at
interpreter exit, so a failing test leaks no process.

Child processes get ``PYTHONDONTWRITEBYTECODE=1``: a push source may be the
interpreter's own standard library, which must not grow ``.pyc`` files while
it is being migrated and compared.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.helpers.closing import Closing, LiveSet

#: How long a receiver may take to write its port file.
START_TIMEOUT = 20.0
#: How long a receiver may take to exit after SIGTERM before it is SIGKILLed.
STOP_TIMEOUT = 10.0
#: Default bound of one push.
PUSH_TIMEOUT = 300.0

_live: LiveSet[ReceiverProc] = LiveSet(lambda rp: rp.kill())
#: The token --insecure receivers and pushes started here use (a plaintext receiver still requires one).
TEST_TOKEN = "cvmigrate-test-token-0123456789"


def _with_test_token(env: dict[str, str] | None, args: tuple[str, ...] | list[str]) -> dict[str, str] | None:
    if "--token-file" in args or (env and "CVMIGRATE_TOKEN" in env):
        return env
    return {"CVMIGRATE_TOKEN": TEST_TOKEN, **(env or {})}


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update(extra)
    return env


def _fs(p: Path | str) -> str:
    return os.fspath(p)


class ReceiverProc(Closing):
    """A running ``cvmigrate receive``. Use as a context manager."""

    def __init__(self, root: Path, argv: list[str], port_file: Path, log_path: Path,
                 env: dict[str, str]) -> None:
        self.root = Path(root)
        self.argv = argv
        self.port_file = port_file
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - the child writes it; closed by _close()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, env=env)
        self.port = 0                   # the bound port, once wait_ready has read the port file
        _live.add(self)

    # -- lifecycle
    def wait_ready(self, timeout: float = START_TIMEOUT) -> ReceiverProc:
        deadline = time.monotonic() + timeout
        while True:
            rc = self.proc.poll()
            if rc is not None:
                raise RuntimeError(
                    f"receiver exited with {rc} before writing {self.port_file}:\n{self.output()}")
            try:
                text = self.port_file.read_text().strip()
            except FileNotFoundError:
                text = ""
            if text:
                try:
                    port = int(text)
                except ValueError:
                    # contract: write then rename, a reader never sees a partial file
                    self.kill()
                    raise RuntimeError(
                        f"receiver port file holds {text!r}, not a port number") from None
                if not 0 < port < 65536:
                    self.kill()
                    raise RuntimeError(f"receiver port file holds out-of-range port {port}")
                self.port = port
                return self
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(
                    f"receiver wrote no port file within {timeout:.0f}s:\n{self.output()}")
            time.sleep(0.02)

    @property
    def address(self) -> str:
        if not self.port:
            raise RuntimeError("receiver is not ready (no port yet)")
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, wait up to ``timeout``, then SIGKILL. Returns the exit code."""
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._close()
        return self.proc.returncode

    def kill(self) -> int:
        """SIGKILL now (a crash, as far as the receiver can tell)."""
        if self.proc.poll() is None:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass
            self.proc.wait()
        self._close()
        return self.proc.returncode

    def _close(self) -> None:
        _live.discard(self)
        if not self._log.closed:
            self._log.close()

    def output(self) -> str:
        """Everything the receiver wrote to stdout and stderr so far."""
        try:
            self._log.flush()
        except ValueError:
            pass
        try:
            return self.log_path.read_bytes().decode("utf-8", "backslashreplace")
        except FileNotFoundError:
            return ""

    def close(self) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"ReceiverProc(pid={self.proc.pid}, port={self.port}, root={self.root})"


def start_receiver(root: Path, *extra_args: str, insecure: bool = True,
                   work_dir: Path | None = None, timeout: float = START_TIMEOUT,
                   env: dict[str, str] | None = None, prefix: tuple[str, ...] = ()) -> ReceiverProc:
    """Start ``cvmigrate receive`` on 127.0.0.1:0 serving ``root``; wait until it listens.

    ``prefix``: a command that execs the receiver (e.g. ``prlimit --nofile=1024:1024``).

    The port file and the receiver's log go to ``work_dir`` (default: a fresh
    temp dir beside nothing the test compares). Use the result as a context
    manager, or call ``.stop()``.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="cvm-recv-"))
    work.mkdir(parents=True, exist_ok=True)
    port_file = work / "receiver.port"
    log_path = work / "receiver.log"
    argv = [*prefix, sys.executable, "-m", "cvmigrate", "receive", "--listen", "127.0.0.1:0",
            "--root", _fs(root), "--port-file", _fs(port_file)]
    if insecure:
        argv.append("--insecure")
    argv += list(extra_args)
    rp = ReceiverProc(root, argv, port_file, log_path, child_env(_with_test_token(env, argv) if insecure else env))
    try:
        return rp.wait_ready(timeout)
    except BaseException:
        rp.kill()
        raise


@dataclass
class PushResult:
    argv: list[str]
    returncode: int
    summary: dict[str, Any] | None
    stdout: str
    stderr: str
    seconds: float

    def describe(self) -> str:
        return (f"$ {' '.join(self.argv)}\nexit {self.returncode} after {self.seconds:.1f}s\n"
                f"--- stdout\n{self.stdout[-5000:]}\n--- stderr\n{self.stderr[-10000:]}")

    def check(self) -> PushResult:
        """Raise AssertionError (with the output) unless the push exited 0."""
        if self.returncode != 0:
            raise AssertionError(f"push failed:\n{self.describe()}")
        return self

    def checked_summary(self) -> dict[str, Any]:
        """The JSON summary of a push that exited 0 (AssertionError with the output otherwise)."""
        summary = self.check().summary
        if summary is None:
            raise AssertionError(f"push printed no JSON summary:\n{self.describe()}")
        return summary


def parse_summary(stdout: str) -> dict[str, Any] | None:
    """The JSON object printed at the end of stdout (one line or pretty-printed)."""
    text = stdout.strip()
    if not text:
        return None
    try:
        obj = json.loads(text)
        return obj if isinstance(obj, dict) else None
    except ValueError:
        pass
    dec = json.JSONDecoder()
    lines = text.splitlines()
    # the last line that starts a JSON object and parses to the end
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].lstrip().startswith("{"):
            chunk = "\n".join(lines[i:]).strip()
            try:
                obj, end = dec.raw_decode(chunk)
            except ValueError:
                continue
            if isinstance(obj, dict) and not chunk[end:].strip():
                return obj
    return None


def run_push(src: Path, address: str, *extra: str, insecure: bool = True,
             timeout: float = PUSH_TIMEOUT, env: dict[str, str] | None = None) -> PushResult:
    """Run ``cvmigrate push SRC --to ADDRESS [extra] [--insecure] --json`` to completion.

    A push that outlives ``timeout`` is SIGKILLed and reported as an
    AssertionError carrying what it printed.
    """
    argv = [sys.executable, "-m", "cvmigrate", "push", _fs(src), "--to", address, *extra]
    if insecure:
        argv.append("--insecure")
    argv.append("--json")
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=child_env(_with_test_token(env, argv) if insecure else env))
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(
            f"push did not finish within {timeout:.0f}s (killed):\n$ {' '.join(argv)}\n"
            f"--- stdout\n{out.decode(errors='replace')[-5000:]}\n"
            f"--- stderr\n{err.decode(errors='replace')[-10000:]}") from None
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    stdout = out.decode("utf-8", "backslashreplace")
    stderr = err.decode("utf-8", "backslashreplace")
    return PushResult(argv=argv, returncode=proc.returncode, summary=parse_summary(stdout),
                      stdout=stdout, stderr=stderr, seconds=time.monotonic() - t0)


def run_group(argv: list[str], *, timeout: float, grace: float = 15.0, cwd: Path | None = None,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` to completion in its own session; past ``timeout``, end its whole process group.

    Why not ``subprocess.run(timeout=...)``: that SIGKILLs only the direct child, so a harness such as
    ``bench.run`` cannot remove the network namespaces it made and its receivers live on in them.  Here
    the group gets SIGTERM first (the harness cleans up), ``grace`` seconds, then SIGKILL; the expiry is
    raised as ``subprocess.TimeoutExpired`` carrying what the program printed.
    """
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=grace)
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        _signal_group(proc.pid, signal.SIGKILL)    # what the group left behind after its leader exited
        raise subprocess.TimeoutExpired(argv, timeout, output=out, stderr=err) from None
    except BaseException:
        _signal_group(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


__all__ = ["TEST_TOKEN", "PushResult", "ReceiverProc", "child_env", "parse_summary", "run_group", "run_push",
           "start_receiver"]
