"""What the kernel says about block devices: names, partitions, mounts, holders, loop backings.

Both ends of the block plane ask the same questions with opposite purposes:
the agent, how consistent its source is (agent/blockconsistency.py); the
receiver, whether a target may be written at all (receiver/blocktarget.py).
One reading of sysfs and ``/proc/self/mountinfo`` serves both.  Every
function answers "nothing" (empty, None) when the kernel has nothing to say
or the file cannot be read; the callers decide what that means.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

SYS_BLOCK = "/sys/class/block"


@dataclass(frozen=True)
class Mount:
    devnum: str                  # major:minor of the mounted device
    mountpoint: str
    options: frozenset[str]      # per-mount and superblock options ("ro", "rw", ...)


def mounts() -> list[Mount]:
    """Every mount of this process's namespace, from /proc/self/mountinfo."""
    out = []
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    for line in lines:
        p = line.split()
        try:
            sep = p.index("-")
        except ValueError:
            continue
        opts = set(p[5].split(",")) | set(p[sep + 3].split(",") if len(p) > sep + 3 else ())
        out.append(Mount(p[2], p[4].replace("\\040", " "), frozenset(opts)))
    return out


def dev_name(rdev: int) -> str | None:
    """The kernel name (e.g. loop3, sda1) of a block device number."""
    try:
        return os.path.basename(os.readlink(f"/sys/dev/block/{os.major(rdev)}:{os.minor(rdev)}"))
    except OSError:
        return None


def devnum(name: str) -> str:
    """``major:minor`` of a kernel block device name; "" if unknown."""
    try:
        with open(f"{SYS_BLOCK}/{name}/dev") as f:
            return f.read().strip()
    except OSError:
        return ""


def partitions(name: str) -> list[str]:
    """Kernel names of the partitions of a device (``sda`` -> ``sda1``, ``sda2``)."""
    base = f"{SYS_BLOCK}/{name}"
    try:
        return [c for c in sorted(os.listdir(base)) if c.startswith(name) and os.path.exists(f"{base}/{c}/dev")]
    except OSError:
        return []


def holders(name: str) -> list[str]:
    """What holds the device (device-mapper, LVM, RAID), by kernel name."""
    try:
        return os.listdir(f"{SYS_BLOCK}/{name}/holders")
    except OSError:
        return []


def loops_backed_by(path: str) -> list[str]:
    """Kernel names of the loop devices whose backing file is ``path`` (compared by real path)."""
    real = os.path.realpath(path)
    try:
        names = sorted(os.listdir("/sys/block"))
    except OSError:
        return []
    out = []
    for name in names:
        try:
            with open(f"/sys/block/{name}/loop/backing_file", encoding="utf-8", errors="replace") as f:
                backing = f.read().strip()
        except OSError:
            continue
        if backing and os.path.realpath(backing.removesuffix(" (deleted)")) == real:
            out.append(name)
    return out
