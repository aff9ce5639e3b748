"""The receiver's block journal: the hash of every block of every target it has written.

Why: the agent must know, per block, whether the target already holds it
(incremental pass, resume) before it spends the wire on it; the journal lets
every pass after the first report those hashes without reading the target.

SQLite, ``<state dir>/block.db``, format version 1:
- ``targets``: one row per target path with its identity (device number or
  inode), size and block size; a different identity or geometry drops the
  target's blocks.  ``dirty_lo``/``dirty_hi``: the range of blocks that may
  have been written without their hash being journaled.
- ``blocks``: (target, index) -> hash (empty = zero block).
Ordering per commit group (receiver/blocksession.py): fdatasync of the target,
then one transaction that records the hashes and moves the dirty range past
them, then BlockCommitted.  Before writing outside the dirty range the
receiver widens it durably (once per ``DIRTY_AHEAD`` blocks), so after any
crash only blocks inside the range are re-hashed from the target instead of
trusted.
"""
from __future__ import annotations

import logging

from cvmigrate.common.errors import VersionMismatch
from cvmigrate.receiver.journal import open_state_db

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1


class BlockJournal:
    """Block hashes of every target this receiver has written, durable in SQLite."""

    def __init__(self, state_dir: str) -> None:
        self.db, path, found = open_state_db(state_dir, "block.db", FORMAT_VERSION, """
            CREATE TABLE targets(path TEXT PRIMARY KEY, identity TEXT NOT NULL, size INTEGER NOT NULL,
                                 block_size INTEGER NOT NULL, dirty_lo INTEGER NOT NULL DEFAULT 0,
                                 dirty_hi INTEGER NOT NULL DEFAULT 0);
            CREATE TABLE blocks(path TEXT NOT NULL, idx INTEGER NOT NULL, hash BLOB NOT NULL,
                                PRIMARY KEY(path, idx)) WITHOUT ROWID;""")
        if found is not None and found != str(FORMAT_VERSION):
            self.db.close()
            raise VersionMismatch(f"block journal {path} has format version {found}, this cvmigrate knows "
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

