"""The receiver's block plane: write whole disks (or image files) block by block.

Why the receiver streams the target's hashes to the agent: the agent must
know, per block, whether the target already holds it (incremental pass,
resume) before it spends the wire on it.  The receiver takes those hashes
from its journal when it can and otherwise reads the target -- sequentially,
in a thread of its own, ahead of the agent -- so the first pass to an empty
target costs one sequential read of the target (holes of an image file cost
nothing) and every later pass costs no target read at all.

Safety (issue 8): the receiver writes only to devices it was told about
(``--block-target``, repeatable, or the controller's plan through
``create_server(block_targets=...)``), never to a target smaller than the
source, never to a mounted or otherwise held target (mountinfo, holders,
and an ``O_EXCL`` open that the kernel refuses while anything else holds a
block device), and never to an image file attached to a loop device.

Journal (SQLite, ``<state dir>/block.db``, format version 1):
- ``targets``: one row per target path with its identity (device number or
  inode), size and block size; a different identity or geometry drops the
  target's blocks.  ``dirty_lo``/``dirty_hi``: the range of blocks that may
  have been written without their hash being journaled.
- ``blocks``: (target, index) -> hash (empty = zero block).
Ordering per commit group: fdatasync of the target, then one transaction that
records the hashes and moves the dirty range past them, then BlockCommitted.
Before writing outside the dirty range the receiver widens it durably (once
per ``DIRTY_AHEAD`` blocks), so after any crash only blocks inside the range
are re-hashed from the target instead of trusted.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import logging
import os
import queue
import sqlite3
import stat
import struct
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterator

import grpc

from cvmigrate import __version__
from cvmigrate.common import compression
from cvmigrate.common.errors import (CvmError, IntegrityError, PermissionDenied, ProtocolError, TargetError,
                                     VersionMismatch)
from cvmigrate.common.hashing import chunk_hash, is_zero
from cvmigrate.proto import block_pb2 as bpb
from cvmigrate.proto import block_pb2_grpc as bpb_grpc

logger = logging.getLogger(__name__)

BLOCK_PROTOCOL_VERSION = 1
BLOCK_SIZE = 1 << 20
FORMAT_VERSION = 1
MAX_INFLIGHT = 64 << 20
COMMIT_INTERVAL = 1.0
DIRTY_AHEAD = 128              # blocks the dirty range is widened by at a time
HASH_BATCH = 2048              # hashes per TargetHashes message
BLKZEROOUT = 0x127F
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 0x01, 0x02
SEEK_DATA, SEEK_HOLE = getattr(os, "SEEK_DATA", 3), getattr(os, "SEEK_HOLE", 4)


class TargetRefused(CvmError):
    """The named target may not be written (mounted, in use, too small)."""

    grpc_code = "FAILED_PRECONDITION"
    exit_code = 8


# ====================================================================== journal
class BlockJournal:
    """Block hashes of every target this receiver has written, durable in SQLite."""

    def __init__(self, state_dir: str) -> None:
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        path = os.path.join(state_dir, "block.db")
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        row = self.db.execute("SELECT value FROM meta WHERE key='format_version'").fetchone()
        if row is None:
            self.db.executescript(f"""
                BEGIN;
                INSERT INTO meta VALUES('format_version', '{FORMAT_VERSION}');
                CREATE TABLE targets(path TEXT PRIMARY KEY, identity TEXT NOT NULL, size INTEGER NOT NULL,
                                     block_size INTEGER NOT NULL, dirty_lo INTEGER NOT NULL DEFAULT 0,
                                     dirty_hi INTEGER NOT NULL DEFAULT 0);
                CREATE TABLE blocks(path TEXT NOT NULL, idx INTEGER NOT NULL, hash BLOB NOT NULL,
                                    PRIMARY KEY(path, idx)) WITHOUT ROWID;
                COMMIT;""")
        elif row[0] != str(FORMAT_VERSION):
            self.db.close()
            raise VersionMismatch(f"block journal {path} has format version {row[0]}, this cvmigrate knows "
                                  f"{FORMAT_VERSION}; use the cvmigrate version that wrote it, or remove it to "
                                  "re-hash the targets")

    def close(self) -> None:
        self.db.close()

    def open_target(self, path: str, identity: str, size: int, block_size: int) -> dict[int, bytes]:
        """Known hashes of ``path``; forget everything if the target is not the one journaled."""
        db = self.db
        row = db.execute("SELECT identity, size, block_size, dirty_lo, dirty_hi FROM targets WHERE path=?",
                         (path,)).fetchone()
        db.execute("BEGIN")
        try:
            if row is None or tuple(row[:3]) != (identity, size, block_size):
                if row is not None:
                    logger.warning("block journal: %s is not the target journaled before (identity or size "
                                   "changed); re-hashing it", path)
                db.execute("DELETE FROM blocks WHERE path=?", (path,))
                db.execute("INSERT OR REPLACE INTO targets VALUES(?,?,?,?,0,0)", (path, identity, size, block_size))
            elif row[4] > row[3]:
                # blocks in the dirty range may have been written without their hash: re-hash them
                logger.info("block journal: %s has %d block(s) possibly written after the last commit; "
                            "re-hashing them", path, row[4] - row[3])
                db.execute("DELETE FROM blocks WHERE path=? AND idx>=? AND idx<?", (path, row[3], row[4]))
                db.execute("UPDATE targets SET dirty_lo=0, dirty_hi=0 WHERE path=?", (path,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return {i: h for i, h in db.execute("SELECT idx, hash FROM blocks WHERE path=?", (path,))}

    def set_dirty(self, path: str, lo: int, hi: int) -> None:
        self.db.execute("UPDATE targets SET dirty_lo=?, dirty_hi=? WHERE path=?", (lo, hi, path))

    def record(self, path: str, hashes: list[tuple[int, bytes]], dirty: tuple[int, int] | None = None,
               replace: bool = True) -> None:
        """One durable transaction: these blocks now hold these hashes (and the new dirty range).

        ``replace=False`` (hashes read from the target) never overwrites a hash a write recorded.
        """
        db = self.db
        db.execute("BEGIN")
        try:
            db.executemany(f"INSERT OR {'REPLACE' if replace else 'IGNORE'} INTO blocks VALUES(?,?,?)",
                           [(path, i, h) for i, h in hashes])
            if dirty is not None:
                db.execute("UPDATE targets SET dirty_lo=?, dirty_hi=? WHERE path=?", (dirty[0], dirty[1], path))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise


# ====================================================================== target checks
@dataclass
class Target:
    path: str                    # realpath
    fd: int
    is_device: bool
    size: int
    identity: str


def _dev_name(rdev: int) -> str | None:
    """The kernel name (e.g. loop3, sda1) of a block device number."""
    try:
        link = os.readlink(f"/sys/dev/block/{os.major(rdev)}:{os.minor(rdev)}")
    except OSError:
        return None
    return os.path.basename(link)


def _related_devnums(name: str) -> set[str]:
    """major:minor of the device and of its partitions."""
    out: set[str] = set()
    base = f"/sys/class/block/{name}"
    try:
        with open(f"{base}/dev") as f:
            out.add(f.read().strip())
        for child in os.listdir(base):
            if child.startswith(name) and os.path.exists(f"{base}/{child}/dev"):
                with open(f"{base}/{child}/dev") as f:
                    out.add(f.read().strip())
    except OSError:
        pass
    return out


def _mounted_devnums() -> dict[str, str]:
    """major:minor -> mount point, from /proc/self/mountinfo."""
    out: dict[str, str] = {}
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 4:
                    out.setdefault(parts[2], parts[4])
    except OSError:
        pass
    return out


def _holders(name: str) -> list[str]:
    found: list[str] = []
    base = f"/sys/class/block/{name}"
    try:
        found += os.listdir(f"{base}/holders")
        for child in os.listdir(base):
            if child.startswith(name) and os.path.isdir(f"{base}/{child}/holders"):
                found += os.listdir(f"{base}/{child}/holders")
    except OSError:
        pass
    return found


def _loop_devices_backed_by(path: str) -> list[str]:
    out = []
    try:
        names = os.listdir("/sys/block")
    except OSError:
        return out
    for name in names:
        if not name.startswith("loop"):
            continue
        try:
            with open(f"/sys/block/{name}/loop/backing_file", encoding="utf-8", errors="replace") as f:
                backing = f.read().strip()
        except OSError:
            continue
        if backing and os.path.realpath(backing.removesuffix(" (deleted)")) == path:
            out.append(f"/dev/{name}")
    return out


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
        name = _dev_name(st.st_rdev) or real
        mounted = _mounted_devnums()
        for num in _related_devnums(name) or {f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"}:
            if num in mounted:
                raise TargetRefused(f"target {path!r} (or a partition of it) is mounted on {mounted[num]}; "
                                    "unmount it first: the receiver never writes a mounted disk")
        holders = _holders(name)
        if holders:
            raise TargetRefused(f"target {path!r} is held by {', '.join(sorted(set(holders)))} (LVM, RAID or "
                                "device-mapper); deactivate them first")
        flags = os.O_RDWR | os.O_EXCL | os.O_CLOEXEC
        identity = f"dev:{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    else:
        loops = _loop_devices_backed_by(real)
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


# ====================================================================== writing helpers
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


class _Holes:
    """SEEK_DATA/SEEK_HOLE over an image file: is a byte range entirely a hole?"""

    def __init__(self, fd: int, size: int, enabled: bool) -> None:
        self.fd, self.size, self.enabled = fd, size, enabled
        self.data_lo, self.data_hi = -1, -1        # a known data region

    def is_hole(self, start: int, end: int) -> bool:
        if not self.enabled:
            return False
        if start >= self.data_hi:
            try:
                self.data_lo = os.lseek(self.fd, start, SEEK_DATA)
                self.data_hi = os.lseek(self.fd, self.data_lo, SEEK_HOLE)
            except OSError as exc:
                if exc.errno == errno.ENXIO:        # no data after start
                    self.data_lo = self.data_hi = self.size + 1
                else:
                    self.enabled = False
                    return False
        return end <= self.data_lo


# ====================================================================== session
@dataclass
class _Pending:
    hashes: list[tuple[int, bytes]] = field(default_factory=list)
    bytes: int = 0
    blocks: int = 0


class BlockSession:
    """One pass over one target.  Message handlers return what to send back."""

    def __init__(self, journal: BlockJournal, allowed: list[str]) -> None:
        self.journal = journal
        self.allowed = allowed
        self.session_id = uuid.uuid4().hex[:12]
        self.target: Target | None = None
        self.source_size = 0
        self.nblocks = 0
        self.known: dict[int, bytes] = {}
        self.view: list[bytes | None] = []          # the target's hash per block as reported to the agent
        self.dirty = (0, 0)
        self.pending = _Pending()
        self.last_commit = time.monotonic()
        self.written = self.zeroed = self.bytes_written = self.hashed = 0
        self.finished = False
        self._lock = threading.Lock()

    # ------------------------------------------------------------ hello
    def hello(self, h: bpb.BlockHello) -> bpb.BlockReceiverMessage:
        if h.protocol_version != BLOCK_PROTOCOL_VERSION:
            raise VersionMismatch(f"agent speaks block protocol {h.protocol_version}, this receiver speaks "
                                  f"{BLOCK_PROTOCOL_VERSION}; install the same cvmigrate version on both hosts")
        if h.block_size != BLOCK_SIZE:
            raise ProtocolError(f"block size {h.block_size} is not supported (only {BLOCK_SIZE})")
        if not h.target_device:
            raise ProtocolError("BlockHello names no target device")
        self.target = t = open_target(h.target_device, self.allowed, h.source_size)
        self.source_size = h.source_size
        self.nblocks = -(-h.source_size // BLOCK_SIZE)
        # the journal is keyed by the source size too: another source on the same target starts over
        self.known = self.journal.open_target(t.path, f"{t.identity}:{t.size}", h.source_size, BLOCK_SIZE)
        self.view = [None] * self.nblocks
        journal_blocks = sum(1 for i in self.known if i < self.nblocks)
        logger.info("block session %s: %s %s (%d bytes, consistency %s%s) -> %s (%d bytes); %d of %d block "
                    "hashes known from the journal", self.session_id, h.source.hostname or "?",
                    os.fsdecode(h.source.root), h.source_size, h.consistency or "?",
                    ", used blocks only" if h.used_only else "", t.path, t.size, journal_blocks, self.nblocks)
        return bpb.BlockReceiverMessage(welcome=bpb.BlockWelcome(
            session_id=self.session_id, receiver_version=__version__, protocol_version=BLOCK_PROTOCOL_VERSION,
            max_inflight_bytes=MAX_INFLIGHT, target_size=t.size, resumed=journal_blocks > 0,
            journal_blocks=journal_blocks))

    # ------------------------------------------------------------ target hashes
    def hash_target(self, stop: threading.Event) -> Iterator[bpb.BlockReceiverMessage]:
        """TargetHashes for every block, in order: journal first, the target's bytes otherwise."""
        t = self.target
        assert t is not None
        holes = _Holes(t.fd, t.size, not t.is_device)
        learned: list[tuple[int, bytes]] = []
        first, batch = 0, []
        last_flush = time.monotonic()
        for i in range(self.nblocks):
            if stop.is_set():
                return
            h = self.known.get(i)
            if h is None:
                start = i * BLOCK_SIZE
                end = min(start + BLOCK_SIZE, self.source_size)
                if holes.is_hole(start, end):
                    h = b""
                else:
                    data = os.pread(t.fd, end - start, start)
                    h = b"" if is_zero(data) else chunk_hash(data)
                    self.hashed += 1
                learned.append((i, h))
            self.view[i] = h
            batch.append(h)
            now = time.monotonic()
            if len(batch) >= HASH_BATCH or (now - last_flush > 0.2 and batch):
                yield bpb.BlockReceiverMessage(hashes=bpb.TargetHashes(first=first, hashes=batch))
                first, batch, last_flush = i + 1, [], now
            if len(learned) >= 4 * HASH_BATCH:
                self._learn(learned)
                learned = []
        if batch:
            yield bpb.BlockReceiverMessage(hashes=bpb.TargetHashes(first=first, hashes=batch))
        if learned:
            self._learn(learned)

    def _learn(self, hashes: list[tuple[int, bytes]]) -> None:
        # hashes read from the target are true now; the writer never touches a block before it is
        # reported, and a later write goes through the dirty range first
        with self._lock:
            self.journal.record(self.target.path, hashes, replace=False)

    # ------------------------------------------------------------ data
    def data(self, d: bpb.BlockData) -> list[bpb.BlockReceiverMessage]:
        t = self.target
        assert t is not None
        for seg in d.blocks:
            i = seg.index
            self._check_index(i, 1)
            length = min(BLOCK_SIZE, self.source_size - i * BLOCK_SIZE)
            if seg.raw_length != length:
                raise ProtocolError(f"block {i} declares {seg.raw_length} bytes, expected {length}")
            plain = compression.decompress(seg.codec, seg.data, seg.raw_length, BLOCK_SIZE)
            if chunk_hash(plain) != seg.hash:
                raise IntegrityError(f"block {i} does not match its hash (corrupted in transit?); run the same "
                                     "push again")
            self._before_write(i, i + 1)
            try:
                os.pwrite(t.fd, plain, i * BLOCK_SIZE)
            except OSError as exc:
                raise TargetError(f"writing block {i} of {t.path}: {exc.strerror}") from None
            self.pending.hashes.append((i, seg.hash))
            self.pending.bytes += length
            self.pending.blocks += 1
            self.written += 1
            self.bytes_written += length
        for z in d.zeros:
            self._check_index(z.first, z.count)
            self._before_write(z.first, z.first + z.count)
            start = z.first * BLOCK_SIZE
            end = min((z.first + z.count) * BLOCK_SIZE, self.source_size)
            try:
                make_zero(t, start, end - start)
            except OSError as exc:
                raise TargetError(f"zeroing blocks {z.first}+{z.count} of {t.path}: {exc.strerror}") from None
            self.pending.hashes.extend((i, b"") for i in range(z.first, z.first + z.count))
            self.pending.blocks += z.count
            self.zeroed += z.count
        return self.maybe_commit()

    def _check_index(self, first: int, count: int) -> None:
        if count < 1 or first + count > self.nblocks:
            raise ProtocolError(f"blocks {first}+{count} are outside the source's {self.nblocks} blocks")
        # the agent may only write blocks whose target hash it has been told (the hash it decided on)
        if self.view[first + count - 1] is None:
            raise ProtocolError(f"block {first + count - 1} sent before its target hash was reported")

    def _before_write(self, lo: int, hi: int) -> None:
        dlo, dhi = self.dirty
        if dlo <= lo and hi <= dhi:
            return
        new = (min(dlo, lo) if dhi > dlo else lo, max(dhi, hi + DIRTY_AHEAD))
        with self._lock:
            self.journal.record(self.target.path, [], dirty=new)
        self.dirty = new

    def maybe_commit(self, force: bool = False) -> list[bpb.BlockReceiverMessage]:
        p = self.pending
        if not p.blocks:
            return []
        if not force and p.bytes < MAX_INFLIGHT // 2 and time.monotonic() - self.last_commit < COMMIT_INTERVAL:
            return []
        t = self.target
        os.fsync(t.fd)
        last = max(i for i, _ in p.hashes)
        # the blocks just committed are clean; keep the range ahead of the write position dirty
        dirty = (last + 1, max(self.dirty[1], last + 1))
        with self._lock:
            self.journal.record(t.path, p.hashes, dirty=dirty)
        self.dirty = dirty
        self.pending = _Pending()
        self.last_commit = time.monotonic()
        return [bpb.BlockReceiverMessage(committed=bpb.BlockCommitted(bytes=p.bytes, blocks=p.blocks))]

    def done(self, d: bpb.BlockDone) -> list[bpb.BlockReceiverMessage]:
        msgs = self.maybe_commit(force=True)
        if d.blocks_total != self.nblocks:
            raise ProtocolError(f"agent counted {d.blocks_total} blocks, the source has {self.nblocks}")
        with self._lock:
            self.journal.record(self.target.path, [], dirty=(0, 0))
            rows = dict(self.journal.db.execute("SELECT idx, hash FROM blocks WHERE path=? AND idx<?",
                                                (self.target.path, self.nblocks)))
        manifest = manifest_hash(rows.get(i) for i in range(self.nblocks))
        ok = manifest == d.manifest
        if not ok:
            raise IntegrityError(f"after the pass the journal's view of {self.target.path} does not match the "
                                 "source (manifest mismatch); run the same push again")
        self.finished = True
        logger.info("block session %s finished: %d blocks written, %d zeroed, %d target blocks hashed",
                    self.session_id, self.written, self.zeroed, self.hashed)
        msgs.append(bpb.BlockReceiverMessage(summary=bpb.BlockSummary(
            blocks_written=self.written, blocks_zeroed=self.zeroed, bytes_written=self.bytes_written,
            blocks_hashed=self.hashed, manifest_ok=ok)))
        return msgs

    def close(self) -> None:
        """Stream ended: what arrived verified is made durable and journaled, then the target is closed."""
        if self.target is None:
            return
        try:
            if self.pending.blocks:
                self.maybe_commit(force=True)
        except Exception:
            logger.warning("could not commit the last blocks of %s", self.target.path, exc_info=True)
        os.close(self.target.fd)
        self.target = None


