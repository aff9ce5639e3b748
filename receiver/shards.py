"""The receiver's side of a parallel pass: admission per pass, and the shard session.

Admission (``PassGate``): one pass at a time, where a pass is every stream
with the same ``Hello.pass_id`` (shard k of N).  Its state lives in shared
memory made before the worker processes are forked, so whichever worker the
kernel gave a connection to sees the same gate; a worker that died holding a
shard frees it (its pid is checked).  Fix-ups and Finalize take the gate whole.

Placement: the kernel picks a worker by a hash of the connection's addresses,
so two streams of one pass often land on one worker (2 streams on 2 workers:
half the time), which then does all the work while another idles.  The gate
also holds the roster of live workers (``enlist``), so a stream that reaches a
worker already serving another stream of its pass while some live worker
serves none is refused with ``Misplaced`` before anything is reserved; the
agent opens it again on a new connection (a new source port, a new hash).
Bounded: from ``Hello.placement_attempt`` PLACE_ANYWHERE on, and for an agent
that does not number its attempts (0), a stream is taken where it lands.

Journal: one SQLite journal in WAL mode, one connection per stream.  Why
shared and not per worker: the journal is keyed by path, and a path's stream
depends on the stream count -- a per-worker journal would lose resume (and
chunk reuse, and the moved-file twin search) whenever the count changes
between runs.  Streams of one pass write disjoint paths (the sharding rule), so
their transactions never contend on a row, only on SQLite's one writer lock,
held for the few milliseconds of a group commit.

``ShardSession`` is a Session with three differences (transfer.proto header):
a child whose parent directory travels on another stream waits for it; the
names in ``EntryBatch.present`` count for mirroring; directory times are
handed to the pass, and the last shard to finish applies them all.
"""
from __future__ import annotations

import ctypes
import errno
import logging
import multiprocessing
import os
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import xxhash

from cvmigrate.common.errors import Busy, Misplaced, ProtocolError, UnsafePath
from cvmigrate.common.model import Entry
from cvmigrate.common.paths import split_relpath
from cvmigrate.common.procstate import alive
from cvmigrate.common.shards import LINK_SHARD, MAX_STREAMS, parent_of, shard_of_dir
from cvmigrate.proto import transfer_pb2 as pb
from cvmigrate.receiver.fsops import TargetTree
from cvmigrate.receiver.journal import Journal
from cvmigrate.receiver.session import MAX_INFLIGHT, DirTime, ReceiverConfig, Session

logger = logging.getLogger(__name__)

#: How long a child waits for its parent directory from another stream (a well-behaved agent sends the
#: parent first, so this only bounds what a hostile or broken one can make a worker do).
PARENT_WAIT = 60.0
BUSY_MESSAGE = ("the receiver is busy with another agent's session; only one agent may write a target at a time")

#: What TargetTree says of a parent that is a file or a symlink on the target: a directory on the source, which
#: the stream carrying its entry replaces (worth waiting for; anything else UnsafePath says is final).
_REPLACEABLE = "symlink or not a directory"

#: Worker processes the roster holds (``receive --workers`` takes at most this many).
MAX_WORKERS = 64
#: From this placement attempt on a stream is admitted wherever it lands.  Why 32: the last stream of a pass of
#: W streams on W workers finds the one idle worker with chance 1/W per connection; with W = 8, 15 misses in a
#: row happen in 13 % of such passes, 31 in 1.6 %.  An attempt costs a connection and one round trip (a few
#: milliseconds on a LAN, ~0.1 s with TLS at 20 ms RTT), and only for that stream.
PLACE_ANYWHERE = 32

# shared state layout (int64 words): the pass, its streams' worker pids, the roster of live workers' pids
_KEY, _COUNT, _DONE, _RESUMED = 0, 1, 2, 3
_SLOTS = 4
_ROSTER = _SLOTS + MAX_STREAMS


@dataclass(frozen=True)
class Ticket:
    """One admitted stream: its pass (as a 63-bit key), shard, count; ``resumed``: the journal predates the pass."""

    key: int
    shard: int
    count: int
    resumed: bool
    first: bool = False   # the pass's first stream: what earlier passes left in the state dir goes


