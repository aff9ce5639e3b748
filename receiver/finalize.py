"""End of a migration on the receiver: remove the journal and every temporary file of ours.

Why a separate step: the state directory must survive every interruption
until the migration is over (stage 3's ``finalize_receiver`` sub-task, the
Finalize RPC, or ``cvmigrate receive --finalize``), and then it must leave
nothing behind on the migrated disk: no journal, no half-written
``.cvm-*.tmp`` file (those the journal knows, and orphans a crash left that it
never recorded).  The walk never follows a link and never enters the state
directory; journal values are validated like protocol paths.
"""
from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass

from cvmigrate.common.errors import CvmError
from cvmigrate.common.paths import split_relpath
from cvmigrate.receiver.fsops import TargetTree, is_tmp_name, tmp_name
from cvmigrate.receiver.journal import Journal, check_plain_file

logger = logging.getLogger(__name__)


@dataclass
class Finalized:
    temporary_files_removed: int
    state_removed: bool


def finalize(root: str, state_dir: str | None = None) -> Finalized:
    """Delete our temporary files, then the state directory."""
    root = os.path.abspath(root)
    state = os.path.abspath(state_dir) if state_dir else os.path.join(root, ".cvmigrate")
    removed = 0
    tree = TargetTree(root)
    try:
        state_removed = False
        if os.path.isdir(state) and not os.path.islink(state):
            tree.protect(state)
            if os.path.exists(os.path.join(state, "journal.db")):
                check_plain_file(os.path.join(state, "journal.db"))
                removed += _known_partials(tree, Journal(state))
            state_removed = True
        removed += _orphans(tree)
    finally:
        tree.close()
    if state_removed:
        shutil.rmtree(state)
    logger.info("finalized %s: %s, %d temporary file(s) removed", root,
                "state directory removed" if state_removed else "no state directory", removed)
    return Finalized(removed, state_removed)


def _known_partials(tree: TargetTree, journal: Journal) -> int:
    removed = 0
    try:
        for path in sorted(journal.partial_paths()):
            p = journal.get_partial(path)
            try:
                parts = split_relpath(path)          # journal values are validated like messages
                if p is None or not parts or p.tmp != tmp_name(parts[-1]):
                    continue
                os.unlink(p.tmp, dir_fd=tree.dir_fd(parts[:-1]))
                removed += 1
            except (OSError, CvmError) as exc:  # a vanished directory is fine: nothing to remove
                logger.debug("partial %r: %s", path, exc)
    finally:
        journal.close()
    return removed


def _orphans(tree: TargetTree) -> int:
    """Remove every non-directory entry named in our temporary namespace (a crash may leave some unjournaled)."""
    removed = 0
    stack = [b""]
    while stack:
        key = stack.pop()
        try:
            fd = tree.dir_fd_of(key)         # O_NOFOLLOW walk; the state directory raises UnsafePath
        except (OSError, CvmError):
            continue
        with os.scandir(fd) as it:
            entries = [(os.fsencode(e.name), e.is_dir(follow_symlinks=False)) for e in it]
        for name, is_dir in entries:
            if is_dir:
                stack.append(key + b"/" + name if key else name)
            elif is_tmp_name(name):
                try:
                    os.unlink(name, dir_fd=tree.dir_fd_of(key))
                    removed += 1
                except FileNotFoundError:
                    pass
    return removed
