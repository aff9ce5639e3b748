"""Bootstrap mode ``ssh`` against a real OpenSSH server.

The "rescue system" is this machine seen through ``/usr/sbin/sshd`` on
127.0.0.1:<free port> (tests/helpers/sshd.py), logged into as a throwaway user
with a random password -- root's password is never touched, and root cannot
log in through that server.  The receiver therefore runs unprivileged, into a
target root that user owns, under the system's own ``/usr/bin/python3``
(not this test's interpreter), from wheels downloaded for that Python.

Covered: first-use host key (the fingerprint equals ``ssh-keygen -lf``'s);
install and start; the receiver outlives the SSH session; secrets land mode
0600 and appear on no command line and in no log; a push of a small tree
through mutual TLS + token lands and matches (rsync oracle ``-naHAXc
--numeric-ids`` plus our own compare); a second bootstrap reuses the uploaded
wheels and replaces the first receiver; ``stop_receiver`` stops it and removes
the secrets.  Refusals: wrong password, a changed host key (refused before the
password is sent: sshd logs no password attempt), an unreachable port, no
such Python on the remote.

Limited: an unprivileged receiver cannot restore other owners, devices or
trusted.*/security.* xattrs, so the tree has plain files, dirs and symlinks
owned by the test user; full fidelity is test_fidelity.py's job (root).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cvmigrate.agent.verify import compare_trees
from cvmigrate.common.errors import ConfigError
from cvmigrate.common.tls import PkiPaths, new_token
from cvmigrate.controller.bootstrap_ssh import (
    HostKeyChanged,
    ReceiverEndpoint,
    RemotePython,
    RemotePythonMissing,
    SshAuthFailed,
    SshUnreachable,
    bootstrap_receiver,
    platform_tags,
    stop_receiver,
)
from cvmigrate.controller.pki import mint_migration_pki
from tests.helpers.procs import run_push
from tests.helpers.sshd import SshServer, TestUser, unavailable_reason

_why = unavailable_reason()
needs_sshd = pytest.mark.skipif(_why is not None, reason=f"sshd bootstrap tests: {_why}")


@pytest.fixture(scope="module")
def rescue() -> Iterator[tuple[TestUser, SshServer]]:
    """A throwaway user and an sshd that lets only that user in (password auth)."""
    with TestUser() as user:
        srv = SshServer(user.name)
        try:
            srv.start()
            yield user, srv
        finally:
            srv.cleanup()


@pytest.fixture
def migration(tmp_path: Path) -> tuple[PkiPaths, str, Path]:
    pki = mint_migration_pki(tmp_path / "pki", hosts=["127.0.0.1"], migration_id="boot-ssh")
    token = new_token()
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    return pki, token, token_file


def _target(user: TestUser, name: str) -> Path:
    t = user.home / name
    shutil.rmtree(t, ignore_errors=True)
    t.mkdir(mode=0o755)
    os.chown(t, user.uid, user.gid)
    return t


def _small_tree(root: Path, user: TestUser) -> None:
    root.mkdir()
    (root / "etc").mkdir()
    (root / "etc" / "hostname").write_text("migrated\n")
    (root / "etc" / "secret.conf").write_bytes(b"x=1\n")
    (root / "etc" / "secret.conf").chmod(0o600)
    (root / "bin").mkdir(mode=0o750)
    (root / "bin" / "tool").write_bytes(os.urandom(300_000))
    (root / "bin" / "tool").chmod(0o755)
    (root / "data").mkdir()
    (root / "data" / "empty").write_bytes(b"")
    (root / "data" / "big.bin").write_bytes(os.urandom(3 << 20))
    (root / "data" / "link").symlink_to("../etc/hostname")
    (root / "data" / "dangling").symlink_to("nowhere")
    for dirpath, dirnames, filenames in os.walk(root):
        for n in [*dirnames, *filenames]:
            os.chown(os.path.join(dirpath, n), user.uid, user.gid, follow_symlinks=False)
    os.chown(root, user.uid, user.gid)
    root.chmod(0o755)
    past = time.time() - 86400
    os.utime(root / "etc" / "hostname", (past, past))


def _push(src: Path, address: str, pki: PkiPaths, token_file: Path):
    return run_push(src, address, "--no-default-excludes", "--tls-ca", pki.ca_cert, "--tls-cert",
                    pki.client_cert, "--tls-key", pki.client_key, "--token-file", str(token_file),
                    insecure=False, timeout=120)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


@needs_sshd
@pytest.mark.slow   # first run downloads ~14 MB of wheels; cached runs take ~10 s
def test_bootstrap_push_verify_stop(rescue, migration, tmp_path, caplog):
    user, srv = rescue
    pki, token, token_file = migration
    caplog.set_level(logging.DEBUG)
    target = _target(user, "target")
    src = tmp_path / "src"
    _small_tree(src, user)

    ep = bootstrap_receiver("127.0.0.1", port=srv.port, username=user.name, password=user.password,
                            target_root=str(target), pki_dir=Path(pki.directory), token=token, timeout=240,
                            python="python3")   # the wheel route (the executable route: test_python_less_rescue_...)
    try:
        # trust on first use: the fingerprint is the server's, as ssh-keygen -lf prints it
        assert ep.host_key_fingerprint == srv.fingerprint
        assert ep.address == f"127.0.0.1:{ep.listen_port}" and ep.listen_port > 0
        assert ep.remote_workdir == f"{user.home}/.cvmigrate-receiver"
        # the SSH session is closed; the receiver lives on, as the user, without secrets in argv
        assert _alive(ep.remote_pid)
        assert os.stat(f"/proc/{ep.remote_pid}").st_uid == user.uid
        argv = Path(f"/proc/{ep.remote_pid}/cmdline").read_bytes().split(b"\0")
        assert b"receive" in argv and b"0.0.0.0:0" in argv
        assert not any(token.encode() in a or user.password.encode() in a for a in argv)
        secrets_dir = Path(ep.remote_workdir) / "secrets"
        for name in ("ca.pem", "server.pem", "server.key", "token"):
            st = (secrets_dir / name).stat()
            assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == user.uid, name
        assert (secrets_dir / "token").read_text().strip() == token

        res = _push(src, ep.address, pki, token_file)
        assert res.returncode == 0, res.describe() + "\n--- receiver log\n" + \
            (Path(ep.remote_workdir) / "run" / "receiver.log").read_text(errors="replace")[-4000:]
        report = compare_trees(str(src), str(target))
        assert report.ok, report.differences
        if shutil.which("rsync"):
            from tests.helpers.oracle import rsync_itemize
            assert rsync_itemize(src, target) == []
        assert (target / "data" / "link").readlink() == Path("../etc/hostname")

        # a second bootstrap (controller resumed): known key, wheels reused, old receiver replaced
        caplog.clear()
        ep2 = bootstrap_receiver("127.0.0.1", port=srv.port, username=user.name, password=user.password,
                                 target_root=str(target), pki_dir=Path(pki.directory), token=token,
                                 host_key_policy="known", known_fingerprint=ep.host_key_fingerprint, timeout=120,
                                 python="python3")
        # (the project wheel may be rebuilt if the sources changed meanwhile; the dependencies may not)
        reused = [int(m) for m in re.findall(r"\((\d+) already there\)", caplog.text)]
        assert reused and reused[-1] >= 4, caplog.text[-3000:]
        assert ep2.remote_pid != ep.remote_pid and not _alive(ep.remote_pid) and _alive(ep2.remote_pid)
        (src / "etc" / "hostname").write_text("changed\n")
        os.chown(src / "etc" / "hostname", user.uid, user.gid)
        res = _push(src, ep2.address, pki, token_file)
        assert res.returncode == 0, res.describe()
        assert (target / "etc" / "hostname").read_text() == "changed\n"
        ep = ep2
    finally:
        result = stop_receiver(ep, password=user.password)
    assert result == "terminated"
    assert not _alive(ep.remote_pid)
    assert not (Path(ep.remote_workdir) / "secrets").exists()
    # nothing logged the password; the token did not reach any log line either
    assert user.password not in caplog.text and token not in caplog.text
    assert user.password not in srv.log()


@needs_sshd
def test_wrong_password_is_a_clear_auth_error(rescue, migration, tmp_path):
    user, srv = rescue
    pki, token, _ = migration
    wrong = "not-the-" + user.password
    with pytest.raises(SshAuthFailed) as ei:
        bootstrap_receiver("127.0.0.1", port=srv.port, username=user.name, password=wrong,
                           target_root="/nonexistent", pki_dir=Path(pki.directory), token=token, timeout=30)
    msg = str(ei.value)
    assert "refused the login" in msg and "rescue password" in msg and user.name in msg
    assert wrong not in msg and user.password not in msg
    assert ei.value.exit_code != 0 and not ei.value.retryable


@needs_sshd
def test_changed_host_key_is_refused_before_the_password_is_sent(rescue, migration):
    user, srv = rescue
    pki, token, _ = migration
    recorded = srv.fingerprint
    new = srv.restart_with_new_key()
    assert new != recorded
    attempts_before = srv.log().count("password for")
    for policy in ("tofu", "known"):
        with pytest.raises(HostKeyChanged) as ei:
            bootstrap_receiver("127.0.0.1", port=srv.port, username=user.name, password=user.password,
                               target_root="/nonexistent", pki_dir=Path(pki.directory), token=token,
                               host_key_policy=policy, known_fingerprint=recorded, timeout=30)
        msg = str(ei.value)
        assert "CHANGED" in msg and recorded in msg and new in msg and "refusing" in msg
    time.sleep(0.2)
    assert srv.log().count("password for") == attempts_before, "a password was sent to the changed host"
    # 'known' without a recorded fingerprint is a usage error, not a silent TOFU
    with pytest.raises(ConfigError, match="known_fingerprint"):
        bootstrap_receiver("127.0.0.1", port=srv.port, username=user.name, password=user.password,
                           target_root="/x", pki_dir=Path(pki.directory), token=token, host_key_policy="known")


def test_unreachable_host_is_a_clear_error(migration):
    import socket
    pki, token, _ = migration
    with socket.socket() as s:       # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(SshUnreachable) as ei:
        bootstrap_receiver("127.0.0.1", port=port, password="x" * 12, target_root="/mnt",
                           pki_dir=Path(pki.directory), token=token, timeout=2)
    assert time.monotonic() - t0 < 10
    msg = str(ei.value)
    assert "cannot reach" in msg and "RESCUE_MODE" in msg and "security group" in msg
    assert ei.value.retryable


@needs_sshd
def test_missing_remote_python_is_a_clear_error(rescue, migration):
    user, srv = rescue
    pki, token, _ = migration
    with pytest.raises(RemotePythonMissing) as ei:
        bootstrap_receiver("127.0.0.1", port=srv.port, username=user.name, password=user.password,
                           target_root="/x", pki_dir=Path(pki.directory), token=token,
                           python="python3-cvmigrate-missing", timeout=30)
    msg = str(ei.value)
    assert "python3-cvmigrate-missing" in msg and "python=" in msg


@needs_sshd
def test_workdir_inside_the_target_root_is_refused(rescue, migration):
    user, srv = rescue
    pki, token, _ = migration
    with pytest.raises(ConfigError, match="inside the target root"):
        bootstrap_receiver("127.0.0.1", port=srv.port, username=user.name, password=user.password,
                           target_root=str(user.home), pki_dir=Path(pki.directory), token=token, timeout=30)


def test_platform_tags_follow_the_remote_libc():
    glibc = RemotePython(version=(3, 11, 2), implementation="CPython", machine="x86_64",
                         libc=("glibc", "2.28"), executable="/usr/bin/python3", home="/root", uid=0)
    tags = platform_tags(glibc)
    assert tags[0] == "manylinux_2_28_x86_64" and "manylinux2014_x86_64" in tags
    assert "manylinux_2_29_x86_64" not in tags          # newer than the remote's glibc
    arm = RemotePython(version=(3, 12, 0), implementation="CPython", machine="aarch64",
                       libc=("", ""), executable="/usr/bin/python3", home="/root", uid=0)
    assert platform_tags(arm) == ["musllinux_1_2_aarch64", "musllinux_1_1_aarch64"]


def test_endpoint_round_trips_through_a_checkpoint_without_secrets():
    ep = ReceiverEndpoint(address="10.0.0.5:41000", remote_pid=123, remote_workdir="/root/.cvmigrate-receiver",
                          host_key_fingerprint="ssh-ed25519 SHA256:abc", ssh_host="10.0.0.5", listen_port=41000)
    d = ep.as_dict()
    assert ReceiverEndpoint.from_dict(d) == ep
    assert not any("password" in k or "token" in k for k in d)


# ------------------------------------------------------------------ no Python on the rescue system
#: Runs in a subprocess whose cvmigrate is a plain (non-editable) install: no source tree, no dist/.
_CONTROLLER = r"""
import json, logging, sys
from pathlib import Path
import cvmigrate
from cvmigrate.controller import bootstrap_ssh as b
from cvmigrate.controller.bootstrap.bundle import project_root
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
a = json.loads(sys.stdin.read())
try:
    project_root()
    sys.exit("the controller under test found a source tree: " + cvmigrate.__file__)