_ZERO16 = bytes(16)


def manifest_hash(hashes: Any) -> bytes:
    """XXH3-128 over the blocks' hashes in order (a zero block counts as 16 zero bytes; unknown never matches)."""
    import xxhash

    h = xxhash.xxh3_128()
    for x in hashes:
        if x is None:
            return b"unknown"
        h.update(x or _ZERO16)
    return h.digest()


# ====================================================================== servicer
_END = object()


class BlockReceiverService(bpb_grpc.BlockReceiverServicer):
    """Thin servicer: one block session at a time; every CvmError mapped to its status here."""

    def __init__(self, state_dir: str, targets: list[str] | tuple[str, ...] = ()) -> None:
        self.state_dir = state_dir
        self.targets = list(targets)
        self._busy = threading.Lock()

    def BlockTransfer(self, request_iterator: Iterator[bpb.BlockAgentMessage],
                      context: grpc.ServicerContext) -> Iterator[bpb.BlockReceiverMessage]:
        if not self._busy.acquire(blocking=False):
            context.abort(grpc.StatusCode.ABORTED, "the receiver is busy with another block session; "
                          "one device at a time")
        stop = threading.Event()
        out: queue.Queue[Any] = queue.Queue(maxsize=256)
        session: BlockSession | None = None
        journal: BlockJournal | None = None
        threads: list[threading.Thread] = []

        def put(item: Any) -> None:
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.2)
                    return
                except queue.Full:
                    continue

        def guarded(fn: Any) -> Any:
            def run() -> None:
                try:
                    fn()
                except BaseException as exc:  # handed to the response loop, which maps it
                    if not stop.is_set():
                        put(exc)
            return run

        def hasher() -> None:
            for msg in session.hash_target(stop):
                put(msg)

        def reader() -> None:
            for msg in request_iterator:
                kind = msg.WhichOneof("body")
                if kind == "data":
                    msgs = session.data(msg.data)
                elif kind == "done":
                    threads[0].join()
                    msgs = session.done(msg.done)
                else:
                    raise ProtocolError(f"unexpected {kind or 'empty'} message after BlockHello")
                for m in msgs:
                    put(m)
                if session.finished:
                    put(_END)
                    return
            if not stop.is_set():
                put(ProtocolError("the agent closed the stream before BlockDone"))

        context.add_callback(stop.set)
        try:
            journal = BlockJournal(self.state_dir)
            session = BlockSession(journal, self.targets)
            first = next(request_iterator, None)
            if first is None or first.WhichOneof("body") != "hello":
                raise ProtocolError("the first message of a BlockTransfer must be BlockHello")
            yield session.hello(first.hello)
            threads = [threading.Thread(target=guarded(hasher), name="cvm-block-hash", daemon=True),
                       threading.Thread(target=guarded(reader), name="cvm-block-recv", daemon=True)]
            for th in threads:
                th.start()
            while True:
                try:
                    item = out.get(timeout=0.5)
                except queue.Empty:
                    if stop.is_set():
                        return
                    continue
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        except CvmError as exc:
            logger.warning("block transfer refused: %s", exc)
            context.abort(getattr(grpc.StatusCode, exc.grpc_code), str(exc))
        except OSError as exc:
            logger.warning("block transfer failed: %s", exc)
            context.abort(grpc.StatusCode.INTERNAL, f"block transfer failed on the receiver: {exc}")
        finally:
            stop.set()
            for th in threads:
                th.join(timeout=30)
            if session is not None:
                session.close()
            if journal is not None:
                journal.close()
            self._busy.release()


def add_to_server(server: grpc.Server, state_dir: str, targets: list[str] | tuple[str, ...]) -> BlockReceiverService:
    """Register the block service next to the file service (create_server calls this)."""
    service = BlockReceiverService(state_dir, targets)
    bpb_grpc.add_BlockReceiverServicer_to_server(service, server)
    return service


__all__ = ["BLOCK_SIZE", "BlockReceiverService", "BlockSession", "add_to_server", "manifest_hash", "open_target"]
