"""The fsfreeze watchdog: thaws the source's filesystems if the agent dies or the pass overruns.

Why a process of its own: a frozen filesystem blocks every writer on the
source server, so it must be thawed even when the agent is SIGKILLed mid-pass
-- which no code in the agent can promise.  ``Freezer``
(agent/blockconsistency.py) starts it before the first ``fsfreeze -f`` as
``python -I -m cvmigrate.agent.freezewatch TIMEOUT MOUNTPOINT...`` with its
stdin a pipe only the agent holds.  The watchdog waits until that pipe closes
(the agent thawed, or died) or TIMEOUT seconds pass; on timeout it prints
``timeout`` so the agent can report the pass as not consistent.  Either way it
then runs ``fsfreeze -u`` on every mount point (harmless on a thawed one).
Standard library only: it must start in a second, whatever else is installed.
"""
from __future__ import annotations

import select
import subprocess
import sys


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    timeout, mountpoints = float(args[0]), args[1:]
    ready, _, _ = select.select([sys.stdin], [], [], timeout)
    if not ready:
        sys.stdout.write("timeout\n")
        sys.stdout.flush()
    for mp in mountpoints:
        subprocess.run(["fsfreeze", "-u", mp], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)


if __name__ == "__main__":
    main()
