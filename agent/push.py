"""The agent's side of a pass: scan, ask, read, hash, compress, stream.

Why a pipeline of threads around one bidirectional stream: per-file round
trips would make small files crawl, so nothing ever waits for an answer it
does not need yet.
- the scanner thread streams EntryBatch messages (at most
  ``max_pending_entries`` entries awaiting a decision);
- the response loop (caller's thread) turns NEED decisions into read jobs;
- the data thread reads each file's chunks, packs small files into shared
  segments and big chunks into their own, and hands each DataBatch to a small
  pool that compresses segments in parallel (zstd and xxhash release the GIL);
- the gRPC request iterator sends messages in exactly the order they were
  queued, so a file's chunks and its FileEnd stay in order.
Plain bytes in flight (sent but not reported durable) never exceed the
receiver's ``max_inflight_bytes``: that is what bounds re-sending after a crash.
"""
from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc

from cvmigrate import __version__
from cvmigrate.agent.pipeline import Stop, StreamPipeline
from cvmigrate.agent.reader import Chunk, FileChanged, read_cdc_chunks, read_chunks, stat_key
from cvmigrate.agent.scanner import DirComplete, Scanner
from cvmigrate.common import cdc, compression
from cvmigrate.common.errors import Busy, CvmError, Misplaced, ProtocolError, TransferIncomplete, TransportError
from cvmigrate.common.hashing import FileHasher, chunk_hash, is_zero
from cvmigrate.common.model import CHUNK_SIZE, PROTOCOL_VERSION, Entry, Kind
from cvmigrate.common.passes import PushResult
from cvmigrate.common.ratelimit import TokenBucket
from cvmigrate.common.rpc import Peer, RetryPolicy, call_with_retry, channel_options, rpc_error
from cvmigrate.common.serde import add_entry
from cvmigrate.proto import transfer_pb2 as pb
from cvmigrate.proto import transfer_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)

ENTRY_BATCH = 1024             # entries per EntryBatch
SEGMENT_TARGET = 1 << 20       # small files are packed into segments of about this size
BATCH_TARGET = 4 << 20         # plain bytes per DataBatch
BIG_CHUNK = 256 << 10          # chunks at least this large get a segment (and a codec decision) of their own
MAX_FILE_ATTEMPTS = 3          # reads of a file that keeps changing / failing verification
MAX_OPEN_FILES = 8192          # files decided NEED but not yet committed before the scanner waits
META_WINDOW_LOG = 23           # the metadata stream's window (8 MiB): tens of thousands of entries back
#: Connections one stream may open to find a receiver worker of its own (receiver/shards.py takes any stream from
#: its attempt 32 on, so this only bounds what a receiver that refuses forever could cost).
MAX_PLACEMENTS = 64
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_O_NOATIME = getattr(os, "O_NOATIME", 0)


@dataclass
class PushOptions:
    source: str
    address: str
    rules: Any = None                    # ExcludeRules (or None)
    delete: bool = True
    checksum: bool = False
    chunk_size: int = CHUNK_SIZE
    compress_level: int | None = None    # None: adapt to the link (see _Levels); 0: never compress
    workers: int = 2
    one_file_system: bool = True
    include_mounts: tuple[bytes, ...] = ()
    migration_id: str = ""
    channel_factory: Callable[[str], grpc.Channel] | None = None
    metadata: tuple[tuple[str, str], ...] = ()
    bwlimit_kbps: int | None = None      # Client.Rsync.BandwidthLimit / --bwlimit (KB/s on the wire)
    streams: int = 1                     # parallel streams (shards); 0 = what both sides' cores allow
    transport: str = ""                  # plaintext / tls / mtls (common.connectfail): names a failed handshake
    probe: Callable[[str, bool], str] | None = None  # TlsProbe: tells a refused certificate from a cut link


@dataclass
class _Job:
    entry: Entry
    have: dict[int, bytes] = field(default_factory=dict)      # grid: offset -> hash the receiver holds there
    attempt: int = 1
    avg: int = 0                                              # 0: the grid; else content-defined (cdc.py)
    offered: dict[bytes, int] = field(default_factory=dict)   # content-defined: hash -> length it holds

    def offer(self, avg: int, have: Any) -> None:
        """Take the receiver's word on how to cut the file and which chunks it already holds."""
        if avg and not cdc.valid_avg(avg):
            raise ProtocolError(f"receiver asked for content-defined chunks of average {avg} bytes, which this "
                                "agent does not cut; install the same cvmigrate version on both hosts")
        self.avg = avg
        self.have = {h.offset: h.hash for h in have}
        self.offered = {h.hash: h.length for h in have}


