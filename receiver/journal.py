"""The receiver's durable journal: what has landed on the target, and what is half-landed.

Why SQLite on the target disk: the journal must survive a restart of the rescue
system and a SIGKILL at any instruction, and it must be queried per entry on
a pass over a million files.  WAL mode with synchronous=FULL makes every
commit durable; the session commits in groups (after a ``syncfs`` of the
written data), so the ordering rule holds:

    data durable  ->  journal commit  ->  agent told (Committed)

Tables (format version 1):
- ``entries``: every committed entry: metadata signature, the target inode
  and ctime at commit (any later change to the target file changes its ctime),
  whole-file hash and chunk list of regular files.
- ``partial``: files in flight: temporary name, the entry signature and source
  fingerprint they belong to, and the chunks durably written so far.
An unknown format version is refused, never guessed at.
"""
from __future__ import annotations

import os
import sqlite3
import stat
import struct
from dataclasses import dataclass
from typing import Iterable

from cvmigrate.common.errors import TargetError, VersionMismatch

FORMAT_VERSION = 1
_REC = struct.Struct(">Q16s")  # offset, hash


def pack_chunks(chunks: Iterable[tuple[int, bytes]]) -> bytes:
    return b"".join(_REC.pack(off, h) for off, h in chunks)


def unpack_chunks(blob: bytes | None) -> dict[int, bytes]:
    if not blob:
        return {}
    return {off: h for off, h in _REC.iter_unpack(blob)}


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


@dataclass(slots=True)
class Record:
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
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        path = os.path.join(os.fsdecode(state_dir), "journal.db")
        for name in (path, path + "-wal", path + "-shm"):
            check_plain_file(name)
        self.existed = os.path.exists(path)
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        row = self.db.execute("SELECT value FROM meta WHERE key='format_version'").fetchone()
        if row is None:
            self.db.executescript(f"""
                BEGIN;
                INSERT INTO meta VALUES('format_version', '{FORMAT_VERSION}');
                CREATE TABLE entries(path BLOB PRIMARY KEY, sig BLOB NOT NULL, t_ino INTEGER, t_ctime_ns INTEGER,
                                     file_hash BLOB, chunks BLOB, size INTEGER, mtime_ns INTEGER) WITHOUT ROWID;
                CREATE INDEX entries_by_content ON entries(size, mtime_ns) WHERE chunks IS NOT NULL;
                CREATE TABLE partial(path BLOB PRIMARY KEY, tmp BLOB NOT NULL, sig BLOB NOT NULL,
                                     src_ino INTEGER, src_ctime_ns INTEGER, chunks BLOB) WITHOUT ROWID;
                COMMIT;""")
            self.existed = False
        elif row[0] != str(FORMAT_VERSION):
            self.db.close()
            raise VersionMismatch(f"journal {path} has format version {row[0]}, this cvmigrate knows "
                                  f"{FORMAT_VERSION}; use the cvmigrate version that wrote it, or remove the "
                                  "state directory to start the migration over")
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
            rows = self.db.execute("SELECT path, sig, t_ino, t_ctime_ns, file_hash, chunks, size, mtime_ns FROM "
                                   f"entries WHERE path IN ({','.join('?' * len(part))})", part)
            for row in rows:
                out[row[0]] = Record(*row)
        return out

    def find_same_content(self, size: int, mtime_ns: int, exclude: bytes) -> Record | None:
        """A committed file with this size and mtime: a moved or ``cp -p``-copied file's likely twin."""
        row = self.db.execute("SELECT path, sig, t_ino, t_ctime_ns, file_hash, chunks, size, mtime_ns FROM entries "
                              "WHERE size=? AND mtime_ns=? AND chunks IS NOT NULL AND path<>? LIMIT 1",
                              (size, mtime_ns, exclude)).fetchone()
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
                db.executemany("INSERT OR REPLACE INTO entries VALUES(?,?,?,?,?,?,?,?)",
                               [(r.path, r.sig, r.t_ino, r.t_ctime_ns, r.file_hash, r.chunks, r.size, r.mtime_ns)
                                for r in records])
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
