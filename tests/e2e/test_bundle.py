"""The one-file executable (tools/build_bundle.sh) on systems without Python.

Marker ``bundle``: CI builds ``dist/cvmigrate-linux-x86_64`` first (the
interpreter build is cached), then runs these:

* the compatibility floor: every ELF file in the unpacked bundle, and the
  launcher itself, needs no glibc symbol newer than GLIBC_2.17 and no
  libstdc++/libgcc version beyond manylinux2014, and links only system
  libraries manylinux2014 allows (or ones the bundle carries);
* the launcher: first run and later start-up times, a private cache directory
  (a world-writable or foreign one is refused), two racing first runs;
* Debian bullseye minbase, which has no python3: inside a chroot, ``--version``,
  a ``push`` of the chroot's own /usr to a receiver outside over mutual TLS and
  a token, and a ``receive`` a push from outside fills; the rsync oracle is
  clean both ways.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.bundle import (
    FLOOR,
    SYSTEM_LIBS,
    chroot_push,
    chroot_receive,
    debian_rootfs,
    elf_audit,
    elf_needs,
    in_chroot,
    python_in,
    require_bundle,
    unpack_rootfs,
)
from tests.helpers.bundle import (
    chroot_secrets as _secrets,
)
from tests.helpers.bundle import (
    clean_env as _env,
)
from tests.helpers.bundle import (
    run as _run,
)
from tests.helpers.fstree import build_tricky_tree
from tests.helpers.oracle import assert_identical

pytestmark = pytest.mark.bundle


def _private(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    d.chmod(0o700)
    return d


def _unpacked_dirs(cache: Path) -> list[Path]:
    return sorted(p for p in cache.iterdir()) if cache.is_dir() else []


@pytest.fixture(scope="module")
def exe() -> Path:
    return require_bundle()


@pytest.fixture(scope="module")
def unpacked(exe: Path, tmp_path_factory) -> Path:
    cache = _private(tmp_path_factory.mktemp("bundle-cache") / "c")
    r = _run([exe, "--version"], _env(cache))
    assert r.returncode == 0, r.stderr
    dirs = _unpacked_dirs(cache)
    assert len(dirs) == 1, dirs
    return dirs[0]


# ------------------------------------------------------------------ compatibility floor
def test_no_elf_file_needs_more_than_glibc_2_17(exe: Path, unpacked: Path, record_property) -> None:
    audit = [elf_needs(exe), *elf_audit(unpacked)]
    assert len(audit) > 30, f"only {len(audit)} ELF files found: is this the bundle?"
    names_inside = {p.name for p in unpacked.rglob("*.so*")}
    problems = []
    for a in audit:
        problems += [f"{a.path}: needs {sym} (floor {fam}_{'.'.join(map(str, FLOOR[fam]))})"
                     for sym in a.too_new for fam in [sym.split("@")[1].split("_")[0]]]
        problems += [f"{a.path}: links {lib}, which is neither a manylinux2014 system library nor in the bundle"
                     for lib in a.needed if lib not in SYSTEM_LIBS and lib not in names_inside]
    highest = max(a.versions.get("GLIBC", ()) for a in audit)
    top = [a.path.name for a in audit if a.versions.get("GLIBC") == highest]
    record_property("bundle_glibc_floor", f"GLIBC_{'.'.join(map(str, highest))} ({', '.join(top[:5])})")
    print(f"\nELF files: {len(audit)}; highest glibc symbol version needed: "
          f"GLIBC_{'.'.join(map(str, highest))} by {', '.join(top[:5])}")
    assert not problems, "\n".join(problems)
    assert highest <= FLOOR["GLIBC"]


def test_the_audit_catches_a_newer_glibc() -> None:
    """The same audit on this host's own /bin/ls (bookworm, glibc 2.36) reports symbols past 2.17."""
    needs = elf_needs(Path("/bin/ls"))
    assert needs.too_new, needs
    assert all("@GLIBC_2." in s for s in needs.too_new)


