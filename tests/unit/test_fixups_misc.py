"""initramfs inspection, SELinux relabel, cloud-init, and run_fixups' backups and diffs (no tools run)."""
from __future__ import annotations

import gzip
import io
import lzma

import pytest
import zstandard

from cvmigrate.receiver.diskplan import DiskPlan, FsIdentity, MountMap
from cvmigrate.receiver.fixups import BACKUP_DIR, FixupError, run_fixups
from cvmigrate.receiver.fixups.initramfs import (
    add_modules_initramfs_tools,
    add_modules_mkinitcpio,
    builtin_modules,
    initramfs_names,
    missing_drivers,
    modules_in,
)
from cvmigrate.receiver.fixups.selinux import selinux_mode


def cpio(names: list[str]) -> bytes:
    """A newc cpio archive of empty regular files (plus the trailer)."""
    out = io.BytesIO()
    for i, name in enumerate(names + ["TRAILER!!!"]):
        raw = name.encode() + b"\0"
        fields = [i + 1, 0o100644, 0, 0, 1, 0, 0, 0, 0, 0, 0, len(raw), 0]
        out.write(b"070701" + b"".join(b"%08X" % f for f in fields) + raw)
        out.write(b"\0" * (-out.tell() % 4))
    out.write(b"\0" * (-out.tell() % 512))
    return out.getvalue()


MAIN = ["usr/lib/modules/6.1.0/kernel/drivers/block/virtio_blk.ko.zst",
        "usr/lib/modules/6.1.0/kernel/drivers/virtio/virtio_pci.ko",
        "usr/bin/busybox"]


@pytest.mark.parametrize("compress", [
    lambda b: b, lambda b: gzip.compress(b), lambda b: lzma.compress(b),
    lambda b: zstandard.ZstdCompressor().compress(b),
], ids=["plain", "gzip", "xz", "zstd"])
def test_initramfs_names_with_early_microcode_archive(compress):
    image = cpio(["kernel/x86/microcode/GenuineIntel.bin"]) + compress(cpio(MAIN))
    names = initramfs_names(image)
    assert "kernel/x86/microcode/GenuineIntel.bin" in names and "usr/bin/busybox" in names
    assert modules_in(names) == {"virtio_blk", "virtio_pci"}


def test_missing_drivers(tmp_path):
    mods = tmp_path / "lib/modules/6.1.0"
    mods.mkdir(parents=True)
    (mods / "modules.builtin").write_text("kernel/drivers/virtio/virtio_pci.ko\nkernel/drivers/net/virtio_net.ko\n")
    (tmp_path / "boot").mkdir()
    (tmp_path / "boot/initrd.img-6.1.0").write_bytes(gzip.compress(cpio(MAIN)))
    missing, why = missing_drivers(tmp_path, "6.1.0")
    assert missing == ["virtio_scsi"], why
    assert builtin_modules("kernel/drivers/block/virtio-blk.ko\n") == {"virtio_blk"}


def test_generator_configs():
    assert add_modules_initramfs_tools("# list\nvirtio_blk\n").splitlines()[-3:] == ["virtio_pci", "virtio_scsi",
                                                                                      "virtio_net"]
    assert add_modules_initramfs_tools(add_modules_initramfs_tools("")) == add_modules_initramfs_tools("")
    assert add_modules_mkinitcpio("MODULES=(ext4)\nHOOKS=(base)\n").startswith(
        "MODULES=(ext4 virtio_pci virtio_blk virtio_scsi virtio_net)\n")


@pytest.mark.parametrize("text,mode", [
    ("SELINUX=enforcing\nSELINUXTYPE=targeted\n", "enforcing"),
    ("# SELINUX=enforcing\nSELINUX=permissive\n", "permissive"),
    ("SELINUX=disabled\n", "disabled"), (None, ""), ("SELINUX='Enforcing'\n", "enforcing"),
])
def test_selinux_mode(text, mode):
    assert selinux_mode(text) == mode


S = FsIdentity("/", "ext4", uuid="11111111-1111-1111-1111-111111111111", device="/dev/sda1")
T = FsIdentity("/", "ext4", uuid="aaaaaaaa-0000-0000-0000-00000000000a", device="/dev/vda1")
PLAN = DiskPlan(mounts=(MountMap("/", S, T),), source_filesystems=(S,), system_disk="/dev/vda")


