"""One transfer pass on the receiver: decide, verify, write, commit, mirror.

Why one object fed message by message: the servicer stays a thin loop, and the
whole state machine can be driven (and tested) without gRPC.  Every method
returns the protocol messages to send back.

Per entry the receiver decides SKIP (target already matches: journal
signature plus the target's inode and ctime, or a metadata comparison),
APPLIED (metadata-only entries are written straight from the entry), NEED
(send content; ``have`` lists chunks the receiver can place itself) or
DEFERRED (a hard link whose target's data is still on its way).

A regular file is written under a temporary name; each chunk is verified
before it is written, the whole-file hash before the file is renamed into
place.  Commits are grouped: ``syncfs`` of the touched filesystems, then one
journal transaction, then a Committed message.
"""
from __future__ import annotations

import errno
import logging
import os
import sqlite3
import stat
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from cvmigrate import __version__
from cvmigrate.common import cdc, compression
from cvmigrate.common.errors import (
    CvmError,
    IntegrityError,
    ProtocolError,
    TargetError,
    TargetFull,
    UnsafePath,
    VersionMismatch,
)
from cvmigrate.common.hashing import FileHasher, chunk_hash, hash_file_content
from cvmigrate.common.model import CHUNK_SIZE, FMT_BY_KIND, PROTOCOL_VERSION, Entry, Kind
from cvmigrate.common.paths import join, split_relpath
from cvmigrate.common.rpc import MAX_MESSAGE
from cvmigrate.common.serde import MAX_FILE_SIZE, entry_from_proto
from cvmigrate.proto import transfer_pb2 as pb
from cvmigrate.receiver.fsops import (
    TargetTree,
    create_exclusive,
    is_tmp_name,
    list_names,
    open_regular,
    oserror_to_cvm,
    read_xattrs_at,
    set_mtime,
    syncfs,
    tmp_name,
)
from cvmigrate.receiver.journal import (
    TWIN_MIN_SIZE,
    ChunkList,
    Journal,
    Partial,
    Record,
    pack_chunk_list,
    unpack_chunk_list,
)

if TYPE_CHECKING:
    from cvmigrate.common.excludes import ExcludeRules

logger = logging.getLogger(__name__)

MAX_INFLIGHT = 64 << 20
MAX_PENDING_ENTRIES = 50_000
COMMIT_INTERVAL = 1.0
COMMIT_FILES = 4096   # below the agent's open-file bound (8192): a backlog of small files always commits
#: a file at least this large is journaled the moment it is complete: a record lost to a crash costs a
#: read of the whole file on both sides (the receiver cannot trust a file its journal does not know),
#: one more commit beside that much data costs next to nothing
COMMIT_FILE_SIZE = MAX_INFLIGHT // 2
MAX_FILE_FAILURES = 3
MAX_SEGMENT = 8 << 20
MAX_ERRORS = 1000
#: Files decided NEED whose data has not ended, plus hard links waiting for them.  An agent that keeps to
#: max_pending_entries (awaiting a decision) and its own bound on files awaiting data (8192) stays under
#: their sum: decisions in flight are NEEDs here before the agent has read them.
MAX_AWAITING = MAX_PENDING_ENTRIES + 16_384
MAX_TRACKED_DIRS = 5_000_000   # directories whose times or children are held until the pass ends


class DirTime(NamedTuple):
    """A directory of the pass, kept until its times are applied (``Session._apply_dir_times``)."""

    path: bytes
    mtime_ns: int
    sig: bytes          # its entry's signature (b"" for the root, which is never journaled)
    settled: bool       # its mtime was already right when it was decided


@dataclass
class ReceiverConfig:
    root: str
    state_dir: str | None = None     # default: <root>/.cvmigrate
    delete: bool = True              # the receiver's own --no-delete wins over the agent's wish


@dataclass(slots=True)
class OpenFile:
    """A regular file whose content is arriving."""

    entry: Entry
    parts: tuple[bytes, ...]
    have: dict[int, tuple[int, bytes]]     # offset -> (length, hash) of chunks the receiver can place itself
    in_place: bool                         # `have` refers to chunks already in the temporary file
    avg: int = 0                           # how the file is cut: 0 = the grid, else content-defined (cdc.py)
    by_hash: dict[bytes, int] = field(default_factory=dict)  # hash -> offset in `have`: a chunk that moved
    old_fd: int | None = None              # open descriptor of old_ref (None: closed, reopened when needed)
    old_ref: tuple[bytes, int] | None = None   # (path, inode) of the previous version, source of reused chunks
    tmp_ino: int = 0                       # inode of the temporary file once created (fd may be closed)
    lazy: bool = False                     # old_fd is this path's own file: reused chunks are only verified
                                           # there, and copied into a temporary file only if new data comes
    fd: int | None = None
    tmp: bytes = b""
    hasher: FileHasher = field(default_factory=FileHasher)
    pos: int = 0
    written: list[tuple[int, int, bytes]] = field(default_factory=list)   # (offset, length, hash)
    reread: bool = False                   # verify by reading the temp file back (in-place chunks used)
    failed: str = ""
    failures: int = 0
    journaled: int = 0                     # chunks already recorded as partial


