"""The block plane's targets: which devices or images the receiver may write, and writing zeros.

Safety (issue 8): the receiver writes only to devices it was told about
(``--block-target``, repeatable, or the controller's plan through
``create_server(block_targets=...)``), never to a target smaller than the
source, never to a mounted or otherwise held target (mountinfo, holders,
and an ``O_EXCL`` open that the kernel refuses while anything else holds a
block device), and never to an image file attached to a loop device.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import stat
import struct
from dataclasses import dataclass

from cvmigrate.common import blockdev
from cvmigrate.common.blockproto import BLOCK_SIZE
from cvmigrate.common.errors import CvmError, PermissionDenied

BLKZEROOUT = 0x127F
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 0x01, 0x02


class TargetRefused(CvmError, grpc_code="FAILED_PRECONDITION", exit_code=8):
    """The named target may not be written (mounted, in use, too small)."""


@dataclass
class Target:
    path: str                    # realpath
    fd: int
    is_device: bool
    size: int
    identity: str


def open_target(path: str, allowed: list[str], source_size: int) -> Target:
    """Check every safety rule and open the target for writing, or raise naming the fix."""
    real = os.path.realpath(path)
    allowed_real = {os.path.realpath(a) for a in allowed}
    if real not in allowed_real:
        raise PermissionDenied(f"target device {path!r} is not one this receiver may write (it was started with "
                               f"--block-target {', '.join(sorted(allowed)) or '(none)'}); restart the receiver "
                               f"with --block-target {path}")
    try:
        st = os.stat(real)
    except OSError as exc:
        raise TargetRefused(f"target {path!r}: {exc.strerror}") from None
    is_device = stat.S_ISBLK(st.st_mode)
    if not is_device and not stat.S_ISREG(st.st_mode):
        raise TargetRefused(f"target {path!r} is neither a block device nor an image file")
    if is_device:
        name = blockdev.dev_name(st.st_rdev) or real
        related = [name, *blockdev.partitions(name)]
        mounted: dict[str, str] = {}
        for m in blockdev.mounts():
            mounted.setdefault(m.devnum, m.mountpoint)
        for num in ({blockdev.devnum(n) for n in related} - {""}
                    or {f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"}):
            if num in mounted:
                raise TargetRefused(f"target {path!r} (or a partition of it) is mounted on {mounted[num]}; "
                                    "unmount it first: the receiver never writes a mounted disk")
        holders = [h for n in related for h in blockdev.holders(n)]
        if holders:
            raise TargetRefused(f"target {path!r} is held by {', '.join(sorted(set(holders)))} (LVM, RAID or "
                                "device-mapper); deactivate them first")
        flags = os.O_RDWR | os.O_EXCL | os.O_CLOEXEC
        identity = f"dev:{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    else:
        loops = [f"/dev/{n}" for n in blockdev.loops_backed_by(real)]
        if loops:
            raise TargetRefused(f"target image {path!r} is attached as {', '.join(loops)}; detach it "
                                "(losetup -d) or name the loop device as the target")
        flags = os.O_RDWR | os.O_CLOEXEC
        identity = f"file:{st.st_dev}:{st.st_ino}"
    try:
        fd = os.open(real, flags)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            raise TargetRefused(f"target {path!r} is in use (mounted, or opened exclusively by another "
                                "program); free it first") from None
        raise TargetRefused(f"cannot open target {path!r}: {exc.strerror}") from None
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
        if size < source_size:
            raise TargetRefused(f"target {path!r} has {size} bytes, the source has {source_size}; "
                                "give a target at least as large as the source")
    except BaseException:
        os.close(fd)
        raise
    return Target(real, fd, is_device, size, identity)



_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def make_zero(t: Target, offset: int, length: int) -> None:
    """Make [offset, offset+length) read as zeros: punch a hole, BLKZEROOUT, or write zeros."""
    if length <= 0:
        return
    try:
        if t.is_device:
            fcntl.ioctl(t.fd, BLKZEROOUT, struct.pack("QQ", offset, length))
            return
        if _libc.fallocate(t.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) == 0:
            return
    except OSError:
        pass
    zeros = bytes(min(length, BLOCK_SIZE))
    end = offset + length
    while offset < end:
        n = min(len(zeros), end - offset)
        os.pwrite(t.fd, zeros[:n], offset)
        offset += n

