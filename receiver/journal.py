"""The receiver's durable journal: what has landed on the target, and what is half-landed.

Why SQLite on the target disk: the journal must survive a restart of the rescue
system and a SIGKILL at any instruction, and it must be queried per entry on
a pass over a million files.  WAL mode with synchronous=FULL makes every
commit durable; the session commits in groups (after a ``syncfs`` of the
written data), so the ordering rule holds:

    data durable  ->  journal commit  ->  agent told (Committed)

Tables (format version 2):
- ``entries``: every committed entry: metadata signature, the target inode
  and ctime at commit (any later change to the target file changes its ctime),
  whole-file hash and chunk list of regular files.
- ``partial``: files in flight: temporary name, the entry signature and source
  fingerprint they belong to, and the chunks durably written so far.
An unknown format version is refused, never guessed at.

Chunk lists: format 1 stored (offset, hash) on the fixed grid, 24 bytes each;
format 2 adds content-defined chunks, so a list starts with a header (0x02,
the average chunk size, 0 = the grid) and stores (offset, length, hash).  A
format 1 journal is still read (its lists are grid lists, their lengths follow
from the file size) and is marked format 2 on open: what this version writes
an older one could not read.
"""
from __future__ import annotations

import os
import sqlite3
import stat
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

from cvmigrate.common.errors import TargetError, VersionMismatch

FORMAT_VERSION = 2
READABLE_VERSIONS = ("1", "2")
_REC = struct.Struct(">Q16s")  # format 1 grid list: offset, hash
_HDR = struct.Struct(">BI")    # format 2 list header: 2, cdc average (0 = the fixed grid)
_REC2 = struct.Struct(">QI16s")  # format 2: offset, length, hash
#: The smallest file the receiver looks for a twin of (``find_same_content``): smaller ones travel whole at
#: little cost.  Only such files enter the twin index: every other row costs one B-tree insert less.
TWIN_MIN_SIZE = 64 << 10


def pack_chunks(chunks: Iterable[tuple[int, bytes]]) -> bytes:
    """A format 1 grid list (what journals of earlier versions hold)."""
    return b"".join(_REC.pack(off, h) for off, h in chunks)


def unpack_chunks(blob: bytes | None) -> dict[int, bytes]:
    """offset -> hash of a format 1 grid list."""
    if not blob:
        return {}
    return {off: h for off, h in _REC.iter_unpack(blob)}


@dataclass(slots=True)
class ChunkList:
    """A file's chunks as journaled: how they were cut, and (offset, length, hash) of each."""

    avg: int                                   # 0: the fixed grid; else content-defined with this average
    chunks: list[tuple[int, int, bytes]]


def pack_chunk_list(avg: int, chunks: Iterable[tuple[int, int, bytes]]) -> bytes:
    return _HDR.pack(2, avg) + b"".join(_REC2.pack(off, n, h) for off, n, h in chunks)


def unpack_chunk_list(blob: bytes | None, size: int | None, grid: int) -> ChunkList | None:
    """Read a chunk list of either format; None for a malformed one (a journal value is
    validated like a message: the caller then treats the file as unknown and hashes it).

    ``size`` (the file's size) gives the last chunk's length of a format 1 grid list.
    """
    if not blob:
        return ChunkList(0, [])
    try:
        if blob[0] == 2:
            _, avg = _HDR.unpack_from(blob)
            return ChunkList(avg, list(_REC2.iter_unpack(memoryview(blob)[_HDR.size:])))
        if size is None:
            return None
        return ChunkList(0, [(off, min(grid, size - off), h) for off, h in _REC.iter_unpack(blob) if off < size])
    except struct.error:
        return None


