"""RHEL-family fix-ups on a realistic Rocky Linux 9 tree (those distributions cannot be installed here).

The tree is what a Rocky 9 server installed with LVM has: xfs root and /data on
LVs, /boot on its own partition, swap on an LV, grub2 with BLS entries
(``/boot/loader/entries``) and ``kernelopts`` in grubenv, dracut, a static
``ifcfg-eth0`` bound to its MAC, SELinux enforcing.  The source facts are
gathered from the tree by the agent's own gatherer, then every fix-up runs
text-only (``chroot_tools=False``), as on a target whose tools cannot run.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from cvmigrate.agent.sourcefacts import gather
from cvmigrate.receiver.diskplan import DiskPlan, FsIdentity, MountMap
from cvmigrate.receiver.fixups import run_fixups
from cvmigrate.receiver.fixups.initramfs import DRACUT_CONF

K = "5.14.0-362.24.1.el9_3.x86_64"
MID = "4d2c1b0a9e8f7d6c5b4a39281706f5e4"
SRC_ROOT = FsIdentity("/", "xfs", uuid="0f3c2a51-7d9e-4b0a-9a51-1c2d3e4f5a6b", device="/dev/mapper/rl-root")
SRC_BOOT = FsIdentity("/boot", "xfs", uuid="7a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d", device="/dev/sda1")
SRC_DATA = FsIdentity("/data", "xfs", uuid="9b8a7c6d-5e4f-4321-8fed-cba987654321", device="/dev/mapper/rl-data")
SRC_SWAP = FsIdentity("", "swap", uuid="c0ffee00-1111-4222-8333-944455556666", device="/dev/mapper/rl-swap")
TGT_ROOT = FsIdentity("/", "xfs", uuid="aaaaaaaa-1111-4111-8111-111111111111", device="/dev/vda1")
TGT_DATA = FsIdentity("/data", "xfs", uuid="bbbbbbbb-2222-4222-8222-222222222222", device="/dev/vdb1")
PLAN = DiskPlan(mounts=(MountMap("/", SRC_ROOT, TGT_ROOT), MountMap("/boot", SRC_BOOT, None),
                        MountMap("/data", SRC_DATA, TGT_DATA)),
                source_filesystems=(SRC_ROOT, SRC_BOOT, SRC_DATA, SRC_SWAP), system_disk="/dev/vda")

CMDLINE = ("crashkernel=1G-4G:192M,4G-64G:256M,64G-:512M resume=/dev/mapper/rl-swap rd.lvm.lv=rl/root "
           "rd.lvm.lv=rl/swap")


def _write(root: Path, inner: str, text: str, mode: int = 0o644) -> None:
    p = root / inner.lstrip("/")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    p.chmod(mode)


def rocky_tree(root: Path) -> None:
    _write(root, "/etc/os-release", 'NAME="Rocky Linux"\nVERSION="9.3 (Blue Onyx)"\nID="rocky"\n'
                                    'ID_LIKE="rhel centos fedora"\nVERSION_ID="9.3"\nPRETTY_NAME="Rocky Linux 9.3"\n')
    _write(root, "/etc/fstab", f"""\
#
# /etc/fstab
# Created by anaconda on Tue Jan 16 08:12:44 2024
#
/dev/mapper/rl-root     /                       xfs     defaults        0 0
UUID={SRC_BOOT.uuid} /boot                   xfs     defaults        0 0
/dev/mapper/rl-data     /data                   xfs     defaults        0 0
/dev/mapper/rl-swap     none                    swap    defaults        0 0
""")
    _write(root, "/etc/default/grub", f"""\
GRUB_TIMEOUT=5
GRUB_DISTRIBUTOR="$(sed 's, release .*$,,g' /etc/system-release)"
GRUB_DEFAULT=saved
GRUB_DISABLE_SUBMENU=true
GRUB_TERMINAL_OUTPUT="console"
GRUB_CMDLINE_LINUX="{CMDLINE}"
GRUB_DISABLE_RECOVERY="true"
GRUB_ENABLE_BLSCFG=true
""")
    _write(root, f"/boot/loader/entries/{MID}-{K}.conf", f"""\
