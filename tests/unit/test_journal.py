"""The receiver's journal (receiver/journal.py) on a real SQLite file in tmp_path.

What docs/design.md promises of it: a versioned format that refuses versions it
does not know; one group of changes commits all or nothing and survives a
SIGKILL right after ``commit()`` returns; deleting a path removes exactly that
subtree; partial-file records carry what a resumed pass needs.
"""
from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from cvmigrate.common.errors import VersionMismatch
from cvmigrate.receiver.journal import (
    FORMAT_VERSION,
    TWIN_MIN_SIZE,
    TWIN_QUERY,
    Journal,
    Partial,
    Record,
    pack_chunks,
    unpack_chunks,
)

H1, H2, H3 = b"\x01" * 16, b"\x02" * 16, b"\x03" * 16


def rec(path: bytes, *, size: int | None = 10, mtime_ns: int | None = 1, chunks: bytes | None = b"",
        sig: bytes = b"s" * 16, ino: int = 1) -> Record:
    return Record(path, sig, ino, 2, H1 if chunks is not None else None, chunks, size, mtime_ns)


def part(path: bytes, chunks: Iterable[tuple[int, bytes]] = (), tmp: bytes = b".cvm-x.tmp") -> Partial:
    return Partial(path, tmp, b"p" * 16, 77, 88, pack_chunks(chunks))


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal(str(tmp_path / "state"))
    yield j
    j.close()


# ------------------------------------------------------------------ creation and versions
def test_a_new_journal_is_private_empty_and_stamped_with_its_format(tmp_path):
    state = tmp_path / "state"
    j = Journal(str(state))
    try:
        assert (j.existed, j.has_entries) == (False, False)
        assert j.get_meta("format_version") == str(FORMAT_VERSION)
        assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
        assert (state / "journal.db").is_file()
    finally:
        j.close()


def test_bytes_state_dir_is_accepted(tmp_path):
    j = Journal(os.fsencode(tmp_path / "state"))
    j.close()
    assert (tmp_path / "state" / "journal.db").exists()


def test_reopen_knows_it_existed_and_whether_entries_were_committed(tmp_path):
    state = str(tmp_path / "state")
    Journal(state).close()
    j = Journal(state)
    assert (j.existed, j.has_entries) == (True, False)
    j.commit([rec(b"a")], [], [], [])
    assert j.has_entries
    j.close()
    j = Journal(state)
    assert (j.existed, j.has_entries) == (True, True)
    j.close()


@pytest.mark.parametrize("stored", ["0", "3", "1.0", " 1", "banana", ""])
def test_an_unknown_format_version_is_refused_not_guessed_at(tmp_path, stored):
    state = tmp_path / "state"
    Journal(str(state)).close()
    db = sqlite3.connect(state / "journal.db")
    db.execute("UPDATE meta SET value=? WHERE key='format_version'", (stored,))
    db.commit()
    db.close()
    with pytest.raises(VersionMismatch) as ei:
        Journal(str(state))
    msg = str(ei.value)
    assert f"format version {stored}" in msg and "remove the state directory" in msg
    # refusing must not touch the file: the cvmigrate that wrote it can still use it
    db = sqlite3.connect(state / "journal.db")
    assert db.execute("SELECT value FROM meta WHERE key='format_version'").fetchone() == (stored,)
    db.close()


def test_a_file_from_this_version_is_accepted(tmp_path):
    state = str(tmp_path / "state")
    j = Journal(state)
    j.commit([rec(b"kept")], [], [], [])
    j.close()
    j = Journal(state)
    assert j.get(b"kept") is not None
    j.close()


# ------------------------------------------------------------------ chunk lists
@pytest.mark.parametrize("chunks", [
    [],
    [(0, H1)],
    [(0, H1), (1 << 20, H2), (5 << 40, H3)],
])
def test_chunk_lists_round_trip_in_24_bytes_each(chunks):
    blob = pack_chunks(chunks)
    assert len(blob) == 24 * len(chunks)
    assert unpack_chunks(blob) == dict(chunks)


@pytest.mark.parametrize("blob", [None, b""])
def test_no_chunk_list_unpacks_to_nothing(blob):
    assert unpack_chunks(blob) == {}


