"""`cvmigrate receive --disk-plan`: the plan file, confirmation, and what the controller writes."""
import json
import types

import pytest

from cvmigrate.common.errors import ConfigError
from cvmigrate.receiver import diskplan_cli
from cvmigrate.receiver.diskplan import DiskPlan, FsIdentity, PlanNotConfirmed, TargetDisk

GIB = 1 << 30


def _plan_file(tmp_path, data):
    p = tmp_path / "disk-plan.json"
    p.write_text(json.dumps(data))
    return str(p)


@pytest.mark.parametrize("data,fragment", [
    ({}, "malformed"),
    ({"wanted": [{"index": 1, "size_gb": 10, "mount_point": "/data"}]}, "no system disk"),
    ({"wanted": [{"index": "x", "size_gb": 10}]}, "malformed"),
])
def test_bad_plan_files(tmp_path, data, fragment):
    with pytest.raises(ConfigError) as info:
        diskplan_cli.load_plan_request(_plan_file(tmp_path, data))
    assert fragment in str(info.value)


def test_missing_plan_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        diskplan_cli.load_plan_request(str(tmp_path / "nope.json"))
    assert "does not exist" in str(info.value)


def _fake_disks(monkeypatch, applied):
    disks = [TargetDisk("vda", "/dev/vda", 50 * GIB, (FsIdentity(fstype="ext4", uuid="u-root", device="/dev/vda1"),),
                        has_table=True),
             TargetDisk("vdb", "/dev/vdb", 100 * GIB)]
    monkeypatch.setattr(diskplan_cli, "discover_disks", lambda: disks)
    monkeypatch.setattr(diskplan_cli, "apply_plan", lambda plan, root, yes: applied.append(plan) or
                        types.SimpleNamespace(mounted=[]))


PLAN = {"wanted": [{"index": 0, "size_gb": 50, "mount_point": "/"},
                   {"index": 1, "size_gb": 100, "mount_point": "/data"}],
        "source_filesystems": [{"mount_point": "/data", "fstype": "xfs", "uuid": "s-data"}]}


def test_nothing_is_written_without_confirmation(tmp_path, monkeypatch, capsys):
    applied: list[DiskPlan] = []
    _fake_disks(monkeypatch, applied)
    monkeypatch.setattr("sys.stdin", types.SimpleNamespace(isatty=lambda: False))
    with pytest.raises(PlanNotConfirmed) as info:
        diskplan_cli.apply_disk_plan(_plan_file(tmp_path, PLAN), str(tmp_path / "root"), yes=False)
    assert "--yes" in str(info.value) and applied == []
    out = capsys.readouterr().out
    assert "/dev/vdb" in out and "xfs" in out  # the plan was shown: the blank data disk gets the source's fs


def test_confirmed_on_a_terminal_or_with_yes(tmp_path, monkeypatch):
    applied: list[DiskPlan] = []
    _fake_disks(monkeypatch, applied)
    monkeypatch.setattr("sys.stdin", types.SimpleNamespace(isatty=lambda: True))
    with pytest.raises(PlanNotConfirmed):
        diskplan_cli.apply_disk_plan(_plan_file(tmp_path, PLAN), str(tmp_path), yes=False, ask=lambda _: "n")
    diskplan_cli.apply_disk_plan(_plan_file(tmp_path, PLAN), str(tmp_path), yes=False, ask=lambda _: "y")
    diskplan_cli.apply_disk_plan(_plan_file(tmp_path, PLAN), str(tmp_path), yes=True)
    assert len(applied) == 2
    assert [a.needs_format for a in applied[0].assignments] == [False, True]


def test_controller_writes_the_plan_the_receiver_reads(tmp_path, monkeypatch):
    from cvmigrate.common.sourcefacts import SourceFacts, SourceFilesystem
    from cvmigrate.controller import manual_receiver
    from cvmigrate.controller.checkpoint import Checkpoint
    from cvmigrate.controller.config import DataDisk, UserConfig
    from tests.helpers.context import offline_context

    # the agent's report: /data on its own xfs filesystem under the source root
    facts = SourceFacts(root="/mnt/img", filesystems=(SourceFilesystem("/", "ext4", uuid="s-root"),
                                                      SourceFilesystem("/data", "xfs", uuid="s-data")))
    # the target as check_credentials stored it
    ckpt = Checkpoint(None)
    ckpt.set_facts(target={"instance_id": "ins-1", "state": "RESCUE_MODE", "os_name": "", "system_disk_gb": 50,
                           "data_disks": [[1, 100]], "private_ips": [], "public_ips": [], "vpc_id": "",
                           "subnet_id": "", "zone": ""})
    user = UserConfig("ap-guangzhou", "ins-1", data_disks=(DataDisk(index=1, size_gb=100, mount_point="/data"),))
    ctx = offline_context(user=user, ckpt=ckpt)
    ctx.remember_source_facts(facts)
    path = tmp_path / manual_receiver.DISK_PLAN_NAME
    manual_receiver.write_disk_plan(ctx, path)
    wanted, sources = diskplan_cli.load_plan_request(str(path))
    assert [(w.index, w.size_gb, w.mount_point) for w in wanted] == [(0, 50, "/"), (1, 100, "/data")]
    assert [(s.mount_point, s.fstype) for s in sources] == [("/", "ext4"), ("/data", "xfs")]