title Rocky Linux (5.14.0-362.24.1.el9_3.x86_64) 9.3 (Blue Onyx)
version {K}
linux /vmlinuz-{K}
initrd /initramfs-{K}.img $tuned_initrd
options root=/dev/mapper/rl-root ro {CMDLINE} $tuned_params
grub_users $grub_users
grub_arg --unrestricted
grub_class rocky
""")
    env = (f"# GRUB Environment Block\nsaved_entry={MID}-{K}\nkernelopts=root=/dev/mapper/rl-root ro {CMDLINE}\n"
           "boot_success=0\n")
    _write(root, "/boot/grub2/grubenv", env + "#" * (1024 - len(env)))     # grub2's fixed-size block
    _write(root, "/boot/grub2/grub.cfg", f"""\
### BEGIN /etc/grub.d/00_header ###
set pager=1
insmod part_msdos
insmod xfs
set root='hd0,msdos1'
if [ x$feature_platform_search_hint = xy ]; then
  search --no-floppy --fs-uuid --set=root --hint='hd0,msdos1'  {SRC_BOOT.uuid}
else
  search --no-floppy --fs-uuid --set=root {SRC_BOOT.uuid}
fi
### BEGIN /etc/grub.d/10_linux ###
insmod blscfg
blscfg
### END /etc/grub.d/10_linux ###
""")
    _write(root, "/etc/kernel/cmdline", f"root=/dev/mapper/rl-root ro {CMDLINE}\n")
    _write(root, "/etc/sysconfig/network-scripts/ifcfg-eth0", """\