class _Levels:
    """Chooses the zstd level per data batch, like ``zstd --adapt``.

    Compression only pays while the link is the bottleneck.  A loopback
    receiver is never behind a slow link, so nothing is compressed there
    (except re-sync data: see ``for_delta``).
    Elsewhere the level starts at 1 and follows the send queue: a queue that
    stays full means the link is slower than we produce (raise the level, up
    to 6); one that runs dry means compression is what the link waits for
    (lower it, down to 1).  With one zstd stream per connection (``observe``),
    compression runs on the sending thread and the signal is measured there:
    time spent waiting for the link against time spent compressing.
    """

    def __init__(self, fixed: int | None, address: str, limited: bool = False) -> None:
        self.fixed = fixed
        fast_link = _is_loopback(address) and not limited
        self.level = 0 if fixed is None and fast_link else (fixed if fixed is not None else 1)
        self.adapt = fixed is None and self.level > 0

    def for_delta(self, level: int) -> int:
        """The level for re-sync data (chunks of files the target held an older version of): compressed
        even on loopback, where it is few bytes and each saved byte is one fewer on the wire."""
        return level if self.fixed == 0 else max(level, 1)

    def observe(self, busy: float, waited: float) -> None:
        """One message sent by the stream: ``busy`` seconds compressing it, ``waited`` seconds for the link
        (the limiter and gRPC taking it).  Waiting far longer than compressing: the link is the bottleneck,
        a higher level costs nothing; compressing longer than waiting: the link waits for us."""
        if self.adapt:
            if waited > 2 * busy:
                self.level = min(compression.MAX_STREAM_LEVEL, self.level + 1)
            elif busy > waited:
                self.level = max(1, self.level - 1)

    def next(self, queued: int, capacity: int) -> int:
        if self.adapt:
            if queued >= capacity * 3 // 4:
                self.level = min(6, self.level + 1)
            elif queued <= 1:
                self.level = max(1, self.level - 1)
        return self.level


