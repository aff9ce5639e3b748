"""Which blocks of a disk or image are used: the ext4 and XFS allocation maps.

Used-blocks-only mode (``used_only``): the ext4 block bitmaps (superblock +
group descriptors + bitmaps; BLOCK_UNINIT groups count as free except their
metadata) and the XFS free-space B+trees (AGF bno btree) are read straight
from the device, per partition (MBR and GPT are understood); blocks free in
the filesystem are treated as zero.  Anything not understood (another
filesystem, ext4 meta_bg/bigalloc, a journal that needs recovery, a
partition gap) is read in full, and the summary says which.  Used-only is
refused on a live (mounted read-write, not frozen) source: a block allocated
after the bitmap was read would be missed, so that falls back to a full read
(agent/blockpush.py decides, from agent/blockconsistency.py's verdict).
"""
from __future__ import annotations

import os
import re
import struct

from cvmigrate.common.blockproto import BLOCK_SIZE


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

    def u16(o: int) -> int:
        return int(struct.unpack_from("<H", sb, o)[0])

    def u32(o: int) -> int:
        return int(struct.unpack_from("<I", sb, o)[0])

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
            entry = table[k * esize:(k + 1) * esize]
            if entry[:16] == bytes(16):
                continue
            first, last = struct.unpack_from("<QQ", entry, 32)
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
