"""The proof: a migrated Debian server boots on a target with other disks, UUIDs and NIC.

The source is a real bootable bookworm disk image (tests/helpers/bootimage.py:
MBR, grub-pc, ext4 root, /data on a second partition with a marker file, a
unit that prints ``CVMIGRATE-BOOT-OK host=<hostname> marker=<marker>`` on the
serial console).  The target is what a fresh CVM with one data disk has: a
system disk with another layout and filesystem UUIDs, and a blank data disk.

The migration goes through the real agent and receiver (in-process, gRPC on
port 0): the receiver's disk plan matches the target's disks by size, formats
the blank data disk with the source mount's filesystem type and mounts it at
/data; the agent pushes / and the /data mount.  Then the fix-ups run (grub in a
chroot) and the target boots under ``qemu-system-x86_64 -accel tcg`` with
virtio disks and NIC.  It passes only when the serial console shows the line
with the source's hostname and marker.

The negative control is the same migration with every fix-up except fstab: its
/data entry names the source's UUID, so systemd gives up on /data and drops to
emergency mode, and the line never appears.  Both guests boot in parallel.

Selected by ``pytest -m boot``; needs root, debootstrap, qemu-system-x86,
fdisk (sfdisk), grub-pc-bin, e2fsprogs, util-linux (losetup, partx).  Images are
cached in ~/.cache/cvmigrate/boot (CVMIGRATE_BOOT_CACHE); loop devices and mounts
are released in finally blocks even when a step fails.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from cvmigrate.agent.push import PushOptions, PushSession
from cvmigrate.common.excludes import ExcludeRules
from cvmigrate.receiver.diskplan import GIB, FsIdentity, WantedDisk, apply_plan, blkid, build_plan, discover_disks
from cvmigrate.receiver.fixups import run_fixups
from cvmigrate.receiver.server import create_server
from cvmigrate.receiver.session import ReceiverConfig
from tests.helpers import bootimage

pytestmark = [
    pytest.mark.boot,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (loop devices, mounts, chroot)"),
    pytest.mark.skipif(bool(bootimage.missing_tools()), reason="missing: " + ", ".join(bootimage.missing_tools())),
]

BOOT_TIMEOUT = float(os.environ.get("CVMIGRATE_BOOT_TIMEOUT", "180"))
EMERGENCY = "emergency mode"


def _plan_for(system_dev: str, data_dev: str, src: dict[str, FsIdentity]):
    seen = discover_disks([system_dev, data_dev])
    wanted = [WantedDisk(0, bootimage.TARGET_SIZE // GIB, "/"), WantedDisk(1, bootimage.DATA_SIZE // GIB, "/data")]
    return build_plan(wanted, seen, list(src.values()))


def _migrate(source: bootimage.SourceImage, target: bootimage.TargetImages, work: Path) -> dict:
    """Source image -> target images through the agent and the receiver; returns timings and counts."""
    t0 = time.monotonic()
    with contextlib.ExitStack() as stack:
        src = stack.enter_context(bootimage.LoopDisk(source.path, read_only=True))
        src_root = stack.enter_context(bootimage.mounted(src.part(1), work / "src", "ro", "noload"))
        stack.enter_context(bootimage.mounted(src.part(2), src_root / "data", "ro", "noload"))
        sources = {"/": FsIdentity(**{**blkid(src.part(1)).__dict__, "mount_point": "/"}),
                   "/data": FsIdentity(**{**blkid(src.part(2)).__dict__, "mount_point": "/data"})}
        sysdisk = stack.enter_context(bootimage.LoopDisk(target.system))
        datadisk = stack.enter_context(bootimage.LoopDisk(target.data))
        plan = _plan_for(sysdisk.dev, datadisk.dev, sources)
        assert [a.needs_format for a in plan.assignments] == [False, True], plan.describe()
        applied = apply_plan(plan, work / "dst", yes=True)
        stack.callback(applied.unmount)
        handle = create_server(ReceiverConfig(root=str(work / "dst"), state_dir=str(work / "receiver-state")),
                               "127.0.0.1:0")
        stack.callback(handle.stop, 1.0)
        result = PushSession(PushOptions(source=str(src_root), address=f"127.0.0.1:{handle.port}",
                                         rules=ExcludeRules.default(), include_mounts=(b"data",))).run()
        assert not result.errors, result.errors
        assert (work / "dst/data/marker.txt").read_text().strip() == source.marker
        assert not (work / "dst/var/lib/cvm-image").exists(), "the target image's own files were not replaced"
        data_target = applied.plan.target_for("/data")
    return {"sources": sources, "files": result.files, "bytes": result.bytes_total,
            "seconds": round(time.monotonic() - t0, 1), "data_uuid": data_target.uuid if data_target else ""}


def _fix(system: Path, data: Path, sources: dict[str, FsIdentity], work: Path, skip: tuple[str, ...]):
    """Attach one copy of the migrated target, mount it per the plan, run the fix-ups."""
    with contextlib.ExitStack() as stack:
        sysdisk = stack.enter_context(bootimage.LoopDisk(system))
        datadisk = stack.enter_context(bootimage.LoopDisk(data))
        plan = _plan_for(sysdisk.dev, datadisk.dev, sources)
        assert not any(a.needs_format for a in plan.assignments), plan.describe()
        applied = apply_plan(plan, work / "fix", yes=True)
        stack.callback(applied.unmount)
        return run_fixups(work / "fix", applied.plan, chroot_tools=True, skip=skip, timestamp="boot-test"), plan


@pytest.fixture(scope="module")
def boots(tmp_path_factory):
    """Migrate once, make the fixed and the negative-control copies, boot both in parallel."""
    work = tmp_path_factory.mktemp("boot")
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    source = bootimage.source_image()
    timings["source image"] = time.monotonic() - t0
    target = bootimage.make_target(work)
    migration = _migrate(source, target, work)
    timings["migration"] = migration["seconds"]
    variants = {}
    for name, skip in (("fixed", ()), ("no-fstab", ("fstab",))):
        d = work / name
        d.mkdir()
        system, data = d / "target.img", d / "data.img"
        for src, dst in ((target.system, system), (target.data, data)):
            subprocess.run(["cp", "--sparse=always", str(src), str(dst)], check=True)
        t1 = time.monotonic()
        report, plan = _fix(system, data, migration["sources"], d, skip)
        timings[f"fix-ups ({name})"] = time.monotonic() - t1
        (d / "fixups.json").write_text(json.dumps(report.as_json(), indent=1))
        (d / "fixups.diff").write_text(report.diffs())
        assert report.ok, report.summary()
        variants[name] = {"system": system, "data": data, "report": report, "plan": plan, "log": d / "serial.log"}
    procs = []
    try:
        t2 = time.monotonic()
        for v in variants.values():
            v["proc"] = bootimage.boot(v["system"], v["data"], v["log"])
            procs.append(v["proc"])
        yield {"variants": variants, "source": source, "work": work, "timings": timings, "boot_start": t2,
               "migration": migration}
    finally:
        for p in procs:
            bootimage.stop(p)
        shutil.rmtree(work, ignore_errors=True)


def _line(log: Path) -> str:
    text = log.read_text(errors="replace") if log.exists() else ""
    return next((line.strip() for line in text.splitlines() if bootimage.BANNER in line), "")


def test_migrated_target_boots(boots, record_property):
    v = boots["variants"]["fixed"]
    src = boots["source"]
    seen = bootimage.wait_for(v["log"], v["proc"], [bootimage.BANNER + " host="], BOOT_TIMEOUT)
    elapsed = time.monotonic() - boots["boot_start"]
    line = _line(v["log"])
    print("\n=== fix-up diffs ===\n" + v["report"].diffs())
    print("=== fix-up summary ===\n" + v["report"].summary())
    print(f"=== serial console ({elapsed:.0f} s after start) ===\n{line}")
    print("=== timings ===", {k: round(t, 1) for k, t in boots["timings"].items()})
    record_property("serial_line", line)
    tail = v["log"].read_text(errors="replace")[-3000:] if v["log"].exists() else "(no serial log)"
    assert seen, f"no boot line within {BOOT_TIMEOUT:.0f} s; serial tail:\n{tail}"
    assert f"host={src.hostname}" in line and f"marker={src.marker}" in line, line
    # The source's network config says eth0; its MAC-bound naming rule is gone, net.ifnames=0 keeps eth0.
    assert "eth0" in line.split("ifaces=", 1)[-1].split(), line
    bootimage.stop(v["proc"])


def test_negative_control_without_fstab_fixup_does_not_boot(boots):
    v = boots["variants"]["no-fstab"]
    assert v["report"].step("fstab").status == "skipped"
    # The source's fstab gives /data 60 s to appear before systemd gives up.
    seen = bootimage.wait_for(v["log"], v["proc"], [bootimage.BANNER + " host=", EMERGENCY], BOOT_TIMEOUT + 120)
    tail = v["log"].read_text(errors="replace")[-3000:] if v["log"].exists() else "(no serial log)"
    print(f"\n=== negative control: {seen!r} ===")
    assert seen != bootimage.BANNER + " host=", f"booted without the fstab fix-up:\n{tail}"
    assert seen == EMERGENCY, f"expected emergency mode (the source's /data UUID is missing); serial tail:\n{tail}"
    # ... and for the right reason: systemd timed out waiting for the source's /data filesystem.
    escaped = boots["source"].data_uuid.replace("-", "\\x2d")
    assert escaped in v["log"].read_text(errors="replace"), f"emergency mode for another reason:\n{tail}"
    bootimage.stop(v["proc"])
