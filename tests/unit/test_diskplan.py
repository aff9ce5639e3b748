"""Target disk plan: lsblk parsing, disk matching by size and order, the plan, confirmation before writing."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from cvmigrate.receiver.diskplan import (
    GIB,
    DiskPlan,
    DiskPlanError,
    FsIdentity,
    PlanNotConfirmed,
    TargetDisk,
    WantedDisk,
    apply_plan,
    build_plan,
    discover_disks,
    disks_from_lsblk,
    match_disks,
    partition_path,
)

if TYPE_CHECKING:
    from tests.helpers.bootimage import LoopDisk

LSBLK = {"blockdevices": [
    {"name": "vda", "path": "/dev/vda", "type": "disk", "size": 50 * GIB, "pttype": "dos", "mountpoint": None,
     "children": [{"name": "vda1", "path": "/dev/vda1", "type": "part", "size": 50 * GIB - 1048576, "fstype": "ext4",
                   "uuid": "aaaa-root", "label": None, "partuuid": "1234-01", "mountpoint": None}]},
    {"name": "vdb", "path": "/dev/vdb", "type": "disk", "size": 100 * GIB, "pttype": None, "mountpoint": None},
    {"name": "vdc", "path": "/dev/vdc", "type": "disk", "size": 100 * GIB, "pttype": None, "mountpoint": None},
    {"name": "vdd", "path": "/dev/vdd", "type": "disk", "size": 20 * GIB, "pttype": "dos", "mountpoint": None,
     "children": [{"name": "vdd1", "path": "/dev/vdd1", "type": "part", "size": 20 * GIB, "fstype": "ext4",
                   "uuid": "rescue", "mountpoint": "/"}]},
    {"name": "sr0", "path": "/dev/sr0", "type": "rom", "size": 1000},
]}
SOURCES = [FsIdentity("/", "ext4", uuid="src-root", device="/dev/sda1"),
           FsIdentity("/data", "xfs", uuid="src-data", device="/dev/sdb1"),
           FsIdentity("/logs", "ext4", uuid="src-logs", device="/dev/sdc1"),
           FsIdentity("/home", "ext4", uuid="src-home", device="/dev/sda3")]


def _target(plan: DiskPlan, mount_point: str) -> FsIdentity:
    """The target filesystem ``plan`` maps ``mount_point`` to (the test expects one)."""
    fs = plan.target_for(mount_point)
    assert fs is not None, f"nothing mapped to {mount_point}:\n{plan.describe()}"
    return fs


def _source(plan: DiskPlan, spec: str) -> FsIdentity:
    """The source filesystem ``spec`` (a UUID=, LABEL= or device name) names in ``plan`` (the test expects one)."""
    fs = plan.source_by_name(spec)
    assert fs is not None, f"no source filesystem is {spec}:\n{plan.describe()}"
    return fs


def test_lsblk_parsing():
    disks = disks_from_lsblk(LSBLK)
    assert [d.name for d in disks] == ["vda", "vdb", "vdc", "vdd"]
    assert disks[0].partitions[0].uuid == "aaaa-root" and not disks[0].blank
    assert disks[1].blank and disks[3].mounted


@pytest.mark.parametrize("wanted,expected", [
    ([WantedDisk(0, 50)], {0: "vda"}),
    ([WantedDisk(0, 50), WantedDisk(1, 100, "/data"), WantedDisk(2, 100, "/logs")], {0: "vda", 1: "vdb", 2: "vdc"}),
    # the order of equal sizes follows DataDisks index, not the list order
    ([WantedDisk(2, 100, "/logs"), WantedDisk(1, 100, "/data"), WantedDisk(0, 50)], {0: "vda", 1: "vdb", 2: "vdc"}),
])
def test_match_by_size_then_order(wanted, expected):
    got = match_disks(wanted, disks_from_lsblk(LSBLK))
    assert {i: d.name for i, d in got.items()} == expected


@pytest.mark.parametrize("wanted", [
    [WantedDisk(0, 20)],                                   # only the rescue system's (mounted) disk has 20 GB
    [WantedDisk(0, 50), WantedDisk(1, 300, "/data")],      # no such size
    [WantedDisk(0, 50), *(WantedDisk(i, 100, f"/d{i}") for i in (1, 2, 3))],   # two 100 GB disks, three wanted
])
def test_unmatched_is_an_error(wanted):
    with pytest.raises(DiskPlanError):
        match_disks(wanted, disks_from_lsblk(LSBLK))


def test_build_plan_and_describe():
    plan = build_plan([WantedDisk(0, 50), WantedDisk(1, 100, "/data")], disks_from_lsblk(LSBLK), SOURCES)
    assert plan.system_disk == "/dev/vda"
    assert _target(plan, "/").uuid == "aaaa-root"
    data = next(a for a in plan.assignments if a.index == 1)
    assert data.needs_format and data.fstype == "xfs" and data.disk.name == "vdb"
    assert plan.target_for("/data") is None                          # not formatted yet
    assert {m.mount_point for m in plan.mounts if m.target is None} >= {"/logs", "/home"}
    text = plan.describe()
    assert "partition + mkfs.xfs" in text and "/dev/vdb" in text
    assert plan.as_json()["disks"][1]["format"] is True


def test_nothing_written_without_confirmation(tmp_path, monkeypatch):
    import subprocess
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a))
    plan = build_plan([WantedDisk(0, 50), WantedDisk(1, 100, "/data")], disks_from_lsblk(LSBLK), SOURCES)
    with pytest.raises(PlanNotConfirmed) as exc:
        apply_plan(plan, tmp_path, yes=False)
    assert calls == [] and "--yes" in str(exc.value)


def test_blank_disk_of_unsupported_type():
    with pytest.raises(DiskPlanError, match="supported"):
        build_plan([WantedDisk(0, 50), WantedDisk(1, 100, "/data")], disks_from_lsblk(LSBLK),
                   [FsIdentity("/data", "zfs")])


@pytest.mark.parametrize("disk,n,out", [("/dev/vdb", 1, "/dev/vdb1"), ("/dev/nvme0n1", 2, "/dev/nvme0n1p2"),
                                        ("/dev/loop3", 1, "/dev/loop3p1")])
def test_partition_path(disk, n, out):
    assert partition_path(disk, n) == out


def test_source_lookup_by_any_name():
    plan = build_plan([WantedDisk(0, 50)], disks_from_lsblk(LSBLK), SOURCES)
    assert _source(plan, 'UUID="src-root"').mount_point == "/"
    assert _source(plan, "/dev/sdb1").mount_point == "/data"
    assert plan.source_by_name("LABEL=nope") is None
    assert isinstance(disks_from_lsblk(LSBLK)[0], TargetDisk)


# --------------------------------------------------------------------------- UEFI system disks (GPT + ESP)

ESP_GUID = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX_GUID = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
UEFI_SOURCES = [FsIdentity("/", "ext4", uuid="src-root", device="/dev/sda2"),
                FsIdentity("/boot/efi", "vfat", uuid="ABCD-1234", device="/dev/sda1")]
_gpt_tools = ("sfdisk", "losetup", "partx", "blkid", "lsblk", "mformat", "mkfs.ext4", "mkfs.ext2")


@pytest.fixture
def gpt_disk(tmp_path: Path) -> Iterator[tuple[LoopDisk, str, str, str]]:
    """A real GPT disk as a CVM's UEFI system disk: p1 a FAT32 ESP (larger than the root, so "the largest
    partition" would pick it too), p2 a small ext2 /boot, p3 the ext4 root; a loop device with partx partitions."""
    import os
    import shutil

    from tests.helpers.bootimage import LoopDisk, run
    if os.geteuid() != 0 or any(shutil.which(t) is None for t in _gpt_tools):
        pytest.skip(f"needs root and {', '.join(_gpt_tools)} (dosfstools/mtools for FAT)")
    image = tmp_path / "uefi-system.img"
    with open(image, "wb") as f:
        f.truncate(200 * 1024 * 1024)
    run(["sfdisk", "-q", image], input=(f"label: gpt\nstart=2048, size=122880, type={ESP_GUID}\n"
                                        f"start=124928, size=20480, type={LINUX_GUID}\n"
                                        f"start=145408, type={LINUX_GUID}\n"), text=True, capture_output=True)
    with LoopDisk(image) as loop:
        esp, boot, root = loop.part(1), loop.part(2), loop.part(3)
        run(["mformat", "-i", esp, "-T", "122880", "-h", "64", "-s", "32", "-c", "1", "-F", "-v", "ESP", "::"],
            capture_output=True, text=True)
        run(["mkfs.ext2", "-q", "-F", boot], capture_output=True, text=True)
        run(["mkfs.ext4", "-q", "-F", root], capture_output=True, text=True)
        yield loop, esp, boot, root