# ------------------------------------------------------------------ lookups
def test_get_returns_what_was_committed_and_none_for_the_unknown(journal):
    r = Record(b"dir/f\xff", b"S" * 16, 123, 456, H2, pack_chunks([(0, H1)]), 99, 1_000)
    journal.commit([r], [], [], [])
    assert journal.get(b"dir/f\xff") == r
    assert journal.get(b"dir/f") is None
    assert journal.get(b"") is None


def test_commit_replaces_the_record_of_a_path(journal):
    journal.commit([rec(b"f", ino=1)], [], [], [])
    journal.commit([rec(b"f", ino=2)], [], [], [])
    assert journal.get(b"f").t_ino == 2


@pytest.mark.parametrize("n", [0, 1, 499, 500, 501, 1200])
def test_get_many_answers_every_known_path_across_its_500_row_pages(journal, n):
    known = [b"f%05d" % i for i in range(n)]
    journal.commit([rec(p) for p in known], [], [], [])
    asked = known + [b"missing-%d" % i for i in range(7)]
    got = journal.get_many(asked)
    assert set(got) == set(known)
    assert all(got[p].path == p for p in known)


BIG = TWIN_MIN_SIZE


@pytest.mark.parametrize("size,mtime,exclude,want", [
    (BIG, 1, b"other", {b"twin1", b"twin2"}),     # a committed file with this size and mtime
    (BIG, 1, b"twin1", {b"twin2"}),               # never the path being decided itself
    (BIG, 2, b"other", set()),                    # another mtime
    (BIG + 1, 1, b"other", set()),                # another size
    (0, 5, b"other", set()),                      # directories (no chunk list) are never twins
    (10, 1, b"other", set()),                     # below TWIN_MIN_SIZE: not looked for
])
def test_find_same_content_needs_size_mtime_and_a_chunk_list(journal, size, mtime, exclude, want):
    journal.commit([rec(b"twin1", size=BIG), rec(b"twin2", size=BIG), rec(b"dir", size=0, mtime_ns=5, chunks=None),
                    rec(b"small1", size=10), rec(b"small2", size=10)], [], [], [])
    found = journal.find_same_content(size, mtime, exclude)
    if want:
        assert found is not None and found.path in want
    else:
        assert found is None


@pytest.mark.parametrize("index", ["entries_twins", "entries_by_content"])
def test_the_twin_search_uses_an_index_of_this_and_of_earlier_journals(tmp_path, index):
    """Every file >= TWIN_MIN_SIZE of a pass asks for a twin: a full scan per file would be quadratic."""
    j = Journal(str(tmp_path))
    if index == "entries_by_content":   # the index of journals made before entries_twins existed
        j.db.executescript("DROP INDEX entries_twins; "
                           "CREATE INDEX entries_by_content ON entries(size, mtime_ns) WHERE chunks IS NOT NULL;")
    j.commit([rec(b"f%d" % i, size=BIG + i) for i in range(50)], [], [], [])
    plan = " ".join(str(r) for r in j.db.execute("EXPLAIN QUERY PLAN " + TWIN_QUERY, (BIG, 1, b"x")))
    assert index in plan, plan
    twin = j.find_same_content(BIG + 3, 1, b"x")
    assert twin is not None and twin.path == b"f3"
    j.close()


# ------------------------------------------------------------------ partial files
def test_partial_records_carry_what_a_resumed_pass_needs(journal):
    journal.commit([], [part(b"big", [(0, H1)], tmp=b".cvm-aaa.tmp")], [], [])
    assert journal.partial_paths() == {b"big"}
    p = journal.get_partial(b"big")
    assert (p.path, p.tmp, p.sig, p.src_ino, p.src_ctime_ns) == (b"big", b".cvm-aaa.tmp", b"p" * 16, 77, 88)
    assert unpack_chunks(p.chunks) == {0: H1}
    # more chunks became durable: the record grows in place
    journal.commit([], [part(b"big", [(0, H1), (1 << 20, H2)], tmp=b".cvm-aaa.tmp")], [], [])
    assert unpack_chunks(journal.get_partial(b"big").chunks) == {0: H1, 1 << 20: H2}
    assert journal.get_partial(b"other") is None


