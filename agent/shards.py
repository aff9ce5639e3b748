"""A parallel pass: one walk of the source, its entries split over N streams (``--streams N``).

Why this shape: the walk is cheap next to what follows it (deciding, reading,
hashing, compressing, writing), and one walk keeps the scanner's promises
(parents first, hard links in walk order, bounded memory) in one place.  A
router thread sends each item to the stream the sharding rule names
(common/shards.py, transfer.proto's header); every stream is a full
``PushSession`` of its own -- its own TCP connection, data reader, compression
pool, zstd streams and in-flight window -- served on the receiver by whichever
worker process took that connection.

Waiting is what could deadlock a split pass: a receiver worker holding a child
waits until the worker of its parent directory's stream has made it.  So no
item is ever held back from its stream while another stream may be waiting on
it: the router hands over everything it has before it waits for room, and a
stream whose input pauses sends its partial batch at once.

A stream that breaks ends the attempt: every stream stops, and ``push()``
starts all of them again under a new pass id, resuming from the receiver's
journal as a single stream does.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from cvmigrate.agent.push import PushOptions, PushSession
from cvmigrate.agent.scanner import DirComplete, Scanner
from cvmigrate.common.errors import CvmError, SourceError
from cvmigrate.common.model import Entry, Kind
from cvmigrate.common.passes import PushResult
from cvmigrate.common.ratelimit import TokenBucket
from cvmigrate.common.shards import LINK_SHARD, parent_of, shard_of_dir
from cvmigrate.proto import transfer_pb2 as pb

logger = logging.getLogger(__name__)

ROUTE_BATCH = 256        # items the router gathers before it hands every stream its share
MAX_QUEUED = 64 * 1024   # items routed but not yet taken by their stream: bounds the walk's lead
PAUSE = 0.02             # seconds a stream waits for input before it sends its partial batch

_END = object()

#: Fields of PushResult that add up over the streams (the scan's own counts come from the one walk).
_SUMMED = ("bytes_sent", "bytes_read", "bytes_reused", "files_skipped", "files_transferred", "metadata_applied",
           "deleted", "placement_retries")


class ShardStream(PushSession):
    """One stream of a parallel pass: sends what the router gives it, says its shard in Hello."""

    def __init__(self, opts: PushOptions, owner: ShardedPass, shard: int,
                 fault: Callable[[Entry, int, bytearray], None] | None = None) -> None:
        super().__init__(opts, fault)
        self.owner = owner
        self.shard = shard
        self.inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.bucket = owner.bucket   # --bwlimit holds for the pass, not per stream

    def _hello_shard(self, hello: pb.Hello) -> None:
        hello.pass_id = self.owner.pass_id
        hello.shard = self.shard
        hello.shard_count = self.owner.count

    def _walk(self) -> Iterator[Entry | DirComplete | bytes | None]:
        owner = self.owner
        while True:
            try:
                items = self.inbox.get(timeout=PAUSE)
            except queue.Empty:
                if self._stop.is_set():
                    return
                yield None   # send the partial batch: another stream's worker may wait for it
                try:
                    items = self.inbox.get(timeout=0.5)
                except queue.Empty:
                    continue
            if items is _END:
                return
            owner.taken(len(items))
            yield from items


class ShardedPass:
    """A pass over ``count`` streams; quacks like a PushSession for push(), the daemon and the controller."""

    def __init__(self, opts: PushOptions, count: int,
                 fault: Callable[[Entry, int, bytearray], None] | None = None) -> None:
        self.opts = opts
        self.count = count
        self.pass_id = uuid.uuid4().hex
        self.bucket = TokenBucket(opts.bwlimit_kbps * 1024 if opts.bwlimit_kbps else None)
        self.scanner = Scanner(opts.source, opts.rules, one_file_system=opts.one_file_system,
                               include_mounts=opts.include_mounts)
        self.streams = [ShardStream(opts, self, k, fault) for k in range(count)]
        self.connect_probe: Callable[[str, bool], str] | None = opts.probe
        self._cv = threading.Condition()
        self._queued = 0
        self._stop = threading.Event()
        self._failed: BaseException | None = None   # the walk's failure
        self._cause: BaseException | None = None    # the first stream's failure

    # -- what push(), the progress line and the controller read
    @property
    def _started(self) -> bool:
        return any(s._started for s in self.streams)

    @property
    def result(self) -> PushResult:
        """Live totals over the streams (the final result once run() returned)."""
        r = PushResult()
        for s in self.streams:
            for name in _SUMMED:
                setattr(r, name, getattr(r, name) + getattr(s.result, name))
        return r

    def cancel(self, reason: str = "the pass was cancelled") -> None:
        self._stop.set()
        for s in self.streams:
            s.cancel(reason)

    # -- running
    def run(self) -> PushResult:
        t0 = time.monotonic()
        for s in self.streams:
            s.connect_probe = self.connect_probe if s.shard == 0 else None

        def one(k: int) -> None:
            try:
                self.streams[k].run()
            except BaseException as exc:  # noqa: BLE001 - the first one is raised below
                self._abort(k, exc)

        router = threading.Thread(target=self._route, name="cvm-route", daemon=True)
        threads = [threading.Thread(target=one, args=(k,), name=f"cvm-shard-{k}", daemon=True)
                   for k in range(self.count)]
        for t in threads:
            t.start()
        router.start()
        for t in threads:
            t.join()
        self._stop.set()
        with self._cv:
            self._cv.notify_all()
        router.join(5)
        first = self._failed or self._cause
        if first is not None:
            raise first
        return self._merge(time.monotonic() - t0)

    def _abort(self, k: int, exc: BaseException) -> None:
        """One stream failed: the attempt is over for all (push() starts them again, resuming).

        The first failure is the cause; the others are the cancellations it caused."""
        with self._cv:
            if self._cause is not None:
                return
            self._cause = exc
        self._stop.set()
        logger.info("stream %d of %d failed (%s); stopping the others", k, self.count, exc)
        with self._cv:
            self._cv.notify_all()
        for s in self.streams:
            if s.shard != k:
                s.cancel(f"stream {k} of this pass failed")

    def taken(self, n: int) -> None:
        with self._cv:
            self._queued -= n
            if self._queued < MAX_QUEUED:
                self._cv.notify_all()

    def _route(self) -> None:
        """Walk once and hand each item to its stream (the rule in common/shards.py)."""
        n = self.count
        bufs: list[list[Any]] = [[] for _ in range(n)]
        links = self.scanner._links   # first names of inodes with several names: (dev, ino) -> path
        gathered = 0
        try:
            for item in self.scanner.walk():
                if self._stop.is_set():
                    return
                if isinstance(item, DirComplete):
                    bufs[shard_of_dir(item.path, n)].append(item)
                elif not item.path:
                    bufs[LINK_SHARD].append(item)
                else:
                    home = shard_of_dir(parent_of(item.path), n)
                    if item.hardlink_to or (item.kind is not Kind.DIRECTORY
                                            and links.get((item.dev, item.ino)) == item.path):
                        bufs[LINK_SHARD].append(item)
                        if home != LINK_SHARD:
                            bufs[home].append(item.path)
                    else:
                        bufs[home].append(item)
                gathered += 1
                if gathered >= ROUTE_BATCH:
                    self._hand_over(bufs, gathered)
                    gathered = 0
            self._hand_over(bufs, gathered)
        except BaseException as exc:  # noqa: BLE001 - a failed walk fails the pass, as in a single stream
            self._failed = exc if isinstance(exc, CvmError) else SourceError(f"{type(exc).__name__}: {exc}")
            self.cancel(f"the walk failed: {exc}")
            return
        finally:
            for s in self.streams:
                s.inbox.put(_END)

    def _hand_over(self, bufs: list[list[Any]], gathered: int) -> None:
        """Give every stream its share at once, then wait for room: nothing routed is ever held back."""
        for k, buf in enumerate(bufs):
            if buf:
                self.streams[k].inbox.put(buf)
                bufs[k] = []
        with self._cv:
            self._queued += gathered
            while self._queued >= MAX_QUEUED and not self._stop.is_set():
                self._cv.wait(0.5)

    def _merge(self, seconds: float) -> PushResult:
        r = self.result
        s = self.scanner.stats
        r.take_scan(s)
        for st in self.streams:
            r.errors.extend(st.result.errors)
            r.changed_during_copy.extend(st.result.changed_during_copy)
        r.resumed = any(st.result.resumed for st in self.streams)
        r.seconds = seconds
        r.streams = self.count
        return r


def plan_streams(opts: PushOptions) -> int:
    """How many streams this pass uses: ``opts.streams`` (0 = what both sides' cores allow), at most
    MAX_STREAMS, and 1 against a receiver that does not take shards (or cannot be asked: the pass's
    own connection then reports why)."""
    import grpc

    from cvmigrate.agent.push import _insecure_channel, _is_loopback
    from cvmigrate.common.shards import MAX_STREAMS, default_streams, usable_cores
    from cvmigrate.proto import transfer_pb2_grpc as pb_grpc

    if opts.streams == 1:
        return 1
    loopback = _is_loopback(opts.address)
    if not opts.streams and (usable_cores() // 2 if loopback else usable_cores()) <= 1:
        return 1   # this side's cores alone allow one stream: no connection just to ask for the receiver's
    channel = (opts.channel_factory or _insecure_channel)(opts.address)
    try:
        pong = pb_grpc.ReceiverStub(channel).Ping(pb.PingRequest(), timeout=5,
                                                  metadata=opts.metadata or None)
    except grpc.RpcError as exc:
        logger.debug("Ping before the pass failed (%s): one stream", exc)
        return 1
    finally:
        channel.close()
    if not pong.cores:
        if opts.streams > 1:
            logger.warning("the receiver at %s takes one stream per pass (an older cvmigrate); --streams %d "
                           "ignored", opts.address, opts.streams)
        return 1
    if opts.streams > 1:
        return min(opts.streams, MAX_STREAMS, pong.max_streams or MAX_STREAMS)
    n = default_streams(usable_cores(), pong.cores)
    if loopback:
        # agent and receiver share these cores and a single stream already keeps two busy: each side gets half
        # (on 2 cores, 286 MB / 8 800 entries over loopback: 2 streams 2.87 s, 1 stream 2.95 s, medians of 3)
        n = max(1, n // 2)
    return min(n, pong.max_streams or MAX_STREAMS)


def new_pass(opts: PushOptions, count: int) -> PushSession | ShardedPass:
    """The session object of one attempt: a single stream, or ``count`` shards."""
    return PushSession(opts) if count <= 1 else ShardedPass(opts, count)
