"""One block pass over one target on the receiver: hello, target hashes, data, done.

Why the receiver streams the target's hashes to the agent: the agent must
know, per block, whether the target already holds it (incremental pass,
resume) before it spends the wire on it.  The receiver takes those hashes
from its journal (receiver/blockjournal.py) when it can and otherwise reads
the target -- sequentially, in a thread of its own, ahead of the agent -- so
the first pass to an empty target costs one sequential read of the target
(holes of an image file cost nothing) and every later pass costs no target
read at all.  Which targets may be written: receiver/blocktarget.py.
"""
from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

from cvmigrate import __version__
from cvmigrate.common import compression
from cvmigrate.common.blockproto import BLOCK_PROTOCOL_VERSION, BLOCK_SIZE, manifest_hash
from cvmigrate.common.errors import IntegrityError, ProtocolError, TargetError, VersionMismatch
from cvmigrate.common.hashing import chunk_hash, is_zero
from cvmigrate.common.sparse import Holes
from cvmigrate.proto import block_pb2 as bpb
from cvmigrate.receiver.blockjournal import BlockJournal
from cvmigrate.receiver.blocktarget import Target, make_zero, open_target

logger = logging.getLogger(__name__)

MAX_INFLIGHT = 64 << 20
COMMIT_INTERVAL = 1.0
DIRTY_AHEAD = 128              # blocks the dirty range is widened by at a time
HASH_BATCH = 2048              # hashes per TargetHashes message


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

    def _open_target(self) -> Target:
        """The target BlockHello opened; every later message needs it."""
        if self.target is None:
            raise ProtocolError("block data before BlockHello (or after the stream ended)")
        return self.target

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
        t = self._open_target()
        holes = Holes(t.fd, t.size, not t.is_device)
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
            self.journal.record(self._open_target().path, hashes, replace=False)

    # ------------------------------------------------------------ data
    def data(self, d: bpb.BlockData) -> list[bpb.BlockReceiverMessage]:
        t = self._open_target()
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
            self.journal.record(self._open_target().path, [], dirty=new)
        self.dirty = new

    def maybe_commit(self, force: bool = False) -> list[bpb.BlockReceiverMessage]:
        p = self.pending
        if not p.blocks:
            return []
        if not force and p.bytes < MAX_INFLIGHT // 2 and time.monotonic() - self.last_commit < COMMIT_INTERVAL:
            return []
        t = self._open_target()
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
        path = self._open_target().path
        with self._lock:
            self.journal.record(path, [], dirty=(0, 0))
            rows = dict(self.journal.db.execute("SELECT idx, hash FROM blocks WHERE path=? AND idx<?",
                                                (path, self.nblocks)))
        manifest = manifest_hash(rows.get(i) for i in range(self.nblocks))
        ok = manifest == d.manifest
        if not ok:
            raise IntegrityError(f"after the pass the journal's view of {path} does not match the "
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

