"""The controller's checkpoint: which sub-task finished, and what it learned, in one SQLite file.

Why SQLite: one file beside the configs (like go2tencentcloud's tool
directory), atomic transactions for free, and readable by ``cvmigrate status``
from another terminal while a migration runs.

Invariants:

- the file is created with mode 0600 before SQLite ever opens it, and its mode
  is re-checked on every open: it holds the rescue password and the bearer
  token (table ``secrets``, never shown by ``status``, never logged);
- a sub-task's ``done`` status and the facts it learned are written in the
  same transaction (:meth:`Checkpoint.finish`), so a crash leaves either both
  or neither;
- the schema is versioned (``meta.schema_version``); a file written by a newer
  cvmigrate is refused instead of guessed at;
- a sub-task is ``pending``, ``running`` (started, not finished: the process
  died or is still running), ``done`` or ``failed``.
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cvmigrate.common.closing import Closing
from cvmigrate.common.errors import ConfigError, CvmError

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1

PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS subtasks (
    name TEXT PRIMARY KEY,
    stage INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    started REAL,
    finished REAL,
    error TEXT
);
CREATE TABLE IF NOT EXISTS facts (key TEXT PRIMARY KEY, value TEXT NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS secrets (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS passes (
    n INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    started REAL NOT NULL,
    finished REAL,
    result TEXT
);
"""


class StateFileError(ConfigError):
    """The checkpoint file cannot be used as it is."""


@dataclass(frozen=True)
class SubtaskRow:
    name: str
    stage: int
    seq: int
    status: str
    attempts: int
    started: float | None
    finished: float | None
    error: str | None