def test_uefi_system_disk_root_is_the_linux_filesystem_not_the_esp(gpt_disk):
    loop, esp, boot, root = gpt_disk
    [disk] = discover_disks([loop.dev])
    first = disk.partitions[0]
    assert first.device == esp and first.is_esp and first.fstype == "vfat" and not first.is_linux
    assert first.parttype.lower() == ESP_GUID.lower() and first.size == 122880 * 512
    plan = build_plan([WantedDisk(0, 0)], [disk], UEFI_SOURCES)
    assert _target(plan, "/").device == root and _target(plan, "/").fstype == "ext4"
    target_esp = plan.target_for("/boot/efi")
    assert target_esp is not None and target_esp.device == esp and target_esp.fstype == "vfat"
    assert plan.boot_mode == "uefi" and plan.system_disk == loop.dev
    # fstab maps the source ESP's UUID to the target ESP's, and never comments it out
    mapped = plan.mapping_for_source(_source(plan, "UUID=ABCD-1234"))
    assert mapped is not None and mapped.target is not None
    assert mapped.target.uuid == target_esp.uuid and mapped.target.uuid
    assert "/boot/efi" in plan.describe()
    # with no source root type to go by, still the largest Linux filesystem (p3), never the ESP or /boot
    assert _target(build_plan([WantedDisk(0, 0)], [disk], []), "/").device == root