class PassGate:
    """Which pass owns the receiver.

    ``shared``: for worker processes, in fork-inherited shared memory under a POSIX semaphore; raises
    OSError where the system cannot share one (no /dev/shm, as in minimal rescue systems and qemu-user
    chroots: sem_open fails with ENOSYS), and the receiver then serves from one process.  Otherwise
    (one process, the default) a thread lock and a list: nothing of the system is needed.
    """

    def __init__(self, *, shared: bool = False) -> None:
        self._lock: Any
        self._state: Any
        if shared:
            self._lock = multiprocessing.Lock()
            self._state = multiprocessing.RawArray(ctypes.c_int64, _ROSTER + MAX_WORKERS)
        else:
            self._lock = threading.Lock()
            self._state = [0] * (_ROSTER + MAX_WORKERS)

    @contextmanager
    def locked(self) -> Iterator[None]:
        with self._lock:
            yield

    def busy(self) -> bool:
        with self._lock:
            return self._active_locked()

    def _active_locked(self) -> bool:
        s = self._state
        active = False
        for i in range(MAX_STREAMS):
            pid = s[_SLOTS + i]
            if pid and not alive(pid):
                s[_SLOTS + i] = 0   # its worker died mid-stream: the shard is free again
            elif pid:
                active = True
        return active

    def enlist(self, index: int) -> None:
        """This process is worker ``index`` and serves the port now (receiver/workers.py): streams of a pass
        that land on a worker already serving one of them are sent on to it while it serves none."""
        if not 0 <= index < MAX_WORKERS:
            raise ValueError(f"worker index {index} outside 0..{MAX_WORKERS - 1}")
        with self._lock:
            self._state[_ROSTER + index] = os.getpid()

    def admit(self, pass_id: str, shard: int, count: int, journal_exists: bool, placement: int = 0) -> Ticket:
        """Admit a stream, or raise Busy (another pass holds the receiver) / ProtocolError (shard lies) /
        Misplaced (this worker serves another stream of the pass while a live one serves none; the
        agent's ``placement`` attempt, 1.., is below PLACE_ANYWHERE: see the module docstring)."""
        if count <= 1:
            if shard:
                raise ProtocolError(f"shard {shard} of a pass of {count} stream(s)")
            key, count = _key(uuid.uuid4().hex), 1   # a single stream is a pass of its own
        else:
            if count > MAX_STREAMS or shard >= count:
                raise ProtocolError(f"shard {shard} of {count}: a pass has at most {MAX_STREAMS} streams, "
                                    "numbered from 0")
            if not pass_id:
                raise ProtocolError("a sharded stream needs a pass id")
            key = _key(pass_id)
        s = self._state
        pid = os.getpid()
        with self._lock:
            active = self._active_locked()
            if s[_KEY] == key and s[_COUNT] == count:
                if s[_SLOTS + shard] or s[_DONE] >> shard & 1:
                    raise ProtocolError(f"shard {shard} of this pass is already open or finished")
                if 0 < placement < PLACE_ANYWHERE:
                    self._place_locked(pass_id, shard, count, placement)
                first = False
            elif active:
                raise Busy(BUSY_MESSAGE)
            else:   # a new pass
                s[_KEY], s[_COUNT], s[_DONE], s[_RESUMED] = key, count, 0, int(journal_exists)
                first = True
            s[_SLOTS + shard] = pid
            return Ticket(key, shard, count, bool(s[_RESUMED]), first)

    def _place_locked(self, pass_id: str, shard: int, count: int, placement: int) -> None:
        """Raise Misplaced if this worker serves another open stream of the pass and a live worker serves none
        (the caller holds the lock and has cleared the slots of dead workers)."""
        s, pid = self._state, os.getpid()
        serving = {s[_SLOTS + k] for k in range(count)} - {0}
        if pid not in serving:
            return
        idle = [w for w in (s[_ROSTER + i] for i in range(MAX_WORKERS)) if w and w not in serving and alive(w)]
        if idle:
            mine = [k for k in range(count) if s[_SLOTS + k] == pid]
            raise Misplaced(f"stream {shard} of {count} of pass {pass_id[:12]} reached worker {pid}, which serves "
                            f"stream(s) {mine} of it while {len(idle)} other worker(s) serve none (placement "
                            f"attempt {placement}); connect again")

    def leave(self, t: Ticket) -> None:
        with self._lock:
            if self._state[_KEY] == t.key:
                self._state[_SLOTS + t.shard] = 0

    def finish(self, t: Ticket) -> bool:
        """Mark the shard finished; True for the last one of its pass."""
        with self._lock:
            s = self._state
            if s[_KEY] != t.key:
                return False
            s[_DONE] |= 1 << t.shard
            return bool(s[_DONE] == (1 << t.count) - 1)

    def hold(self, what: str) -> Ticket:
        """Hold the receiver for a non-transfer operation (fix-ups, finalize): Busy while a pass runs.
        Release with ``leave``."""
        try:
            return self.admit("", 0, 1, False)
        except Busy:
            raise Busy(f"a transfer is running; {what} runs after it") from None