class Session:
    """Receiver state for one Transfer stream."""

    def __init__(self, cfg: ReceiverConfig, tree: TargetTree, journal: Journal) -> None:
        self.cfg = cfg
        self.tree = tree
        self.journal = journal
        self.session_id = uuid.uuid4().hex[:12]
        self.options: pb.Options | None = None
        self.rules: ExcludeRules | None = None
        self.delete = False
        self.chunk_size = CHUNK_SIZE
        self.partial_paths = journal.partial_paths()   # files left half-written by an earlier pass
        self._records: dict[bytes, Record] = {}       # journal records of the batch being decided
        self.files: dict[int, OpenFile] = {}          # NEED'ed, data not finished
        self.by_path: dict[bytes, int] = {}           # path -> id of files still open
        self.deferred: dict[bytes, list[Entry]] = {}  # hardlink target path -> waiting links
        self.children: dict[bytes, set[bytes]] = {}   # dir -> names seen this pass (for mirroring)
        #: every directory of the pass: its times are applied after its children, then it is journaled
        self.dirs: list[DirTime] = []
        #: directories whose content this pass changed (their mtime moved): a directory whose mtime was
        #: right when decided and that is not in here needs neither its times applied nor a new record
        self.touched: set[bytes] = set()
        #: directories this session created: empty but for what it put there (no lstat, nothing to mirror)
        self.made_dirs: set[bytes] = set()
        self.dev_fds: dict[int, int] = {}             # st_dev -> our own descriptor on that filesystem
        self.dirty_devs: set[int] = set()             # filesystems written since the last commit
        # descriptors of files awaiting data, least recently used first: never one per pending file
        self._open_fds: OrderedDict[tuple[int, bool], OpenFile] = OrderedDict()
        self.fd_budget = fd_budget()
        # group commit state
        self.pending_ids: list[int] = []
        self.pending_records: list[Record] = []
        self.pending_deleted: list[bytes] = []
        self.pending_drop_partials: list[bytes] = []
        self.pending_bytes = 0
        self.pending_retries: list[pb.FileRetry] = []
        self.retry_outstanding: set[int] = set()
        self.last_commit = time.monotonic()
        # summary
        self.committed = 0
        self.deleted = 0
        self.bytes_written = 0
        self.bytes_reused = 0
        self.mismatches = 0
        self.errors: list[str] = []                  # the first MAX_ERRORS; the rest are only counted
        self.errors_dropped = 0
        self.deferred_count = 0
        self.finished = False
        self.commit_due = False                       # a large file completed: commit now
        self.last_of_pass = True                      # a sharded stream says so only when it ends the pass
        self._zstream: compression.StreamDecoder | None = None   # the agent's one zstd stream, if it uses one
        self._zmeta: compression.StreamDecoder | None = None     # its metadata stream (packed_entries)

    def _error(self, text: str) -> None:
        """Keep a per-file error for the summary (a protobuf string: non-UTF-8 names are escaped)."""
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(text.encode("utf-8", "backslashreplace").decode("utf-8"))
        else:
            self.errors_dropped += 1

    # ================================================================= messages
    def hello(self, h: pb.Hello) -> list[pb.ReceiverMessage]:
        if h.protocol_version != PROTOCOL_VERSION:
            raise VersionMismatch(f"agent speaks protocol version {h.protocol_version}, this receiver speaks "
                                  f"{PROTOCOL_VERSION}; install the same cvmigrate version on both hosts")
        o = h.options
        if o.chunk_size and o.chunk_size != CHUNK_SIZE:
            raise ProtocolError(f"chunk size {o.chunk_size} is not supported (only {CHUNK_SIZE})")
        self.options = o
        self.delete = o.delete and self.cfg.delete
        if o.exclude_rules:
            from cvmigrate.common.excludes import ExcludeRules
            self.rules = ExcludeRules.parse(list(o.exclude_rules), origin="agent's exclude rules")
        resumed = self.journal.existed  # an earlier pass ran against this target
        logger.info("session %s: agent %s from %s (%s), delete=%s, resumed=%s", self.session_id,
                    h.agent_version, h.source.hostname or "?", os.fsdecode(h.source.root), self.delete, resumed)
        return [pb.ReceiverMessage(welcome=pb.Welcome(
            session_id=self.session_id, receiver_version=__version__, protocol_version=PROTOCOL_VERSION,
            max_inflight_bytes=MAX_INFLIGHT, max_pending_entries=MAX_PENDING_ENTRIES,
            max_message_bytes=MAX_MESSAGE, resumed=resumed, max_window_log=compression.MAX_STREAM_WINDOW_LOG))]

    def entries(self, batch: pb.EntryBatch) -> list[pb.ReceiverMessage]:
        reply = pb.ReceiverMessage()
        out = reply.decisions  # filled in place: no copy when it is sent
        self._records = (self.journal.get_many([m.path for m in batch.entries])
                         if self.journal.has_entries else {})
        skip: list[int] = []
        applied: list[int] = []
        for m in batch.entries:
            e = entry_from_proto(m)
            parts = split_relpath(e.path)
            if parts and is_tmp_name(parts[-1]):
                raise UnsafePath("is a name in the receiver's temporary namespace (.cvm-*.tmp)", path=e.path)
            if e.id in self.files:
                raise ProtocolError(f"entry id {e.id} reused while its file is open")
            if len(self.files) + self.deferred_count >= MAX_AWAITING or len(self.dirs) >= MAX_TRACKED_DIRS \
                    or len(self.children) >= MAX_TRACKED_DIRS or len(self.touched) >= MAX_TRACKED_DIRS:
                raise ProtocolError(f"more than {MAX_AWAITING} entries await data or their hard-link target "
                                    f"(or more than {MAX_TRACKED_DIRS} directories are open): the agent must "
                                    "respect the max_pending_entries this receiver announced")
            try:
                action, have = self._decide(e, parts)
            except FileNotFoundError as exc:
                raise ProtocolError(f"entry {os.fsdecode(e.path)!r}: its parent directory was never sent "
                                    "(directories must come before their contents)") from exc
            except OSError as exc:
                raise oserror_to_cvm(exc, "preparing", e.path) from exc
            if action == pb.SKIP:
                skip.append(e.id)
                if self.delete and parts:
                    cut = e.path.rfind(b"/")
                    self.children.setdefault(e.path[:cut] if cut > 0 else b"", set()).add(parts[-1])
                continue
            if parts:
                # its directory changed (a metadata-only APPLIED counts too: cheaper than telling them apart)
                cut = e.path.rfind(b"/")
                parent = e.path[:cut] if cut > 0 else b""
                self.touched.add(parent)
                if self.delete and parent not in self.made_dirs:   # nothing to mirror there (_mirror_dir)
                    self.children.setdefault(parent, set()).add(parts[-1])
            if action == pb.APPLIED:
                applied.append(e.id)
            else:
                d = out.decisions.add(id=e.id, action=action)
                if action == pb.NEED:
                    d.cdc_avg = self.files[e.id].avg
                if have:
                    d.have.extend(pb.ChunkHave(offset=o, length=n, hash=hh) for o, (n, hh) in sorted(have.items()))
        out.skip.extend(skip)
        out.applied.extend(applied)
        for d in batch.completed_dirs:
            self._mirror_dir(d)
        for d in batch.incomplete_dirs:
            split_relpath(d)
            self.children.pop(d, None)
            logger.warning("not deleting in /%s: the agent could not list it completely", os.fsdecode(d))
        msgs = [reply]
        msgs.extend(self.maybe_commit())
        return msgs

    def packed_entries(self, data: bytes) -> list[pb.ReceiverMessage]:
        """An EntryBatch that came through the metadata zstd stream (bounded like the data's)."""
        if self._zmeta is None:
            self._zmeta = compression.StreamDecoder(MAX_MESSAGE)
        plain = self._zmeta.decode_any(data)
        try:
            batch = pb.EntryBatch.FromString(plain)
        except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError, or what its C backend raises on garbage
            raise ProtocolError(f"packed entries do not parse as an EntryBatch: {exc}") from None
        return self.entries(batch)

    def data(self, batch: pb.DataBatch) -> list[pb.ReceiverMessage]:
        for seg in batch.segments:
            self._segment(seg)
        for end in batch.ends:
            self._file_end(end)
        for ab in batch.aborts:
            self._file_abort(ab)
        return self.maybe_commit()

    def done(self) -> list[pb.ReceiverMessage]:
        """The agent has sent everything: finish, or ask for what still must be re-sent."""
        msgs = self.commit()
        if self.retry_outstanding:
            return msgs
        for fid, of in list(self.files.items()):
            self._error(f"/{os.fsdecode(of.entry.path)}: no content arrived")
            self._discard(fid)
        for target, links in self.deferred.items():
            for e in links:
                self._error(f"/{os.fsdecode(e.path)}: hard link target /{os.fsdecode(target)} was not committed")
        self.deferred.clear()
        self.deferred_count = 0
        if self.errors_dropped:
            self.errors.append(f"... and {self.errors_dropped} more errors (see the receiver's log)")
        self._apply_dir_times()
        msgs.extend(self.commit())
        self.finished = True
        msgs.append(pb.ReceiverMessage(summary=pb.Summary(
            entries_committed=self.committed, deleted=self.deleted, bytes_written=self.bytes_written,
            bytes_reused=self.bytes_reused, hash_mismatches=self.mismatches, errors=self.errors[:1000])))
        return msgs

    def close(self) -> None:
        """Stream ended (normally or not): release descriptors; partial files stay for resume.

        A stream that ends before Done (the link broke, the agent died or gave up) first journals what it
        verified: the files complete under their final names and the chunks of partial ones.  The next pass
        then skips them instead of reading them again on both sides to compare.
        """
        if not self.finished:
            try:
                self.commit()
            except (CvmError, OSError, sqlite3.Error) as exc:
                logger.warning("journal: the progress of the interrupted stream was not saved (the next pass "
                               "compares what this one wrote instead of skipping it): %s", exc)
        for fd in self.dev_fds.values():
            os.close(fd)
        self.dev_fds.clear()
        for of in self.files.values():
            for ofd in (of.fd, of.old_fd):
                if ofd is not None:
                    os.close(ofd)
        self.files.clear()
        self._open_fds.clear()

    # ================================================================= decisions
    def _decide(self, e: Entry, parts: tuple[bytes, ...]) -> tuple[int, dict[int, tuple[int, bytes]] | None]:
        if not parts:
            if any(n == _DEFAULT_ACL for n, _ in e.xattrs):
                self.tree.inherits_xattrs = True
            if e.kind is not Kind.DIRECTORY:
                raise ProtocolError("the root entry must be a directory")
            rst = os.fstat(self.tree.root_fd)
            self.dirs.append(DirTime(b"", e.mtime_ns, b"", rst.st_mtime_ns == e.mtime_ns))
            if self._matches(e, rst, self.tree.root_fd, True):
                return pb.SKIP, None
            self.tree.apply_metadata(self.tree.root_fd, e, set_times=False)
            return pb.APPLIED, None
        if e.kind is Kind.DIRECTORY and not self.tree.inherits_xattrs and any(n == _DEFAULT_ACL for n, _ in e.xattrs):
            self.tree.inherits_xattrs = True  # new files below get an inherited ACL to correct
        cut = e.path.rfind(b"/")
        parent = e.path[:cut] if cut > 0 else b""
        dfd = self.tree.dir_fd_of(parent)
        name = parts[-1]
        # nothing stands in a directory this session made, but what it put there itself: no lstat
        st = None if parent in self.made_dirs else self.tree.lstat(dfd, name)
        if st is not None and (st.st_dev, st.st_ino) == self.tree.state_id:
            raise UnsafePath("is the receiver's state directory", path=e.path)
        if e.hardlink_to:
            return self._decide_link(e, dfd, name, st)
        if e.kind is Kind.DIRECTORY:
            return self._decide_dir(e, parts, dfd, name, st)
        if e.kind is Kind.REGULAR:
            return self._decide_file(e, parts, dfd, name, st)
        return self._decide_node(e, dfd, name, st)

    def _matches(self, e: Entry, st: os.stat_result, ref: int | bytes, follow: bool) -> bool:
        """Does the existing target object already carry exactly e's metadata?"""
        if (stat.S_IMODE(st.st_mode) != e.mode and e.kind is not Kind.SYMLINK) or st.st_uid != e.uid \
                or st.st_gid != e.gid:
            return False
        if e.kind is not Kind.DIRECTORY and st.st_mtime_ns != e.mtime_ns:
            return False
        return read_xattrs_at(ref, follow) == e.xattrs

    def _journal_fresh(self, e: Entry, st: os.stat_result) -> Record | None:
        rec = self._records.get(e.path)
        if rec is not None and rec.t_ino == st.st_ino and rec.t_ctime_ns == st.st_ctime_ns:
            return rec
        return None

    def _decide_dir(self, e: Entry, parts: tuple[bytes, ...], dfd: int, name: bytes,
                    st: os.stat_result | None) -> tuple[int, None]:
        self.dirs.append(DirTime(e.path, e.mtime_ns, e.signature(),
                                 st is not None and stat.S_ISDIR(st.st_mode) and st.st_mtime_ns == e.mtime_ns))
        if st is not None and stat.S_ISDIR(st.st_mode):
            rec = self._journal_fresh(e, st)
            if rec is not None and rec.sig == e.signature():
                return pb.SKIP, None
            fd = self.tree.dir_fd(parts)
            if self._matches(e, st, fd, True):
                self._record(e, fd)
                return pb.SKIP, None
        else:
            if st is not None:
                self.tree.remove(dfd, name, e.path)
            if self.tree.ensure_dir(dfd, name, e.path, None):
                self.made_dirs.add(e.path)
            fd = self.tree.dir_fd(parts)
            self.tree.apply_metadata(fd, e, set_times=False)
            self.committed += 1   # journaled once its children are in and its times set (_apply_dir_times)
            return pb.APPLIED, None
        self.tree.apply_metadata(fd, e, set_times=False)
        self._record(e, fd)
        return pb.APPLIED, None

    def _decide_node(self, e: Entry, dfd: int, name: bytes, st: os.stat_result | None) -> tuple[int, None]:
        if st is not None and stat.S_IFMT(st.st_mode) == _fmt(e.kind):
            same = (os.readlink(name, dir_fd=dfd) == e.link_target if e.kind is Kind.SYMLINK
                    else e.kind is Kind.FIFO or st.st_rdev == e.rdev)
            if same and self._matches(e, st, self.tree.proc_path(dfd, name), False):
                return pb.SKIP, None
        self.tree.make_node(dfd, name, e)
        self._record_at(e, dfd, name)
        return pb.APPLIED, None

    def _decide_link(self, e: Entry, dfd: int, name: bytes, st: os.stat_result | None) -> tuple[int, None]:
        target = e.hardlink_to
        tparts = split_relpath(target)
        if not tparts:
            raise ProtocolError(f"hard link {e.path!r} points at the root")
        if is_tmp_name(tparts[-1]):
            raise UnsafePath("hard link target is in the receiver's temporary namespace", path=target)
        if target in self.by_path:
            self.deferred.setdefault(target, []).append(e)
            self.deferred_count += 1
            return pb.DEFERRED, None
        return (pb.APPLIED if self._make_link(e, dfd, name, st) else pb.SKIP), None

    def _make_link(self, e: Entry, dfd: int, name: bytes, st: os.stat_result | None) -> bool:
        """Make e another name of its hardlink_to; False when it already is."""
        tparts = split_relpath(e.hardlink_to)
        tdfd = self.tree.dir_fd(tparts[:-1])
        tst = self.tree.lstat(tdfd, tparts[-1])
        if tst is None:
            self._error(f"/{os.fsdecode(e.path)}: hard link target /{os.fsdecode(e.hardlink_to)} "
                               "is missing on the target")
            return False
        if st is not None and st.st_ino == tst.st_ino and st.st_dev == tst.st_dev:
            return False
        tmp = tmp_name(name)
        try:
            os.unlink(tmp, dir_fd=dfd)
        except FileNotFoundError:
            pass
        os.link(tparts[-1], tmp, src_dir_fd=tdfd, dst_dir_fd=dfd, follow_symlinks=False)
        self.tree.replace(dfd, tmp, name, e.path)
        return True

    def _twin(self, e: Entry) -> tuple[tuple[bytes, int] | None, ChunkList, int | None]:
        none = ChunkList(0, [])
        rec = self.journal.find_same_content(e.size, e.mtime_ns, e.path)
        listed = unpack_chunk_list(rec.chunks, rec.size, self.chunk_size) if rec is not None else None
        if rec is None or listed is None or (listed.avg and not cdc.valid_avg(listed.avg)):
            return None, none, None
        try:
            tparts = split_relpath(rec.path)   # a journal value: validated like a protocol path
            tdfd = self.tree.parent_fd(rec.path)
            opened = open_regular(tdfd, tparts[-1], ino=rec.t_ino)
        except (OSError, UnsafePath):
            return None, none, None
        if opened is None:
            return None, none, None
        fd, st = opened
        if st.st_size != e.size:
            os.close(fd)
            return None, none, None
        # kept open (within the descriptor budget): the moved file's old name may be deleted by this
        # very pass before the content arrives.  Every reused chunk is re-hashed when it is copied.
        return (rec.path, rec.t_ino), listed, fd

    def _decide_file(self, e: Entry, parts: tuple[bytes, ...], dfd: int, name: bytes,
                     st: os.stat_result | None) -> tuple[int, dict[int, tuple[int, bytes]] | None]:
        checksum = bool(self.options and self.options.checksum)
        old_ref: tuple[bytes, int] | None = None
        twin_fd: int | None = None
        listed = ChunkList(0, [])   # what the receiver can place itself, and how it was cut
        if st is not None and stat.S_ISREG(st.st_mode):
            rec = self._records.get(e.path)
            if rec is not None and rec.t_ino != st.st_ino:
                rec = None  # another file now stands at this path: the record says nothing about it
            if rec is not None and not checksum:
                sig = e.signature()
                if rec.sig == sig and rec.t_ctime_ns == st.st_ctime_ns:
                    return pb.SKIP, None
                if st.st_size == e.size and st.st_mtime_ns == e.mtime_ns:
                    # the committed inode, same size and mtime: same content by the quick check.
                    # (its ctime moves when hard links are added, so compare the metadata itself)
                    opened = open_regular(dfd, name, ino=st.st_ino)
                    if opened is None:
                        raise TargetError(f"/{os.fsdecode(e.path)} changed on the target while it was checked")
                    fd = opened[0]
                    try:
                        if rec.sig == sig and self._matches(e, st, fd, True):
                            action = pb.SKIP
                        else:
                            self.tree.apply_metadata(fd, e)
                            action = pb.APPLIED
                        self._record(e, fd, rec.file_hash, rec.chunks)
                    finally:
                        os.close(fd)
                    return action, None
            opened = open_regular(dfd, name, ino=st.st_ino)
            if opened is None:
                raise TargetError(f"/{os.fsdecode(e.path)} changed on the target while it was checked")
            old_fd = opened[0]
            old_ref = (e.path, st.st_ino)
            avg = cdc.avg_for(e.size)
            journaled = (unpack_chunk_list(rec.chunks, rec.size, self.chunk_size)
                         if rec is not None and not checksum else None)
            if journaled is not None and journaled.avg == avg:
                listed = journaled   # cut as the agent will cut the new content: no need to read the old
            elif avg:
                # the old content cut by content, as the agent cuts the new: unchanged regions match
                # wherever they moved.  (--checksum, a file unknown to the journal, or one journaled on
                # the grid: this reads the old version once, as rsync reads its basis file)
                listed = ChunkList(avg, cdc.chunk_list(old_fd, st.st_size, avg))
            else:
                # too large for content-defined chunks: the grid, from the journal or the real content
                listed = (journaled if journaled is not None and not journaled.avg
                          else ChunkList(0, _hash_chunks(old_fd, st.st_size, self.chunk_size)))
            os.close(old_fd)   # no descriptor is held per pending file: reopened when a chunk is copied
        elif e.size >= TWIN_MIN_SIZE and self.journal.has_entries:
            # a new path: if the same content already landed elsewhere (the file was moved, or
            # copied with its mtime), its chunks are placed from there instead of re-sent
            old_ref, listed, twin_fd = self._twin(e)
        in_place = False
        partial = self.journal.get_partial(e.path) if e.path in self.partial_paths else None
        if partial is not None and partial.tmp != tmp_name(name):
            # a journal value is validated like a message: the only temporary name of this path is ours
            logger.warning("journal: partial file of /%s names %r, not its temporary name; ignored",
                           os.fsdecode(e.path), partial.tmp)
            self.pending_drop_partials.append(e.path)
            partial = None
        if partial is not None:
            pst = self.tree.lstat(dfd, partial.tmp)
            kept = unpack_chunk_list(partial.chunks, e.size, self.chunk_size)
            if (partial.sig == e.signature() and partial.src_ino == e.ino and partial.src_ctime_ns == e.ctime_ns
                    and _own_tmp(pst) and kept is not None and (not kept.avg or cdc.valid_avg(kept.avg))):
                # resumed as it was cut: a partial copy written on the grid (by this version or an
                # earlier one) stays on the grid, a content-defined one is cut the same way again
                listed = kept
                in_place = True
                old_ref = None
                if twin_fd is not None:
                    os.close(twin_fd)
                    twin_fd = None
            else:
                self._drop_tmp(dfd, partial.tmp, e.path)
        # the old file itself may become the result only if no other name shares its inode
        same_path = (old_ref is not None and old_ref[0] == e.path and st is not None and stat.S_ISREG(st.st_mode)
                     and st.st_nlink == 1)
        of = OpenFile(entry=e, parts=parts, have={}, in_place=in_place, old_ref=old_ref, lazy=same_path)
        if twin_fd is not None:
            of.old_fd = twin_fd
            self._used(of, True)
        _offer(of, listed.avg, listed.chunks)
        if in_place:
            of.tmp = partial.tmp  # type: ignore[union-attr]
        self.files[e.id] = of
        self.by_path[e.path] = e.id
        return pb.NEED, of.have

    # ================================================================= data
    def _open_tmp(self, of: OpenFile) -> None:
        dfd = self.tree.parent_fd(of.entry.path)
        of.tmp = tmp_name(of.parts[-1])
        try:
            if of.in_place:
                # our partial file from an earlier pass: a regular file we own with no other name
                opened = open_regular(dfd, of.tmp, os.O_RDWR, nlink=1, uid=_EUID)
                if opened is not None:
                    of.fd = opened[0]
                else:
                    of.in_place = False  # gone or replaced: reused chunks fail their check and are re-sent
            if of.fd is None:
                of.fd = create_exclusive(dfd, of.tmp)
            tst = os.fstat(of.fd)
            of.tmp_ino = tst.st_ino
        except OSError as exc:
            raise oserror_to_cvm(exc, "creating", of.entry.path) from exc
        dev = tst.st_dev  # a file is on its directory's filesystem: no fstat of the directory
        if dev not in self.dev_fds:
            self.dev_fds[dev] = os.dup(dfd)  # the directory cache may close dfd; syncfs needs a live one
        self.dirty_devs.add(dev)

    def _segment(self, seg: pb.Segment) -> None:
        if seg.codec == compression.ZSTD_STREAM:
            if self._zstream is None:
                self._zstream = compression.StreamDecoder(MAX_SEGMENT)
            # a broken stream cannot decode anything after it: ProtocolError ends the pass
            self._place(seg, self._zstream.decode(seg.data, seg.raw_length))
            return
        try:
            plain = compression.decompress(seg.codec, seg.data, seg.raw_length, MAX_SEGMENT)
        except ProtocolError as exc:
            # a corrupt segment is an integrity failure of the files it carries, not a reason to drop the pass
            for ref in seg.chunks:
                of = self._file(ref.file_id)
                of.failed = of.failed or f"undecodable segment: {exc}"
            self.mismatches += 1
            return
        self._place(seg, plain)

    def _place(self, seg: pb.Segment, plain: bytes) -> None:
        """Verify and write the chunks of a decoded segment."""
        view = memoryview(plain)
        pos = 0
        for ref in seg.chunks:
            of = self._file(ref.file_id)
            if ref.reuse:
                self._place_reuse(of, ref)
                continue
            n = ref.length
            if n == 0 or pos + n > len(view):
                raise ProtocolError(f"segment chunk of file {ref.file_id} overruns its segment")
            data = view[pos:pos + n]
            pos += n
            self.pending_bytes += n
            if of.failed:
                continue
            self._check_offset(of, ref.offset, n)
            if chunk_hash(data) != ref.hash:
                self.mismatches += 1
                of.failed = f"chunk at offset {ref.offset} failed its hash check"
                logger.warning("/%s: %s", os.fsdecode(of.entry.path), of.failed)
                continue
            # zero blocks searched for in the segment itself: no copy of the chunk just to look
            self._write(of, ref.offset, data, ref.hash, plain.find(_ZERO_BLOCK, pos - n, pos) >= 0)
        if pos != len(view):
            raise ProtocolError(f"segment carries {len(view) - pos} bytes no chunk accounts for")

    def _file(self, file_id: int) -> OpenFile:
        of = self.files.get(file_id)
        if of is None:
            raise ProtocolError(f"data for file id {file_id}, which is not open (no NEED decision)")
        return of

    def _check_offset(self, of: OpenFile, offset: int, n: int) -> None:
        # content-defined chunks lie anywhere, at most 4 x avg <= chunk_size long; grid chunks on the grid
        if ((offset % self.chunk_size and not of.avg) or n <= 0 or n > self.chunk_size or offset < of.pos
                or offset + n > _size_bound(of.entry)):
            raise ProtocolError(f"chunk offset {offset}/length {n} of /{os.fsdecode(of.entry.path)} is off the "
                                f"grid, out of order or beyond the file's size ({of.entry.size} bytes)")

    def _advance(self, of: OpenFile, offset: int) -> None:
        if offset > of.pos:
            of.hasher.update_zeros(offset - of.pos)
            of.pos = offset

    # ---- descriptors: opened when needed, at most fd_budget at once (LRU), inode checked on reopen
    def _tmp_fd(self, of: OpenFile) -> int:
        """The temporary file's descriptor: created on first use, reopened (same inode, ours) after an eviction."""
        if of.fd is None:
            if not of.tmp_ino:
                self._open_tmp(of)
            else:
                opened = open_regular(self.tree.parent_fd(of.entry.path), of.tmp, os.O_RDWR, ino=of.tmp_ino,
                                      nlink=1, uid=_EUID)
                if opened is None:
                    raise TargetError(f"/{os.fsdecode(of.entry.path)}: its temporary file was replaced while it "
                                      "was being written; run the same push again")
                of.fd = opened[0]
        self._used(of, False)
        assert of.fd is not None
        return of.fd

    def _old_fd(self, of: OpenFile) -> int | None:
        """The previous version's descriptor; None when it is gone or another file stands there now."""
        if of.old_fd is None and of.old_ref is not None:
            path, ino = of.old_ref
            try:
                opened = open_regular(self.tree.parent_fd(path), split_relpath(path)[-1], ino=ino)
            except (OSError, UnsafePath):
                opened = None
            if opened is None:
                of.old_ref = None
                return None
            of.old_fd = opened[0]
        if of.old_fd is not None:
            self._used(of, True)
        return of.old_fd

    def _used(self, of: OpenFile, old: bool) -> None:
        key = (of.entry.id, old)
        self._open_fds[key] = of
        self._open_fds.move_to_end(key)
        while len(self._open_fds) > self.fd_budget:
            (_, was_old), victim = self._open_fds.popitem(last=False)
            fd = victim.old_fd if was_old else victim.fd
            if fd is not None:
                os.close(fd)
            if was_old:
                victim.old_fd = None
            else:
                victim.fd = None

    def _materialize(self, of: OpenFile) -> None:
        """New data arrived for a file so far only verified in place: copy what was verified into the
        temporary file (the hasher has already seen it) and continue there."""
        of.lazy = False
        if self._old_fd(of) is None:
            of.failed = "the target's previous copy changed while the new one was verified against it"
            return
        for off, n, _ in of.written:
            data = os.pread(self._old_fd(of), n, off)  # type: ignore[arg-type]
            try:
                _write_sparse(self._tmp_fd(of), data, off)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise self._disk_full(of, off) from exc
                raise oserror_to_cvm(exc, "copying into", of.entry.path) from exc

    def _write(self, of: OpenFile, offset: int, data: memoryview | bytes, h: bytes, zeros: bool | None = None) -> None:
        """Write a verified chunk; ``zeros``: whether it holds a 4 KiB zero run (None: look)."""
        if of.lazy:
            self._materialize(of)
            if of.failed:
                return
        fd = self._tmp_fd(of)
        self._advance(of, offset)
        try:
            _write_sparse(fd, data, offset, zeros)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise self._disk_full(of, offset) from exc
            raise oserror_to_cvm(exc, f"writing {len(data)} bytes at offset {offset} of", of.entry.path) from exc
        of.hasher.update(data)
        of.pos = offset + len(data)
        of.written.append((offset, len(data), h))
        self.bytes_written += len(data)

    def _disk_full(self, of: OpenFile, offset: int) -> TargetFull:
        """The error for ENOSPC: which file, how much is missing; its partial copy is removed."""
        st = os.fstatvfs(self._tmp_fd(of))
        free = st.f_bavail * st.f_frsize
        missing = max(of.entry.size - offset - free, 1)
        path = of.entry.path
        self._discard(of.entry.id)  # frees what it held; nothing half-written stays behind
        return TargetFull(f"needs at least {missing} more bytes for this {of.entry.size}-byte file "
                          f"({free} bytes free); free space on the target (or map this mount to a data disk "
                          "with DataDisks) and run the same push again: it resumes", path=path)

    def _place_reuse(self, of: OpenFile, ref: pb.ChunkRef) -> None:
        if of.failed:
            return
        n = ref.length
        if of.have.get(ref.offset) == (n, ref.hash):
            src = ref.offset            # where it was: the common case, and the only one in place
        else:
            src = of.by_hash.get(ref.hash, -1)   # the chunk moved (content-defined cuts)
            if src < 0 or of.have[src][0] != n:
                raise ProtocolError(f"agent reused chunk at offset {ref.offset} of /{os.fsdecode(of.entry.path)} "
                                    "that the receiver did not offer")
        self._check_offset(of, ref.offset, n)
        if not of.lazy:
            self._tmp_fd(of)
        if of.in_place:
            if src != ref.offset:
                # the partial copy is overwritten as it is completed: nothing is moved inside it
                of.failed = f"reused chunk at offset {ref.offset} is not in place in the partial copy"
                return
            # already in the temporary file; the whole file is read back and verified at its end
            self._advance(of, ref.offset)
            of.reread = True
            of.pos = ref.offset + n
            of.written.append((ref.offset, n, ref.hash))
            self.bytes_reused += n
            return
        old = self._old_fd(of)
        data = os.pread(old, n, src) if old is not None else b""
        if chunk_hash(data) != ref.hash:
            # the old copy changed under us: ask for the real bytes
            of.failed = f"reused chunk at offset {ref.offset} no longer matches on the target"
            of.have.pop(src, None)
            of.by_hash.pop(ref.hash, None)
            return
        if of.lazy and src == ref.offset:
            # verified where it lies; nothing is written unless new data makes a new file necessary
            self._advance(of, ref.offset)
            of.hasher.update(data)
            of.pos = ref.offset + n
            of.written.append((ref.offset, n, ref.hash))
            self.bytes_reused += n
            return
        self._write(of, ref.offset, data, ref.hash)
        self.bytes_written -= n
        self.bytes_reused += n

    def _file_end(self, end: pb.FileEnd) -> None:
        of = self._file(end.file_id)
        e = of.entry
        if not of.failed and end.size < of.pos:
            raise ProtocolError(f"/{os.fsdecode(e.path)}: declared size {end.size} is below data already sent")
        if end.size > _size_bound(e):
            raise ProtocolError(f"/{os.fsdecode(e.path)}: final size {end.size} is far beyond the {e.size} bytes "
                                "announced (a file may grow while it is read, not without bound)")
        if of.lazy and not of.failed:
            old = self._old_fd(of)
            if old is not None and os.fstat(old).st_size == end.size:
                self._finish_in_place(of, end)
                return
            self._materialize(of)  # same chunks, other size: a new file after all
        if not of.failed:
            fd = self._tmp_fd(of)
            try:
                if end.size != of.pos or of.reread:
                    os.ftruncate(fd, end.size)  # trailing hole (or a resumed file's true size)
            except OSError as exc:
                raise oserror_to_cvm(exc, "sizing", e.path) from exc
            if of.reread:
                digest = hash_file_content(fd, end.size, self.chunk_size)
            else:
                of.hasher.update_zeros(end.size - of.pos)
                digest = of.hasher.digest()
            if digest != end.hash:
                self._mismatch(of)
        if of.failed:
            self._retry(of, end.file_id)
            return
        _adopt_restat(e, end)
        fd = self._tmp_fd(of)
        dfd = self.tree.parent_fd(of.entry.path)
        try:
            self.tree.apply_metadata(fd, e, fresh=True)
            self.tree.replace(dfd, of.tmp, of.parts[-1], e.path)
        except OSError as exc:
            raise oserror_to_cvm(exc, "finishing", e.path) from exc
        st = os.fstat(fd)
        self._close_file(end.file_id)
        self._committed_file(of, end, st)

    def _committed_file(self, of: OpenFile, end: pb.FileEnd, st: os.stat_result) -> None:
        """Journal a file now complete under its final name, and make its waiting hard links."""
        e = of.entry
        self.pending_records.append(Record(e.path, e.signature(), st.st_ino, st.st_ctime_ns, end.hash,
                                           pack_chunk_list(of.avg, of.written), e.size, e.mtime_ns))
        if e.path in self.partial_paths:
            # only a path the journal holds a partial row for costs a DELETE (a fresh copy has none)
            self.partial_paths.discard(e.path)
            self.pending_drop_partials.append(e.path)
        self.pending_ids.append(e.id)
        self.retry_outstanding.discard(end.file_id)
        self.committed += 1
        if e.size >= COMMIT_FILE_SIZE:
            self.commit_due = True
        links = self.deferred.pop(e.path, ())
        self.deferred_count -= len(links)
        for link in links:
            lparts = split_relpath(link.path)
            ldfd = self.tree.dir_fd(lparts[:-1])
            self._make_link(link, ldfd, lparts[-1], self.tree.lstat(ldfd, lparts[-1]))
            self.pending_ids.append(link.id)
            self.committed += 1

    def _finish_in_place(self, of: OpenFile, end: pb.FileEnd) -> None:
        """Every byte of the target's existing file was verified against the source: keep that file."""
        e = of.entry
        of.hasher.update_zeros(end.size - of.pos)
        if of.hasher.digest() != end.hash:
            self._mismatch(of)
            of.lazy = False
            self._retry(of, end.file_id)
            return
        _adopt_restat(e, end)
        try:
            old = self._old_fd(of)
            if old is None:
                raise TargetError(f"/{os.fsdecode(e.path)} changed on the target while it was verified; run the "
                                  "same push again")
            self.tree.apply_metadata(old, e)
        except OSError as exc:
            raise oserror_to_cvm(exc, "finishing", e.path) from exc
        st = os.fstat(old)
        self._close_file(end.file_id)
        self._committed_file(of, end, st)

    def _mismatch(self, of: OpenFile) -> None:
        """The whole-file hash disagrees with the source's: no chunk written so far may be kept."""
        self.mismatches += 1
        of.failed = "whole-file hash mismatch"
        of.written.clear()

    def _retry(self, of: OpenFile, file_id: int) -> None:
        of.failures += 1
        if of.failures >= MAX_FILE_FAILURES:
            self._discard(file_id)
            raise IntegrityError(f"/{os.fsdecode(of.entry.path)} failed verification {of.failures} times "
                                 f"({of.failed}); the data is corrupted in transit or in memory on one side")
        # keep the verified chunks: they are reused in place
        verified = sorted(of.written)
        if of.tmp_ino and not verified:
            os.ftruncate(self._tmp_fd(of), 0)  # nothing kept: no stale bytes may survive in holes
        reason = of.failed
        _offer(of, of.avg, verified)
        of.in_place = bool(verified) and not of.lazy  # lazily verified chunks are still in the old file
        of.reread = False
        of.failed = ""
        of.pos = 0
        of.hasher = FileHasher()
        of.written = []
        self.retry_outstanding.add(file_id)
        self.pending_retries.append(pb.FileRetry(
            file_id=file_id, reason=reason, cdc_avg=of.avg,
            have=[pb.ChunkHave(offset=o, length=n, hash=h) for o, n, h in verified]))

    def _file_abort(self, ab: pb.FileAbort) -> None:
        of = self._file(ab.file_id)
        if ab.retrying:
            of.have, of.by_hash, of.in_place, of.reread, of.failed, of.lazy = {}, {}, False, False, "", False
            of.pos, of.hasher, of.written = 0, FileHasher(), []
            if of.tmp_ino:
                os.ftruncate(self._tmp_fd(of), 0)
            return
        logger.info("/%s not transferred: %s", os.fsdecode(of.entry.path), ab.reason)
        links = self.deferred.pop(of.entry.path, ())
        self.deferred_count -= len(links)
        for link in links:
            self._error(f"/{os.fsdecode(link.path)}: hard link target was not transferred ({ab.reason})")
        self.retry_outstanding.discard(ab.file_id)
        self._discard(ab.file_id)

    def _close_file(self, file_id: int) -> None:
        of = self.files.pop(file_id)
        self.by_path.pop(of.entry.path, None)
        for fd in (of.fd, of.old_fd):
            if fd is not None:
                os.close(fd)
        self._open_fds.pop((file_id, False), None)
        self._open_fds.pop((file_id, True), None)

    def _discard(self, file_id: int) -> None:
        of = self.files[file_id]
        self._close_file(file_id)
        if of.tmp:
            self._drop_tmp(self.tree.parent_fd(of.entry.path), of.tmp, of.entry.path)

    def _drop_tmp(self, dfd: int, tmp: bytes, path: bytes) -> None:
        try:
            os.unlink(tmp, dir_fd=dfd)
        except FileNotFoundError:
            pass
        else:
            cut = path.rfind(b"/")
            self.touched.add(path[:cut] if cut > 0 else b"")
        self.pending_drop_partials.append(path)

    # ================================================================= mirroring
    def _mirror_dir(self, d: bytes) -> None:
        parts = split_relpath(d)
        names = self.children.pop(d, set())
        if not self.delete or d in self.made_dirs:
            return   # a directory this session made holds only names it was sent
        try:
            dfd = self.tree.dir_fd(parts)
        except FileNotFoundError:
            raise ProtocolError(f"completed directory {os.fsdecode(d)!r} was never sent") from None
        open_tmps = ({self.files[i].tmp for i in (self.by_path.get(join(d, n)) for n in names) if i is not None}
                     if self.by_path else ())
        for name, is_dir in list_names(dfd):
            if name in names:
                continue
            if is_dir and self.tree.is_protected(self.tree.lstat(dfd, name)):
                continue  # the state directory (or a directory holding it) is never content
            if is_tmp_name(name) and (name in open_tmps or name in {tmp_name(n) for n in names}):
                continue  # a file in flight (or resumable) in this directory
            rel = join(d, name)
            if not is_tmp_name(name) and self.rules is not None and self.rules.excluded(rel, is_dir):
                continue  # excluded paths are protected from deletion
            try:
                self.tree.remove(dfd, name, rel)
            except OSError as exc:
                raise oserror_to_cvm(exc, "deleting", rel) from exc
            self.touched.add(d)
            if not is_tmp_name(name):
                self.deleted += 1
                self.pending_deleted.append(rel)

    def _apply_dir_times(self) -> None:
        """Give every directory its mtime (its children are done), then journal it as it now is.

        Why journaled here and not only when decided: adding a child or setting the time changes a
        directory's ctime, so a record made at the decision would be stale at the next pass, which
        would then compare every directory's metadata again.  A directory whose mtime was right
        when decided and whose content this pass did not change is left alone.
        """
        touched = self.touched
        # children before parents: reverse lexicographic order puts "a/b" before "a"
        for d in sorted(self.dirs, reverse=True):
            if d.settled and d.path not in touched:
                continue
            try:
                fd = self.tree.dir_fd(split_relpath(d.path))
                st = os.fstat(fd)
                if st.st_mtime_ns != d.mtime_ns:
                    set_mtime(fd, d.mtime_ns)
                    st = os.fstat(fd)
            except (FileNotFoundError, UnsafePath):
                continue
            if d.path:
                self.pending_records.append(Record(d.path, d.sig, st.st_ino, st.st_ctime_ns, None, None, None,
                                                   d.mtime_ns))
        self.dirs.clear()
        touched.clear()

    # ================================================================= journal
    def _record(self, e: Entry, fd: int, file_hash: bytes | None = None, chunks: bytes | None = None) -> None:
        st = os.fstat(fd)
        self.pending_records.append(Record(e.path, e.signature(), st.st_ino, st.st_ctime_ns, file_hash, chunks,
                                           e.size, e.mtime_ns))
        self.committed += 1

    def _record_at(self, e: Entry, dfd: int, name: bytes, file_hash: bytes | None = None,
                   chunks: bytes | None = None) -> None:
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        self.pending_records.append(Record(e.path, e.signature(), st.st_ino, st.st_ctime_ns, file_hash, chunks))
        self.committed += 1

    def maybe_commit(self) -> list[pb.ReceiverMessage]:
        if (self.commit_due or self.pending_bytes >= MAX_INFLIGHT // 2 or len(self.pending_ids) >= COMMIT_FILES
                or time.monotonic() - self.last_commit >= COMMIT_INTERVAL):
            return self.commit()
        return []

    def commit(self) -> list[pb.ReceiverMessage]:
        """Make everything so far durable, journal it, and tell the agent."""
        partials = []
        for of in self.files.values():
            if of.tmp_ino and len(of.written) > of.journaled and not of.failed:
                partials.append(Partial(of.entry.path, of.tmp, of.entry.signature(), of.entry.ino,
                                        of.entry.ctime_ns, pack_chunk_list(of.avg, of.written)))
        nothing = not (self.pending_records or self.pending_deleted or self.pending_drop_partials or partials
                       or self.pending_ids or self.pending_bytes or self.pending_retries)
        self.last_commit = time.monotonic()
        self.commit_due = False
        if nothing:
            return []
        try:
            for dev in self.dirty_devs:
                syncfs(self.dev_fds[dev])
            syncfs(self.tree.root_fd)
        except OSError as exc:
            raise oserror_to_cvm(exc, "flushing", b"") from exc
        self.dirty_devs.clear()
        self.journal.commit(self.pending_records, partials, self.pending_drop_partials, self.pending_deleted)
        self.partial_paths.update(p.path for p in partials)
        for of in self.files.values():
            of.journaled = len(of.written)
        msg = pb.Committed(ids=self.pending_ids, bytes=self.pending_bytes, retries=self.pending_retries)
        self.pending_records, self.pending_deleted, self.pending_drop_partials = [], [], []
        self.pending_ids, self.pending_bytes, self.pending_retries = [], 0, []
        return [pb.ReceiverMessage(committed=msg)]


