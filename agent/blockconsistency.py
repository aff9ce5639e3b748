"""How consistent a block source is, and freezing it for a pass.

A mounted, changing source yields a crash-consistent copy at best.  The agent
classifies the source (unmounted, read-only, frozen, snapshot, image, live),
warns unless it is one of the consistent states and reports it in the
summary.  ``freeze`` runs ``fsfreeze -f`` on the source's mount points for the
pass (meant for a short final pass after a full one) under a watchdog process
that thaws them if the agent dies or the pass exceeds ``freeze_timeout``.
"""
from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
from dataclasses import dataclass, field

from cvmigrate.common import blockdev
from cvmigrate.common.errors import SourceError

logger = logging.getLogger(__name__)

CONSISTENT = ("unmounted", "read-only", "frozen", "snapshot", "image")


@dataclass
class Consistency:
    state: str                       # unmounted | read-only | frozen | snapshot | image | live
    detail: str
    mountpoints: list[str] = field(default_factory=list)

    @property
    def consistent(self) -> bool:
        return self.state in CONSISTENT


def _block_names_of(path: str, st: os.stat_result) -> list[str]:
    """Kernel names of the device (and its partitions), or of the loop devices backed by an image file."""
    if stat.S_ISBLK(st.st_mode):
        name = blockdev.dev_name(st.st_rdev)
        names = [name] if name else []
    else:
        names = blockdev.loops_backed_by(path)
    return [n for name in names for n in (name, *blockdev.partitions(name))]


def _is_dm_snapshot(name: str) -> bool:
    if not name.startswith("dm-"):
        return False
    try:
        for slave in os.listdir(f"/sys/class/block/{name}/slaves"):
            with open(f"/sys/class/block/{slave}/dm/name") as f:
                if f.read().strip().endswith("-cow"):
                    return True
    except OSError:
        return False
    return False


def classify_source(path: str, *, snapshot: bool = False) -> Consistency:
    st = os.stat(path)
    names = _block_names_of(path, st)
    if snapshot:
        return Consistency("snapshot", "the operator says the source is a snapshot (--snapshot)")
    if names and _is_dm_snapshot(names[0]):
        return Consistency("snapshot", f"{names[0]} is a device-mapper snapshot")
    nums = {blockdev.devnum(n) for n in names} - {""}
    mounted = [(m.mountpoint, m.options) for m in blockdev.mounts() if m.devnum in nums]
    holders = [h for n in names for h in blockdev.holders(n)]
    if mounted:
        mps = sorted({mp for mp, _ in mounted})
        if all("ro" in opts for _, opts in mounted):
            return Consistency("read-only", f"mounted read-only on {', '.join(mps)}", mps)
        return Consistency("live", f"mounted read-write on {', '.join(mps)}", mps)
    if holders:
        return Consistency("live", f"held by {', '.join(sorted(set(holders)))} (device-mapper/LVM/RAID), which may "
                                   "be writing it")
    if stat.S_ISBLK(st.st_mode):
        try:
            with open(f"/sys/class/block/{names[0]}/ro") as f:
                if f.read().strip() == "1":
                    return Consistency("read-only", "the block device is read-only")
        except (OSError, IndexError):
            pass
        return Consistency("unmounted", "not mounted and not held")
    if names:
        return Consistency("unmounted", f"attached as {', '.join('/dev/' + n for n in names[:1])}, not mounted")
    return Consistency("image", "an image file not attached to any loop device")


class Freezer:
    """fsfreeze -f for the pass; a watchdog (agent/freezewatch.py) thaws if we die or overrun the timeout."""

    def __init__(self, mountpoints: list[str], timeout: float) -> None:
        self.mountpoints = mountpoints
        self.timeout = timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.frozen: list[str] = []
        self.timed_out = False

    def freeze(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-I", "-m", "cvmigrate.agent.freezewatch", str(self.timeout),
                                      *self.mountpoints],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True)
        for mp in self.mountpoints:
            os.sync()
            r = subprocess.run(["fsfreeze", "-f", mp], capture_output=True, text=True)
            if r.returncode != 0:
                self.thaw()
                raise SourceError(f"fsfreeze -f {mp} failed: {r.stderr.strip() or r.returncode}; drop --freeze or "
                                  "check that the filesystem supports freezing")
            self.frozen.append(mp)
        logger.info("froze %s for this pass (thawed at the end, or after %.0fs at the latest)",
                    ", ".join(self.frozen), self.timeout)

    def thaw(self) -> None:
        for mp in self.frozen:
            subprocess.run(["fsfreeze", "-u", mp], capture_output=True)
        self.frozen = []
        if self.proc is not None:
            try:
                if self.proc.poll() is not None and self.proc.stdout is not None:
                    self.timed_out = b"timeout" in self.proc.stdout.read()
                elif self.proc.stdin is not None:
                    self.proc.stdin.close()      # the watchdog thaws (again, harmlessly) and exits
                    self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
            self.proc = None
