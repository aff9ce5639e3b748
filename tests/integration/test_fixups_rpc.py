"""RunFixups over gRPC: the receiver maps the source's fstab onto the target filesystem
mounted at its root (a real ext4 image on a loop device)."""
import json
import os
import shutil
import subprocess
import uuid

import grpc
import pytest

from cvmigrate.proto import transfer_pb2 as pb
from cvmigrate.proto import transfer_pb2_grpc as pb_grpc
from cvmigrate.receiver.server import create_server
from cvmigrate.receiver.session import ReceiverConfig


@pytest.fixture
def mounted_target(tmp_path):
    if os.geteuid() != 0 or not shutil.which("mkfs.ext4") or not shutil.which("losetup"):
        pytest.skip("needs root, mkfs.ext4 and losetup")
    img, mnt = tmp_path / "target.img", tmp_path / "root"
    mnt.mkdir()
    with open(img, "wb") as f:
        f.truncate(64 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], check=True)
    dev = subprocess.run(["losetup", "-f", "--show", str(img)], capture_output=True, text=True, check=True).stdout.strip()
    try:
        subprocess.run(["mount", dev, str(mnt)], check=True)
        try:
            target_uuid = subprocess.run(["blkid", "-s", "UUID", "-o", "value", dev], capture_output=True, text=True,
                                         check=True).stdout.strip()
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