def _is_loopback(address: str) -> bool:
    import ipaddress

    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class PushSession(StreamPipeline):
    """One pass over one stream.  ``run()`` returns the result or raises a CvmError."""

    def __init__(self, opts: PushOptions, fault: Callable[[Entry, int, bytearray], None] | None = None) -> None:
        self.opts = opts
        self.result = PushResult()
        self.scanner = Scanner(opts.source, opts.rules, one_file_system=opts.one_file_system,
                               include_mounts=opts.include_mounts)
        super().__init__(queue_size=64, workers=opts.workers, pool_name="cvm-compress")
        self._src = self.scanner.root
        self._needq: queue.Queue[list[_Job] | None] = queue.Queue()   # the NEED files of one Decisions message
        self._pending: dict[int, Entry] = {}       # sent, no decision yet
        self._open: dict[int, _Job] = {}            # NEED/DEFERRED: not yet committed
        self._scan_done = False
        self._data_busy = 0                         # job lists handed to the data thread (queued or read), not finished
        self._done_sent = False
        self._max_pending = 50_000
        self._fault = fault
        self._started = False
        #: Set by push() for the first connection only: a reconnect is not worth a 5 s probe.
        self.connect_probe: Callable[[str, bool], str] | None = opts.probe
        self._levels = _Levels(opts.compress_level, opts.address, limited=bool(opts.bwlimit_kbps))
        self._stream: compression.StreamEncoder | None = None   # one zstd stream, when the receiver takes it
        self._meta: compression.StreamEncoder | None = None     # the entries' own stream, likewise
        self.bucket = TokenBucket(opts.bwlimit_kbps * 1024 if opts.bwlimit_kbps else None)
        self._placement = 1   # this stream's connection attempt (Hello.placement_attempt)

    def batch_target(self) -> int:
        """Plain bytes per DataBatch: 4 MiB, or about half a second of the bandwidth limit when one is set.

        The limiter releases whole messages; at 512 KB/s a 4 MiB batch would leave in one 8-second lump,
        and the live rate (counted as bytes leave the limiter) would jump between zero and bursts.
        """
        rate = self.bucket.rate
        return BATCH_TARGET if rate is None else int(min(BATCH_TARGET, max(64 << 10, rate / 2)))

    # ------------------------------------------------------------------ running
    def run(self) -> PushResult:
        t0 = time.monotonic()
        threads = [threading.Thread(target=self._guard(self._scan_loop, "scanner"), name="cvm-scan", daemon=True),
                   threading.Thread(target=self._guard(self._data_loop, "data reader"), name="cvm-data", daemon=True)]
        channel: grpc.Channel | None = None
        try:
            while True:
                # a channel of its own (channel_options: no shared subchannel) is a TCP connection of its own
                channel = (self.opts.channel_factory or _insecure_channel)(self.opts.address)
                stub = pb_grpc.ReceiverStub(channel)
                call = self._call = stub.Transfer(self._requests(self._placement),
                                                  metadata=self.opts.metadata or None)
                if self._replies(call, threads) or self._failed is not None:
                    break
                channel.close()
            self._check_stream_end(call, self._done_sent, self.opts.address)
        finally:
            self._shutdown()
            if channel is not None:
                channel.close()
        s = self.scanner.stats
        r = self.result
        r.take_scan(s)
        r.seconds = time.monotonic() - t0
        return r

    def _replies(self, call: Any, threads: list[threading.Thread]) -> bool:
        """Read the receiver's replies until the stream ends; False if the receiver sent this stream to another
        worker (``Misplaced``, before Welcome: only Hello was sent) and it is to connect again."""
        try:
            for msg in call:
                kind = msg.WhichOneof("body")
                if kind == "welcome":
                    self._on_welcome(msg.welcome, threads)
                elif kind == "decisions":
                    self._on_decisions(msg.decisions)
                elif kind == "committed":
                    self._on_committed(msg.committed)
                elif kind == "summary":
                    # keep reading until the receiver closes the stream: by then its
                    # session is torn down and a next pass will not find it busy
                    self._on_summary(msg.summary)
                    self._end_stream()
                if self._failed:
                    break
        except grpc.RpcError as exc:
            if self._failed:
                raise self._failed from None
            err = _rpc_error(exc, self.opts.address, None if self._started else self.opts.transport,
                             self.connect_probe)
            if isinstance(err, Misplaced) and not self._started and self._placement < MAX_PLACEMENTS:
                # not a failure of the pass: no retry budget spent, nothing to resend
                logger.debug("placement attempt %d: %s", self._placement, err)
                with self._cv:
                    self._placement += 1   # the request iterator of the refused call ends
                    self.result.placement_retries += 1
                    self._cv.notify_all()
                return False
            if self._started and isinstance(err, TransportError):
                err = TransportError(f"lost the connection to the receiver at {self.opts.address} mid-pass "
                                     f"({exc.details() if hasattr(exc, 'details') else exc}); run the same "
                                     "command again to resume where it stopped")
            raise err from None
        return True

    def cancel(self, reason: str = "the pass was cancelled") -> None:
        """Stop this pass now, from any thread: ``run()`` raises a CvmError (not retryable, so ``push()``
        does not reconnect); the receiver keeps everything it reported committed."""
        if self._failed is None:
            self._failed = CvmError(reason)
        self._shutdown()
        call = getattr(self, "_call", None)
        if call is not None:
            call.cancel()

    def _wake(self) -> None:
        self._needq.put(None)

    def _hello_shard(self, hello: pb.Hello) -> None:
        """A single stream says nothing about shards (agent/shards.py fills pass id and shard)."""

    def _requests(self, placement: int) -> Iterator[pb.AgentMessage]:
        """Hello, then (once this call is welcomed) the queued messages.  ``placement``: the connection attempt
        (Hello.placement_attempt); the iterator of a call the receiver refused ends without touching the queue,
        which the next call's iterator reads."""
        src = pb.SourceIdentity(hostname=socket.gethostname(), machine_id=machine_id(), root=self._src,
                                migration_id=self.opts.migration_id)
        rules = list(getattr(self.opts.rules, "lines", ()) or ())
        hello = pb.Hello(
            protocol_version=PROTOCOL_VERSION, agent_version=__version__, source=src,
            options=pb.Options(delete=self.opts.delete, exclude_rules=rules, checksum=self.opts.checksum,
                               chunk_size=self.opts.chunk_size))
        self._hello_shard(hello)
        hello.placement_attempt = placement
        yield pb.AgentMessage(hello=hello)
        with self._cv:
            while not self._started and placement == self._placement and not self._stop.is_set():
                self._cv.wait(0.5)
            if placement != self._placement:
                return
        for item in self._queued("building a data message"):
            busy = 0.0
            if isinstance(item, _Plain):  # compressed here, in send order, into the connection's stream
                t = time.monotonic()
                item = _build_stream(item, self._stream, self._levels.level)  # type: ignore[arg-type]
                busy = time.monotonic() - t
            t = time.monotonic()
            if isinstance(item, tuple):  # a data batch and its bytes on the wire
                item, wire = item
                self.bucket.take(wire)
                # counted here, as it leaves the limiter: a queued message is not "sent" yet
                self.result.bytes_sent += wire
            yield item
            if busy:
                self._levels.observe(busy, time.monotonic() - t)

    # ------------------------------------------------------------------ responses
    def _on_welcome(self, w: pb.Welcome, threads: list[threading.Thread]) -> None:
        if w.protocol_version != PROTOCOL_VERSION:
            raise ProtocolError(f"receiver answered protocol {w.protocol_version}, we speak {PROTOCOL_VERSION}")
        self._window.limit = max(self.opts.chunk_size * 2, w.max_inflight_bytes or self._window.limit)
        self._max_pending = max(ENTRY_BATCH * 2, w.max_pending_entries or self._max_pending)
        self.result.resumed = w.resumed
        if w.max_window_log and self._meta is None:
            # metadata is always worth compressing (even on loopback): it is small and repeats itself
            self._meta = compression.StreamEncoder(1, min(META_WINDOW_LOG, w.max_window_log))
        if self._levels.level > 0 and w.max_window_log and self._stream is None:
            self._stream = compression.StreamEncoder(
                self._levels.level, min(compression.STREAM_WINDOW_LOG, w.max_window_log))
        logger.info("session %s opened with receiver %s (resumed=%s)", w.session_id, self.opts.address, w.resumed)
        if not self._started:
            with self._cv:
                self._started = True
                self._cv.notify_all()   # the request iterator goes on past Hello
            for t in threads:
                t.start()

    def _on_decisions(self, ds: pb.Decisions) -> None:
        r = self.result
        with self._cv:
            pending = self._pending
            skipped = [pending.pop(i, None) for i in ds.skip]
            applied = [pending.pop(i, None) for i in ds.applied]
            if None in skipped or None in applied:
                raise ProtocolError("receiver decided on an unknown entry id")
            r.files_skipped += sum(1 for e in skipped if e is not None and e.kind is Kind.REGULAR)
            r.metadata_applied += len(applied)
            need: list[_Job] = []
            for d in ds.decisions:
                entry = self._pending.pop(d.id, None)
                if entry is None:
                    raise ProtocolError(f"receiver decided on unknown entry id {d.id}")
                a = d.action
                if a == pb.SKIP:
                    if entry.kind is Kind.REGULAR:
                        r.files_skipped += 1
                elif a == pb.APPLIED:
                    r.metadata_applied += 1
                elif a == pb.NEED:
                    job = _Job(entry)
                    if d.cdc_avg or d.have:
                        job.offer(d.cdc_avg, d.have)
                    self._open[d.id] = job
                    need.append(job)
                elif a == pb.DEFERRED:
                    self._open[d.id] = _Job(entry)
                else:
                    raise ProtocolError(f"receiver sent unknown action {a} for entry {d.id}")
            if need:
                # counted busy as it is queued, under the lock _maybe_done reads it with: counted only once the
                # data thread took it, a list between get() and the count looked like no work left, and Done
                # went out before its files (the receiver then reported "no content arrived")
                self._data_busy += 1
                self._needq.put(need)   # one hand-off per message, not per file
            self._cv.notify_all()
        self._maybe_done()

    def _on_committed(self, c: pb.Committed) -> None:
        self._window.release(c.bytes)
        with self._cv:
            for i in c.ids:
                job = self._open.pop(i, None)
                if job is not None and job.entry.kind is Kind.REGULAR and not job.entry.hardlink_to:
                    self.result.files_transferred += 1
            for retry in c.retries:
                job = self._open.get(retry.file_id)
                if job is None:
                    raise ProtocolError(f"receiver asked to retry unknown file {retry.file_id}")
                job.attempt += 1
                if job.attempt > MAX_FILE_ATTEMPTS:
                    self.result.errors.append(f"/{_p(job.entry.path)}: failed verification {MAX_FILE_ATTEMPTS} times "
                                              f"({retry.reason}); check memory and disks on both hosts")
                    self._open.pop(retry.file_id)
                    continue
                logger.warning("receiver asked to resend /%s: %s", _p(job.entry.path), retry.reason)
                job.offer(retry.cdc_avg, retry.have)
                self._done_sent = False
                self._data_busy += 1
                self._needq.put([job])
            self._cv.notify_all()
        self._maybe_done()

    def _on_summary(self, s: pb.Summary) -> None:
        r = self.result
        r.deleted = s.deleted
        r.bytes_reused = s.bytes_reused
        r.errors.extend(s.errors)
        with self._cv:
            leftover = [j for j in self._open.values()]
        for job in leftover:
            r.errors.append(f"/{_p(job.entry.path)}: not committed by the receiver")

    def _maybe_done(self) -> None:
        with self._cv:
            if (self._done_sent or not self._scan_done or self._pending or self._data_busy
                    or not self._needq.empty()):
                return
            self._done_sent = True
        self._put(pb.AgentMessage(done=pb.Done()))

    # ------------------------------------------------------------------ scanning
    def _scan_loop(self) -> None:
        msg = pb.AgentMessage()
        batch = msg.entries  # filled in place: no copy of the batch when it is sent
        entries, n = batch.entries, 0
        pending = self._pending
        stopped = self._stop.is_set
        for item in self._walk():
            if stopped():
                raise Stop()
            if type(item) is Entry:  # the common case first: one check per entry
                add_entry(entries, item)
                pending[item.id] = item  # a dict store is atomic; the response thread pops under the lock
                n += 1
                if n >= ENTRY_BATCH:
                    self._send_entries(msg)
                    msg = pb.AgentMessage()
                    batch = msg.entries
                    entries, n = batch.entries, 0
                continue
            if isinstance(item, DirComplete):
                (batch.completed_dirs if item.complete else batch.incomplete_dirs).append(item.path)
            elif isinstance(item, bytes):  # a sharded pass: a name sent on another shard (agent/shards.py)
                batch.present.append(item)
            elif item is None and (n or batch.completed_dirs or batch.incomplete_dirs or batch.present):
                # a sharded pass's input paused: what this batch holds may be awaited elsewhere
                self._send_entries(msg)
                msg = pb.AgentMessage()
                batch = msg.entries
                entries, n = batch.entries, 0
        if batch.entries or batch.completed_dirs or batch.incomplete_dirs or batch.present:
            self._send_entries(msg)
        with self._cv:
            self._scan_done = True
        self._maybe_done()

    def _walk(self) -> Iterator[Entry | DirComplete | bytes | None]:
        """What this stream sends: the whole walk (a sharded pass feeds each stream its share instead)."""
        return self.scanner.walk()

    def _send_entries(self, msg: pb.AgentMessage) -> None:
        if self._meta is not None:  # only this (the scanner's) thread feeds the metadata stream: in order
            msg = pb.AgentMessage(packed_entries=self._meta.encode(msg.entries.SerializeToString()))
        self._put(msg)
        with self._cv:
            # both backlogs stay bounded: entries awaiting a decision, and files awaiting their data
            # (each costs memory on both sides; scanning far ahead of the data buys nothing)
            while ((len(self._pending) > self._max_pending or len(self._open) > MAX_OPEN_FILES)
                   and not self._stop.is_set()):
                if not self._cv.wait(0.5):
                    # an empty batch lets the receiver run its timed group commit, which is
                    # what frees the backlog when nothing else is on its way
                    self._cv.release()
                    try:
                        self._put(pb.AgentMessage(entries=pb.EntryBatch()))
                    finally:
                        self._cv.acquire()

    # ------------------------------------------------------------------ data
    def _data_loop(self) -> None:
        packer = _Packer(self)
        while True:
            try:
                jobs = self._needq.get(timeout=0.05 if packer.has_data() else None)
            except queue.Empty:
                packer.flush()          # nothing else to add: send what we have
                continue
            if jobs is None:
                return
            try:
                for job in jobs:
                    self._read_file(job, packer)
            finally:
                if self._needq.empty():
                    packer.flush()
                with self._cv:
                    self._data_busy -= 1
            self._maybe_done()

    def _read_file(self, job: _Job, packer: _Packer) -> None:
        e = job.entry
        path = self._src + b"/" + e.path if e.path else self._src
        try:
            # O_NONBLOCK: a path that became a fifo since the scan must not hang the pass (no effect on files)
            fd = os.open(path, _OPEN_FLAGS | _O_NOATIME)
        except PermissionError:
            fd = os.open(path, _OPEN_FLAGS)
        except OSError as exc:
            packer.abort(e.id, f"cannot open: {exc.strerror}", changed=exc.errno == 2)
            return
        try:
            if not job.avg and e.size <= self.opts.chunk_size and self._read_whole(fd, job, packer):
                return
            for attempt in range(MAX_FILE_ATTEMPTS):
                st0 = os.fstat(fd)
                if (st0.st_mode & 0o170000) != 0o100000:
                    packer.abort(e.id, "no longer a regular file", changed=True)
                    return
                hasher = FileHasher()
                size, grid = st0.st_size, self.opts.chunk_size
                items = (read_cdc_chunks(fd, size, job.avg, hasher, job.offered or None) if job.avg
                         else read_chunks(fd, size, grid, hasher, job.have or None))
                try:
                    for item in items:
                        if isinstance(item, Chunk):
                            self.result.bytes_read += len(item.data)
                            packer.add(e, item, delta=bool(job.avg))
                        elif len(item) == 3:
                            packer.add_reuse(e.id, *item)
                        else:
                            packer.add_reuse(e.id, item[0], min(grid, size - item[0]), item[1])
                    if stat_key(os.fstat(fd)) != stat_key(st0):
                        raise FileChanged("modified while being read")
                except FileChanged as exc:
                    retrying = attempt + 1 < MAX_FILE_ATTEMPTS
                    packer.abort(e.id, str(exc), changed=True, retrying=retrying)
                    if retrying:
                        logger.info("/%s changed while being read; reading it again", _p(e.path))
                        job.have, job.offered = {}, {}
                        continue
                    return
                restat = stat_key(st0) != (e.size, e.mtime_ns, e.ctime_ns, e.ino)
                packer.end(e.id, st0, hasher.digest(), restat)
                return
        finally:
            os.close(fd)

    def _read_whole(self, fd: int, job: _Job, packer: _Packer) -> bool:
        """A file of at most one grid chunk, unchanged since the scan: one read, one fstat, one hash.

        Most files of a tree are this small.  The scan's lstat stands in for the fstat before the
        read: if the fstat after it still shows the scanned size, mtime, ctime and inode, nothing
        wrote the file from the scan to the end of the read (a write moves mtime and ctime), which
        is what the general path's two fstats prove.  The file's hash is its only chunk's hash
        (XXH3-128 of the same bytes).  False, with nothing sent: the file changed since the scan
        (or is no longer a regular file) and the general path reads it with its own checks.
        """
        e = job.entry
        try:
            data = os.pread(fd, e.size + 1, 0)   # one byte more: a file that grew shows here
            st = os.fstat(fd)
        except OSError:
            return False
        if (len(data) != e.size or st.st_mode & 0o170000 != 0o100000
                or (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino) != (e.size, e.mtime_ns, e.ctime_ns, e.ino)):
            return False
        h = chunk_hash(data)
        if not is_zero(data):   # an all-zero file travels as its size alone (the receiver leaves a hole)
            if job.have.get(0) == h:
                packer.add_reuse(e.id, 0, len(data), h)
            else:
                self.result.bytes_read += len(data)
                packer.add(e, Chunk(0, data, h))
        packer.end(e.id, st, h, False)
        return True