# ------------------------------------------------------------------ the launcher
def test_startup_times_and_every_command_loads(exe: Path, tmp_path: Path, record_property) -> None:
    size_mb = exe.stat().st_size / 1e6
    cache = _private(tmp_path / "cache")
    t0 = time.monotonic()
    r = _run([exe, "--version"], _env(cache))
    first = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("cvmigrate "), r.stdout
    later = []
    for _ in range(3):
        t0 = time.monotonic()
        r = _run([exe, "--version"], _env(cache))
        later.append(time.monotonic() - t0)
        assert r.returncode == 0, r.stderr
    line = f"size {size_mb:.1f} MB, first run {first:.2f}s, later --version {min(later):.3f}s (best of 3)"
    record_property("bundle_startup", line)
    print("\n" + line)
    assert size_mb <= 40, line
    assert first <= 3.0, line
    assert min(later) <= 0.5, line
    # Each command's module (and the native wheels it imports) loads in the bundled interpreter.
    for cmd in ("push", "receive", "agent", "check"):
        r = _run([exe, cmd, "--help"], _env(cache))
        assert r.returncode == 0, f"{cmd} --help: {r.stderr}"
    probe = "import grpc, google.protobuf, xxhash, zstandard, sqlite3, ctypes, lzma, zlib; print(grpc.__version__)"
    py = next(_unpacked_dirs(cache)[0].glob("bin/python3"))
    r = _run([py, "-I", "-c", probe], _env(cache))
    assert r.returncode == 0, r.stderr


def test_refuses_a_cache_dir_others_can_write_or_own(exe: Path, tmp_path: Path) -> None:
    home = _private(tmp_path / "home")
    open_dir = tmp_path / "world-writable"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    r = _run([exe, "--version"], _env(open_dir, home))
    assert r.returncode == 0, r.stderr
    assert f"not using {open_dir}" in r.stderr
    assert not any(open_dir.iterdir()), "unpacked into a world-writable directory"
    assert len(_unpacked_dirs(home / ".cache" / "cvmigrate")) == 1

    foreign = tmp_path / "foreign"
    foreign.mkdir(mode=0o700)
    os.chown(foreign, 65534, 65534)
    shutil.rmtree(home / ".cache")
    r = _run([exe, "--version"], _env(foreign, home))
    assert r.returncode == 0, r.stderr
    assert f"not using {foreign}" in r.stderr
    assert not any(foreign.iterdir())
    assert len(_unpacked_dirs(home / ".cache" / "cvmigrate")) == 1


