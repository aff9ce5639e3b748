"""Target disk plan: lsblk parsing, disk matching by size and order, the plan, confirmation before writing."""
from __future__ import annotations

import pytest

from cvmigrate.receiver.diskplan import (GIB, DiskPlanError, FsIdentity, PlanNotConfirmed, TargetDisk, WantedDisk,
                                         apply_plan, build_plan, disks_from_lsblk, match_disks, partition_path)

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
    assert plan.target_for("/").uuid == "aaaa-root"
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
    assert plan.source_by_name('UUID="src-root"').mount_point == "/"
    assert plan.source_by_name("/dev/sdb1").mount_point == "/data"
    assert plan.source_by_name("LABEL=nope") is None
    assert isinstance(disks_from_lsblk(LSBLK)[0], TargetDisk)
