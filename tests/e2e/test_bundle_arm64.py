"""The aarch64 executable (``tools/build_bundle.sh --arch aarch64``) in an arm64 Debian bullseye, under qemu-user.

Markers ``slow`` and ``bundle``: the arm64 minbase is debootstrapped with
``--foreign`` and finished under qemu-aarch64-static (cached), every program
in the chroot -- the launcher, the bundled CPython, grpc -- runs emulated.
Inside: ``uname -m`` says aarch64, there is no python, ``--version`` works, a
small push out of the chroot and a push into a receiver in the chroot both
leave the rsync oracle clean.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.helpers.bundle import (
    chroot_push,
    chroot_receive,
    clean_env,
    debian_rootfs,
    elf_audit,
    ensure_binfmt,
    in_chroot,
    python_in,
    require_bundle,
    run,
    unpack_rootfs,
)
from tests.helpers.fstree import build_small_files
from tests.helpers.oracle import assert_identical

pytestmark = [pytest.mark.slow, pytest.mark.bundle]


@pytest.fixture(scope="module")
def arm64(tmp_path_factory) -> Path:
    why = ensure_binfmt("aarch64")
    assert why is None, why
    exe = require_bundle("aarch64")
    root = unpack_rootfs(debian_rootfs("bullseye", "aarch64"), tmp_path_factory.mktemp("arm64") / "root")
    assert python_in(root) == [], python_in(root)
    shutil.copy2(exe, root / "usr/local/bin/cvmigrate")
    return root


def test_arm64_version_push_and_receive_under_qemu(arm64: Path, tmp_path: Path, record_property) -> None:
    env = clean_env(home=Path("/root"))
    r = run(in_chroot(arm64, "uname", "-m"), env)
    assert r.stdout.strip() == "aarch64", r.stdout + r.stderr
    r = run(in_chroot(arm64, "/usr/local/bin/cvmigrate", "--version"), env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("cvmigrate ")
    lines = [f"arm64 chroot (uname -m: aarch64): {r.stdout.strip()}"]
    unpacked = next(p for p in (arm64 / "root/.cache/cvmigrate").iterdir())
    highest = max(a.versions.get("GLIBC", ()) for a in elf_audit(unpacked))
    lines.append(f"arm64 ELF audit: highest GLIBC_{'.'.join(map(str, highest))}")
    assert highest <= (2, 17)

    # out of the chroot: its own /etc
    dst = tmp_path / "etc-copy"
    summary = chroot_push(arm64, "/etc", dst, tmp_path)
    assert_identical(arm64 / "etc", dst)
    lines.append(f"arm64 push of /etc: {summary[:400]}")

    # into a receiver in the chroot
    src = tmp_path / "src"
    build_small_files(src, 200)
    res = chroot_receive(arm64, src, tmp_path)
    assert_identical(src, arm64 / "srv/target")
    lines.append(f"arm64 receive: {str(res.summary)[:400]}")
    record_property("arm64", " | ".join(lines))
    print("\n" + "\n".join(lines))