def test_two_racing_first_runs_share_one_complete_tree(exe: Path, tmp_path: Path) -> None:
    cache = _private(tmp_path / "cache")
    procs = [subprocess.Popen([str(exe), "--version"], env=_env(cache), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    assert all(o[0].startswith("cvmigrate ") for o in outs), outs
    left = _unpacked_dirs(cache)
    assert len(left) == 1 and not left[0].name.startswith("."), left   # no temp dir left behind


def test_a_killed_first_run_leaves_no_debris_for_long(exe: Path, tmp_path: Path) -> None:
    """Unpack directories of first runs killed over an hour ago are swept; a recent one (maybe live) is not."""
    cache = _private(tmp_path / "cache")
    old, recent = cache / ".tmp-0.0.0-dead-abc123", cache / ".tmp-0.0.0-live-def456"
    for d in (old, recent):
        (d / "lib").mkdir(parents=True)
        (d / "lib" / "half-written").write_bytes(b"x" * 1000)
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    r = _run([exe, "--version"], _env(cache))
    assert r.returncode == 0, r.stderr
    assert not old.exists() and recent.exists()


# ------------------------------------------------------------------ Debian bullseye, no Python
@pytest.fixture(scope="module")
def bullseye(exe: Path, tmp_path_factory) -> Path:
    root = unpack_rootfs(debian_rootfs("bullseye"), tmp_path_factory.mktemp("bullseye") / "root")
    assert python_in(root) == [], f"bullseye minbase should have no python: {python_in(root)}"
    shutil.copy2(exe, root / "usr/local/bin/cvmigrate")
    return root


def test_bullseye_version(bullseye: Path, record_property) -> None:
    r = _run(in_chroot(bullseye, "/usr/local/bin/cvmigrate", "--version"), _env(home=Path("/root")))
    assert r.returncode == 0, r.stderr
    record_property("bullseye_version", r.stdout.strip())
    print(f"\nbullseye chroot: {r.stdout.strip()}")
    assert r.stdout.startswith("cvmigrate ")


def test_bullseye_pushes_its_own_usr_over_mutual_tls(bullseye: Path, tmp_path: Path, record_property) -> None:
    dst = tmp_path / "target"
    summary = chroot_push(bullseye, "/usr", dst, tmp_path)
    record_property("bullseye_push", summary[:500])
    print(f"\nbullseye push of /usr: {summary[:500]}")
    assert_identical(bullseye / "usr", dst)


def test_bullseye_receives_a_push_from_outside(bullseye: Path, tmp_path: Path, record_property) -> None:
    src = tmp_path / "src"
    info = build_tricky_tree(src, big_sparse=False)
    r = chroot_receive(bullseye, src, tmp_path)
    record_property("bullseye_receive", str(r.summary)[:500])
    print(f"\nbullseye receive: {str(r.summary)[:500]}")
    assert_identical(src, bullseye / "srv/target", info.oracle_excludes)


def _snapshot(root: Path) -> set[str]:
    """Every path in ``root`` except /proc and the invoking user's own launcher cache."""
    out: set[str] = set()
    for dirpath, dirs, files in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        if rel in ("proc", "root/.cache") or rel.startswith(("proc/", "root/.cache/")):
            dirs[:] = []
            continue
        out.update(os.path.normpath(os.path.join(rel, n)) for n in dirs + files)
    return out - {"root/.cache"}


def test_bullseye_agent_install_serves_the_controller_and_uninstall_leaves_nothing(bullseye: Path,
                                                                                    record_property) -> None:
    from cvmigrate.common.tls import MigrationTokens, PkiPaths, TransportSecurity, new_token
    from cvmigrate.controller.agent_client import AgentClient

    pki_dir, _ = _secrets(bullseye)
    tokens = MigrationTokens(data=new_token(), control=new_token(), agent=new_token())
    # what the admin copies from the controller's <migration>-pki: the agent daemon's own files only
    mig = bullseye / "root/mig-pki"
    mig.mkdir(mode=0o700, exist_ok=True)
    for n in ("ca.pem", "agentd.pem", "agentd.key"):
        shutil.copy2(pki_dir / n, mig / n)
    (mig / "agent-token").write_text(tokens.agent + "\n")
    (mig / "agent-token").chmod(0o600)
    before = _snapshot(bullseye)
    r = _run(in_chroot(bullseye, "/usr/local/bin/cvmigrate", "agent", "install", "--pki-dir", "/root/mig-pki",
                       "--listen", "127.0.0.1:0"), _env(home=Path("/root")))
    assert r.returncode == 0, r.stdout + r.stderr
    record_property("bullseye_agent_install", r.stdout.strip())
    print("\n" + r.stdout.strip())
    assert "init script /etc/init.d/cvmigrate-agent" in r.stdout        # no systemd in a minbase chroot
    port = int(r.stdout.split("agent listening on 127.0.0.1:")[1].split()[0])
    pid = int((bullseye / "var/lib/cvmigrate/agent/agent.pid").read_text())
    assert Path(f"/proc/{pid}/exe").resolve().is_relative_to(bullseye / "var/lib/cvmigrate/agent/runtime")
    assert list((bullseye / "etc").glob("rc2.d/S*cvmigrate-agent")), "not registered for boot"
    with AgentClient(f"127.0.0.1:{port}", TransportSecurity.to_agent(PkiPaths.in_dir(pki_dir), tokens)) as client:
        client.ping(timeout=20)

    r = _run(in_chroot(bullseye, "/usr/local/bin/cvmigrate", "agent", "uninstall"), _env(home=Path("/root")))
    assert r.returncode == 0, r.stdout + r.stderr
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{pid}").exists(), "the agent still runs after uninstall"
    after = _snapshot(bullseye)
    assert after == before, f"left behind: {sorted(after - before)}; removed: {sorted(before - after)}"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-m", "bundle", "-v", "-s"]))