except b.BundleError:
    pass
ep = b.bootstrap_receiver("127.0.0.1", port=a["port"], username=a["user"], password=a["password"],
                          target_root=a["target"], pki_dir=Path(a["pki"]), token=a["token"], timeout=240,
                          host_key_policy="known" if a.get("known") else "tofu", known_fingerprint=a.get("known"))
print(json.dumps({"endpoint": ep.as_dict(), "cvmigrate": cvmigrate.__file__}))
"""


def _non_editable_install(dest: Path) -> Path:
    """``pip install --no-deps --target`` of this checkout: cvmigrate as a wheel installs it, no source tree."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "--no-compile", "--target", str(dest), str(repo)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return dest


@pytest.fixture(scope="module")
def python_less_rescue(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, TestUser, SshServer]]:
    """sshd whose only user is chrooted (ChrootDirectory) into a Debian bullseye minbase: no python3 there."""
    import subprocess

    from tests.helpers.bundle import cache_dir, debian_rootfs, python_in, unpack_rootfs

    # ChrootDirectory wants a root-owned path without group/other-writable parents (not /tmp).
    root = unpack_rootfs(debian_rootfs("bullseye"), cache_dir() / f"sshroot-{os.getpid()}-{os.urandom(3).hex()}")
    mounted = False
    try:
        assert python_in(root) == [], python_in(root)
        subprocess.run(["mount", "-t", "proc", "proc", str(root / "proc")], check=True)
        mounted = True
        with TestUser() as user:
            home = root / str(user.home).lstrip("/")
            home.mkdir(parents=True, exist_ok=True)
            os.chown(home, user.uid, user.gid)
            with open(root / "etc/passwd", "a") as f:
                f.write(f"{user.name}:x:{user.uid}:{user.gid}::{user.home}:/bin/sh\n")
            srv = SshServer(user.name, chroot=root)
            try:
                srv.start()
                yield root, user, srv
            finally:
                srv.cleanup()
                user.kill_processes()
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(root / "proc")], check=False)
        shutil.rmtree(root, ignore_errors=True)