_DEFAULT_ACL = b"system.posix_acl_default"
_EUID = os.geteuid()


def fd_budget() -> int:
    """How many file descriptors a session may hold for files awaiting data (a quarter of the soft limit)."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(16, min(4096, (soft if soft != resource.RLIM_INFINITY else 4096) // 4))


def _adopt_restat(e: Entry, end: pb.FileEnd) -> None:
    """The file changed between scan and read: the content matches the fresh values in ``end``, which
    replace the entry's (FileEnd.restat)."""
    if end.restat:
        e.size, e.mtime_ns = end.size, end.mtime_ns
        e.dev, e.ino, e.ctime_ns = end.source.dev, end.source.ino, end.source.ctime_ns
        e.forget_signature()


def _size_bound(e: Entry) -> int:
    """The largest size a file announced with ``e.size`` may reach by its end (it may grow while read)."""
    return min(e.size + max(e.size, 1 << 30), MAX_FILE_SIZE)


def _own_tmp(st: os.stat_result | None) -> bool:
    """Is ``st`` a temporary file this receiver could have made: regular, one name, owned by us, mode 0600?"""
    return (st is not None and stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and st.st_uid == _EUID
            and stat.S_IMODE(st.st_mode) == 0o600)
_BLOCK = 4096
_ZERO_BLOCK = bytes(_BLOCK)