def test_uefi_esp_from_the_facts_when_no_source_filesystem_lists_it(gpt_disk):
    """The ESP in the source's fstab only (facts.esp), not mounted on the agent's side."""
    loop, esp, _boot, root = gpt_disk
    plan = build_plan([WantedDisk(0, 0)], discover_disks([loop.dev]), UEFI_SOURCES[:1],
                      boot_mode="uefi", esp_mount="/boot/efi")
    assert _target(plan, "/").device == root and _target(plan, "/boot/efi").device == esp


def test_uefi_esp_the_kernel_cannot_mount_is_left_to_stage3(gpt_disk, tmp_path, caplog):
    """This kernel has no vfat: apply_plan mounts the root and says the ESP waits for the fix-ups (the transfer does
    not need it); mount_esp without FUSE is one clear line; with fusefat (stage 3) the ESP is mounted read-write
    under its device's name, which grub-install needs."""
    import logging
    import os
    import shutil
    import subprocess

    from cvmigrate.receiver.diskplan import mount_esp, unmount

    loop, esp, _boot, root = gpt_disk
    plan = build_plan([WantedDisk(0, 0)], discover_disks([loop.dev]), UEFI_SOURCES)
    where = tmp_path / "target"
    with caplog.at_level(logging.WARNING, logger="cvmigrate.receiver.diskplan"):
        applied = apply_plan(plan, where, yes=True)
    try:
        kernel_fat = os.path.ismount(where / "boot/efi")
        if kernel_fat:
            assert [str(p) for p in applied.mounted] == [str(where), str(where / "boot/efi")]
            return
        assert [str(p) for p in applied.mounted] == [str(where)]
        assert any(esp in r.getMessage() and "fix-ups mount it" in r.getMessage() for r in caplog.records)
        with pytest.raises(DiskPlanError) as exc:
            mount_esp(esp, where / "boot/efi")
        text = str(exc.value)
        assert "EFI system partition" in text and esp in text and "fusefat" in text and "\n" not in text
        if shutil.which("fusefat") is None:
            return
        undo = mount_esp(esp, where / "boot/efi", fuse=True)
        try:
            assert os.path.ismount(where / "boot/efi")
            found = subprocess.run(["findmnt", "-no", "SOURCE", str(where / "boot/efi")], capture_output=True,
                                   text=True).stdout.strip()
            assert found == esp      # fsname=: grub-install finds the ESP's disk by this name
            (where / "boot/efi/probe.txt").write_text("written through FUSE")
        finally:
            unmount(undo)
        assert not os.path.ismount(where / "boot/efi") and not (where / "boot/efi/probe.txt").exists()
        assert subprocess.run(["mtype", "-i", esp, "::/probe.txt"], capture_output=True,
                              text=True).stdout == "written through FUSE"
    finally:
        applied.unmount()


