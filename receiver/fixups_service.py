"""Stage 3 on the receiver: work out the disk plan from what is mounted, run the fix-ups.

Why here: the fix-ups edit the migrated root and install the bootloader on the
target's system disk, which only the rescue system (where the receiver runs)
can reach.  The target root and any data disks are mounted at --root (by the
admin or the bootstrap) before the transfer; the plan pairs each source
filesystem, as the agent saw it, with the target filesystem now mounted at the
same place under the root.  A source mount with no target mount of its own
landed on the system disk, and its fstab line is commented out.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cvmigrate.receiver.diskplan import (
    DiskPlan,
    DiskPlanError,
    FsIdentity,
    MountMap,
    discover_disks,
    mount_esp,
    source_esp,
    unmount,
)
from cvmigrate.receiver.fixups import FixupReport, run_fixups

logger = logging.getLogger(__name__)

def _findmnt(target: str) -> dict[str, Any] | None:
    try:
        out = subprocess.run(["findmnt", "-J", "-o", "TARGET,FSTYPE,UUID,LABEL,PARTUUID,SOURCE", "--mountpoint",
                              target], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    fss = json.loads(out.stdout).get("filesystems") or []
    return fss[0] if fss else None


def _probe(device: str) -> dict[str, str]:
    """The filesystem's own superblock, read now (``blkid -p``): findmnt's UUID comes from the udev database,
    which still names the previous filesystem when a loop or rescue device was reused."""
    try:
        out = subprocess.run(["blkid", "-p", "-o", "export", device], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    kv = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line) if out.returncode == 0 else {}
    return {"fstype": kv.get("TYPE", ""), "uuid": kv.get("UUID", ""), "label": kv.get("LABEL", ""),
            "partuuid": kv.get("PART_ENTRY_UUID", "")}


def _identity(found: dict[str, Any], mount_point: str) -> FsIdentity:
    device = found.get("source") or ""
    probed = _probe(device) if device.startswith("/dev/") else {}

    def pick(key: str) -> str:
        return probed.get(key) or found.get(key) or ""

    return FsIdentity(mount_point=mount_point, fstype=pick("fstype"), uuid=pick("uuid"), label=probed.get("label", "")
                      if probed else found.get("label") or "", partuuid=pick("partuuid"), device=device)


def _parent_disk(device: str) -> str:
    try:
        out = subprocess.run(["lsblk", "-no", "PKNAME", device], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    name = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else ""
    return f"/dev/{name}" if name else device


def _unmounted_esp(system_disk: str, mount_point: str) -> FsIdentity | None:
    """The target system disk's ESP when it is not mounted under the root (a rescue kernel without vfat):
    fstab then names it by its own UUID instead of losing it, and grub says why EFI boot code was not installed."""
    try:
        disks = discover_disks([system_disk]) if system_disk else []
    except (OSError, ValueError, subprocess.SubprocessError) as exc:   # no ESP found; the fix-ups go on
        logger.info("could not look for the ESP on %s: %s", system_disk, exc)
        return None
    found = next((p for d in disks for p in d.partitions if p.is_esp), None)
    if found is None:
        return None
    logger.info("the target's EFI system partition %s is not mounted at %s under the root: fstab names it by its "
                "UUID, and the fix-ups mount it for grub-install", found.device, mount_point)
    return FsIdentity(mount_point=mount_point, fstype=found.fstype, uuid=found.uuid, label=found.label,
                      partuuid=found.partuuid, device=found.device)


def _mount_esp_for_grub(root: Path, plan: DiskPlan, stack: contextlib.ExitStack) -> None:
    """Under UEFI, the target's ESP mounted at its place under the root while the fix-ups run (unmounted after).

    The transfer does without it (a rescue kernel may have no FAT support); grub-install needs it.  If it cannot
    be mounted, the grub fix-up fails saying what to do.
    """
    if plan.boot_mode != "uefi":
        return
    esp = next((m for m in plan.mounts if m.target is not None and m.target.is_esp and m.target.device), None)
    if esp is None or esp.target is None:
        return
    where = root / esp.mount_point.lstrip("/")
    if not where.is_dir() or os.path.islink(where) or os.path.ismount(where):
        return
    try:
        undo = mount_esp(esp.target.device, where, fuse=True)
    except DiskPlanError as exc:
        logger.warning("%s", exc)
        return
    stack.callback(unmount, undo)


def plan_from_mounts(root: str, sources: Sequence[FsIdentity], source_boot_mode: str = "",
                     esp_mount: str = "") -> DiskPlan | None:
    """The plan for ``root``, or None when the root is not a mounted block device (nothing to boot).

    ``esp_mount``: the source's ESP mount point from its facts.  An ESP that is only in the source's fstab
    (not mounted when the agent looked, so no source filesystem lists it) still maps to the target's ESP.
    """
    top = _findmnt(root)
    if top is None or not str(top.get("source", "")).startswith("/dev/"):
        return None
    mounts = [MountMap("/", next((s for s in sources if s.mount_point == "/"), FsIdentity(mount_point="/")),
                       _identity(top, "/"))]
    system_disk = _parent_disk(top["source"])
    esp = source_esp(sources, esp_mount)
    if esp is not None and esp not in sources:
        sources = [*sources, esp]
    for src in sources:
        if src.mount_point in ("", "/") or src.fstype == "swap":
            continue
        found = _findmnt(os.path.join(root, src.mount_point.lstrip("/")))
        target = _identity(found, src.mount_point) if found else None
        if target is None and src == esp:
            target = _unmounted_esp(system_disk, src.mount_point)
        mounts.append(MountMap(src.mount_point, src, target))
    # the source's boot mode (its facts) wins: an ESP this rescue system cannot mount must not turn a UEFI
    # server into a BIOS one (grub-install --target=i386-pc on a GPT disk without a BIOS boot partition)
    uefi = source_boot_mode == "uefi" or _findmnt(os.path.join(root, "boot/efi")) is not None
    return DiskPlan(mounts=tuple(mounts), system_disk=system_disk, source_filesystems=tuple(sources),
                    boot_mode="uefi" if uefi else "bios")


def fixups_for_root(root: str, sources_json: str, *, chroot_tools: bool, skip: Sequence[str] = (),
                    facts_json: str = "", keep_static_ip: bool = False) -> tuple[FixupReport | None, str]:
    """Run the fix-ups on the migrated ``root``; (None, reason) when there is nothing to fix.

    ``facts_json``: the agent's source facts report; its filesystems win over ``sources_json``.
    """
    from cvmigrate.common.sourcefacts import facts_from_json

    facts = facts_from_json(facts_json) if facts_json else None
    if facts is not None:
        sources_json = json.dumps([f.identity() for f in facts.filesystems])
    try:
        raw = json.loads(sources_json or "[]")
        sources = [FsIdentity.from_identity(d) for d in raw]
    except (ValueError, TypeError, AttributeError) as exc:
        from cvmigrate.common.errors import ProtocolError
        raise ProtocolError(f"source_filesystems_json is not a list of filesystems: {exc}") from exc
    plan = plan_from_mounts(root, sources, facts.boot_mode if facts is not None else "",
                            facts.esp if facts is not None else "")
    if plan is None:
        reason = f"the target root {root} is not a mounted disk (a directory target): no bootloader or fstab to fix"
        logger.info("%s", reason)
        return None, reason
    logger.info("%s", plan.describe())
    with contextlib.ExitStack() as stack:
        if chroot_tools and "grub" not in skip:
            _mount_esp_for_grub(Path(root), plan, stack)
        report = run_fixups(Path(root), plan, chroot_tools=chroot_tools, skip=tuple(skip), source=facts,
                            keep_static_ip=keep_static_ip)
    logger.info("fix-ups: %s", report.summary())
    return report, ""