class _Packer:
    """Builds DataBatch messages: small chunks share segments, big ones get their own."""

    def __init__(self, session: PushSession) -> None:
        self.s = session
        self.segments: list[_Segment] = []
        self.small_refs: list[_Ref] = []
        self.small_parts: list[bytes] = []
        self.small_len = 0
        self.small_delta = False   # the shared segment carries re-sync data (compressed even on loopback)
        self.batch_len = 0
        self.batch_target = session.batch_target()   # plain bytes per DataBatch (re-read at every flush)
        self.ends: list[_End] = []
        self.aborts: list[pb.FileAbort] = []

    def has_data(self) -> bool:
        return bool(self.segments or self.small_refs or self.ends or self.aborts)

    def add(self, e: Entry, c: Chunk, delta: bool = False) -> None:
        n = len(c.data)
        if self.s._window.would_block(n):
            # what this packer holds counts against the window: send it before waiting, or the
            # receiver may never get enough to commit and free the window
            self.flush()
        self.s._window.acquire(n)
        if self.s._stop.is_set():
            raise Stop()
        data = c.data
        if self.s._fault is not None:
            buf = bytearray(data)
            self.s._fault(e, c.offset, buf)
            data = bytes(buf)
        ref = (e.id, c.offset, n, c.hash, False)
        if n >= BIG_CHUNK:
            self._close_small()
            self.segments.append(([ref], [data], n, delta))
        else:
            self.small_refs.append(ref)
            self.small_parts.append(data)
            self.small_len += n
            self.small_delta = self.small_delta or delta
            if self.small_len >= SEGMENT_TARGET:
                self._close_small()
        self.batch_len += n
        if self.batch_len >= self.batch_target:
            self.flush()

    def add_reuse(self, file_id: int, offset: int, length: int, h: bytes) -> None:
        # a reference costs no bytes but must keep its place among the file's chunks
        self.small_refs.append((file_id, offset, length, h, True))

    def end(self, file_id: int, st: os.stat_result, digest: bytes, restat: bool) -> None:
        # no need to close the shared segment: a batch's ends are processed after all its segments
        self.ends.append((file_id, st, digest, restat))
        if len(self.ends) >= 4096:
            self.flush()

    def abort(self, file_id: int, reason: str, *, changed: bool = False, retrying: bool = False) -> None:
        self._close_small()
        self.aborts.append(pb.FileAbort(file_id=file_id, reason=reason, changed_during_copy=changed,
                                        retrying=retrying))
        if not retrying:
            with self.s._cv:
                job = self.s._open.pop(file_id, None)
            where = f"/{_p(job.entry.path)}" if job else f"file {file_id}"
            if changed:
                self.s.result.changed_during_copy.append(where)
            else:
                self.s.result.errors.append(f"{where}: {reason}")
        self.flush()

    def _close_small(self) -> None:
        if self.small_refs:
            self.segments.append((self.small_refs, self.small_parts, self.small_len, self.small_delta))
            self.small_refs, self.small_parts, self.small_len, self.small_delta = [], [], 0, False

    def flush(self) -> None:
        self._close_small()
        if not (self.segments or self.ends or self.aborts):
            return
        segments, ends, aborts = self.segments, self.ends, self.aborts
        self.segments, self.ends, self.aborts, self.batch_len = [], [], [], 0
        self.batch_target = self.s.batch_target()   # per batch, not per chunk: follows a changed --bwlimit
        if self.s._stream is not None:
            self.s._put(_Plain(segments, ends, aborts))   # the sending thread compresses it into the stream
            return
        levels = self.s._levels
        level = levels.next(self.s._sendq.qsize(), self.s._sendq.maxsize)
        fut = self.s._pool.submit(_build_data, segments, ends, aborts, level, levels.for_delta(level))
        self.s._put(fut)