def test_lsblk_parttype_names_the_esp_on_mbr_and_gpt():
    data = {"blockdevices": [{"name": "vda", "path": "/dev/vda", "type": "disk", "size": 20 * GIB, "pttype": "dos",
                              "children": [
                                  {"name": "vda1", "path": "/dev/vda1", "type": "part", "size": 19 * GIB,
                                   "fstype": "ext4", "uuid": "r", "parttype": "0x83"},
                                  {"name": "vda2", "path": "/dev/vda2", "type": "part", "size": GIB // 2,
                                   "fstype": None, "uuid": None, "parttype": "0xef"}]}]}
    [disk] = disks_from_lsblk(data)
    assert [p.is_esp for p in disk.partitions] == [False, True]
    assert disk.partitions[0].size == 19 * GIB
    with pytest.raises(DiskPlanError, match="no Linux filesystem to receive /.*vda2 no filesystem \\(ESP\\)"):
        build_plan([WantedDisk(0, 20)], [TargetDisk("vda", "/dev/vda", 20 * GIB, disk.partitions[1:], has_table=True)],
                   UEFI_SOURCES)


def test_stage3_plan_maps_an_unmounted_esp_by_its_own_uuid(gpt_disk, tmp_path):
    """Stage 3 (RunFixups) on a root whose ESP this kernel cannot mount: /boot/efi still maps to the target's ESP,
    so the fstab fix-up rewrites its UUID instead of commenting the line out."""
    from cvmigrate.receiver.diskplan import blkid
    from cvmigrate.receiver.fixups_service import plan_from_mounts
    from tests.helpers.bootimage import mounted

    loop, esp, _boot, root = gpt_disk
    with mounted(root, tmp_path / "root") as where:
        plan = plan_from_mounts(str(where), UEFI_SOURCES, "uefi")
    assert plan is not None and plan.system_disk == loop.dev and plan.boot_mode == "uefi"
    assert _target(plan, "/").device == root
    assert _target(plan, "/boot/efi").uuid == blkid(esp).uuid and _target(plan, "/boot/efi").device == esp


def test_stage3_finds_an_esp_that_is_only_in_the_source_fstab(gpt_disk, tmp_path):
    """The source's ESP was not mounted when the agent looked (facts.esp from its fstab, no source filesystem lists
    it): stage 3 still maps /boot/efi to the target's ESP, so the fstab line gets the target ESP's UUID instead of
    naming a filesystem the CVM does not have (systemd would wait for it and drop to emergency mode)."""
    from cvmigrate.receiver.diskplan import blkid
    from cvmigrate.receiver.fixups.fstab import rewrite_fstab
    from cvmigrate.receiver.fixups_service import plan_from_mounts
    from tests.helpers.bootimage import mounted

    loop, esp, _boot, root = gpt_disk
    fstab = "UUID=src-root / ext4 defaults 0 1\nUUID=ABCD-1234 /boot/efi vfat umask=0077 0 1\n"
    with mounted(root, tmp_path / "root") as where:
        blind = plan_from_mounts(str(where), UEFI_SOURCES[:1], "uefi")
        plan = plan_from_mounts(str(where), UEFI_SOURCES[:1], "uefi", "/boot/efi")
    assert blind is not None and blind.target_for("/boot/efi") is None     # what facts.esp is needed for
    assert plan is not None and plan.boot_mode == "uefi"
    esp_uuid = blkid(esp).uuid
    assert _target(plan, "/boot/efi").device == esp and _target(plan, "/boot/efi").uuid == esp_uuid
    new, _notes = rewrite_fstab(fstab, plan)
    assert f"UUID={esp_uuid} /boot/efi vfat umask=0077 0 1" in new and "ABCD-1234" not in new
