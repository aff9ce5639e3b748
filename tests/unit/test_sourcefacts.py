"""The source facts report: gathered relative to the source root, one serde, versioned."""
from __future__ import annotations

import json

import pytest

from cvmigrate.agent.sourcefacts import gather
from cvmigrate.common.errors import ProtocolError
from cvmigrate.common.sourcefacts import facts_from_json, facts_to_json

K = "5.14.0-362.el9.x86_64"


def _tree(root):
    (root / "etc/sysconfig/network-scripts").mkdir(parents=True)
    (root / "etc/os-release").write_text('NAME="Rocky Linux"\nID="rocky"\nID_LIKE="rhel centos fedora"\n'
                                          'VERSION_ID="9.3"\nPRETTY_NAME="Rocky Linux 9.3 (Blue Onyx)"\n')
    (root / "etc/hostname").write_text("db01.example\n")
    (root / "etc/selinux").mkdir()
    (root / "etc/selinux/config").write_text("SELINUX=enforcing\nSELINUXTYPE=targeted\n")
    (root / "etc/sysconfig/network-scripts/ifcfg-eth0").write_text(
        "DEVICE=eth0\nBOOTPROTO=static\nIPADDR=10.1.2.3\nNETMASK=255.255.255.0\nGATEWAY=10.1.2.1\n")
    (root / "etc/sysconfig/network-scripts/ifcfg-lo").write_text("DEVICE=lo\nIPADDR=127.0.0.1\n")
    (root / "etc/fstab").write_text("UUID=aaa / xfs defaults 0 0\nUUID=EE-01 /boot/efi vfat umask=0077 0 2\n")
    mods = root / "lib/modules" / K
    (mods / "kernel/drivers/block").mkdir(parents=True)
    (mods / "modules.builtin").write_text("kernel/drivers/virtio/virtio_pci.ko\n")
    (mods / "kernel/drivers/block/virtio_blk.ko.xz").write_bytes(b"")
    (root / "usr/sbin").mkdir(parents=True)
    (root / "usr/sbin/dracut").write_text("#!/bin/sh\n")
    (root / "sbin").mkdir()
    (root / "sbin/init").symlink_to("../lib/systemd/systemd")
    (root / "boot/grub2").mkdir(parents=True)


def test_gathered_relative_to_the_source_root(tmp_path):
    root = tmp_path / "img"
    root.mkdir()
    _tree(root)
    r = str(root)
    # findmnt's view of this host: the image's filesystems below the root, and things that are not disks
    mounts = [
        {"target": "/", "fstype": "ext4", "uuid": "host-root", "source": "/dev/sda1"},
        {"target": r, "fstype": "xfs", "uuid": "aaa", "label": "root", "partuuid": "p1", "source": "/dev/loop3p2"},
        {"target": f"{r}/boot/efi", "fstype": "vfat", "uuid": "EE-01", "source": "/dev/loop3p1"},
        {"target": f"{r}/data", "fstype": "xfs", "uuid": "ddd", "source": "/dev/loop4p1"},
        {"target": f"{r}/proc", "fstype": "proc", "source": "proc"},
        {"target": f"{r}/srv", "fstype": "ext4", "uuid": "host-root", "source": "/dev/sda1[/srv]"},
        {"target": f"{r}2/other", "fstype": "ext4", "uuid": "x", "source": "/dev/sdz1"},   # a sibling, not below
    ]
    f = gather(r, mounts=mounts, state_dir=str(tmp_path), euid=0)
    assert [(x.mount_point, x.uuid) for x in f.filesystems] == [("/", "aaa"), ("/data", "ddd"), ("/boot/efi", "EE-01")]
    assert f.root == r and not f.whole_server and f.hostname == "db01.example"
    assert f.os_family == "rhel" and f.init == "systemd" and f.initramfs_tool == "dracut" and f.bootloader == "grub2"
    assert f.kernel == K and f.module_tree and f.selinux == "enforcing"
    assert (f.boot_mode, f.esp) == ("uefi", "/boot/efi")
    assert "virtio_blk" in f.virtio_missing and "virtio_blk" in f.virtio_modules
    assert "virtio_pci" not in f.virtio_missing
    p = f.primary_interface()
    assert p is not None
    assert (p.name, p.method, p.addresses, p.config_system, p.config_file) == (
        "eth0", "static", ("10.1.2.3/24",), "network-scripts", "/etc/sysconfig/network-scripts/ifcfg-eth0")
    assert facts_from_json(facts_to_json(f)) == f


def test_a_plain_directory_root_reports_its_own_usage(tmp_path):
    (tmp_path / "a").write_bytes(b"x" * 100_000)
    f = gather(str(tmp_path), mounts=[], state_dir=str(tmp_path))
    assert [x.mount_point for x in f.filesystems] == ["/"]
    assert f.filesystems[0].device == "" and f.filesystems[0].used_bytes >= 100_000
    assert f.boot_mode == "bios" and f.network_systems == ()


def test_other_versions_and_garbage_are_refused():
    with pytest.raises(ProtocolError, match="version 99"):
        facts_from_json(json.dumps({"version": 99, "root": "/"}))
    with pytest.raises(ProtocolError, match="unreadable"):
        facts_from_json("{not json")
    with pytest.raises(ProtocolError):
        facts_from_json(json.dumps({"version": 1, "root": "/", "no_such_field": 1}))