TYPE=Ethernet
BOOTPROTO=none
NAME=eth0
DEVICE=eth0
ONBOOT=yes
IPADDR=172.20.4.17
PREFIX=24
GATEWAY=172.20.4.1
DNS1=172.20.4.2
HWADDR=00:50:56:9a:4c:21
""")
    _write(root, "/etc/selinux/config", "# This file controls the state of SELinux on the system.\n"
                                        "SELINUX=enforcing\nSELINUXTYPE=targeted\n")
    mods = root / "lib/modules" / K
    (mods / "kernel/drivers/block").mkdir(parents=True)
    (mods / "modules.builtin").write_text("kernel/drivers/virtio/virtio_pci.ko\n")
    for m in ("virtio_blk", "virtio_scsi", "virtio_net"):
        (mods / f"kernel/drivers/block/{m}.ko.xz").write_bytes(b"")
    _write(root, f"/boot/initramfs-{K}.img", "")            # an image without virtio (unreadable: all missing)
    _write(root, "/usr/sbin/dracut", "#!/bin/bash\n", 0o755)
    _write(root, "/usr/sbin/grub2-mkconfig", "#!/bin/sh\n", 0o755)
    _write(root, "/usr/sbin/grub2-install", "#!/bin/sh\n", 0o755)
    (root / "sbin").mkdir(exist_ok=True)
    (root / "sbin/init").symlink_to("../lib/systemd/systemd")


def _run(tmp_path: Path, **kw):
    root = tmp_path / "rocky"
    rocky_tree(root)
    facts = gather(str(root), mounts=[], state_dir=str(tmp_path))
    report = run_fixups(root, PLAN, chroot_tools=False, timestamp="t", source=facts, **kw)
    return root, facts, report


def test_the_gatherer_reads_the_rhel_tree(tmp_path):
    root = tmp_path / "rocky"
    rocky_tree(root)
    f = gather(str(root), mounts=[], state_dir=str(tmp_path))
    assert (f.os_family, f.init, f.initramfs_tool, f.bootloader, f.selinux) == ("rhel", "systemd", "dracut",
                                                                                 "grub2", "enforcing")
    assert f.kernel == K and set(f.virtio_missing) == {"virtio_blk", "virtio_scsi", "virtio_net"}
    p = f.primary_interface()
    assert p is not None
    assert (p.name, p.method, p.addresses, p.config_system) == ("eth0", "static", ("172.20.4.17/24",),
                                                                "network-scripts")


def test_every_fixup_on_the_rhel_tree(tmp_path):
    root, facts, report = _run(tmp_path)
    assert report.ok, report.summary()
    fstab = (root / "etc/fstab").read_text()
    assert f"UUID={TGT_ROOT.uuid}     /  " in fstab and f"UUID={TGT_DATA.uuid}     /data " in fstab
    assert "\n#/dev/mapper/rl-swap" in fstab and f"\n#UUID={SRC_BOOT.uuid} /boot" in fstab

    bls = (root / f"boot/loader/entries/{MID}-{K}.conf").read_text()
    assert f"options root=UUID={TGT_ROOT.uuid} ro " in bls and "resume=" not in bls
    assert "rd.lvm.lv" not in bls and "$tuned_params" in bls and "crashkernel=" in bls   # the rest is kept
    env = (root / "boot/grub2/grubenv").read_text()
    assert len(env.encode()) == 1024 and env.endswith("#")
    assert f"kernelopts=root=UUID={TGT_ROOT.uuid} ro crashkernel=1G-4G:192M,4G-64G:256M,64G-:512M\n" in env
    for inner in ("etc/default/grub", "etc/kernel/cmdline"):
        text = (root / inner).read_text()
        assert "resume=/dev/mapper/rl-swap" not in text, inner
    assert f"root=UUID={TGT_ROOT.uuid}" in (root / "etc/kernel/cmdline").read_text()

    dracut = (root / DRACUT_CONF.lstrip("/")).read_text()
    assert dracut == 'add_drivers+=" virtio_pci virtio_blk virtio_scsi virtio_net "\n'
    assert "initramfs not regenerated" in "; ".join(report.step("initramfs").messages)

    ifcfg = (root / "etc/sysconfig/network-scripts/ifcfg-eth0").read_text()
    assert "BOOTPROTO=dhcp" in ifcfg and "IPADDR" not in ifcfg and "HWADDR" not in ifcfg and "GATEWAY" not in ifcfg
    assert "ONBOOT=yes" in ifcfg and "DEVICE=eth0" in ifcfg

    assert (root / ".autorelabel").exists()
    assert report.step("selinux").status == "changed"
    # every change has a diff and a backup of the original
    diffs = report.diffs()
    for inner in ("/etc/fstab", f"/boot/loader/entries/{MID}-{K}.conf", "/etc/sysconfig/network-scripts/ifcfg-eth0",
                  "/etc/default/grub"):
        assert f"--- a{inner}" in diffs, inner
        assert (root / "var/backups/cvmigrate/t" / inner.lstrip("/")).exists(), inner
    assert "-IPADDR=172.20.4.17" in diffs and "+BOOTPROTO=dhcp" in diffs


def test_keep_static_ip_and_a_rerun_changes_nothing(tmp_path):
    root, facts, report = _run(tmp_path, keep_static_ip=True)
    ifcfg = (root / "etc/sysconfig/network-scripts/ifcfg-eth0").read_text()
    assert "IPADDR=172.20.4.17" in ifcfg and "BOOTPROTO=none" in ifcfg and "HWADDR" not in ifcfg
    assert any("--keep-static-ip" in m for m in report.step("network").messages)
    again = run_fixups(root, PLAN, chroot_tools=False, timestamp="t2", source=dataclasses.replace(facts))
    changed = {s.name: [c.path for c in s.changes] for s in again.steps if s.changes}
    # only the opt-out's file changes on the second run (without --keep-static-ip now); nothing else moves
    assert changed == {"network": ["/etc/sysconfig/network-scripts/ifcfg-eth0"]}, changed
