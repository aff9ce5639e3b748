"""The source's filesystems as fstab and grub name them, for the target's fix-ups.

Why from the agent: only the source host knows which UUIDs, labels and
devices its /etc/fstab and grub.cfg refer to; the receiver maps each of them
to the target filesystem that received that mount point.
"""
from __future__ import annotations

import json
import subprocess

#: kernel and memory filesystems: nothing on a disk to map
PSEUDO = {"proc", "sysfs", "devtmpfs", "devpts", "tmpfs", "securityfs", "cgroup", "cgroup2", "pstore", "bpf",
          "debugfs", "tracefs", "configfs", "fusectl", "mqueue", "hugetlbfs", "autofs", "binfmt_misc", "ramfs",
          "rpc_pipefs", "nsfs", "efivarfs", "overlay", "squashfs", "fuse.gvfsd-fuse", "fuse.lxcfs"}


def source_filesystems() -> list[dict[str, str]]:
    """[{mount_point, fstype, uuid, label, partuuid, device}, ...] of the disk filesystems mounted here."""
    try:
        out = subprocess.run(["findmnt", "-J", "-l", "-o", "TARGET,FSTYPE,UUID,LABEL,PARTUUID,SOURCE"],
                             capture_output=True, text=True, timeout=30)
        found = json.loads(out.stdout).get("filesystems", []) if out.returncode == 0 else []
    except (OSError, subprocess.TimeoutExpired, ValueError):
        found = []
    result = []
    for fs in found:
        source = str(fs.get("source", ""))
        # pseudo filesystems, and bind mounts ("/dev/vda[/sub/dir]"), name no disk of their own
        if fs.get("fstype") in PSEUDO or not source.startswith("/dev/") or "[" in source:
            continue
        result.append({"mount_point": fs.get("target") or "", "fstype": fs.get("fstype") or "",
                       "uuid": fs.get("uuid") or "", "label": fs.get("label") or "",
                       "partuuid": fs.get("partuuid") or "", "device": fs.get("source") or ""})
    return result