@needs_sshd
@pytest.mark.bundle
def test_python_less_rescue_system_gets_the_executable(python_less_rescue, migration, tmp_path):
    """The receiver reaches a rescue system without Python as the one-file executable, from a pip install."""
    import json
    import subprocess
    import sys

    from tests.helpers.bundle import require_bundle

    root, user, srv = python_less_rescue
    pki, token, token_file = migration
    exe = require_bundle()
    site = _non_editable_install(tmp_path / "site")
    target_in = f"{user.home}/target"
    target = root / target_in.lstrip("/")
    target.mkdir(mode=0o755)
    os.chown(target, user.uid, user.gid)
    src = tmp_path / "src"
    _small_tree(src, user)
    env = dict(os.environ, PYTHONPATH=str(site), CVMIGRATE_EXECUTABLES=str(exe.parent), PYTHONDONTWRITEBYTECODE="1")
    env.pop("CVMIGRATE_EXECUTABLE", None)

    def controller(known: str | None = None) -> tuple[dict, str]:
        args = {"port": srv.port, "user": user.name, "password": user.password, "target": target_in,
                "pki": pki.directory, "token": token, "known": known}
        r = subprocess.run([sys.executable, "-c", _CONTROLLER], input=json.dumps(args), capture_output=True,
                           text=True, env=env, timeout=300, cwd=tmp_path)
        assert r.returncode == 0, f"{r.stdout[-2000:]}\n{r.stderr[-6000:]}\n--- sshd\n{srv.log()[-2000:]}"
        out = json.loads(r.stdout.strip().splitlines()[-1])
        assert out["cvmigrate"].startswith(str(site)), out   # the non-editable install ran
        return out["endpoint"], r.stderr

    ep_d, log = controller()
    ep = ReceiverEndpoint.from_dict(ep_d)
    try:
        assert "uploaded cvmigrate-linux-" in log, log
        uploaded = root / ep.remote_workdir.lstrip("/") / "bin" / exe.name
        assert uploaded.read_bytes() == exe.read_bytes()
        assert _alive(ep.remote_pid) and os.stat(f"/proc/{ep.remote_pid}").st_uid == user.uid
        # the receiver runs the bundled interpreter, unpacked inside the chroot's work directory
        exe_link = os.readlink(f"/proc/{ep.remote_pid}/exe")
        assert "/.cvmigrate-receiver/runtime/" in exe_link, exe_link
        res = _push(src, ep.address, pki, token_file)
        assert res.returncode == 0, res.describe() + "\n--- receiver log\n" + \
            (root / ep.remote_workdir.lstrip("/") / "run" / "receiver.log").read_text(errors="replace")[-4000:]
        from tests.helpers.oracle import rsync_itemize
        assert rsync_itemize(src, target) == []

        # again (a resumed controller): the same bytes are not uploaded twice; the receiver is replaced
        ep2_d, log2 = controller(known=ep.host_key_fingerprint)
        ep2 = ReceiverEndpoint.from_dict(ep2_d)
        assert "already on" in log2 and "uploaded cvmigrate-linux-" not in log2, log2
        assert ep2.remote_pid != ep.remote_pid and not _alive(ep.remote_pid)
        ep = ep2
    finally:
        result = stop_receiver(ep, password=user.password)
    assert result == "terminated"
    assert user.password not in log and token not in log