def _write_sparse(fd: int, data: memoryview | bytes, offset: int, zeros: bool | None = None) -> None:
    """pwrite ``data`` but leave aligned all-zero 4 KiB blocks as holes (like rsync -S).

    The temporary file starts empty (or truncated), so a block never written
    reads as zeros; the common case -- no zero block at all -- is one pwrite.
    ``zeros``: whether ``data`` holds 4 KiB of zeros anywhere, when the caller
    knows (None: searched here, which copies a memoryview).
    """
    if zeros is None:
        zeros = (data if isinstance(data, bytes) else bytes(data)).find(_ZERO_BLOCK) >= 0
    if not zeros:
        _pwrite_all(fd, data, offset)
        return
    raw = data
    n = len(raw)
    start = None  # beginning of the pending non-zero run
    for pos in range(0, n, _BLOCK):
        if raw[pos:pos + _BLOCK] == _ZERO_BLOCK:
            if start is not None:
                _pwrite_all(fd, raw[start:pos], offset + start)
                start = None
        elif start is None:
            start = pos
    if start is not None:
        _pwrite_all(fd, raw[start:], offset + start)


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        done = os.pwrite(fd, view, offset)
        if done <= 0:
            raise TargetError("short write to the target")
        view, offset = view[done:], offset + done


def _fmt(kind: Kind) -> int:
    return FMT_BY_KIND[kind]


def _hash_chunks(fd: int, size: int, chunk_size: int) -> list[tuple[int, int, bytes]]:
    """(offset, length, hash) of the grid chunks of an existing file."""
    out: list[tuple[int, int, bytes]] = []
    for off in range(0, size, chunk_size):
        data = os.pread(fd, chunk_size, off)
        if not data:
            break
        out.append((off, len(data), chunk_hash(data)))
    return out


def _offer(of: OpenFile, avg: int, chunks: list[tuple[int, int, bytes]]) -> None:
    """Set what the receiver offers for ``of``: how the file is cut, and the chunks it can place."""
    of.avg = avg
    of.have = {off: (n, h) for off, n, h in chunks}
    of.by_hash = {h: off for off, _, h in chunks}

