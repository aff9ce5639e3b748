"""fstab fix-up: source UUIDs, labels and device names mapped to the target's; the rest commented out."""
from __future__ import annotations

import pytest

from cvmigrate.receiver.diskplan import DiskPlan, FsIdentity, MountMap
from cvmigrate.receiver.fixups.fstab import MARK, rewrite_fstab

SRC_ROOT = FsIdentity("/", "ext4", uuid="11111111-1111-1111-1111-111111111111", label="rootfs",
                      partuuid="aaaa-01", device="/dev/sda1")
SRC_DATA = FsIdentity("/data", "ext4", uuid="22222222-2222-2222-2222-222222222222", label="DATA", device="/dev/sdb1")
SRC_XFS = FsIdentity("/srv", "xfs", uuid="33333333-3333-3333-3333-333333333333", device="/dev/sdc1")
SRC_SWAP = FsIdentity("", "swap", uuid="44444444-4444-4444-4444-444444444444", device="/dev/sda2")
SRC_LVM = FsIdentity("/var/log", "ext4", uuid="55555555-5555-5555-5555-555555555555", device="/dev/mapper/vg-log")
TGT_ROOT = FsIdentity("/", "ext4", uuid="aaaaaaaa-0000-0000-0000-00000000000a", device="/dev/vda1")
TGT_DATA = FsIdentity("/data", "ext4", uuid="bbbbbbbb-0000-0000-0000-00000000000b", device="/dev/vdb1")
TGT_SRV = FsIdentity("/srv", "ext4", uuid="cccccccc-0000-0000-0000-00000000000c", device="/dev/vdc1")

PLAN = DiskPlan(
    mounts=(MountMap("/", SRC_ROOT, TGT_ROOT), MountMap("/data", SRC_DATA, TGT_DATA),
            MountMap("/srv", SRC_XFS, TGT_SRV), MountMap("/var/log", SRC_LVM, None)),
    source_filesystems=(SRC_ROOT, SRC_DATA, SRC_XFS, SRC_SWAP, SRC_LVM),
)


@pytest.mark.parametrize("line,expected", [
    # by UUID, spacing and options kept
    ("UUID=11111111-1111-1111-1111-111111111111 /  ext4 errors=remount-ro 0 1",
     f"UUID={TGT_ROOT.uuid} /  ext4 errors=remount-ro 0 1"),
    ('UUID="22222222-2222-2222-2222-222222222222"\t/data\text4\tdefaults\t0\t2',
     f"UUID={TGT_DATA.uuid}\t/data\text4\tdefaults\t0\t2"),
    # by label, by PARTUUID, by device name, by /dev/disk/by-uuid link
    ("LABEL=rootfs / ext4 defaults 0 1", f"UUID={TGT_ROOT.uuid} / ext4 defaults 0 1"),
    ("LABEL=DATA /data ext4 defaults,nofail 0 2", f"UUID={TGT_DATA.uuid} /data ext4 defaults,nofail 0 2"),
    ("PARTUUID=aaaa-01 / ext4 defaults 0 1", f"UUID={TGT_ROOT.uuid} / ext4 defaults 0 1"),
    ("/dev/sda1 / ext4 defaults 0 1", f"UUID={TGT_ROOT.uuid} / ext4 defaults 0 1"),
    ("/dev/sdb1 /data ext4 defaults 0 2", f"UUID={TGT_DATA.uuid} /data ext4 defaults 0 2"),
    ("/dev/disk/by-uuid/22222222-2222-2222-2222-222222222222 /data ext4 defaults 0 2",
     f"UUID={TGT_DATA.uuid} /data ext4 defaults 0 2"),
    # unknown spec, but the mount point is in the plan
    ("/dev/xvdb1 /data ext4 defaults 0 2", f"UUID={TGT_DATA.uuid} /data ext4 defaults 0 2"),
    # filesystem type follows the target's
    ("UUID=33333333-3333-3333-3333-333333333333 /srv xfs defaults 0 0", f"UUID={TGT_SRV.uuid} /srv ext4 defaults 0 0"),
])
def test_mapped_entries(line, expected):
    new, _ = rewrite_fstab(line + "\n", PLAN)
    assert new == expected + "\n"


@pytest.mark.parametrize("line", [
    # already the target's
    f"UUID={TGT_ROOT.uuid} / ext4 defaults 0 1",
    # comments, blank lines, virtual, network and bind entries
    "# a comment",
    "",
    "proc /proc proc defaults 0 0",
    "tmpfs /tmp tmpfs defaults,nosuid 0 0",
    "nas:/export /mnt/nas nfs4 defaults,_netdev 0 0",
    "//srv/share /mnt/smb cifs credentials=/etc/c 0 0",
    "/data/www /var/www none bind 0 0",
])
def test_untouched_entries(line):
    new, _ = rewrite_fstab(line + "\n", PLAN)
    assert new == line + "\n"


@pytest.mark.parametrize("line,why", [
    ("UUID=44444444-4444-4444-4444-444444444444 none swap sw 0 0", "swap"),
    ("/dev/sda2 none swap sw 0 0", "swap"),
    ("/dev/mapper/vg-log /var/log ext4 defaults 0 2", "migrated into the target's root"),
    ("UUID=99999999-9999-9999-9999-999999999999 /backup ext4 defaults 0 2", "not on any disk of the target"),
    ("LABEL=old /mnt/old xfs defaults 0 0", "not on any disk of the target"),
])
def test_entries_without_target_are_commented_out(line, why):
    new, notes = rewrite_fstab(line + "\n", PLAN)
    lines = new.splitlines()
    assert lines[0].startswith(MARK) and why in lines[0]
    assert lines[1] == "#" + line
    assert any("commented out" in n for n in notes)


def test_whole_file_keeps_order_and_is_idempotent():
    text = ("# /etc/fstab\n"
            "UUID=11111111-1111-1111-1111-111111111111 / ext4 defaults 0 1\n"
            "UUID=44444444-4444-4444-4444-444444444444 none swap sw 0 0\n"
            "LABEL=DATA /data ext4 defaults 0 2\n")
    once, _ = rewrite_fstab(text, PLAN)
    twice, notes = rewrite_fstab(once, PLAN)
    assert once == twice and notes == []
    assert [ln.split()[1] for ln in once.splitlines() if ln and not ln.startswith("#")] == ["/", "/data"]


@pytest.mark.parametrize("line", [
    # "/" named by a filesystem the plan knows under another mount point without a target (a source root
    # reported from the wrong host), and by a UUID nobody knows: "/" is always the target's root
    "/dev/mapper/vg-log / ext4 defaults 0 1",
    "UUID=99999999-9999-9999-9999-999999999999 / ext4 errors=remount-ro 0 1",
])
def test_root_entry_is_never_commented_out(line):
    new, notes = rewrite_fstab(line + "\n", PLAN)
    assert not new.startswith("#"), new
    assert new.split()[0] == f"UUID={TGT_ROOT.uuid}" and new.split()[1] == "/"
    assert not any("commented out" in n for n in notes)


def test_root_entry_left_alone_when_the_plan_has_no_root_target():
    plan = DiskPlan(mounts=(MountMap("/", SRC_ROOT, None),), source_filesystems=(SRC_ROOT,))
    line = "UUID=11111111-1111-1111-1111-111111111111 / ext4 defaults 0 1\n"
    new, notes = rewrite_fstab(line, plan)
    assert new == line and "left as it is" in notes[0]