def _create_private(path: Path) -> None:
    """Create ``path`` empty with mode 0600 (no window where it is world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    os.close(fd)


class Checkpoint(Closing):
    """One migration's state file.  Not thread-safe: use it from one thread (the stage runner)."""

    def __init__(self, path: str | os.PathLike[str] | None, *, readonly: bool = False) -> None:
        """Open (creating when needed) the file at ``path``; None is an in-memory checkpoint (``--check``)."""
        self.path = Path(path).absolute() if path is not None else None
        self.readonly = readonly
        if self.path is None:
            self.db = sqlite3.connect(":memory:", isolation_level=None)
        else:
            if readonly:
                if not self.path.exists():
                    raise StateFileError(f"no migration state at {self.path}; run `cvmigrate migrate` first "
                                         "(or give --state FILE)")
                uri = self.path.as_uri() + "?mode=ro"
                self.db = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=10)
            else:
                try:
                    _create_private(self.path)
                except FileExistsError:
                    pass
                except OSError as exc:
                    raise StateFileError(f"cannot create the state file {self.path}: {exc.strerror}; "
                                         "give a writable --state FILE") from None
                self._check_mode()
                self.db = sqlite3.connect(str(self.path), isolation_level=None, timeout=30)
                self.db.execute("PRAGMA synchronous=FULL")
        self.db.row_factory = sqlite3.Row
        if not readonly:
            with self.transaction():
                for stmt in _SCHEMA.split(";"):
                    if stmt.strip():
                        self.db.execute(stmt)
                row = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
                if row is None:
                    self.db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                    self.db.execute("INSERT INTO meta VALUES ('created', ?)", (repr(time.time()),))
        self._check_version()

    # ------------------------------------------------------------------ plumbing
    def _check_mode(self) -> None:
        assert self.path is not None
        st = self.path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise StateFileError(f"{self.path} is not a regular file; give another --state FILE")
        if st.st_mode & 0o077:
            # It holds the rescue password: tighten rather than refuse (we own it).
            logger.warning("state file %s was readable by others (mode %o); setting it to 0600",
                           self.path, st.st_mode & 0o777)
            os.chmod(self.path, 0o600)

    def _check_version(self) -> None:
        try:
            row = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise StateFileError(f"{self.path} is not a cvmigrate state file ({exc}); "
                                 "give another --state FILE") from exc
        if row is None:
            raise StateFileError(f"{self.path} has no schema version; it was not written by cvmigrate")
        version = int(row["value"])
        if version > SCHEMA_VERSION:
            raise StateFileError(f"{self.path} was written by a newer cvmigrate (state schema {version}, we know "
                                 f"{SCHEMA_VERSION}); upgrade cvmigrate to resume this migration")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic write: everything inside commits together or not at all."""
        if self.readonly:
            raise CvmError("the state file was opened read-only")
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()

    # ------------------------------------------------------------------ meta
    def meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row["value"] if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def migration_id(self) -> str:
        """This migration's id, made on first use: ``mig-YYYYmmdd-HHMMSS-xxxxxx``."""
        mid = self.meta("migration_id")
        if mid is None:
            mid = time.strftime("mig-%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
            self.set_meta("migration_id", mid)
        return mid

    # ------------------------------------------------------------------ sub-tasks
    def register_subtasks(self, subtasks: Iterable[tuple[str, int]]) -> None:
        """Make sure every (name, stage) has a row, in this order (existing rows keep their status)."""
        with self.transaction() as db:
            for seq, (name, stage) in enumerate(subtasks):
                db.execute("INSERT OR IGNORE INTO subtasks (name, stage, seq) VALUES (?, ?, ?)", (name, stage, seq))
                db.execute("UPDATE subtasks SET stage=?, seq=? WHERE name=?", (stage, seq, name))

    def subtasks(self) -> list[SubtaskRow]:
        rows = self.db.execute("SELECT * FROM subtasks ORDER BY seq").fetchall()
        return [SubtaskRow(**dict(r)) for r in rows]

    def subtask(self, name: str) -> SubtaskRow | None:
        row = self.db.execute("SELECT * FROM subtasks WHERE name=?", (name,)).fetchone()
        return SubtaskRow(**dict(row)) if row else None

    def is_done(self, name: str) -> bool:
        row = self.subtask(name)
        return row is not None and row.status == DONE

    def start(self, name: str) -> None:
        with self.transaction() as db:
            cur = db.execute("UPDATE subtasks SET status=?, attempts=attempts+1, started=?, finished=NULL, error=NULL "
                             "WHERE name=? AND status!=?", (RUNNING, time.time(), name, DONE))
            if cur.rowcount != 1:
                raise CvmError(f"sub-task {name} is unknown or already done")

    def finish(self, name: str, facts: dict[str, Any] | None = None) -> None:
        """Mark ``name`` done and store its facts, atomically."""
        with self.transaction() as db:
            self._put_facts(db, facts or {})
            db.execute("UPDATE subtasks SET status=?, finished=? WHERE name=?", (DONE, time.time(), name))

    def fail(self, name: str, error: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE subtasks SET status=?, finished=?, error=? WHERE name=?",
                       (FAILED, time.time(), error[:2000], name))

    def first_unfinished(self) -> SubtaskRow | None:
        return next((r for r in self.subtasks() if r.status != DONE), None)

    def all_done(self) -> bool:
        rows = self.subtasks()
        return bool(rows) and all(r.status == DONE for r in rows)

    # ------------------------------------------------------------------ facts
    @staticmethod
    def _put_facts(db: sqlite3.Connection, facts: dict[str, Any]) -> None:
        now = time.time()
        for key, value in facts.items():
            db.execute("INSERT OR REPLACE INTO facts VALUES (?, ?, ?)", (key, json.dumps(value, sort_keys=True), now))

    def set_facts(self, **facts: Any) -> None:
        with self.transaction() as db:
            self._put_facts(db, facts)

    def fact(self, key: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT value FROM facts WHERE key=?", (key,)).fetchone()
        return json.loads(row["value"]) if row else default

    def facts(self) -> dict[str, Any]:
        return {r["key"]: json.loads(r["value"]) for r in self.db.execute("SELECT key, value FROM facts ORDER BY key")}

    # ------------------------------------------------------------------ secrets
    def set_secret(self, key: str, value: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO secrets VALUES (?, ?)", (key, value))

    def secret(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM secrets WHERE key=?", (key,)).fetchone()
        return row["value"] if row else None

    # ------------------------------------------------------------------ transfer passes
    def begin_pass(self, kind: str) -> int:
        with self.transaction() as db:
            cur = db.execute("INSERT INTO passes (kind, started) VALUES (?, ?)", (kind, time.time()))
            assert cur.lastrowid is not None  # set by every INSERT
            return cur.lastrowid

    def end_pass(self, n: int, result: dict[str, Any]) -> None:
        with self.transaction() as db:
            db.execute("UPDATE passes SET finished=?, result=? WHERE n=?", (time.time(), json.dumps(result), n))

    def passes(self) -> list[dict[str, Any]]:
        out = []
        for r in self.db.execute("SELECT * FROM passes ORDER BY n"):
            d = dict(r)
            d["result"] = json.loads(d["result"]) if d["result"] else None
            out.append(d)
        return out

    def completed_passes(self) -> list[dict[str, Any]]:
        """The passes that finished with a result: not the open ones, not the error records of failed attempts."""
        return [p for p in self.passes() if p["result"] and "error" not in p["result"]]

    # ------------------------------------------------------------------ reporting
    def snapshot(self) -> dict[str, Any]:
        """Everything ``status --json`` shows: meta, sub-tasks, facts, passes -- never the secrets table."""
        meta = {r["key"]: r["value"] for r in self.db.execute("SELECT key, value FROM meta")}
        return {
            "state_file": str(self.path) if self.path else None,
            "schema_version": int(meta.get("schema_version", SCHEMA_VERSION)),
            "migration_id": meta.get("migration_id"),
            "subtasks": [asdict(r) for r in self.subtasks()],
            "facts": self.facts(),
            "passes": self.passes(),
            "secrets_stored": [r["key"] for r in self.db.execute("SELECT key FROM secrets ORDER BY key")],
        }


def remove_state(path: str | os.PathLike[str]) -> list[str]:
    """Delete a state file and SQLite's side files; returns what was removed."""
    removed = []
    for suffix in ("", "-journal", "-wal", "-shm"):
        p = Path(str(path) + suffix)
        try:
            p.unlink()
            removed.append(str(p))
        except FileNotFoundError:
            pass
    return removed
