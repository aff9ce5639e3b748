"""The SSH bootstrap's pieces that need no SSH server: the remote helper as a program, the errors.

The remote helper (controller/bootstrap/remote_helper.py) is uploaded as a
file and run by an interpreter that has no cvmigrate installed, so it must
import only the standard library; here it runs exactly so -- the bytes the
controller uploads, copied to a directory of their own, started as a script
-- against real files and real processes.  The full route through sshd is
tests/e2e/test_bootstrap_ssh.py.
"""
from __future__ import annotations

import ast
import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from cvmigrate.common import procstate
from cvmigrate.common.errors import AuthError, CheckFailed, ConfigError, StageTimeout, TargetError, TransportError
from cvmigrate.controller import bootstrap_ssh
from cvmigrate.controller.bootstrap import errors, remote_helper


@pytest.fixture
def helper(tmp_path: Path) -> Path:
    """The helper as the controller uploads it, alone in a directory with the modules uploaded beside it."""
    remote = tmp_path / "remote"
    remote.mkdir()
    for name, data in bootstrap_ssh.remote_helper_files().items():
        (remote / name).write_bytes(data)
    return remote / "helper.py"


def run_helper(helper: Path, *args: str) -> tuple[int, dict]:
    r = subprocess.run([sys.executable, "-s", str(helper), *args], capture_output=True, text=True, timeout=60,
                       cwd=helper.parent)
    return r.returncode, json.loads(r.stdout.strip().splitlines()[-1])


def test_what_is_uploaded_is_the_modules_themselves():
    assert bootstrap_ssh.remote_helper_files() == {"helper.py": Path(remote_helper.__file__).read_bytes(),
                                                   "procstate.py": Path(procstate.__file__).read_bytes()}


def _imported_when_run_as_a_script(source: bytes) -> set[str]:
    """Top-level names of the modules ``source`` imports, leaving out the ``if __package__:`` branch (taken
    only when it is imported from the installed package, never on the rescue system)."""
    todo: list[ast.AST] = [ast.parse(source)]
    imported: set[str] = set()
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and ast.unparse(node.test) == "__package__":
            todo += node.orelse
            continue
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module.split(".")[0])
        todo += ast.iter_child_nodes(node)
    return imported


def test_the_helper_imports_only_the_standard_library_and_what_is_uploaded_beside_it():
    files = bootstrap_ssh.remote_helper_files()
    beside = {name.removesuffix(".py") for name in files if name != "helper.py"}
    allowed = set(sys.stdlib_module_names) | {"__future__"}
    for name, source in files.items():
        imported = _imported_when_run_as_a_script(source)
        assert imported, f"{name}: no imports found: the parse is wrong"
        extra = allowed | beside if name == "helper.py" else allowed
        assert imported <= extra, (name, imported - extra)
    assert beside <= _imported_when_run_as_a_script(files["helper.py"]), "an uploaded module the helper never uses"


def test_hashes_lists_the_uploaded_wheels(helper, tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "a-1-py3-none-any.whl").write_bytes(b"wheel a")
    (wheels / "manifest.json").write_text("{}")
    rc, res = run_helper(helper, "hashes", "--wheels", str(wheels))
    assert rc == 0
    assert res == {"a-1-py3-none-any.whl": hashlib.sha256(b"wheel a").hexdigest()}
    rc, res = run_helper(helper, "hashes", "--wheels", str(tmp_path / "none-yet"))
    assert (rc, res) == (0, {})


def _install(helper: Path, tmp_path: Path, members: dict[str, bytes], digest: str | None = None) -> tuple[int, dict]:
    wheels = tmp_path / "wheels"
    wheels.mkdir(exist_ok=True)
    wheel = wheels / "x-1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({wheel.name: digest or hashlib.sha256(wheel.read_bytes()).hexdigest()}))
    return run_helper(helper, "install", "--wheels", str(wheels), "--lib", str(tmp_path / "lib" / "b1"),
                      "--manifest", str(manifest))


def test_install_refuses_a_wheel_that_does_not_match_the_manifest(helper, tmp_path):
    rc, res = _install(helper, tmp_path, {"x/__init__.py": b""}, digest="0" * 64)
    assert rc == 3 and "missing or corrupt" in res["error"]
    assert not (tmp_path / "lib" / "b1").exists()


def test_install_refuses_a_wheel_member_outside_the_library(helper, tmp_path):
    rc, res = _install(helper, tmp_path, {"x/__init__.py": b"", "../escaped.py": b"boom"})
    assert rc == 3 and "unsafe member" in res["error"]
    assert not (tmp_path / "escaped.py").exists() and not (tmp_path / "lib" / "escaped.py").exists()


def test_start_refuses_a_missing_target_root(helper, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    args = ["start", "--workdir", str(tmp_path), "--lib", str(tmp_path / "lib"), "--root", str(tmp_path / "absent"),
            "--portfile", str(run / "p"), "--pidfile", str(run / "pid"), "--logfile", str(run / "log"),
            "--cert", "c", "--key", "k", "--ca", "a", "--token", "t"]
    rc, res = run_helper(helper, *args)
    assert rc == 5 and res["kind"] == "root" and "does not exist" in res["error"]


def test_stop_leaves_a_process_alone_that_is_not_our_receiver(helper, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / "receiver.pid").write_text(f"{other.pid}\n")
        rc, res = run_helper(helper, "status", "--pidfile", str(run / "receiver.pid"))
        assert (rc, res) == (0, {"pid": other.pid, "alive": True})
        rc, res = run_helper(helper, "stop", "--pidfile", str(run / "receiver.pid"), "--grace", "1")
        assert rc == 0 and "not a cvmigrate receiver" in res["result"]
        assert other.poll() is None
        rc, res = run_helper(helper, "stop", "--pidfile", str(run / "receiver.pid"), "--pid", "1")
        assert "names another receiver" in res["result"] and other.poll() is None
    finally:
        other.kill()
        other.wait()
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "token").write_text("t")
    rc, res = run_helper(helper, "stop", "--pidfile", str(run / "absent.pid"), "--purge", str(secrets))
    assert (rc, res["result"]) == (0, "not running") and not secrets.exists()


@pytest.mark.parametrize("cls,kind", [
    (errors.SshUnreachable, TransportError), (errors.SshAuthFailed, AuthError), (errors.HostKeyChanged, AuthError),
    (errors.RemotePythonMissing, CheckFailed), (errors.RemoteInstallFailed, TargetError),
    (errors.ReceiverStartFailed, TargetError), (errors.BundleError, ConfigError),
    (errors.BootstrapTimeout, StageTimeout),
])
def test_every_bootstrap_error_exits_15_and_keeps_its_kind(cls, kind):
    assert issubclass(cls, errors.BootstrapError) and issubclass(cls, kind)
    assert cls.exit_code == 15
    assert getattr(bootstrap_ssh, cls.__name__) is cls      # the public names stay where callers import them
