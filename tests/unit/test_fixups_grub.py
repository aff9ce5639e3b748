"""Bootloader fix-up: root= and UUIDs in grub configuration, BLS entries and /etc/default/grub."""
from __future__ import annotations

import pytest

from cvmigrate.receiver.diskplan import DiskPlan, FsIdentity, MountMap
from cvmigrate.receiver.fixups.grub import rewrite_boot_text

S_ROOT = FsIdentity("/", "ext4", uuid="11111111-1111-1111-1111-111111111111", label="root", device="/dev/sda1")
S_BOOT = FsIdentity("/boot", "ext4", uuid="66666666-6666-6666-6666-666666666666", device="/dev/sda2")
S_SWAP = FsIdentity("", "swap", uuid="44444444-4444-4444-4444-444444444444", device="/dev/sda3")
T_ROOT = FsIdentity("/", "ext4", uuid="aaaaaaaa-0000-0000-0000-00000000000a", device="/dev/vda1")
T_BOOT = FsIdentity("/boot", "ext4", uuid="bbbbbbbb-0000-0000-0000-00000000000b", device="/dev/vda2")
PLAN = DiskPlan(mounts=(MountMap("/", S_ROOT, T_ROOT), MountMap("/boot", S_BOOT, T_BOOT)),
                source_filesystems=(S_ROOT, S_BOOT, S_SWAP))
SU, TU = S_ROOT.uuid, T_ROOT.uuid


@pytest.mark.parametrize("text,expected", [
    # grub.cfg linux line with root=UUID=
    (f"\tlinux /vmlinuz-6.1 root=UUID={SU} ro console=ttyS0\n",
     f"\tlinux /vmlinuz-6.1 root=UUID={TU} ro console=ttyS0\n"),
    # search --fs-uuid lines, for / and /boot
    (f"search --no-floppy --fs-uuid --set=root {SU}\n", f"search --no-floppy --fs-uuid --set=root {TU}\n"),
    (f"search --no-floppy --fs-uuid --set=root --hint-bios=hd0,msdos2 {S_BOOT.uuid}\n",
     f"search --no-floppy --fs-uuid --set=root --hint-bios=hd0,msdos2 {T_BOOT.uuid}\n"),
    # upper-case UUID in the source config
    (f"root=UUID={SU.upper()} ro\n", f"root=UUID={TU} ro\n"),
    # device names and labels: the source's, and a loop device left by a chroot without udev
    ("linux /vmlinuz root=/dev/sda1 ro quiet\n", f"linux /vmlinuz root=UUID={TU} ro quiet\n"),
    ("linux /vmlinuz root=LABEL=root ro\n", f"linux /vmlinuz root=UUID={TU} ro\n"),
    ("linux /vmlinuz root=/dev/loop3p1 ro\n", f"linux /vmlinuz root=UUID={TU} ro\n"),
    # /etc/default/grub: quoted command line, resume of a swap the target lacks is dropped
    (f'GRUB_CMDLINE_LINUX="resume=UUID={S_SWAP.uuid} console=ttyS0"\n', 'GRUB_CMDLINE_LINUX=" console=ttyS0"\n'),
    ('GRUB_CMDLINE_LINUX_DEFAULT="quiet resume=/dev/sda3"\n', 'GRUB_CMDLINE_LINUX_DEFAULT="quiet"\n'),
    # BLS entry options line
    (f"options root=UUID={SU} ro crashkernel=auto\n", f"options root=UUID={TU} ro crashkernel=auto\n"),
    # left alone: LVM root, already-target root, unrelated UUIDs
    ("linux /vmlinuz root=/dev/mapper/vg-root ro\n", "linux /vmlinuz root=/dev/mapper/vg-root ro\n"),
    (f"linux /vmlinuz root=UUID={TU} ro\n", f"linux /vmlinuz root=UUID={TU} ro\n"),
    ("insmod part_msdos\nset gfxmode=auto\n", "insmod part_msdos\nset gfxmode=auto\n"),
    ("menuentry_id_option 'gnulinux-simple-99999999-9999-9999-9999-999999999999'\n",
     "menuentry_id_option 'gnulinux-simple-99999999-9999-9999-9999-999999999999'\n"),
])
def test_rewrite_boot_text(text, expected):
    new, _ = rewrite_boot_text(text, PLAN)
    assert new == expected


def test_menuentry_ids_with_source_uuid_follow():
    text = f"menuentry 'Debian' --class debian $menuentry_id_option 'gnulinux-simple-{SU}' {{\n"
    new, notes = rewrite_boot_text(text, PLAN)
    assert TU in new and SU not in new
    assert any(SU in n for n in notes)


def test_idempotent():
    text = f"linux /vmlinuz root=/dev/sda1 ro\nsearch --fs-uuid --set=root {SU}\n"
    once, _ = rewrite_boot_text(text, PLAN)
    twice, notes = rewrite_boot_text(once, PLAN)
    assert once == twice and notes == []


def test_comments_are_left_alone():
    text = f'# Uncomment if you don\'t want GRUB to pass "root=UUID=xxx" parameter to Linux\n# root=/dev/sda1 {SU}\n'
    assert rewrite_boot_text(text, PLAN) == (text, [])