def test_finishing_a_file_records_it_and_drops_its_partial_in_one_commit(journal):
    journal.commit([], [part(b"f", [(0, H1)])], [], [])
    journal.commit([rec(b"f")], [], [b"f"], [])
    assert journal.get(b"f") is not None
    assert journal.get_partial(b"f") is None and journal.partial_paths() == set()


def test_dropping_an_unknown_partial_is_harmless(journal):
    journal.commit([], [], [b"never-was"], [])
    assert journal.partial_paths() == set()


# ------------------------------------------------------------------ deletions
ALL = [b"a", b"a/b", b"a/b/c", b"a.b", b"a0", b"ab", b"a-", b"b", b"b/a"]


@pytest.mark.parametrize("deleted,gone", [
    ([b"a"], {b"a", b"a/b", b"a/b/c"}),                     # the subtree, not its lexical neighbours
    ([b"a/b"], {b"a/b", b"a/b/c"}),
    ([b"a/b/c"], {b"a/b/c"}),
    ([b"b"], {b"b", b"b/a"}),
    ([b"a.b", b"ab"], {b"a.b", b"ab"}),
    ([b"zzz"], set()),
])
def test_deleting_a_path_removes_exactly_its_subtree_from_entries_and_partials(journal, deleted, gone):
    journal.commit([rec(p) for p in ALL], [part(p) for p in ALL], [], [])
    journal.commit([], [], [], deleted)
    assert set(journal.get_many(ALL)) == set(ALL) - gone
    assert journal.partial_paths() == set(ALL) - gone


def test_deletions_apply_before_the_records_of_the_same_group(journal):
    """A path deleted and re-created within one commit group keeps its new record."""
    journal.commit([rec(b"d"), rec(b"d/old")], [], [], [])
    journal.commit([rec(b"d", ino=9)], [], [], [b"d"])
    assert journal.get(b"d").t_ino == 9 and journal.get(b"d/old") is None


# ------------------------------------------------------------------ group commit
def test_one_group_commits_all_or_nothing(journal):
    journal.commit([rec(b"keep"), rec(b"keep/child")], [part(b"p")], [], [], meta={"k": "old"})
    # sig NOT NULL: the insert fails mid-transaction
    bad = Record(b"new", None, 1, 2, None, None)  # type: ignore[arg-type]  # a NULL sig, on purpose
    with pytest.raises(sqlite3.IntegrityError):
        journal.commit([rec(b"fine"), bad], [part(b"q")], [b"p"], [b"keep"], meta={"k": "new"})
    # nothing of the failed group is visible: not the delete, not the drop, not the first record
    assert journal.get(b"keep") is not None and journal.get(b"keep/child") is not None
    assert journal.get(b"fine") is None and journal.partial_paths() == {b"p"}
    assert journal.get_meta("k") == "old"
    # and the connection is usable afterwards
    journal.commit([rec(b"after")], [], [], [])
    assert journal.get(b"after") is not None


def test_meta_travels_with_the_group(journal):
    journal.commit([], [], [], [], meta={"source": "host-a", "pass": "3"})
    assert (journal.get_meta("source"), journal.get_meta("pass")) == ("host-a", "3")
    assert journal.get_meta("absent") is None


def test_a_commit_that_returned_survives_sigkill(tmp_path):
    """Durability: the process dies right after commit() returns, without closing anything."""
    state = tmp_path / "state"
    code = textwrap.dedent(f"""
        import os, signal
        from cvmigrate.receiver.journal import Journal, Partial, Record, pack_chunks
        j = Journal({str(state)!r})
        j.commit([Record(b"landed", b"s" * 16, 1, 2, b"h" * 16, b"", 5, 6)],
                 [Partial(b"half", b".cvm-t.tmp", b"p" * 16, 3, 4, pack_chunks([(0, b"c" * 16)]))], [], [])
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == -9, r.stderr
    j = Journal(str(state))
    try:
        assert j.existed and j.has_entries
        landed, half = j.get(b"landed"), j.get_partial(b"half")
        assert landed is not None and landed.size == 5
        assert half is not None and unpack_chunks(half.chunks) == {0: b"c" * 16}
    finally:
        j.close()


def test_the_journal_runs_in_wal_mode_with_full_sync(journal):
    assert journal.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert journal.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