def check_plain_file(path: str) -> None:
    """Refuse a state file that is a link or a special file: the journal must be ours alone.

    Why: a second name for the journal (a hard link planted by an earlier,
    hostile pass) would let a transfer rewrite it; a FIFO would block.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        raise TargetError(f"{path} is not a plain file (a link, a second name or a special file); remove it "
                          "(or the whole state directory, to start the migration over) and try again")


def open_state_db(state_dir: str | bytes, name: str, format_version: int,
                  schema: str) -> tuple[sqlite3.Connection, str, str | None]:
    """Open (or create) the SQLite database ``name`` in the receiver's state directory.

    One recipe for every journal (this one, receiver/blockjournal.py): the state
    directory 0700, the database and its WAL/SHM files plain files of ours
    alone (``check_plain_file``), WAL with synchronous=FULL (a commit is durable
    when it returns), and a ``meta`` table holding ``format_version``.  A new
    database gets ``schema`` and ``format_version`` in one transaction.
    Returns the connection, the database's path and the format version found
    (None when the database was created now); the caller decides which
    versions it reads.
    """
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    path = os.path.join(os.fsdecode(state_dir), name)
    for n in (path, path + "-wal", path + "-shm"):
        check_plain_file(n)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    row = db.execute("SELECT value FROM meta WHERE key='format_version'").fetchone()
    if row is not None:
        return db, path, str(row[0])
    db.executescript(f"BEGIN; INSERT INTO meta VALUES('format_version', '{format_version}'); {schema}\nCOMMIT;")
    return db, path, None


#: The columns of an entries row, in Record's field order.
_RECORD_COLUMNS = "path, sig, t_ino, t_ctime_ns, file_hash, chunks, size, mtime_ns"


#: find_same_content's query (size, mtime_ns, the path itself).
TWIN_QUERY = (f"SELECT {_RECORD_COLUMNS} FROM entries "  # noqa: S608 - constants only
              f"WHERE size=? AND mtime_ns=? AND chunks IS NOT NULL AND size >= {TWIN_MIN_SIZE} AND path<>? LIMIT 1")


class Record(NamedTuple):
    """One row of ``entries``, in column order (a tuple: a group commit hands the list to SQLite as it is)."""

    path: bytes
    sig: bytes
    t_ino: int
    t_ctime_ns: int
    file_hash: bytes | None
    chunks: bytes | None
    size: int | None = None
    mtime_ns: int | None = None


@dataclass(slots=True)
class Partial:
    path: bytes
    tmp: bytes
    sig: bytes
    src_ino: int
    src_ctime_ns: int
    chunks: bytes


class Journal:
    """One SQLite database in the state directory."""

    def __init__(self, state_dir: str | bytes) -> None:
        self.db, path, found = open_state_db(state_dir, "journal.db", FORMAT_VERSION, f"""
            CREATE TABLE entries(path BLOB PRIMARY KEY, sig BLOB NOT NULL, t_ino INTEGER, t_ctime_ns INTEGER,
                                 file_hash BLOB, chunks BLOB, size INTEGER, mtime_ns INTEGER) WITHOUT ROWID;
            CREATE INDEX entries_twins ON entries(size, mtime_ns) WHERE chunks IS NOT NULL AND size >= {TWIN_MIN_SIZE};
            CREATE TABLE partial(path BLOB PRIMARY KEY, tmp BLOB NOT NULL, sig BLOB NOT NULL,
                                 src_ino INTEGER, src_ctime_ns INTEGER, chunks BLOB) WITHOUT ROWID;""")
        self.existed = found is not None
        if found is not None and found not in READABLE_VERSIONS:
            self.db.close()
            raise VersionMismatch(f"journal {path} has format version {found}, this cvmigrate reads "
                                  f"{' and '.join(READABLE_VERSIONS)}; use the cvmigrate version that wrote it, or "
                                  "remove the state directory to start the migration over")
        elif found is not None and found != str(FORMAT_VERSION):
            # a format 1 journal reads as it is; from now on it holds lists only this version reads
            self.db.execute("UPDATE meta SET value=? WHERE key='format_version'", (str(FORMAT_VERSION),))
        self.has_entries = self.db.execute("SELECT 1 FROM entries LIMIT 1").fetchone() is not None

    def close(self) -> None:
        self.db.close()

    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def get(self, path: bytes) -> Record | None:
        row = self.db.execute("SELECT path, sig, t_ino, t_ctime_ns, file_hash, chunks, size, mtime_ns FROM entries "
                              "WHERE path=?", (path,)).fetchone()
        return Record(*row) if row else None

    def get_many(self, paths: list[bytes]) -> dict[bytes, Record]:
        """Records of many paths in one query per 500 (a batch of entries costs one round, not 1000)."""
        out: dict[bytes, Record] = {}
        for i in range(0, len(paths), 500):
            part = paths[i:i + 500]
            marks = ",".join("?" * len(part))
            query = f"SELECT {_RECORD_COLUMNS} FROM entries WHERE path IN ({marks})"  # noqa: S608 - ? marks only
            rows = self.db.execute(query, part)
            for row in rows:
                out[row[0]] = Record(*row)
        return out

    def find_same_content(self, size: int, mtime_ns: int, exclude: bytes) -> Record | None:
        """A committed file with this size and mtime: a moved or ``cp -p``-copied file's likely twin.

        Only files of at least TWIN_MIN_SIZE bytes: the condition, spelled as in the index, lets SQLite use
        the partial index (a journal made before it existed has ``entries_by_content``, which serves too).
        """
        if size < TWIN_MIN_SIZE:
            return None
        row = self.db.execute(TWIN_QUERY, (size, mtime_ns, exclude)).fetchone()
        return Record(*row) if row else None

    def get_partial(self, path: bytes) -> Partial | None:
        row = self.db.execute("SELECT path, tmp, sig, src_ino, src_ctime_ns, chunks FROM partial WHERE path=?",
                              (path,)).fetchone()
        return Partial(*row) if row else None

    def partial_paths(self) -> set[bytes]:
        return {r[0] for r in self.db.execute("SELECT path FROM partial")}

    def commit(self, records: list[Record], partials: list[Partial], drop_partials: list[bytes],
               deleted: list[bytes], meta: dict[str, str] | None = None) -> None:
        """Apply one group of changes in one durable transaction."""
        db = self.db
        db.execute("BEGIN")
        try:
            for path in deleted:
                # the path itself and everything below it ('/' is 0x2f, '0' is 0x30)
                db.execute("DELETE FROM entries WHERE path=? OR (path>=? AND path<?)",
                           (path, path + b"/", path + b"0"))
                db.execute("DELETE FROM partial WHERE path=? OR (path>=? AND path<?)",
                           (path, path + b"/", path + b"0"))
            if drop_partials:
                db.executemany("DELETE FROM partial WHERE path=?", [(p,) for p in drop_partials])
            if records:
                db.executemany("INSERT OR REPLACE INTO entries VALUES(?,?,?,?,?,?,?,?)", records)
            if partials:
                db.executemany("INSERT OR REPLACE INTO partial VALUES(?,?,?,?,?,?)",
                               [(p.path, p.tmp, p.sig, p.src_ino, p.src_ctime_ns, p.chunks) for p in partials])
            for k, v in (meta or {}).items():
                db.execute("INSERT OR REPLACE INTO meta VALUES(?,?)", (k, v))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        if records:
            self.has_entries = True
