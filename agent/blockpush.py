"""The agent's block plane: push a whole disk (or an image file) block by block.

The block size and the manifest both ends agree on are in common/blockproto.py;
which blocks the filesystem uses in agent/blockmap.py; how consistent the source
is (and freezing it) in agent/blockconsistency.py.

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
"""
from __future__ import annotations

import fcntl
import logging
import os
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import grpc

from cvmigrate import __version__
from cvmigrate.agent.blockconsistency import Consistency, Freezer, classify_source
from cvmigrate.agent.blockmap import used_blocks
from cvmigrate.agent.pipeline import Stop, StreamPipeline
from cvmigrate.agent.push import machine_id
from cvmigrate.common import compression
from cvmigrate.common.blockproto import BLOCK_PROTOCOL_VERSION, BLOCK_SIZE, Manifest
from cvmigrate.common.errors import CheckFailed, CvmError, ProtocolError, SourceError, UsageError
from cvmigrate.common.hashing import chunk_hash, is_zero
from cvmigrate.common.rpc import Peer, channel_options, rpc_error
from cvmigrate.common.sparse import Holes
from cvmigrate.proto import block_pb2 as bpb
from cvmigrate.proto import block_pb2_grpc as bpb_grpc
from cvmigrate.proto import transfer_pb2 as pb

logger = logging.getLogger(__name__)

ZERO_RUN_FLUSH = 4096            # blocks per ZeroRun before it is sent


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
                r.used_only_detail = ("refused on a live source (a block allocated meanwhile would be missed): "
                                      "read in full")
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
            channel = (o.channel_factory or (lambda a: grpc.insecure_channel(a, options=channel_options())))(o.address)
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
        reader = threading.Thread(target=self._guard(self._read_loop, "block reader"), name="cvm-block-read",
                                  daemon=True)
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
        self._check_stream_end(call, self._summary, self.opts.address)

    def _requests(self) -> Iterator[bpb.BlockAgentMessage]:
        o, r = self.opts, self.result
        yield bpb.BlockAgentMessage(hello=bpb.BlockHello(
            protocol_version=BLOCK_PROTOCOL_VERSION, agent_version=__version__,
            source=pb.SourceIdentity(hostname=socket.gethostname(), machine_id=machine_id(),
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
        manifest = Manifest()
        holes = Holes(fd, size, self._holes)
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
            manifest.add(h)
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
        seg = bpb.BlockSegment(index=i, codec=cast("pb.Codec", codec), raw_length=len(data), data=payload, hash=h)
        return bpb.BlockAgentMessage(data=bpb.BlockData(blocks=[seg], zeros=zeros))


def _rpc_error(exc: grpc.RpcError, address: str, connecting: str | None = None,
               probe: Callable[[str, bool], str] | None = None) -> CvmError:
    """Our error for a failed BlockTransfer; ``connecting`` (this side's transport) before the first reply."""
    return rpc_error(
        exc, Peer("receiver", address, "`cvmigrate receive --block-target ...`"),
        refused="receiver refused the block transfer", transport=connecting, probe=probe,
        by_code={"UNIMPLEMENTED": lambda _: ProtocolError(f"the receiver at {address} has no block service; "
                                                          "upgrade it to this cvmigrate version"),
                 "FAILED_PRECONDITION": lambda d: CheckFailed(f"receiver refused the block transfer: {d}")})
