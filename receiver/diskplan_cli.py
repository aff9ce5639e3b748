"""`cvmigrate receive --disk-plan FILE`: show the target disk plan, and mount it once confirmed.

Why in the receiver: only the rescue system sees the target's block devices.
The controller writes FILE from what the cloud API says the target has (the
system disk and each DataDisks entry with its size and source mount point)
and the source's filesystems; the receiver matches them to the devices it
sees, shows the plan, and writes nothing (no partition table, no mkfs, no
mount) before the admin confirms -- or ``--yes`` for unattended runs.
"""
from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from cvmigrate.common.errors import ConfigError
from cvmigrate.receiver.diskplan import (
    AppliedPlan,
    FsIdentity,
    PlanNotConfirmed,
    WantedDisk,
    apply_plan,
    build_plan,
    discover_disks,
)

logger = logging.getLogger(__name__)

def load_plan_request(path: str) -> tuple[list[WantedDisk], list[FsIdentity]]:
    """Parse the plan file: {"wanted": [{index, size_gb, mount_point}], "source_filesystems": [...]}."""
    try:
        data = json.loads(Path(path).read_text())
        wanted = [WantedDisk(int(w["index"]), int(w["size_gb"]), str(w.get("mount_point", "/")))
                  for w in data["wanted"]]
        sources = [FsIdentity.from_identity(fs) for fs in data.get("source_filesystems", [])]
    except FileNotFoundError:
        raise ConfigError(f"disk plan file {path} does not exist; copy the one the controller wrote") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"disk plan file {path} is malformed ({exc}); it needs \"wanted\": [{{index, size_gb, "
                          "mount_point}}] and \"source_filesystems\"") from None
    if not any(w.index == 0 for w in wanted):
        raise ConfigError(f"disk plan file {path}: no system disk (index 0) in \"wanted\"")
    return wanted, sources


def load_plan_boot(path: str) -> dict[str, str]:
    """The source's boot mode and ESP mount point from the plan file (``build_plan`` keywords); a file
    written before they were recorded gives BIOS and no ESP (a FAT source filesystem still names the ESP)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        data = {}   # load_plan_request has already named what is wrong with the file
    return {"boot_mode": str(data.get("boot_mode") or "bios"), "esp_mount": str(data.get("esp") or "")}


def apply_disk_plan(path: str, root: str, *, yes: bool, ask: Callable[[str], str] = input) -> AppliedPlan:
    """Build the plan from the devices seen here, show it, and mount it under ``root`` once confirmed."""
    wanted, sources = load_plan_request(path)
    plan = build_plan(wanted, discover_disks(), sources, **load_plan_boot(path))
    print(plan.describe(), flush=True)
    if not yes:
        if not sys.stdin.isatty():
            raise PlanNotConfirmed("the disk plan needs confirmation: run on a terminal, or pass --yes")
        if ask("write and mount the target disks as shown? [y/N] ").strip().lower() not in ("y", "yes"):
            raise PlanNotConfirmed("the disk plan was not confirmed; nothing was written")
    applied = apply_plan(plan, Path(root), yes=True)
    logger.info("target disks mounted under %s: %s", root, ", ".join(str(p) for p in applied.mounted))
    return applied