class BlockGate(grpc.ServerInterceptor):  # type: ignore[misc]  # grpc ships no types
    """One block session at a time across worker processes (the block service's own lock is per process)."""

    METHOD = "/cvmigrate.v1.BlockReceiver/BlockTransfer"

    def __init__(self, gate: PassGate) -> None:
        self.gate = gate

    def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if handler is None or details.method != self.METHOD or handler.stream_stream is None:
            return handler
        inner, gate = handler.stream_stream, self.gate

        def gated(requests: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            try:
                held = gate.hold("a block session")
            except Busy:
                context.abort(grpc.StatusCode.ABORTED, "the receiver is busy with another block session; "
                              "one device at a time")
            try:
                yield from inner(requests, context)
            finally:
                gate.leave(held)

        return grpc.stream_stream_rpc_method_handler(gated, request_deserializer=handler.request_deserializer,
                                                     response_serializer=handler.response_serializer)


def _key(pass_id: str) -> int:
    return xxhash.xxh3_64_intdigest(pass_id.encode()) >> 1 or 1


class ShardSession(Session):
    """Receiver state for one stream of a sharded pass (see the module docstring)."""

    def __init__(self, cfg: ReceiverConfig, tree: TargetTree, journal: Journal, *, gate: PassGate, ticket: Ticket,
                 state_dir: str) -> None:
        super().__init__(cfg, tree, journal)
        self.gate = gate
        self.ticket = ticket
        self.shard_dir = os.path.join(state_dir, "shards")
        self.window = MAX_INFLIGHT // ticket.count
        self.last_of_pass = False

    def hello(self, h: pb.Hello) -> list[pb.ReceiverMessage]:
        msgs = super().hello(h)
        w = msgs[0].welcome
        w.resumed = self.ticket.resumed
        # the pass keeps one window in flight in all, as a single stream does: what a crash costs stays
        # one window, whatever the stream count
        w.max_inflight_bytes = self.window = MAX_INFLIGHT // self.ticket.count
        return msgs

    def maybe_commit(self) -> list[pb.ReceiverMessage]:
        if self.pending_bytes >= self.window // 2:   # commit at half of this stream's share of the window
            return self.commit()
        return super().maybe_commit()

    def entries(self, batch: pb.EntryBatch) -> list[pb.ReceiverMessage]:
        k, n = self.ticket.shard, self.ticket.count
        if k != LINK_SHARD:
            for m in batch.entries:
                if shard_of_dir(parent_of(m.path), n) != k:
                    raise ProtocolError(f"entry {os.fsdecode(m.path)!r} does not belong to shard {k} of {n}")
        for group in (batch.completed_dirs, batch.incomplete_dirs):
            for d in group:
                if shard_of_dir(d, n) != k:
                    raise ProtocolError(f"directory {os.fsdecode(d)!r} does not belong to shard {k} of {n}")
        for p in batch.present:
            parts = split_relpath(p)
            if not parts or shard_of_dir(parent_of(p), n) != k:
                raise ProtocolError(f"present name {os.fsdecode(p)!r} does not belong to shard {k} of {n}")
            if self.delete:
                self.children.setdefault(parent_of(p), set()).add(parts[-1])
        return super().entries(batch)

    # ------------------------------------------------------------------ parents on other streams
    def _decide(self, e: Entry, parts: tuple[bytes, ...]) -> tuple[int, dict[int, tuple[int, bytes]] | None]:
        try:
            return super()._decide(e, parts)
        except (FileNotFoundError, NotADirectoryError, UnsafePath):
            if len(parts) < 2 or not self._await_dir(parts[:-1]):
                raise
        return super()._decide(e, parts)

    def _mirror_dir(self, d: bytes) -> None:
        if d and self.delete:
            self._await_dir(split_relpath(d))
        super()._mirror_dir(d)

    def _await_dir(self, parts: tuple[bytes, ...]) -> bool:
        """Wait until the directory at ``parts`` exists (another stream makes it); False if it never came."""
        deadline = time.monotonic() + PARENT_WAIT
        delay = 0.001
        while True:
            try:
                self.tree.dir_fd(parts)
                return True
            except FileNotFoundError:
                pass
            except UnsafePath as exc:
                if _REPLACEABLE not in str(exc):
                    return False   # the state directory: no stream will ever make it a place to write
            if time.monotonic() >= deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    # ------------------------------------------------------------------ directory times, once per pass
    def _apply_dir_times(self) -> None:
        """Hand this shard's directories to the pass; the last shard to finish applies them all."""
        os.makedirs(self.shard_dir, mode=0o700, exist_ok=True)
        mine = os.path.join(self.shard_dir, f"{self.ticket.key:x}.{self.ticket.shard}")
        with open(mine + ".tmp", "wb") as f:
            f.write(b"".join(_DIR.pack(_IS_DIR, d.mtime_ns, d.sig, d.settled, len(d.path)) + d.path
                             for d in self.dirs))
            f.write(b"".join(_DIR.pack(_TOUCHED, 0, b"", False, len(p)) + p for p in self.touched))
        os.replace(mine + ".tmp", mine)
        self.dirs = []
        self.touched = set()
        self.last_of_pass = self.gate.finish(self.ticket)
        if not self.last_of_pass:
            return
        merged: list[DirTime] = []
        touched: set[bytes] = set()
        for k in range(self.ticket.count):
            path = os.path.join(self.shard_dir, f"{self.ticket.key:x}.{k}")
            with open(path, "rb") as f:
                _read_dirs(f.read(), merged, touched)
        # a directory travels on its parent's stream, its content on its own: a change any stream made counts
        self.dirs, self.touched = merged, touched
        super()._apply_dir_times()
        clear_shard_dir(self.shard_dir)


#: One record of a shard's directory list: kind, mtime_ns, signature, settled, the path's length; then the path.
#: Kind _IS_DIR is a directory of the shard (Session.dirs); _TOUCHED a directory whose content it changed.
_DIR = struct.Struct(">Bq16s?I")
_IS_DIR, _TOUCHED = 0, 1


def _read_dirs(blob: bytes, dirs: list[DirTime], touched: set[bytes]) -> None:
    pos = 0
    while pos < len(blob):
        kind, t, sig, settled, n = _DIR.unpack_from(blob, pos)
        pos += _DIR.size
        path = blob[pos:pos + n]
        pos += n
        if kind == _TOUCHED:
            touched.add(path)
        else:
            dirs.append(DirTime(path, t, sig if path else b"", settled))


def clear_shard_dir(shard_dir: str) -> None:
    """Remove the directory lists of earlier passes (a new pass starts; theirs can no longer finish)."""
    try:
        names = os.listdir(shard_dir)
    except FileNotFoundError:
        return
    for name in names:
        try:
            os.unlink(os.path.join(shard_dir, name))
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise
