"""Pre-checks against fake source trees and fake cloud answers: pass / warn / fail, each with a fix."""
from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
from dataclasses import dataclass

import pytest

from cvmigrate.agent.sourcefacts import gather
from cvmigrate.common.sourcefacts import SourceFilesystem
from cvmigrate.controller import checks
from cvmigrate.controller.checks import FAIL, GIB, PASS, SKIP, WARN, run_checks
from cvmigrate.controller.config import DataDisk
from tests.unit.test_fixups_misc import cpio

K = "6.1.0-test"


def tree(tmp_path, *, os_id="debian", version="12", comm="systemd", selinux=None, builtin=(), in_initrd=(), ko=()):
    (tmp_path / "etc").mkdir(exist_ok=True)
    (tmp_path / "etc/os-release").write_text(f'ID={os_id}\nVERSION_ID="{version}"\nPRETTY_NAME="{os_id} {version}"\n')
    (tmp_path / "proc/1").mkdir(parents=True, exist_ok=True)
    (tmp_path / "proc/1/comm").write_text(comm + "\n")
    if selinux:
        (tmp_path / "etc/selinux").mkdir(exist_ok=True)
        (tmp_path / "etc/selinux/config").write_text(f"SELINUX={selinux}\n")
    mods = tmp_path / "lib/modules" / K
    (mods / "kernel/drivers").mkdir(parents=True, exist_ok=True)
    (mods / "modules.builtin").write_text("".join(f"kernel/drivers/{m}.ko\n" for m in builtin))
    for m in ko:
        (mods / f"kernel/drivers/{m}.ko").write_text("")
    (tmp_path / "boot").mkdir(exist_ok=True)
    initrd = cpio([f"usr/lib/modules/{K}/{m}.ko" for m in in_initrd])
    (tmp_path / f"boot/initrd.img-{K}").write_bytes(gzip.compress(initrd))
    # the agent's report of this tree, as if it were a running server with these two filesystems
    facts = gather(str(tmp_path), kernel=K, euid=0, state_dir=str(tmp_path), mounts=[], whole_server=True)
    return dataclasses.replace(facts, filesystems=(
        SourceFilesystem("/", "ext4", size_bytes=50 * GIB, used_bytes=8 * GIB, free_bytes=42 * GIB),
        SourceFilesystem("/data", "xfs", size_bytes=200 * GIB, used_bytes=30 * GIB, free_bytes=170 * GIB)))


ALL = ("virtio_pci", "virtio_blk", "virtio_scsi", "virtio_net")


def by_name(results):
    return {r.name: r for r in results}


@pytest.mark.parametrize("kw,status", [
    (dict(builtin=ALL), PASS),
    (dict(builtin=("virtio_pci",), in_initrd=("virtio_blk", "virtio_scsi", "virtio_net")), PASS),
    (dict(ko=ALL), WARN),                       # modules exist, initramfs lacks them: the fix-up adds them
    (dict(ko=("virtio_net",)), FAIL),           # no virtio_blk anywhere: cannot boot on a CVM
])
def test_virtio(tmp_path, kw, status):
    r = by_name(run_checks(tree(tmp_path, **kw)))["virtio"]
    assert r.status == status, r
    assert (r.fix != "") == (status != PASS)


@pytest.mark.parametrize("kw,name,status", [
    (dict(), "selinux", PASS), (dict(selinux="enforcing"), "selinux", WARN),
    (dict(selinux="disabled"), "selinux", PASS),
    (dict(), "distribution", PASS), (dict(os_id="gentoo"), "distribution", WARN),
    (dict(), "init", PASS), (dict(comm="init"), "init", WARN), (dict(comm="bash"), "init", WARN),
])
def test_source_checks(tmp_path, kw, name, status):
    assert by_name(run_checks(tree(tmp_path, builtin=ALL, **kw)))[name].status == status


def test_root_and_usage(tmp_path):
    f = tree(tmp_path, builtin=ALL)
    f = dataclasses.replace(f, euid=1000, filesystems=f.filesystems + (
        SourceFilesystem("/var", "ext4", size_bytes=10 * GIB, used_bytes=int(9.9 * GIB), free_bytes=int(0.1 * GIB)),))
    res = by_name(run_checks(f))
    assert res["root"].status == FAIL and "sudo" in res["root"].fix
    assert res["usage /"].status == PASS and res["usage /var"].status == WARN
    assert res["target"].status == SKIP and res["clock"].status == SKIP


class FakeCloud:
    def __init__(self, skew):
        self.skew = skew

    def clock_skew(self):
        return self.skew


@pytest.mark.parametrize("skew,status", [(0.4, PASS), (-45.0, WARN), (400.0, FAIL), (None, WARN)])
def test_clock(tmp_path, skew, status):
    assert by_name(run_checks(tree(tmp_path, builtin=ALL), cloud=FakeCloud(skew)))["clock"].status == status


@dataclass
class Inst:
    os_name: str = "Debian 12.4 64bit"
    system_disk_gb: int = 50
    data_disks: tuple = ((1, 100),)


@pytest.mark.parametrize("inst,disks,expect", [
    (Inst(), [DataDisk(1, 100, "/data")], {"capacity disk 1": PASS, "capacity system": PASS, "os family": PASS}),
    (Inst(data_disks=((1, 20),)), [DataDisk(1, 20, "/data")], {"capacity disk 1": FAIL}),
    (Inst(data_disks=((1, 32),)), [DataDisk(1, 32, "/data")], {"capacity disk 1": WARN}),
    (Inst(), [DataDisk(2, 100, "/data")], {"capacity disk 2": FAIL}),
    (Inst(system_disk_gb=20), [], {"capacity system": FAIL}),      # /data unmapped lands on the system disk
    (Inst(os_name="CentOS 7.9 64bit"), [DataDisk(1, 100, "/data")], {"os family": WARN}),
    (Inst(os_name="Debian 11.1 64bit"), [DataDisk(1, 100, "/data")], {"os family": WARN}),
    (Inst(os_name="Ubuntu Server 22.04 LTS 64bit"), [DataDisk(1, 100, "/data")], {"os family": WARN}),
])
def test_target_checks(tmp_path, inst, disks, expect):
    res = by_name(run_checks(tree(tmp_path, builtin=ALL), instance=inst, data_disks=disks))
    for name, status in expect.items():
        assert res[name].status == status, res[name]
        if status != PASS:
            assert res[name].fix


def test_cli_json_and_exit_code(tmp_path, capsys, monkeypatch):
    f = tree(tmp_path, builtin=ALL)
    user = tmp_path / "user.json"
    user.write_text(json.dumps({"Region": "ap-guangzhou", "InstanceId": "ins-abcdefgh",
                                "DataDisks": [{"Index": 1, "Size": 20, "MountPoint": "/data"}]}))

    class Cloud(FakeCloud):
        def describe_instance(self, iid):
            return Inst(data_disks=((1, 20),))

    monkeypatch.setattr(checks, "gather_here", lambda *a, **kw: f)
    args = argparse.Namespace(user_json=str(user), client_json=None, api_endpoint=None, state=None,
                              source_only=False, state_dir=str(tmp_path), json=True)
    rc = checks.run(args, cloud_factory=lambda u: Cloud(1.0))
    out = json.loads(capsys.readouterr().out)
    assert rc == 13 and out["ok"] is False
    assert {c["name"]: c["status"] for c in out["checks"]}["capacity disk 1"] == FAIL


@pytest.mark.parametrize("skew,status", [(0.2, PASS), (-40.0, WARN), (900.0, FAIL)])
def test_source_clock_from_the_report(tmp_path, skew, status):
    res = by_name(run_checks(tree(tmp_path, builtin=ALL), source_clock_skew=skew))
    assert res["source clock"].status == status and (res["source clock"].fix != "") == (status != PASS)
    assert "source clock" not in by_name(run_checks(tree(tmp_path, builtin=ALL)))