#: What the packer keeps per chunk, file end and segment until the batch is built: plain tuples, written into the
#: message being sent in one constructor call each (a ChunkRef message per chunk, copied again into its parent by
#: ``extend``, cost twice as much).
_Ref = tuple[int, int, int, bytes, bool]               # file id, offset, length, hash, reuse
_End = tuple[int, os.stat_result, bytes, bool]         # file id, fstat after the read, file hash, restat
_Segment = tuple[list[_Ref], list[bytes], int, bool]   # refs, their plain bytes, plain length, re-sync data


def _add_refs(seg: pb.Segment, refs: list[_Ref]) -> None:
    add = seg.chunks.add
    for file_id, offset, length, h, reuse in refs:
        add(file_id=file_id, offset=offset, length=length, hash=h, reuse=reuse)


def _add_ends(batch: pb.DataBatch, ends: list[_End], aborts: list[pb.FileAbort]) -> None:
    add = batch.ends.add
    for file_id, st, digest, restat in ends:
        if restat:   # the file changed since the scan: its new metadata travels with it
            add(file_id=file_id, size=st.st_size, hash=digest, restat=True, mtime_ns=st.st_mtime_ns,
                source=pb.Fingerprint(dev=st.st_dev, ino=st.st_ino, ctime_ns=st.st_ctime_ns))
        else:
            add(file_id=file_id, size=st.st_size, hash=digest)
    if aborts:
        batch.aborts.extend(aborts)