def _tree(root):
    (root / "etc/selinux").mkdir(parents=True)
    (root / "etc/selinux/config").write_text("SELINUX=enforcing\n")
    (root / "etc/fstab").write_text(f"UUID={S.uuid} / ext4 defaults 0 1\n")
    (root / "etc/default").mkdir()
    (root / "etc/default/grub").write_text('GRUB_CMDLINE_LINUX="root=/dev/sda1"\n')
    (root / "etc/sysconfig/network-scripts").mkdir(parents=True)
    (root / "etc/sysconfig/network-scripts/ifcfg-eth0").write_text("DEVICE=eth0\nHWADDR=52:54:00:00:00:01\n")
    (root / "etc/udev/rules.d").mkdir(parents=True)
    (root / "etc/cloud/cloud.cfg.d").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/cloud-init").write_text("#!/bin/sh\n")
    (root / "usr/bin/cloud-init").chmod(0o755)


def test_run_fixups_backs_up_and_diffs(tmp_path):
    _tree(tmp_path)
    report = run_fixups(tmp_path, PLAN, chroot_tools=False, timestamp="T1")
    assert report.ok, report.summary()
    assert T.uuid in (tmp_path / "etc/fstab").read_text()
    assert (tmp_path / BACKUP_DIR / "T1/etc/fstab").read_text().startswith(f"UUID={S.uuid}")
    assert (tmp_path / BACKUP_DIR / "T1/etc/sysconfig/network-scripts/ifcfg-eth0").exists()
    assert (tmp_path / ".autorelabel").exists()
    assert (tmp_path / "etc/cloud/cloud.cfg.d/99-cvmigrate-tencentcloud.cfg").exists()
    assert f"root=UUID={T.uuid}" in (tmp_path / "etc/default/grub").read_text()
    diffs = report.diffs()
    assert f"-UUID={S.uuid}" in diffs and f"+UUID={T.uuid}" in diffs and "-HWADDR=" in diffs
    assert {s.name: s.status for s in report.steps}["fstab"] == "changed"
    # a second run changes nothing
    again = run_fixups(tmp_path, PLAN, chroot_tools=False, timestamp="T2")
    assert not again.diffs(), again.diffs()


def test_skip_and_unknown(tmp_path):
    _tree(tmp_path)
    report = run_fixups(tmp_path, PLAN, chroot_tools=False, skip=("fstab",))
    assert report.step("fstab").status == "skipped"
    assert S.uuid in (tmp_path / "etc/fstab").read_text()
    with pytest.raises(FixupError):
        run_fixups(tmp_path, PLAN, chroot_tools=False, skip=("nope",))


def test_absolute_symlinks_resolve_inside_the_root(tmp_path):
    """/etc/fstab -> /srv/fstab in the migrated tree must edit <root>/srv/fstab, never the host's /srv/fstab."""
    from cvmigrate.receiver.fixups import resolve_in_root
    _tree(tmp_path)
    (tmp_path / "srv").mkdir()
    (tmp_path / "etc/fstab").rename(tmp_path / "srv/fstab")
    (tmp_path / "etc/fstab").symlink_to("/srv/fstab")
    (tmp_path / "etc/loop").symlink_to("../../../../../../etc/passwd")
    assert resolve_in_root(tmp_path, "/etc/loop") == tmp_path / "etc/passwd"
    report = run_fixups(tmp_path, PLAN, chroot_tools=False, timestamp="T")
    assert report.ok
    assert T.uuid in (tmp_path / "srv/fstab").read_text()
    assert (tmp_path / "etc/fstab").is_symlink()


def test_backup_keeps_the_original_when_a_file_changes_twice(tmp_path):
    from cvmigrate.receiver.fixups import FixupContext, FixupStep
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/x").write_text("original\n")
    ctx = FixupContext(tmp_path, PLAN, chroot_tools=False, backup_dir=tmp_path / "bk", step=FixupStep("t"))
    assert ctx.write("/etc/x", "first\n") and ctx.write("/etc/x", "second\n")
    assert not ctx.write("/etc/x", "second\n")
    assert (tmp_path / "bk/etc/x").read_text() == "original\n"
    assert [c.backup for c in ctx.step.changes] == [str(tmp_path / "bk/etc/x")] * 2
