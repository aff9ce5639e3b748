"""Block-level migration against a real gRPC receiver on port 0 (in-process), with image files,
ext4/XFS images made with mkfs + mount + copy + umount, a partitioned image and loop devices.

Every push is checked against a hash of the whole device; counters are checked against what the
images really hold (zero blocks never travel, a second pass sends exactly the blocks that differ).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cvmigrate.agent.blockmap import used_blocks
from cvmigrate.agent.blockpush import BlockPush, BlockPushOptions
from cvmigrate.common.blockproto import BLOCK_SIZE
from cvmigrate.common.errors import CheckFailed, PermissionDenied
from cvmigrate.receiver.server import ServerHandle, create_server
from cvmigrate.receiver.session import ReceiverConfig
from tests.helpers.blockimg import device_hash

MiB = 1 << 20
ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="mount and losetup need root")
needs_ext4 = pytest.mark.skipif(not shutil.which("mkfs.ext4"), reason="mkfs.ext4 missing (e2fsprogs)")
needs_xfs = pytest.mark.skipif(not shutil.which("mkfs.xfs"), reason="mkfs.xfs missing (xfsprogs)")


# ---------------------------------------------------------------- helpers

def blocks_of(path: Path | str) -> list[bytes]:
    out = []
    with open(path, "rb") as f:
        while data := f.read(BLOCK_SIZE):
            out.append(data)
    return out


def nonzero_blocks(path: Path | str) -> int:
    return sum(1 for b in blocks_of(path) if b.count(0) != len(b))


def differing_blocks(a: list[bytes], b: list[bytes]) -> int:
    return sum(1 for x, y in zip(a, b, strict=True) if x != y)


def sparse(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


@contextlib.contextmanager
def mounted(image: Path | str, mnt: Path, *opts: str):
    mnt.mkdir(parents=True, exist_ok=True)
    o = ",".join(("loop",) + opts)
    subprocess.run(["mount", "-o", o, str(image), str(mnt)], check=True, capture_output=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True, capture_output=True)
        wait_detached(image)


def wait_detached(image: Path | str, timeout: float = 30.0) -> None:
    """After umount, the kernel detaches an autoclear loop device (and flushes its writes into the image)
    asynchronously: wait for it, or the image may still change under the next read."""
    import time
    deadline = time.monotonic() + timeout
    while subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True).stdout.strip():
        assert time.monotonic() < deadline, f"{image} is still attached to a loop device"
        time.sleep(0.05)


@contextlib.contextmanager
def loopdev(image: Path):
    dev = subprocess.run(["losetup", "-f", "--show", str(image)], check=True, capture_output=True,
                         text=True).stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], capture_output=True)


def fill_tree(root: Path, seed: int, nfiles: int = 40) -> None:
    import random
    rnd = random.Random(seed)
    (root / "etc").mkdir(exist_ok=True)
    (root / "data").mkdir(exist_ok=True)
    for i in range(nfiles):
        (root / "etc" / f"conf{i}.txt").write_text(f"setting{i}={rnd.random()}\n" * rnd.randint(1, 300))
    for i in range(6):
        (root / "data" / f"blob{i}.bin").write_bytes(rnd.randbytes(rnd.randint(200_000, 3 * MiB)))


def make_fs_image(tmp: Path, name: str, fs: str, size: int, seed: int = 1) -> Path:
    img = sparse(tmp / name, size)
    cmd = ["mkfs.ext4", "-q", "-F", str(img)] if fs == "ext4" else ["mkfs.xfs", "-q", "-f", str(img)]
    subprocess.run(cmd, check=True, capture_output=True)
    with mounted(img, tmp / f"mnt-{name}") as m:
        fill_tree(m, seed)
    return img


def change_files(img: Path, tmp: Path) -> None:
    with mounted(img, tmp / f"mnt-chg-{img.name}") as m:
        p = m / "etc" / "conf3.txt"
        p.write_text(p.read_text() + "changed=1\n")
        with open(m / "data" / "blob2.bin", "r+b") as f:
            f.seek(100_000)
            f.write(b"X" * 5000)
        (m / "etc" / "new.txt").write_text("a new file\n")


def trees_equal(a: Path, b: Path) -> None:
    r = subprocess.run(["diff", "-r", "--no-dereference", str(a), str(b)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


# ---------------------------------------------------------------- fixtures
class Env:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.handles: list[ServerHandle] = []

    def receiver(self, *targets: Path | str, state: str = "state"):
        root = self.tmp / "recv-root"
        root.mkdir(exist_ok=True)
        cfg = ReceiverConfig(root=str(root), state_dir=str(self.tmp / state))
        h = create_server(cfg, "127.0.0.1:0", block_targets=tuple(str(t) for t in targets))
        self.handles.append(h)
        return f"127.0.0.1:{h.port}"

    def push(self, address: str, source: Path | str, target: Path | str, **kw):
        return BlockPush(BlockPushOptions(source=str(source), address=address, target_device=str(target),
                                          **kw)).run()

    def close(self) -> None:
        for h in self.handles:
            h.stop(grace=None)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    try:
        yield e
    finally:
        e.close()


# ---------------------------------------------------------------- image files
def test_sparse_image_zero_blocks_never_sent_and_incremental(env, tmp_path):
    src = sparse(tmp_path / "src.img", 48 * MiB + 12345)          # a short last block too
    with open(src, "r+b") as f:
        for blk in (0, 5, 6, 7, 30):
            f.seek(blk * MiB)
            f.write(os.urandom(MiB))
        f.seek(20 * MiB)
        f.write(bytes(MiB))                                        # written, but all zeros
        f.seek(48 * MiB + 100)
        f.write(b"tail" * 100)
    dst = sparse(tmp_path / "dst.img", 64 * MiB)
    addr = env.receiver(dst)
    r = env.push(addr, src, dst)
    assert device_hash(dst, src.stat().st_size) == device_hash(src)
    assert (r.blocks_total, r.blocks_sent, r.blocks_zero, r.blocks_unchanged) == (49, 6, 43, 0)
    assert r.bytes_sent_plain == 5 * MiB + 12345 and r.consistency == "image" and r.consistent
    assert r.bytes_on_wire <= 5 * MiB + 12345 + 64
    assert os.stat(dst).st_blocks * 512 < 8 * MiB                  # zero blocks left as holes

    again = env.push(addr, src, dst)
    assert (again.blocks_sent, again.blocks_unchanged, again.bytes_on_wire) == (0, 6, 0)
    assert again.resumed and again.target_blocks_hashed == 0

    with open(src, "r+b") as f:                                    # change two blocks, wipe one
        f.seek(5 * MiB + 17)
        f.write(b"changed")
        f.seek(48 * MiB + 100)
        f.write(b"TAIL")
        f.seek(30 * MiB)
        f.write(bytes(MiB))
    third = env.push(addr, src, dst)
    assert (third.blocks_sent, third.blocks_zeroed, third.blocks_unchanged) == (2, 1, 3)
    assert device_hash(dst, src.stat().st_size) == device_hash(src)


def test_back_to_back_passes_are_never_refused_busy(env, tmp_path):
    """The receiver serves one block session at a time and frees it when its
    handler returns; the agent reads its stream to the end, so a pass that
    starts right after another (the next disk in stage 2) is never refused."""
    src = sparse(tmp_path / "src.img", 3 * MiB)
    with open(src, "r+b") as f:
        f.write(os.urandom(MiB))
    dst = sparse(tmp_path / "dst.img", 4 * MiB)
    addr = env.receiver(dst)
    for _ in range(12):
        r = env.push(addr, src, dst)
        assert r.consistency == "image"
    assert device_hash(dst, src.stat().st_size) == device_hash(src)


def test_no_journal_receiver_hashes_target_and_sends_only_differences(env, tmp_path):
    src = sparse(tmp_path / "src.img", 32 * MiB)
    with open(src, "r+b") as f:
        f.write(os.urandom(32 * MiB))
    dst = tmp_path / "dst.img"
    shutil.copyfile(src, dst)
    with open(dst, "r+b") as f:                                    # the target differs in 3 blocks
        for blk in (1, 9, 31):
            f.seek(blk * MiB + 4096)
            f.write(b"stale")
    r = env.push(env.receiver(dst), src, dst)
    assert r.blocks_sent == 3 and r.blocks_unchanged == 29 and r.target_blocks_hashed == 32
    assert device_hash(dst) == device_hash(src)


def test_garbage_on_target_where_source_is_zero_is_zeroed(env, tmp_path):
    src = sparse(tmp_path / "src.img", 16 * MiB)
    with open(src, "r+b") as f:
        f.write(os.urandom(MiB))
    dst = sparse(tmp_path / "dst.img", 16 * MiB)
    with open(dst, "r+b") as f:
        f.write(os.urandom(16 * MiB))
    r = env.push(env.receiver(dst), src, dst)
    assert (r.blocks_sent, r.blocks_zero, r.blocks_zeroed) == (1, 15, 15)
    assert device_hash(dst) == device_hash(src)


# ---------------------------------------------------------------- refusals
def test_refuses_unknown_target(env, tmp_path):
    src = sparse(tmp_path / "src.img", 4 * MiB)
    allowed = sparse(tmp_path / "allowed.img", 4 * MiB)
    other = sparse(tmp_path / "other.img", 4 * MiB)
    with open(other, "r+b") as f:
        f.write(b"precious")
    with pytest.raises(PermissionDenied, match="--block-target"):
        env.push(env.receiver(allowed), src, other)
    assert other.read_bytes()[:8] == b"precious"


def test_refuses_target_smaller_than_source(env, tmp_path):
    src = sparse(tmp_path / "src.img", 8 * MiB)
    small = sparse(tmp_path / "small.img", 8 * MiB - 512)
    with pytest.raises(CheckFailed, match="at least as large"):
        env.push(env.receiver(small), src, small)


@needs_root
@needs_ext4
def test_refuses_mounted_target_and_attached_image(env, tmp_path):
    src = sparse(tmp_path / "src.img", 16 * MiB)
    dst = sparse(tmp_path / "dst.img", 16 * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(dst)], check=True, capture_output=True)
    with loopdev(dst) as dev:
        addr = env.receiver(dev, dst)
        # the image itself is attached to a loop device: refused
        with pytest.raises(CheckFailed, match="attached"):
            env.push(addr, src, dst)
        mnt = tmp_path / "mnt"
        mnt.mkdir()
        subprocess.run(["mount", dev, str(mnt)], check=True, capture_output=True)
        try:
            with pytest.raises(CheckFailed, match="mounted"):
                env.push(addr, src, dev)
        finally:
            subprocess.run(["umount", str(mnt)], check=True, capture_output=True)
        r = env.push(addr, src, dev)                               # unmounted: accepted
        assert r.blocks_zero == 16 and device_hash(dev, 16 * MiB) == device_hash(src)


# ---------------------------------------------------------------- filesystems
@needs_root
@pytest.mark.parametrize("fs,size", [pytest.param("ext4", 96 * MiB, marks=needs_ext4),
                                     pytest.param("xfs", 320 * MiB, marks=[needs_xfs, pytest.mark.slow])])
def test_filesystem_image_full_then_incremental(env, tmp_path, fs, size):
    src = make_fs_image(tmp_path, "src.img", fs, size)
    dst = sparse(tmp_path / "dst.img", size + 4 * MiB)
    addr = env.receiver(dst)
    r = env.push(addr, src, dst)
    assert device_hash(dst, size) == device_hash(src)
    nz = nonzero_blocks(src)
    assert r.blocks_sent == nz and r.blocks_zero == r.blocks_total - nz and r.blocks_unchanged == 0

    before = blocks_of(src)
    change_files(src, tmp_path)
    changed = differing_blocks(before, blocks_of(src))
    assert 0 < changed < nz
    again = env.push(addr, src, dst)
    assert device_hash(dst, size) == device_hash(src)
    # exactly the blocks that differ travel (a block that became all-zero would be zeroed instead)
    assert again.blocks_sent + again.blocks_zeroed == changed, again


@needs_root
@pytest.mark.parametrize("fs,size", [pytest.param("ext4", 96 * MiB, marks=needs_ext4),
                                     pytest.param("xfs", 320 * MiB, marks=needs_xfs)])
def test_used_only_reads_only_used_blocks(env, tmp_path, fs, size):
    src = make_fs_image(tmp_path, "src.img", fs, size)
    with mounted(src, tmp_path / "m0") as m:                       # leave stale data in free blocks
        (m / "junk.bin").write_bytes(os.urandom(8 * MiB))
        os.sync()
        (m / "junk.bin").unlink()
    flags, detail = used_blocks(os.open(src, os.O_RDONLY), src.stat().st_size)
    assert flags is not None, detail
    assert fs in detail
    dst = sparse(tmp_path / "dst.img", size)
    with open(dst, "r+b") as f:                                     # garbage the free blocks must not keep
        f.write(os.urandom(size // 4))
    r = env.push(env.receiver(dst), src, dst, used_only=True)
    assert r.used_only and r.blocks_free > 0, r
    assert r.bytes_read < size // 2
    check = ["fsck.ext4", "-n", "-f", str(dst)] if fs == "ext4" else ["xfs_repair", "-n", "-f", str(dst)]
    out = subprocess.run(check, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    extra = ("nouuid",) if fs == "xfs" else ()                    # the copy has the source's UUID
    with mounted(src, tmp_path / "ms", "ro", *extra) as a, mounted(dst, tmp_path / "md", "ro", *extra) as b:
        trees_equal(a, b)


@pytest.mark.slow
@needs_root
@needs_ext4
@needs_xfs
def test_partitioned_image(env, tmp_path):
    """An MBR disk: 1 MiB gap, ext4 partition, XFS partition, unpartitioned tail."""
    p1 = make_fs_image(tmp_path, "p1.img", "ext4", 64 * MiB, seed=2)
    p2 = make_fs_image(tmp_path, "p2.img", "xfs", 320 * MiB, seed=3)
    disk = sparse(tmp_path / "disk.img", 400 * MiB)
    off1, off2 = 1 * MiB, 66 * MiB
    mbr = bytearray(512)
    mbr[446:462] = struct.pack("<BBBBBBBBII", 0x80, 0, 0, 0, 0x83, 0, 0, 0, off1 // 512, 64 * MiB // 512)
    mbr[462:478] = struct.pack("<BBBBBBBBII", 0, 0, 0, 0, 0x83, 0, 0, 0, off2 // 512, 320 * MiB // 512)
    mbr[510:512] = b"\x55\xaa"
    mbr[0:16] = b"bootloader-stub!"
    for data_src, off in ((p1, off1), (p2, off2)):
        subprocess.run(["dd", f"if={data_src}", f"of={disk}", "bs=1M", f"seek={off // MiB}", "conv=notrunc,sparse",
                        "status=none"], check=True)
    with open(disk, "r+b") as f:
        f.write(mbr)
        f.seek(399 * MiB)
        f.write(b"tail data outside any partition")
    dst = sparse(tmp_path / "dst.img", 400 * MiB)
    addr = env.receiver(dst, tmp_path / "dst2.img")
    r = env.push(addr, disk, dst)
    assert device_hash(dst) == device_hash(disk)
    assert r.blocks_sent == nonzero_blocks(disk)

    dst2 = sparse(tmp_path / "dst2.img", 400 * MiB)
    u = env.push(addr, disk, dst2, used_only=True)
    assert u.used_only and "ext4" in u.used_only_detail and "xfs" in u.used_only_detail, u.used_only_detail
    assert u.blocks_free > 250
    with open(dst2, "rb") as f:
        assert f.read(16) == b"bootloader-stub!"
        f.seek(399 * MiB)
        assert f.read(9) == b"tail data"
    for off, name, extra in ((off1, "a", ()), (off2, "b", ("nouuid",))):
        with mounted(disk, tmp_path / f"s{name}", "ro", f"offset={off}", *extra) as a, \
                mounted(dst2, tmp_path / f"d{name}", "ro", f"offset={off}", *extra) as b:
            trees_equal(a, b)


# ---------------------------------------------------------------- loop devices
@needs_root
@needs_ext4
def test_loop_devices_and_consistency(env, tmp_path):
    src_img = make_fs_image(tmp_path, "src.img", "ext4", 64 * MiB)
    dst_img = sparse(tmp_path / "dst.img", 80 * MiB)
    with loopdev(src_img) as sdev, loopdev(dst_img) as ddev:
        addr = env.receiver(ddev)
        r = env.push(addr, sdev, ddev, used_only=True)
        assert r.consistency == "unmounted" and r.consistent and r.used_only
        mnt = tmp_path / "live"
        mnt.mkdir()
        subprocess.run(["mount", sdev, str(mnt)], check=True, capture_output=True)
        try:
            (mnt / "etc" / "live.txt").write_text("written while mounted\n")
            live = env.push(addr, sdev, ddev, used_only=True)
            assert live.consistency == "live" and not live.consistent and not live.used_only
            assert any("crash-consistent" in w for w in live.warnings)
            frozen = env.push(addr, sdev, ddev, freeze=True)
            assert frozen.consistency == "frozen" and frozen.consistent
            # thawed afterwards: the filesystem takes writes again
            (mnt / "etc" / "after.txt").write_text("thawed\n")
        finally:
            subprocess.run(["umount", str(mnt)], check=True, capture_output=True)
        final = env.push(addr, sdev, ddev)
        assert final.consistency == "unmounted"
        assert device_hash(ddev, 64 * MiB) == device_hash(sdev)


# ---------------------------------------------------------------- the freeze watchdog
def _writer(mnt: Path) -> subprocess.Popen:
    """A process writing a file on ``mnt``: it blocks while the filesystem is frozen."""
    return subprocess.Popen([sys.executable, "-c", "import os, sys; fd = os.open(sys.argv[1], os.O_WRONLY | "
                             "os.O_CREAT, 0o644); os.write(fd, b'x'); os.fsync(fd)", str(mnt / "probe")])


def _finishes(proc: subprocess.Popen, within: float) -> bool:
    try:
        proc.wait(timeout=within)
    except subprocess.TimeoutExpired:
        return False
    return proc.returncode == 0


@contextlib.contextmanager
def _ext4_mounted(tmp_path: Path):
    img = sparse(tmp_path / "frz.img", 64 * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], check=True, capture_output=True)
    with mounted(img, tmp_path / "frz") as mnt:
        try:
            yield mnt
        finally:
            subprocess.run(["fsfreeze", "-u", str(mnt)], capture_output=True)   # never leave it frozen


@needs_root
@needs_ext4
def test_the_freeze_watchdog_thaws_when_the_pass_overruns(tmp_path):
    from cvmigrate.agent.blockconsistency import Freezer

    with _ext4_mounted(tmp_path) as mnt:
        freezer = Freezer([str(mnt)], timeout=2.0)
        freezer.freeze()
        writer = _writer(mnt)
        try:
            assert not _finishes(writer, 0.8), "a write went through a frozen filesystem"
            assert _finishes(writer, 15), "the watchdog did not thaw after its timeout"
        finally:
            freezer.thaw()
            writer.kill()
            writer.wait()
        assert freezer.timed_out


@needs_root
@needs_ext4
def test_the_freeze_watchdog_thaws_when_the_agent_is_killed(tmp_path):
    code = ("import sys, time\n"
            "from cvmigrate.agent.blockconsistency import Freezer\n"
            "Freezer([sys.argv[1]], timeout=600).freeze()\n"
            "print('frozen', flush=True)\n"
            "time.sleep(600)\n")
    with _ext4_mounted(tmp_path) as mnt:
        agent = subprocess.Popen([sys.executable, "-c", code, str(mnt)], stdout=subprocess.PIPE, text=True)
        writer = None
        try:
            assert agent.stdout is not None and agent.stdout.readline().strip() == "frozen"
            writer = _writer(mnt)
            assert not _finishes(writer, 0.8), "a write went through a frozen filesystem"
            agent.send_signal(signal.SIGKILL)
            agent.wait()
            assert _finishes(writer, 15), "the filesystem stayed frozen after the agent was killed"
        finally:
            agent.kill()
            agent.wait()
            if writer is not None:
                subprocess.run(["fsfreeze", "-u", str(mnt)], capture_output=True)
                writer.kill()
                writer.wait()
