"""The agent sends Done only when every file the receiver asked for has been sent.

The data thread may lose the CPU right after it takes a list of files off its queue; the receiver's last
Decisions arrive meanwhile and the agent checks whether anything is left.  A list in that gap must count
as work (it did not: Done went out first, and the receiver reported "no content arrived" for the files,
once in a CI run of 3 streams).  The gap is widened here by a queue whose ``get`` pauses after taking an
item -- a real push into a real receiver, nothing else changed.
"""
from __future__ import annotations

import os
import queue
import time
from pathlib import Path
from typing import Any

from cvmigrate.agent.push import ENTRY_BATCH, PushOptions, PushSession
from tests.helpers.oracle import assert_identical


class _PausingQueue(queue.Queue[Any]):
    """A queue whose ``get`` waits a moment after taking an item, as a thread preempted there would."""

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        item = super().get(block, timeout)
        time.sleep(0.3)
        return item


def test_done_waits_for_files_the_data_thread_has_taken_but_not_sent(receiver: tuple[str, Path],
                                                                      tmp_path: Path) -> None:
    address, root = receiver
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").mkdir()
    for i in range(20):
        (src / "a" / f"f{i:02}").write_bytes(os.urandom(1000 + i))
    # a second EntryBatch of symlinks only: its Decisions (no file to send) arrive while the data thread
    # pauses with the first batch's files in hand, and make the agent ask whether anything is left
    (src / "b").mkdir()
    for i in range(ENTRY_BATCH + 100):
        os.symlink(f"../a/f{i % 20:02}", src / "b" / f"l{i:05}")
    session = PushSession(PushOptions(source=str(src), address=address))
    session._needq = _PausingQueue()
    result = session.run()
    assert not result.errors, result.errors
    assert result.files_transferred == 20
    assert_identical(src, root)
