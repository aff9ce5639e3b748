"""End of a migration on the receiver: remove the journal and any half-written files.

Why a separate step: the state directory must survive every interruption
until the migration is over (stage 3, or ``cvmigrate receive --finalize``),
and then it must leave nothing behind on the migrated disk.
"""
from __future__ import annotations

import logging
import os
import shutil

from cvmigrate.common.errors import CvmError
from cvmigrate.common.paths import split_relpath
from cvmigrate.receiver.fsops import TargetTree
from cvmigrate.receiver.journal import Journal

logger = logging.getLogger(__name__)


def finalize(root: str, state_dir: str | None = None) -> int:
    """Delete partial files the journal knows of, then the state directory; returns files removed."""
    root = os.path.abspath(root)
    state = os.path.abspath(state_dir) if state_dir else os.path.join(root, ".cvmigrate")
    if not os.path.isdir(state):
        logger.info("nothing to finalize: %s does not exist", state)
        return 0
    journal = Journal(state)
    removed = 0
    tree = TargetTree(root)
    try:
        for path in sorted(journal.partial_paths()):
            p = journal.get_partial(path)
            try:
                parts = split_relpath(path)
                os.unlink(p.tmp, dir_fd=tree.dir_fd(parts[:-1]))
                removed += 1
            except (OSError, CvmError) as exc:  # a vanished directory is fine: nothing to remove
                logger.debug("partial %r: %s", path, exc)
    finally:
        tree.close()
        journal.close()
    shutil.rmtree(state)
    logger.info("finalized %s: removed the journal and %d partial file(s)", root, removed)
    return removed
