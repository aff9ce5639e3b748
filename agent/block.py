"""The agent's block plane: push a whole disk (or an image file) block by block.

Block size: 1 MiB, the file plane's chunk size, for the same reasons -- per
block Python overhead is negligible, xxhash/zstd release the GIL, and a small
change re-sends little (one 4 KiB write costs one 1 MiB block, zstd-compressed).

What travels (see proto/cvmigrate/proto/block.proto):
- the receiver streams the target's current hash of every block (from its
  journal, or read from the target); the agent reads the source once,
  sequentially, and per block decides:
  * all zero (or an image-file hole, or free in the filesystem in used-only
    mode): never sent; if the target's block is not zero, it goes into a
    ZeroRun so the receiver punches/zeroes it;
  * same hash as the target: unchanged, nothing sent;
  * otherwise: sent, hashed with XXH3-128 and zstd-compressed per block
    (RAW when zstd does not pay), like file chunks.
- plain bytes sent but not yet reported durable stay below the receiver's
  ``max_inflight_bytes`` (64 MiB): that bounds what a kill can make us re-send.
- at the end both sides compare a manifest (a hash over all block hashes).

Used-blocks-only mode (``used_only``): the ext4 block bitmaps (superblock +
group descriptors + bitmaps; BLOCK_UNINIT groups count as free except their
metadata) and the XFS free-space B+trees (AGF bno btree) are read straight
from the device, per partition (MBR and GPT are understood); blocks free in
the filesystem are treated as zero.  Anything not understood (another
filesystem, ext4 meta_bg/bigalloc, a journal that needs recovery, a
partition gap) is read in full, and the summary says which.  Used-only is
refused on a live (mounted read-write, not frozen) source: a block allocated
after the bitmap was read would be missed, so that falls back to a full read.

Consistency: a mounted, changing source yields a crash-consistent copy at
best.  The agent classifies the source (unmounted, read-only, frozen,
snapshot, image, live), warns unless it is one of the consistent states and
reports it in the summary.  ``freeze`` runs ``fsfreeze -f`` on the source's
mount points for the pass (meant for a short final pass after a full one)
under a watchdog process that thaws them if the agent dies or the pass
exceeds ``freeze_timeout``.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import grpc
import xxhash

from cvmigrate import __version__
from cvmigrate.agent.pipeline import Stop, StreamPipeline
from cvmigrate.common import compression
from cvmigrate.common.errors import CvmError, ProtocolError, SourceError, TransportError, UsageError, error_for_status
from cvmigrate.common.hashing import chunk_hash, is_zero
from cvmigrate.proto import block_pb2 as bpb
from cvmigrate.proto import block_pb2_grpc as bpb_grpc
from cvmigrate.proto import transfer_pb2 as pb

logger = logging.getLogger(__name__)

BLOCK_SIZE = 1 << 20
BLOCK_PROTOCOL_VERSION = 1
MAX_MESSAGE = 16 << 20
ZERO_RUN_FLUSH = 4096            # blocks per ZeroRun before it is sent
SEEK_DATA, SEEK_HOLE = getattr(os, "SEEK_DATA", 3), getattr(os, "SEEK_HOLE", 4)
CONSISTENT = ("unmounted", "read-only", "frozen", "snapshot", "image")


# ====================================================================== used-blocks maps
class _Used:
    """Per-block 'must read' flags of a device: 1 = read it, 0 = free in its filesystem (treated as zero)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.n = -(-size // BLOCK_SIZE)
        self.flags = bytearray(b"\x01") * self.n

    def clear_inside(self, start: int, end: int) -> None:
        """Blocks wholly inside [start, end) become free (then the used ranges are marked again)."""
        lo = -(-start // BLOCK_SIZE)
        hi = min(end, self.size) // BLOCK_SIZE
        if self.size % BLOCK_SIZE and end >= self.size:
            hi = self.n                      # the short last block lies wholly inside
        if hi > lo:
            self.flags[lo:hi] = bytes(hi - lo)

    def mark(self, start: int, end: int) -> None:
        if end <= start:
            return
        lo, hi = start // BLOCK_SIZE, min(self.n, (end - 1) // BLOCK_SIZE + 1)
        if hi > lo:
            self.flags[lo:hi] = b"\x01" * (hi - lo)


def _pread(fd: int, n: int, off: int) -> bytes:
    data = os.pread(fd, n, off)
    if len(data) != n:
        raise ValueError(f"short read at {off}")
    return data


def _ext4_used(fd: int, base: int, length: int, used: _Used) -> str:
    """Mark the used blocks of the ext4/3/2 filesystem at [base, base+length); returns a description."""
    sb = _pread(fd, 1024, base + 1024)
    u16 = lambda o: struct.unpack_from("<H", sb, o)[0]  # noqa: E731
    u32 = lambda o: struct.unpack_from("<I", sb, o)[0]  # noqa: E731
    bsize = 1024 << u32(0x18)
    incompat, ro_compat, compat = u32(0x60), u32(0x64), u32(0x5C)
    if incompat & 0x4:
        raise ValueError("its journal needs recovery (not cleanly unmounted)")
    if incompat & 0x10:
        raise ValueError("meta_bg layout is not supported")
    if ro_compat & 0x200:
        raise ValueError("bigalloc is not supported")
    is64 = bool(incompat & 0x80)
    blocks = u32(0x04) | ((u32(0x150) << 32) if is64 else 0)
    first = u32(0x14)
    bpg, ipg = u32(0x20), u32(0x28)
    isz = u16(0x58) if u32(0x4C) >= 1 else 128
    dsz = u16(0xFE) if is64 else 32
    dsz = dsz or 32
    reserved_gdt = u16(0xCE)
    ngroups = -(-(blocks - first) // bpg)
    gdt_blocks = -(-(ngroups * dsz) // bsize)
    fs_end = blocks * bsize
    if fs_end > length:
        raise ValueError("the filesystem is larger than its partition")
    gdt = _pread(fd, gdt_blocks * bsize, base + (first + 1) * bsize)
    itable_blocks = -(-(ipg * isz) // bsize)
    sparse_super, sparse2 = bool(ro_compat & 0x1), bool(compat & 0x200)
    backups2 = {u32(0x24C), u32(0x250)} if sparse2 else set()

    def has_backup(g: int) -> bool:
        if g == 0:
            return True
        if sparse2:
            return g in backups2
        if not sparse_super or g == 1:
            return True
        for p in (3, 5, 7):
            x = p
            while x < g:
                x *= p
            if x == g:
                return True
        return False

    used.clear_inside(base, base + fs_end)
    used.mark(base, base + max(2048, (first + 1 + gdt_blocks + reserved_gdt) * bsize))
    used.mark(base + fs_end, base + length)        # past the filesystem: read it
    uninit = 0
    for g in range(ngroups):
        d = gdt[g * dsz:(g + 1) * dsz]
        bb, ib, it = struct.unpack_from("<III", d, 0)
        flags = struct.unpack_from("<H", d, 0x12)[0]
        if dsz >= 64:
            bb |= struct.unpack_from("<I", d, 0x20)[0] << 32
            ib |= struct.unpack_from("<I", d, 0x24)[0] << 32
            it |= struct.unpack_from("<I", d, 0x28)[0] << 32
        # every group's metadata is used wherever flex_bg placed it
        used.mark(base + bb * bsize, base + (bb + 1) * bsize)
        used.mark(base + ib * bsize, base + (ib + 1) * bsize)
        used.mark(base + it * bsize, base + (it + itable_blocks) * bsize)
        gstart = first + g * bpg
        gcount = min(bpg, blocks - gstart)
        if flags & 0x2:                              # BLOCK_UNINIT: free except its own backups
            uninit += 1
            if has_backup(g):
                used.mark(base + gstart * bsize, base + (gstart + 1 + gdt_blocks + reserved_gdt) * bsize)
            continue
        bitmap = _pread(fd, bsize, base + bb * bsize)[:-(-gcount // 8)]
        for m in re.finditer(rb"[^\x00]+", bitmap):
            a = gstart + m.start() * 8
            b = min(gstart + m.end() * 8, gstart + gcount)
            used.mark(base + a * bsize, base + b * bsize)
    return f"ext4 ({ngroups} groups, {uninit} uninitialised, {bsize}-byte blocks)"


def _xfs_used(fd: int, base: int, length: int, used: _Used) -> str:
    """Mark the used blocks of the XFS filesystem at [base, base+length) from its free-space B+trees."""
    sb = _pread(fd, 512, base)
    bsize, dblocks = struct.unpack_from(">IQ", sb, 4)
    agblocks, agcount = struct.unpack_from(">II", sb, 84)
    version, sectsize = struct.unpack_from(">HH", sb, 100)
    if struct.unpack_from(">Q", sb, 16)[0]:
        raise ValueError("a realtime section is not supported")
    v5 = (version & 0xF) == 5
    hdr = 56 if v5 else 16
    magic_leaf = b"AB3B" if v5 else b"ABTB"
    fs_end = dblocks * bsize
    if fs_end > length:
        raise ValueError("the filesystem is larger than its partition")
    maxrecs = (bsize - hdr) // 12
    free: list[tuple[int, int]] = []
    for ag in range(agcount):
        ag_byte = base + ag * agblocks * bsize
        agf = _pread(fd, 64, ag_byte + sectsize)
        if agf[:4] != b"XAGF":
            raise ValueError(f"allocation group {ag} has no AGF header")
        root, level = struct.unpack_from(">I", agf, 16)[0], struct.unpack_from(">I", agf, 28)[0]
        stack = [(root, level - 1)]
        seen = 0
        while stack:
            agbno, lvl = stack.pop()
            seen += 1
            if seen > 1_000_000:
                raise ValueError("free-space btree walk did not terminate")
            blk = _pread(fd, bsize, ag_byte + agbno * bsize)
            if blk[:4] != magic_leaf:
                raise ValueError(f"AG {ag} block {agbno} is not a free-space btree block")
            blevel, numrecs = struct.unpack_from(">HH", blk, 4)
            if blevel != lvl or numrecs > maxrecs:
                raise ValueError(f"AG {ag} block {agbno}: inconsistent btree level or record count")
            if lvl == 0:
                for k in range(numrecs):
                    start, count = struct.unpack_from(">II", blk, hdr + 8 * k)
                    free.append((ag_byte + start * bsize, ag_byte + (start + count) * bsize))
            else:
                for k in range(numrecs):
                    stack.append((struct.unpack_from(">I", blk, hdr + maxrecs * 8 + 4 * k)[0], lvl - 1))
    used.clear_inside(base, base + fs_end)
    pos = base
    for a, b in sorted(free):
        used.mark(pos, a)
        pos = max(pos, b)
    used.mark(pos, base + length)
    return f"xfs ({agcount} allocation groups, {len(free)} free extents, v{version & 0xF})"


def _fs_at(fd: int, base: int) -> str | None:
    try:
        head = os.pread(fd, 2048, base)
    except OSError:
        return None
    if len(head) < 2048:
        return None
    if head[1024 + 0x38:1024 + 0x3A] == b"\x53\xef":
        return "ext4"
    if head[:4] == b"XFSB":
        return "xfs"
    return None


def _partitions(fd: int, size: int, sector: int) -> list[tuple[int, int]]:
    """(offset, length) of MBR primary or GPT partitions; [] when there is no partition table."""
    mbr = os.pread(fd, 512, 0)
    if len(mbr) < 512 or mbr[510:512] != b"\x55\xaa":
        return []
    parts: list[tuple[int, int]] = []
    entries = [struct.unpack_from("<BBBBBBBBII", mbr, 446 + 16 * k) for k in range(4)]
    if any(e[4] == 0xEE for e in entries):
        gpt = os.pread(fd, 512, sector)
        if gpt[:8] != b"EFI PART":
            return []
        lba, count, esize = struct.unpack_from("<QII", gpt, 72)
        table = os.pread(fd, count * esize, lba * sector)
        for k in range(min(count, len(table) // max(esize, 1))):
            e = table[k * esize:(k + 1) * esize]
            if e[:16] == bytes(16):
                continue
            first, last = struct.unpack_from("<QQ", e, 32)
            parts.append((first * sector, (last - first + 1) * sector))
        return parts
    for e in entries:
        ptype, start, count = e[4], e[8], e[9]
        if ptype in (0, 0x05, 0x0F, 0x85) or not count:
            continue
        parts.append((start * sector, count * sector))
    return [(o, n) for o, n in parts if o + n <= size]


def used_blocks(fd: int, size: int, sector: int = 512) -> tuple[bytearray | None, str]:
    """The per-block 'must read' map of a device or image, and what was understood."""
    used = _Used(size)
    regions = [(0, size)] if _fs_at(fd, 0) else _partitions(fd, size, sector)
    notes = []
    understood = 0
    for off, length in regions:
        kind = _fs_at(fd, off)
        where = "device" if (off, length) == (0, size) else f"partition at {off}"
        if kind is None:
            notes.append(f"{where}: no ext4/XFS found, read in full")
            continue
        try:
            desc = (_ext4_used if kind == "ext4" else _xfs_used)(fd, off, length, used)
        except (ValueError, struct.error, OSError) as exc:
            used.mark(off, off + length)
            notes.append(f"{where}: {kind}: {exc}; read in full")
            continue
        understood += 1
        notes.append(f"{where}: {desc}")
    if not understood:
        return None, "; ".join(notes) or "no partition table and no ext4/XFS filesystem: read in full"
    return used.flags, "; ".join(notes)


# ====================================================================== consistency
@dataclass
class Consistency:
    state: str                       # unmounted | read-only | frozen | snapshot | image | live
    detail: str
    mountpoints: list[str] = field(default_factory=list)

    @property
    def consistent(self) -> bool:
        return self.state in CONSISTENT


def _mounts() -> list[tuple[str, str, set[str]]]:
    """(major:minor, mount point, options) of every mount."""
    out = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            p = line.split()
            try:
                sep = p.index("-")
            except ValueError:
                continue
            opts = set(p[5].split(",")) | set(p[sep + 3].split(",") if len(p) > sep + 3 else ())
            out.append((p[2], p[4].replace("\\040", " "), opts))
    return out


def _block_names_of(path: str, st: os.stat_result) -> list[str]:
    """Kernel names of the device (and its partitions), or of the loop devices backed by an image file."""
    names: list[str] = []
    if stat.S_ISBLK(st.st_mode):
        try:
            names.append(os.path.basename(os.readlink(f"/sys/dev/block/{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}")))
        except OSError:
            return []
    else:
        real = os.path.realpath(path)
        for name in os.listdir("/sys/block") if os.path.isdir("/sys/block") else ():
            try:
                with open(f"/sys/block/{name}/loop/backing_file", encoding="utf-8", errors="replace") as f:
                    if os.path.realpath(f.read().strip().removesuffix(" (deleted)")) == real:
                        names.append(name)
            except OSError:
                continue
    out = []
    for name in names:
        out.append(name)
        base = f"/sys/class/block/{name}"
        try:
            out += [c for c in os.listdir(base) if c.startswith(name) and os.path.exists(f"{base}/{c}/dev")]
        except OSError:
            pass
    return out


def _devnum(name: str) -> str:
    try:
        with open(f"/sys/class/block/{name}/dev") as f:
            return f.read().strip()
    except OSError:
        return ""


def _is_dm_snapshot(name: str) -> bool:
    if not name.startswith("dm-"):
        return False
    try:
        for slave in os.listdir(f"/sys/class/block/{name}/slaves"):
            with open(f"/sys/class/block/{slave}/dm/name") as f:
                if f.read().strip().endswith("-cow"):
                    return True
    except OSError:
        return False
    return False


def classify_source(path: str, *, snapshot: bool = False) -> Consistency:
    st = os.stat(path)
    names = _block_names_of(path, st)
    if snapshot:
        return Consistency("snapshot", "the operator says the source is a snapshot (--snapshot)")
    if names and _is_dm_snapshot(names[0]):
        return Consistency("snapshot", f"{names[0]} is a device-mapper snapshot")
    nums = {_devnum(n): n for n in names}
    mounted = [(mp, opts) for num, mp, opts in _mounts() if num in nums]
    holders = []
    for n in names:
        try:
            holders += os.listdir(f"/sys/class/block/{n}/holders")
        except OSError:
            pass
    if mounted:
        mps = sorted({mp for mp, _ in mounted})
        if all("ro" in opts for _, opts in mounted):
            return Consistency("read-only", f"mounted read-only on {', '.join(mps)}", mps)
        return Consistency("live", f"mounted read-write on {', '.join(mps)}", mps)
    if holders:
        return Consistency("live", f"held by {', '.join(sorted(set(holders)))} (device-mapper/LVM/RAID), which may "
                                   "be writing it")
    if stat.S_ISBLK(st.st_mode):
        try:
            with open(f"/sys/class/block/{names[0]}/ro") as f:
                if f.read().strip() == "1":
                    return Consistency("read-only", "the block device is read-only")
        except (OSError, IndexError):
            pass
        return Consistency("unmounted", "not mounted and not held")
    if names:
        return Consistency("unmounted", f"attached as {', '.join('/dev/' + n for n in names[:1])}, not mounted")
    return Consistency("image", "an image file not attached to any loop device")


_WATCHDOG = r"""
import os, select, subprocess, sys
timeout, mps = float(sys.argv[1]), sys.argv[2:]
ready, _, _ = select.select([sys.stdin], [], [], timeout)
if not ready:
    sys.stdout.write("timeout\n"); sys.stdout.flush()
for mp in mps:
    subprocess.run(["fsfreeze", "-u", mp], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
"""


class Freezer:
    """fsfreeze -f for the pass; a watchdog thaws if we die or overrun the timeout."""

    def __init__(self, mountpoints: list[str], timeout: float) -> None:
        self.mountpoints = mountpoints
        self.timeout = timeout
        self.proc: subprocess.Popen | None = None
        self.frozen: list[str] = []
        self.timed_out = False

    def freeze(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(self.timeout), *self.mountpoints],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True)
        for mp in self.mountpoints:
            os.sync()
            r = subprocess.run(["fsfreeze", "-f", mp], capture_output=True, text=True)
            if r.returncode != 0:
                self.thaw()
                raise SourceError(f"fsfreeze -f {mp} failed: {r.stderr.strip() or r.returncode}; drop --freeze or "
                                  "check that the filesystem supports freezing")
            self.frozen.append(mp)
        logger.info("froze %s for this pass (thawed at the end, or after %.0fs at the latest)",
                    ", ".join(self.frozen), self.timeout)

    def thaw(self) -> None:
        for mp in self.frozen:
            subprocess.run(["fsfreeze", "-u", mp], capture_output=True)
        self.frozen = []
        if self.proc is not None:
            try:
                if self.proc.poll() is not None and self.proc.stdout is not None:
                    self.timed_out = b"timeout" in self.proc.stdout.read()
                else:
                    self.proc.stdin.close()      # the watchdog thaws (again, harmlessly) and exits
                    self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
            self.proc = None


# ====================================================================== the pass
@dataclass
class BlockPushOptions:
    source: str
    address: str
    target_device: str
    used_only: bool = False
    freeze: bool = False
    freeze_timeout: float = 600.0
    snapshot: bool = False
    compress_level: int = compression.DEFAULT_LEVEL
    workers: int = 2
    migration_id: str = ""
    channel_factory: Callable[[str], grpc.Channel] | None = None
    metadata: tuple[tuple[str, str], ...] = ()
    transport: str = ""                  # plaintext / tls / mtls (common.connectfail): names a failed handshake
    probe: Callable[[str, bool], str] | None = None  # TlsProbe: tells a refused certificate from a cut link


@dataclass
class BlockPushResult:
    source: str = ""
    target_device: str = ""
    source_size: int = 0
    block_size: int = BLOCK_SIZE
    blocks_total: int = 0
    blocks_zero: int = 0             # all-zero (or free in used-only mode): never sent
    blocks_free: int = 0             # of those, skipped unread because the filesystem says free
    blocks_zeroed: int = 0           # of those, the target held data there and was told to zero it
    blocks_unchanged: int = 0        # the target already held the same bytes
    blocks_sent: int = 0
    bytes_read: int = 0
    bytes_sent_plain: int = 0
    bytes_on_wire: int = 0           # compressed block payloads
    consistency: str = ""
    consistent: bool = False
    consistency_detail: str = ""
    used_only: bool = False
    used_only_detail: str = ""
    target_blocks_hashed: int = 0
    resumed: bool = False
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["seconds"] = round(self.seconds, 3)
        return d


class BlockPush(StreamPipeline):
    """One pass of one device.  ``run()`` returns the result or raises a CvmError."""

    def __init__(self, opts: BlockPushOptions) -> None:
        self.opts = opts
        self.result = BlockPushResult(source=opts.source, target_device=opts.target_device)
        super().__init__(queue_size=32, workers=opts.workers, pool_name="cvm-block-zstd")
        self._target: list[bytes] = []
        self._done_sent = False
        self._summary = False
        self._freezer: Freezer | None = None
        self._fd = -1

    # ------------------------------------------------------------ setup
    def _open_source(self) -> None:
        r, o = self.result, self.opts
        try:
            st = os.stat(o.source)
        except OSError as exc:
            raise UsageError(f"source {o.source!r}: {exc.strerror}") from None
        if not (stat.S_ISBLK(st.st_mode) or stat.S_ISREG(st.st_mode)):
            raise UsageError(f"source {o.source!r} is neither a block device nor an image file")
        c = classify_source(o.source, snapshot=o.snapshot)
        if o.freeze:
            if c.state == "live" and c.mountpoints:
                self._freezer = Freezer(c.mountpoints, o.freeze_timeout)
                self._freezer.freeze()
                c = Consistency("frozen", f"frozen with fsfreeze ({', '.join(c.mountpoints)}) for this pass",
                                c.mountpoints)
            elif c.state == "live":
                raise UsageError(f"--freeze: the source is {c.detail}, there is no mounted filesystem to freeze")
            else:
                logger.info("--freeze: nothing to freeze, the source is %s", c.detail)
        r.consistency, r.consistent, r.consistency_detail = c.state, c.consistent, c.detail
        if not c.consistent:
            msg = (f"the source {o.source} is {c.detail}: copying a changing filesystem yields a crash-consistent "
                   "image at best; for the final pass unmount it, remount it read-only, use a snapshot, or "
                   "add --freeze")
            logger.warning("%s", msg)
            r.warnings.append(msg)
        self._fd = os.open(o.source, os.O_RDONLY | os.O_CLOEXEC)
        r.source_size = os.lseek(self._fd, 0, os.SEEK_END)
        r.blocks_total = -(-r.source_size // BLOCK_SIZE)
        self._used: bytearray | None = None
        if o.used_only:
            if not c.consistent:
                r.used_only_detail = "refused on a live source (a block allocated meanwhile would be missed): read in full"
                r.warnings.append(r.used_only_detail)
            else:
                sector = 512
                if stat.S_ISBLK(st.st_mode):
                    try:
                        sector = struct.unpack("i", fcntl.ioctl(self._fd, 0x1268, b"\0" * 4))[0] or 512
                    except OSError:
                        pass
                try:
                    self._used, r.used_only_detail = used_blocks(self._fd, r.source_size, sector)
                except OSError as exc:
                    self._used, r.used_only_detail = None, f"reading the free-space maps failed ({exc}): read in full"
                r.used_only = self._used is not None
            logger.info("used blocks only: %s", r.used_only_detail)
        self._holes = stat.S_ISREG(st.st_mode)

    # ------------------------------------------------------------ running
    def run(self) -> BlockPushResult:
        t0 = time.monotonic()
        o = self.opts
        try:
            self._open_source()
            channel = (o.channel_factory or (lambda a: grpc.insecure_channel(a, options=_channel_options())))(o.address)
            try:
                self._stream(channel)
            finally:
                channel.close()
        finally:
            self._shutdown()
            if self._freezer is not None:
                self._freezer.thaw()
                if self._freezer.timed_out:
                    self.result.consistency, self.result.consistent = "live", False
                    self.result.consistency_detail += "; the freeze timed out during the pass"
            if self._fd >= 0:
                os.close(self._fd)
        self.result.seconds = time.monotonic() - t0
        return self.result

    def _stream(self, channel: grpc.Channel) -> None:
        stub = bpb_grpc.BlockReceiverStub(channel)
        call = stub.BlockTransfer(self._requests(), metadata=self.opts.metadata or None)
        reader = threading.Thread(target=self._guard(self._read_loop, "block reader"), name="cvm-block-read", daemon=True)
        welcomed = False
        try:
            for msg in call:
                kind = msg.WhichOneof("body")
                if kind == "welcome":
                    welcomed = True
                    w = msg.welcome
                    if w.protocol_version != BLOCK_PROTOCOL_VERSION:
                        raise ProtocolError(f"receiver answered block protocol {w.protocol_version}")
                    self._window.limit = max(2 * BLOCK_SIZE, w.max_inflight_bytes or self._window.limit)
                    self.result.resumed = w.resumed
                    logger.info("block session %s: target %s (%d bytes), %d block hashes from the receiver's "
                                "journal", w.session_id, self.opts.target_device, w.target_size, w.journal_blocks)
                    reader.start()
                elif kind == "hashes":
                    with self._cv:
                        if msg.hashes.first != len(self._target):
                            raise ProtocolError(f"target hashes start at block {msg.hashes.first}, expected "
                                                f"{len(self._target)}")
                        self._target.extend(msg.hashes.hashes)
                        self._cv.notify_all()
                elif kind == "committed":
                    self._window.release(msg.committed.bytes)
                elif kind == "summary":
                    self.result.target_blocks_hashed = msg.summary.blocks_hashed
                    # Not a break: reading on to the end of the stream means the
                    # receiver's handler has returned and released its one-session
                    # lock, so a next block pass (the next disk) is not refused Busy.
                    self._summary = True
                if self._failed:
                    break
        except grpc.RpcError as exc:
            if self._failed:
                raise self._failed from None
            raise _rpc_error(exc, self.opts.address, None if welcomed else self.opts.transport,
                             self.opts.probe) from None
        if self._failed:
            call.cancel()
            raise self._failed
        if not self._summary:
            raise TransportError(f"receiver at {self.opts.address} closed the stream before the pass finished; run "
                                 "the same command again to resume")

    def _requests(self) -> Iterator[bpb.BlockAgentMessage]:
        o, r = self.opts, self.result
        yield bpb.BlockAgentMessage(hello=bpb.BlockHello(
            protocol_version=BLOCK_PROTOCOL_VERSION, agent_version=__version__,
            source=pb.SourceIdentity(hostname=socket.gethostname(), machine_id=_machine_id(),
                                     root=os.fsencode(o.source), migration_id=o.migration_id),
            source_size=r.source_size, block_size=BLOCK_SIZE, target_device=o.target_device,
            consistency=r.consistency, used_only=r.used_only))
        yield from self._queued("compressing a block")

    # ------------------------------------------------------------ reading
    def _target_hash(self, i: int) -> bytes:
        with self._cv:
            while len(self._target) <= i:
                if self._stop.is_set():
                    raise Stop()
                self._cv.wait(0.5)
            return self._target[i]

    def _read_loop(self) -> None:
        r, fd, used = self.result, self._fd, self._used
        size, n = r.source_size, r.blocks_total
        manifest = xxhash.xxh3_128()
        zero16 = bytes(16)
        holes = _Holes(fd, size, self._holes)
        run_first, run_len = 0, 0
        for i in range(n):
            start = i * BLOCK_SIZE
            end = min(start + BLOCK_SIZE, size)
            data = None
            if used is not None and not used[i]:
                r.blocks_free += 1
            elif not holes.is_hole(start, end):
                try:
                    data = os.pread(fd, end - start, start)
                except OSError as exc:
                    raise SourceError(f"reading {self.opts.source} at byte {start}: {exc.strerror}") from None
                if len(data) != end - start:
                    raise SourceError(f"{self.opts.source} ended at byte {start + len(data)} while reading; it was "
                                      f"{size} bytes when the pass started")
                r.bytes_read += len(data)
                if is_zero(data):
                    data = None
            h = chunk_hash(data) if data is not None else b""
            manifest.update(h or zero16)
            t = self._target_hash(i)
            if data is None:
                r.blocks_zero += 1
                if t:
                    r.blocks_zeroed += 1
                    if run_len and run_first + run_len == i and run_len < ZERO_RUN_FLUSH:
                        run_len += 1
                    else:
                        if run_len:
                            self._put(bpb.BlockAgentMessage(data=bpb.BlockData(
                                zeros=[bpb.ZeroRun(first=run_first, count=run_len)])))
                        run_first, run_len = i, 1
                continue
            if t == h:
                r.blocks_unchanged += 1
                continue
            zeros = []
            if run_len:
                zeros = [bpb.ZeroRun(first=run_first, count=run_len)]
                run_len = 0
            self._window.acquire(len(data))
            if self._stop.is_set():
                raise Stop()
            r.blocks_sent += 1
            r.bytes_sent_plain += len(data)
            self._put(self._pool.submit(self._build, i, data, h, zeros))
        if run_len:
            self._put(bpb.BlockAgentMessage(data=bpb.BlockData(zeros=[bpb.ZeroRun(first=run_first, count=run_len)])))
        # every source byte is read: a frozen filesystem may thaw before the receiver finishes
        if self._freezer is not None:
            self._freezer.thaw()
        self._done_sent = True
        self._put(bpb.BlockAgentMessage(done=bpb.BlockDone(blocks_total=n, manifest=manifest.digest())))

    def _build(self, i: int, data: bytes, h: bytes, zeros: list[bpb.ZeroRun]) -> bpb.BlockAgentMessage:
        codec, payload = compression.compress(data, self.opts.compress_level)
        self.result.bytes_on_wire += len(payload)  # pool threads: a lost update only skews a counter
        return bpb.BlockAgentMessage(data=bpb.BlockData(
            blocks=[bpb.BlockSegment(index=i, codec=codec, raw_length=len(data), data=payload, hash=h)], zeros=zeros))


class _Holes:
    """SEEK_DATA/SEEK_HOLE over an image file: is a byte range entirely a hole?"""

    def __init__(self, fd: int, size: int, enabled: bool) -> None:
        self.fd, self.size, self.enabled = fd, size, enabled
        self.data_lo, self.data_hi = -1, -1

    def is_hole(self, start: int, end: int) -> bool:
        if not self.enabled:
            return False
        if start >= self.data_hi:
            try:
                self.data_lo = os.lseek(self.fd, start, SEEK_DATA)
                self.data_hi = os.lseek(self.fd, self.data_lo, SEEK_HOLE)
            except OSError as exc:
                if exc.errno == errno.ENXIO:
                    self.data_lo = self.data_hi = self.size + 1
                else:
                    self.enabled = False
                    return False
        return end <= self.data_lo


def _channel_options() -> list[tuple[str, Any]]:
    from cvmigrate.agent.push import channel_options
    return channel_options()


def _rpc_error(exc: grpc.RpcError, address: str, connecting: str | None = None,
               probe: Callable[[str, bool], str] | None = None) -> CvmError:
    from cvmigrate.common.connectfail import connect_failure

    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    name = code.name if code is not None else "UNKNOWN"
    if connecting is not None:
        named = connect_failure(name, details, peer="receiver", address=address, transport=connecting,
                                start_hint="`cvmigrate receive --block-target ...`", probe=probe)
        if named is not None:
            return named
    if name == "UNAVAILABLE":
        return TransportError(f"cannot reach the receiver at {address}: {details}; check that `cvmigrate receive` "
                              "runs there and the port is open")
    if name == "UNIMPLEMENTED":
        return ProtocolError(f"the receiver at {address} has no block service; upgrade it to this cvmigrate version")
    if name == "FAILED_PRECONDITION":
        from cvmigrate.common.errors import CheckFailed
        return CheckFailed(f"receiver refused the block transfer: {details}")
    return error_for_status(name, f"receiver refused the block transfer: {details}")


def _machine_id() -> str:
    try:
        with open("/etc/machine-id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""
