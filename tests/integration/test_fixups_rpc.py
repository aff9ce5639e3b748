"""RunFixups over gRPC: the receiver maps the source's fstab onto the target filesystem
mounted at its root (a real ext4 image on a loop device)."""
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cvmigrate.proto import transfer_pb2 as pb
from cvmigrate.proto import transfer_pb2_grpc as pb_grpc
from cvmigrate.receiver.server import create_server
from cvmigrate.receiver.session import ReceiverConfig


@pytest.fixture
def mounted_target(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    if os.geteuid() != 0 or not shutil.which("mkfs.ext4") or not shutil.which("losetup"):
        pytest.skip("needs root, mkfs.ext4 and losetup")
    img, mnt = tmp_path / "target.img", tmp_path / "root"
    mnt.mkdir()
    with open(img, "wb") as f:
        f.truncate(64 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], check=True)
    dev = subprocess.run(["losetup", "-f", "--show", str(img)], capture_output=True, text=True,
                         check=True).stdout.strip()
    try:
        subprocess.run(["mount", dev, str(mnt)], check=True)
        try:
            # -p: the superblock itself, not a cache that may remember this loop device's previous filesystem
            target_uuid = subprocess.run(["blkid", "-p", "-s", "UUID", "-o", "value", dev], capture_output=True,
                                         text=True, check=True).stdout.strip()
            yield mnt, target_uuid
        finally:
            subprocess.run(["umount", str(mnt)], check=False)
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


def test_run_fixups_maps_fstab_to_the_target(mounted_target):
    root, target_uuid = mounted_target
    source_uuid, gone_uuid = str(uuid.uuid4()), str(uuid.uuid4())
    (root / "etc").mkdir()
    (root / "etc" / "fstab").write_text(f"UUID={source_uuid} / ext4 defaults 0 1\n"
                                        f"UUID={gone_uuid} /srv/old xfs defaults 0 2\n")
    sources = [{"mount_point": "/", "fstype": "ext4", "uuid": source_uuid, "device": "/dev/sda1"},
               {"mount_point": "/srv/old", "fstype": "xfs", "uuid": gone_uuid, "device": "/dev/sdb1"}]
    handle = create_server(ReceiverConfig(root=str(root), state_dir=str(root.parent / "state")), "127.0.0.1:0")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{handle.port}") as ch:
            resp = pb_grpc.ReceiverStub(ch).RunFixups(pb.FixupsRequest(
                source_filesystems_json=json.dumps(sources), chroot_tools=False), timeout=120)
    finally:
        handle.stop(grace=1)
    fstab = (root / "etc" / "fstab").read_text()
    assert f"UUID={target_uuid} / ext4" in fstab and source_uuid not in fstab.split("#")[0]
    assert any(line.startswith("#") and gone_uuid in line for line in fstab.splitlines())
    assert "etc/fstab" in resp.diffs and resp.report_json
    assert list((root / "var" / "backups" / "cvmigrate").rglob("fstab"))  # the original is kept


def test_run_fixups_on_a_directory_target_is_skipped(tmp_path):
    root = tmp_path / "dir"
    root.mkdir()
    handle = create_server(ReceiverConfig(root=str(root)), "127.0.0.1:0")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{handle.port}") as ch:
            resp = pb_grpc.ReceiverStub(ch).RunFixups(pb.FixupsRequest(source_filesystems_json="[]"), timeout=60)
    finally:
        handle.stop(grace=1)
    assert resp.skipped and "not a mounted disk" in resp.summary


def test_the_source_facts_drive_the_fixups_over_rpc(mounted_target):
    """The controller sends the agent's report: its filesystems map fstab, its boot mode and network are used."""
    from cvmigrate.common.netconfig import NetInterface
    from cvmigrate.common.sourcefacts import SourceFacts, SourceFilesystem, facts_to_json
    from cvmigrate.receiver.fixups_service import plan_from_mounts

    root, target_uuid = mounted_target
    source_uuid = str(uuid.uuid4())
    (root / "etc/systemd/network").mkdir(parents=True)
    (root / "etc" / "fstab").write_text(f"UUID={source_uuid} / ext4 defaults 0 1\n")
    (root / "etc/systemd/network/10-eth0.network").write_text(
        "[Match]\nName=eth0\n\n[Network]\nAddress=192.0.2.9/24\nGateway=192.0.2.1\n")
    facts = SourceFacts(root="/mnt/src", boot_mode="uefi", esp="/boot/efi",
                        filesystems=(SourceFilesystem("/", "ext4", uuid=source_uuid, device="/dev/nvme0n1p2"),),
                        interfaces=(NetInterface("eth0", "static", ("192.0.2.9/24",), "192.0.2.1", "",
                                                 "systemd-networkd", "/etc/systemd/network/10-eth0.network", True),))
    # an ESP the rescue system cannot mount does not make the UEFI source a BIOS one
    uefi, bios = plan_from_mounts(str(root), [], "uefi"), plan_from_mounts(str(root), [])
    assert uefi is not None and uefi.boot_mode == "uefi"
    assert bios is not None and bios.boot_mode == "bios"
    handle = create_server(ReceiverConfig(root=str(root), state_dir=str(root.parent / "state")), "127.0.0.1:0")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{handle.port}") as ch:
            resp = pb_grpc.ReceiverStub(ch).RunFixups(pb.FixupsRequest(
                source_filesystems_json="[]", source_facts_json=facts_to_json(facts), chroot_tools=False),
                timeout=120)
    finally:
        handle.stop(grace=1)
    assert resp.ok and not resp.skipped, resp.summary
    assert f"UUID={target_uuid} / ext4" in (root / "etc/fstab").read_text(), resp.summary + resp.diffs
    network = (root / "etc/systemd/network/10-eth0.network").read_text()
    assert "DHCP=ipv4" in network and "192.0.2.9" not in network
    assert "+DHCP=ipv4" in resp.diffs and "-Address=192.0.2.9/24" in resp.diffs