def _build_data(segments: list[_Segment], ends: list[_End], aborts: list[pb.FileAbort], level: int,
                delta_level: int) -> tuple[pb.AgentMessage, int]:
    """Compress each segment (in a pool thread) and assemble one DataBatch in place.

    Built inside the message that is sent: constructing a parent with
    ``data=batch`` or appending a finished Segment would copy every byte again.
    Returns the message and its payload size on the wire.
    """
    msg = pb.AgentMessage()
    batch = msg.data
    sent = 0
    for refs, parts, length, delta in segments:
        plain = parts[0] if len(parts) == 1 else b"".join(parts)
        codec, data = compression.compress(plain, delta_level if delta else level)
        seg = batch.segments.add(codec=codec, raw_length=length, data=data)
        _add_refs(seg, refs)
        sent += len(data)
    _add_ends(batch, ends, aborts)
    return msg, sent


@dataclass(slots=True)
class _Plain:
    """A data batch not yet compressed: it enters the connection's zstd stream when it is sent."""

    segments: list[_Segment]
    ends: list[_End]
    aborts: list[pb.FileAbort]


def _build_stream(p: _Plain, stream: compression.StreamEncoder, level: int) -> tuple[pb.AgentMessage, int]:
    """Like ``_build_data``, but each segment becomes the next piece of the one stream (in send order), or
    travels raw while its file's data does not shrink (``StreamEncoder.encode_segment``)."""
    msg = pb.AgentMessage()
    batch = msg.data
    sent = 0
    for refs, parts, length, _ in p.segments:
        if length:
            plain = parts[0] if len(parts) == 1 else b"".join(parts)
            codec, data = stream.encode_segment(plain, level, refs[0][0] if len(refs) == 1 else None)
            seg = batch.segments.add(codec=codec, raw_length=length, data=data)
            sent += len(data)
        else:
            seg = batch.segments.add()   # references only: nothing enters the stream
        _add_refs(seg, refs)
    _add_ends(batch, p.ends, p.aborts)
    return msg, sent


