"""Bootloader fix-up: root= and UUIDs in grub configuration, BLS entries and /etc/default/grub."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from cvmigrate.receiver.diskplan import DiskPlan, FsIdentity, MountMap
from cvmigrate.receiver.fixups import FixupStep, _Chroot
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


class _Recorder(_Chroot):
    """Stands in for the chroot: records the commands grub's fix-up would run (nothing here can run them)."""

    def __init__(self, root: Path, plan: DiskPlan) -> None:
        super().__init__(root, plan)
        self.commands: list[list[str]] = []

    def run(self, argv: list[str], *, check: bool, env: dict[str, str] | None, timeout: float,
            step: FixupStep) -> subprocess.CompletedProcess[str]:
        self.commands.append(list(argv))
        return subprocess.CompletedProcess(argv, 0, "", "")


def _uefi_ctx(root, tmp_path):
    from cvmigrate.receiver.fixups import FixupContext

    (root / "usr/sbin").mkdir(parents=True)
    (root / "usr/sbin/grub-install").write_text("#!/bin/sh\n")
    (root / "usr/sbin/grub-install").chmod(0o755)
    (root / "boot/efi").mkdir(parents=True)
    s_esp = FsIdentity("/boot/efi", "vfat", uuid="ABCD-1234", device="/dev/sda1")
    t_esp = FsIdentity("/boot/efi", "vfat", uuid="4321-DCBA", device="/dev/vda2",
                       parttype="c12a7328-f81f-11d2-ba4b-00a0c93ec93b")
    plan = DiskPlan(mounts=(MountMap("/", S_ROOT, T_ROOT), MountMap("/boot/efi", s_esp, t_esp)),
                    system_disk="/dev/vda", source_filesystems=(S_ROOT, s_esp), boot_mode="uefi")
    ctx = FixupContext(root, plan, chroot_tools=True, backup_dir=tmp_path / "bak", step=FixupStep("grub"))
    ctx._chroot = _Recorder(root, plan)
    return ctx


def test_uefi_install_refuses_an_esp_that_is_only_a_directory(tmp_path):
    """/boot/efi as a plain directory of the root filesystem: grub-install would "succeed" into it and the target
    would not boot; the fix-up fails with one line naming the ESP and how to mount it, and installs nothing."""
    from cvmigrate.receiver.fixups import FixupError
    from cvmigrate.receiver.fixups.grub import fix

    ctx = _uefi_ctx(tmp_path / "root", tmp_path)
    with pytest.raises(FixupError) as exc:
        fix(ctx)
    text = str(exc.value)
    assert "\n" not in text and "/boot/efi" in text and "not a mounted EFI system partition" in text
    assert "fusefat -o rw+,fsname=/dev/vda2 /dev/vda2 " in text
    assert ctx._chroot.commands == []


def test_uefi_install_onto_a_mounted_esp(tmp_path):
    import os
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("needs root to mount")
    from cvmigrate.receiver.fixups.grub import fix

    ctx = _uefi_ctx(tmp_path / "root", tmp_path)
    where = tmp_path / "root/boot/efi"
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "cvm-test-esp", str(where)], check=True)
    try:
        fix(ctx)
    finally:
        subprocess.run(["umount", str(where)], check=True)
    assert ctx._chroot.commands == [["/usr/sbin/grub-install", "--target=x86_64-efi", "--efi-directory=/boot/efi",
                                     "--removable", "--no-nvram"]]
    assert ctx.step.status == "changed"