def _insecure_channel(address: str) -> grpc.Channel:
    return grpc.insecure_channel(address, options=channel_options())


def _rpc_error(exc: grpc.RpcError, address: str, connecting: str | None = None,
               probe: Callable[[str, bool], str] | None = None) -> CvmError:
    """Our error for a failed Transfer; ``connecting`` (this side's transport) when no message arrived yet,
    so a connection that never worked is named by its cause (DNS, refused, TLS, ...)."""
    return rpc_error(exc, Peer("receiver", address, "`cvmigrate receive`"), refused="receiver refused the transfer",
                     transport=connecting, probe=probe)


def machine_id() -> str:
    """This host's /etc/machine-id ("" if unreadable): the receiver's journal names the source by it."""
    try:
        with open("/etc/machine-id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""


def _p(path: bytes) -> str:
    return os.fsdecode(path)


def check_complete(result: PushResult) -> None:
    """Raise TransferIncomplete unless every entry was committed and verified."""
    problems = []
    if result.errors:
        problems.append(f"{len(result.errors)} error(s), first: {result.errors[0]}")
    if result.changed_during_copy:
        problems.append(f"{len(result.changed_during_copy)} file(s) changed during copy, first: "
                        f"{result.changed_during_copy[0]}")
    if problems:
        raise TransferIncomplete("; ".join(problems) + "; run the same push again (stop the applications "
                                 "writing those files for the final pass)")


def push(opts: PushOptions, *, retry_for: float = 600.0, on_session: Callable[[PushSession], None] | None = None,
         sleep: Callable[[float], None] = time.sleep, wait_for_receiver: bool = False) -> PushResult:
    """Run a pass, reconnecting and resuming on link loss for up to ``retry_for`` seconds.

    Each attempt is a new stream; the receiver's journal makes it continue
    where the last one stopped, so a link that is down for minutes costs at
    most one in-flight window.  Errors that retrying cannot fix (refused
    credentials, bad input, a corrupt file) end the pass at once, and so does
    a first connection that never reached the receiver: a typo, a receiver not
    started yet or a firewall is reported in seconds with its cause, not
    retried for ``retry_for`` -- that budget is for links lost after a session
    was established.  ``wait_for_receiver`` lets a caller that has just
    started the receiver itself spend the budget on the first connection too.
    """
    sent = read = placed = attempts = 0
    established = False
    from cvmigrate.agent.shards import new_pass, plan_streams

    def attempt(n: int) -> PushResult:
        nonlocal sent, read, placed, attempts, established
        attempts = n
        session: Any = new_pass(opts, plan_streams(opts))   # one stream, or the shards of agent/shards.py
        if established:
            session.connect_probe = None
        if on_session is not None:
            on_session(session)
        try:
            result: PushResult = session.run()
            return result
        except CvmError:
            sent += session.result.bytes_sent
            read += session.result.bytes_read
            placed += session.result.placement_retries
            established = established or session._started
            raise

    def retryable(exc: BaseException) -> bool:
        if not isinstance(exc, (TransportError, Busy)):
            return False
        return established or wait_for_receiver or isinstance(exc, Busy)

    def reconnecting(exc: BaseException, pause: float) -> None:
        logger.warning("link to the receiver lost (%s); reconnecting in %.0f s and resuming", exc, pause)

    result = call_with_retry(attempt, policy=RetryPolicy(max_attempts=1 << 30, base_delay=1.0, max_delay=30.0,
                                                         max_total=retry_for),
                             retryable=retryable, describe="push", sleep=sleep, on_retry=reconnecting)
    result.bytes_sent += sent
    result.bytes_read += read
    result.placement_retries += placed
    result.resumed = result.resumed or attempts > 1
    return result
