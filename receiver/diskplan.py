"""The target disk plan: which target disk and filesystem receives which source mount.

Why this module exists: a freshly created CVM has a system disk and N data
disks whose device names (vda, vdb, ...) say nothing about which one the user
meant by ``DataDisks[Index=2]``.  The controller knows sizes and order from
``DescribeInstances``; the receiver, in the rescue system, sees block devices.
This module matches the two, shows the result, and only after confirmation
(``yes=True``, the CLI's ``--yes``) writes anything: a blank data disk gets an
MBR partition table with one partition and a filesystem of the source mount's
type, then the plan's filesystems are mounted under the migration root.

The same plan is what the fix-ups (:mod:`cvmigrate.receiver.fixups`) read to
map the source's UUIDs, labels and device names to the target's.

Rules, each with its reason:

* The rescue system itself runs from a disk too (often a small extra disk or
  a ramdisk).  A disk holding a mounted filesystem is never a candidate.
* Target disks are matched by size first (DescribeInstances sizes are whole
  GiB; a disk is accepted when its size rounds to the same GiB), and among
  disks of equal size by order (the kernel enumerates virtio disks in the
  order the hypervisor attaches them, which is the API's order).  A size that
  matches no disk, or two plan entries that would need the same disk, is an
  error naming both sides -- never a guess.
* Nothing is written before confirmation: :func:`apply_plan` raises
  :class:`PlanNotConfirmed` unless ``yes`` is true, after logging the plan.
* A data disk that already has a partition table or a filesystem is used as it
  is (its first filesystem), never re-formatted; a blank one is partitioned
  with an explicit start sector (sfdisk fills gaps otherwise).
* The system disk's root filesystem is chosen by what it is, never by its
  position: a UEFI disk usually starts with the EFI system partition (ESP), a
  FAT filesystem that must not receive ``/``.  The root is the largest Linux
  filesystem (of the source root's type when there is one); the ESP (GPT type
  C12A7328-..., MBR type 0xef, or a FAT filesystem) receives the source's ESP
  mount point (``/boot/efi``) so fstab and grub-install find it.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cvmigrate.common.errors import CvmError

logger = logging.getLogger(__name__)

GIB = 1024 ** 3
#: First partition at 1 MiB: aligned, and leaves room for grub's core image.
FIRST_SECTOR = 2048
#: Filesystems a blank data disk can be given, and how.
MKFS = {
    "ext4": ["mkfs.ext4", "-q", "-F"],
    "ext3": ["mkfs.ext3", "-q", "-F"],
    "ext2": ["mkfs.ext2", "-q", "-F"],
    "xfs": ["mkfs.xfs", "-q", "-f"],
    "btrfs": ["mkfs.btrfs", "-q", "-f"],
}
#: Partition types of an EFI system partition: the GPT type GUID and the MBR type byte.
ESP_PARTTYPES = frozenset({"c12a7328-f81f-11d2-ba4b-00a0c93ec93b", "0xef", "ef"})
#: The GPT BIOS boot partition (grub's core image on GPT): raw, never a filesystem.
BIOS_BOOT_PARTTYPE = "21686148-6449-6e6f-744e-656564454649"
#: Filesystem types that never receive a Linux mount point's files.
NOT_LINUX_FSTYPES = frozenset({"", "swap", "vfat", "msdos", "fat", "exfat", "ntfs", "LVM2_member", "linux_raid_member",
                               "crypto_LUKS", "iso9660"})
#: Where a source mounts its ESP, most usual first.
ESP_MOUNT_POINTS = ("/boot/efi", "/efi", "/boot")


class DiskPlanError(CvmError, grpc_code="FAILED_PRECONDITION", exit_code=6):
    """The target's disks cannot be matched to the plan."""


class PlanNotConfirmed(DiskPlanError, template="the disk plan was not confirmed; nothing was written ({message}); "
                                        "re-run with --yes to apply it"):
    """The plan was shown but not confirmed."""


# --------------------------------------------------------------------------- model

#: The names fstab and grub use for a filesystem: FsIdentity's identity fields, SourceFilesystem.identity()'s keys.
IDENTITY_FIELDS = ("mount_point", "fstype", "uuid", "label", "partuuid", "device")


@dataclass(frozen=True)
class FsIdentity:
    """One filesystem as fstab and grub can name it."""

    mount_point: str = ""
    fstype: str = ""
    uuid: str = ""
    label: str = ""
    partuuid: str = ""
    device: str = ""                      # /dev/sda1, /dev/vdb1, /dev/mapper/vg-root ...
    aliases: tuple[str, ...] = ()         # other names of the same device (/dev/disk/by-id/...)
    # what the receiver sees of a target partition; not part of the identity fstab and grub use
    size: int = field(default=0, compare=False)          # bytes (0: unknown)
    parttype: str = field(default="", compare=False)     # GPT type GUID or MBR type ("0x83")

    @classmethod
    def from_identity(cls, d: dict[str, Any]) -> FsIdentity:
        """A source filesystem from its JSON form (``SourceFilesystem.identity()``); missing names are empty."""
        return cls(mount_point=str(d.get("mount_point") or ""), fstype=str(d.get("fstype") or ""),
                   uuid=str(d.get("uuid") or ""), label=str(d.get("label") or ""),
                   partuuid=str(d.get("partuuid") or ""), device=str(d.get("device") or ""))

    @property
    def is_esp(self) -> bool:
        """An EFI system partition: by its partition type, or a FAT filesystem (type unknown without a table)."""
        return self.parttype.lower() in ESP_PARTTYPES or self.fstype in ("vfat", "msdos", "fat")

    @property
    def is_linux(self) -> bool:
        """A filesystem that can receive a Linux mount point (not swap, FAT, LVM/RAID members, the ESP)."""
        return (self.fstype not in NOT_LINUX_FSTYPES and not self.is_esp
                and self.parttype.lower() != BIOS_BOOT_PARTTYPE)

    def names(self) -> set[str]:
        """Every fstab/cmdline spelling that refers to this filesystem."""
        out: set[str] = set()
        if self.uuid:
            out |= {f"UUID={self.uuid}", f"/dev/disk/by-uuid/{self.uuid}"}
            out |= {f"UUID={self.uuid.lower()}", f"UUID={self.uuid.upper()}"}
        if self.label:
            out |= {f"LABEL={self.label}", f"/dev/disk/by-label/{self.label}"}
        if self.partuuid:
            out |= {f"PARTUUID={self.partuuid}", f"/dev/disk/by-partuuid/{self.partuuid}"}
        if self.device:
            out.add(self.device)
        out.update(self.aliases)
        return out

    def spec(self) -> str:
        """The most stable fstab spelling: UUID=, else LABEL=, else the device."""
        if self.uuid:
            return f"UUID={self.uuid}"
        if self.label:
            return f"LABEL={self.label}"
        return self.device


@dataclass(frozen=True)
class MountMap:
    """A source mount point and the target filesystem that receives it (None: no counterpart)."""

    mount_point: str
    source: FsIdentity
    target: FsIdentity | None


@dataclass(frozen=True)
class TargetDisk:
    """A whole disk the receiver sees."""

    name: str            # vdb
    path: str            # /dev/vdb
    size: int            # bytes
    partitions: tuple[FsIdentity, ...] = ()
    mounted: bool = False
    has_table: bool = False

    @property
    def size_gb(self) -> float:
        return self.size / GIB

    @property
    def blank(self) -> bool:
        return not self.has_table and not any(p.fstype for p in self.partitions)


@dataclass(frozen=True)
class DiskAssignment:
    """One target disk's role: the system disk, or data disk ``index`` for ``mount_point``."""

    role: str                    # "system" | "data"
    index: int                   # 0 for the system disk, DataDisks Index otherwise
    disk: TargetDisk
    mount_point: str             # "/" for the system disk
    fstype: str                  # the filesystem it has or will get
    needs_format: bool = False


@dataclass(frozen=True)
class DiskPlan:
    """Everything the receiver and the fix-ups need to know about the target's disks."""

    mounts: tuple[MountMap, ...]
    system_disk: str = ""                           # whole-disk device for the bootloader
    source_filesystems: tuple[FsIdentity, ...] = ()  # every source fs (mapped or not, swap too)
    assignments: tuple[DiskAssignment, ...] = ()
    boot_mode: str = "bios"                          # "bios" | "uefi"

    def target_for(self, mount_point: str) -> FsIdentity | None:
        for m in self.mounts:
            if m.mount_point == mount_point:
                return m.target
        return None

    def source_by_name(self, spec: str) -> FsIdentity | None:
        """The source filesystem an fstab/cmdline spec names (UUID=, LABEL=, /dev/...)."""
        spec = _unquote(spec)
        for fs in self._all_sources():
            if spec in fs.names():
                return fs
        return None

    def mapping_for_source(self, fs: FsIdentity) -> MountMap | None:
        for m in self.mounts:
            if m.source == fs or (fs.uuid and m.source.uuid == fs.uuid):
                return m
        for m in self.mounts:
            if fs.mount_point and m.mount_point == fs.mount_point:
                return m
        return None

    def _all_sources(self) -> list[FsIdentity]:
        seen = list(self.source_filesystems)
        seen += [m.source for m in self.mounts if m.source not in seen]
        return seen

    def describe(self) -> str:
        """The plan as the user sees it before confirming."""
        lines = [f"target disk plan (boot: {self.boot_mode}, bootloader on {self.system_disk or '?'}):"]
        for a in self.assignments:
            what = "system disk" if a.role == "system" else f"data disk {a.index}"
            action = f"partition + mkfs.{a.fstype}" if a.needs_format else f"use existing {a.fstype or 'filesystem'}"
            lines.append(f"  {what:<12} {a.disk.path:<12} {a.disk.size_gb:7.1f} GiB  <- {a.mount_point:<16} {action}")
        for m in self.mounts:
            tgt = m.target.spec() if m.target else "(no target: stays on the system disk or is dropped)"
            lines.append(f"  mount {m.mount_point:<16} {m.source.spec() or m.source.device:<44} -> {tgt}")
        return "\n".join(lines)

    def as_json(self) -> dict[str, Any]:
        def fs(f: FsIdentity | None) -> dict[str, str] | None:
            return None if f is None else {k: getattr(f, k) for k in IDENTITY_FIELDS}
        return {
            "boot_mode": self.boot_mode,
            "system_disk": self.system_disk,
            "disks": [{"role": a.role, "index": a.index, "device": a.disk.path,
                       "size_gb": round(a.disk.size_gb, 2), "mount_point": a.mount_point, "fstype": a.fstype,
                       "format": a.needs_format}
                      for a in self.assignments],
            "mounts": [{"mount_point": m.mount_point, "source": fs(m.source), "target": fs(m.target)}
                       for m in self.mounts],
        }


def _unquote(s: str) -> str:
    s = s.strip()
    if "=" in s:
        key, _, value = s.partition("=")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            return f"{key}={value[1:-1]}"
    return s


# --------------------------------------------------------------------------- discovery

_LSBLK_COLS = "NAME,PATH,TYPE,SIZE,FSTYPE,UUID,LABEL,PARTUUID,PARTTYPE,MOUNTPOINT,PTTYPE,PKNAME"


def lsblk_json(runner: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run) -> dict[str, Any]:
    """``lsblk --json --bytes`` output (the receiver's view of its block devices)."""
    proc = runner(["lsblk", "--json", "--bytes", "-o", _LSBLK_COLS], capture_output=True, text=True, check=True)
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


def disks_from_lsblk(data: dict[str, Any]) -> list[TargetDisk]:
    """Whole disks (with their partitions) from ``lsblk --json --bytes`` output, in kernel order."""
    disks: list[TargetDisk] = []

    def fsid(node: dict[str, Any]) -> FsIdentity:
        return FsIdentity(mount_point=node.get("mountpoint") or "", fstype=node.get("fstype") or "",
                          uuid=node.get("uuid") or "", label=node.get("label") or "",
                          partuuid=node.get("partuuid") or "", device=node.get("path") or f"/dev/{node['name']}",
                          size=int(node.get("size") or 0), parttype=node.get("parttype") or "")

    for dev in data.get("blockdevices", []):
        if dev.get("type") not in ("disk", "loop"):
            continue
        children = dev.get("children") or []
        parts = tuple(fsid(c) for c in children if c.get("type") == "part")
        mounted = bool(dev.get("mountpoint")) or any(c.get("mountpoint") for c in _walk(children))
        whole = fsid(dev)
        if whole.fstype and not parts:
            parts = (whole,)   # a filesystem on the whole disk
        disks.append(TargetDisk(name=dev["name"], path=dev.get("path") or f"/dev/{dev['name']}",
                                size=int(dev.get("size") or 0), partitions=parts, mounted=mounted,
                                has_table=bool(dev.get("pttype")) or bool(children)))
    return disks


def _walk(nodes: Iterable[dict[str, Any]]) -> Iterable[dict[str, Any]]:
    for n in nodes:
        yield n
        yield from _walk(n.get("children") or [])


def discover_disks(devices: Sequence[str] = ()) -> list[TargetDisk]:
    """The receiver's block devices (only ``devices`` if given), filesystem ids filled in by blkid.

    Without udev (rescue systems, containers) lsblk reports no FSTYPE/UUID, so
    every partition (and whole disk) it lists is probed with blkid directly.
    """
    try:
        proc = subprocess.run(["lsblk", "--json", "--bytes", "-o", _LSBLK_COLS, *devices],
                              capture_output=True, text=True, check=True)
        disks = disks_from_lsblk(json.loads(proc.stdout))
    except (OSError, subprocess.CalledProcessError):
        disks = disks_from_sysfs()
        if devices:
            disks = [d for d in disks if d.path in devices]
    out = []
    for d in disks:
        parts = tuple(_fill(p) for p in d.partitions)
        if not parts:
            whole = _fill(FsIdentity(device=d.path))
            parts = (whole,) if whole.fstype else ()
        out.append(replace(d, partitions=parts, has_table=d.has_table or _has_table(d.path)))
    return out


def _fill(p: FsIdentity) -> FsIdentity:
    if p.fstype and p.uuid and p.parttype and p.size:
        return p
    probed = blkid(p.device)
    return replace(p, fstype=p.fstype or probed.fstype, uuid=p.uuid or probed.uuid,
                   label=p.label or probed.label, partuuid=p.partuuid or probed.partuuid,
                   parttype=p.parttype or probed.parttype, size=p.size or probed.size or _part_size_hint(p))


def _has_table(device: str) -> bool:
    out = subprocess.run(["blkid", "-p", "-o", "export", device], capture_output=True, text=True).stdout
    return "PTTYPE=" in out


def disks_from_sysfs(sys_block: Path = Path("/sys/block")) -> list[TargetDisk]:
    """Fallback when lsblk is missing: sizes and partitions from /sys/block (no filesystem ids)."""
    out = []
    for d in sorted(sys_block.iterdir()):
        if d.name.startswith(("ram", "zram", "dm-", "sr")):
            continue
        try:
            size = int((d / "size").read_text()) * 512
        except (OSError, ValueError):
            continue
        parts = tuple(FsIdentity(device=f"/dev/{p.name}", size=_int_file(p / "size") * 512) for p in sorted(d.iterdir())
                      if p.is_dir() and (p / "partition").exists())
        out.append(TargetDisk(name=d.name, path=f"/dev/{d.name}", size=size, partitions=parts, has_table=bool(parts)))
    return out


# --------------------------------------------------------------------------- planning

@dataclass(frozen=True)
class WantedDisk:
    """A disk the cloud API says the target has (system: index 0)."""

    index: int
    size_gb: int
    mount_point: str = "/"      # the source mount it receives


def _int_file(path: Path) -> int:
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return 0


def _size_matches(disk: TargetDisk, size_gb: int) -> bool:
    return abs(disk.size_gb - size_gb) < 0.5 or round(disk.size_gb) == size_gb


def match_disks(wanted: Sequence[WantedDisk], seen: Sequence[TargetDisk]) -> dict[int, TargetDisk]:
    """Map each wanted disk (by index) to a seen disk: same size, then enumeration order.

    Disks with a mounted filesystem (the rescue system's own) are skipped.
    Raises :class:`DiskPlanError` when a wanted disk has no counterpart.
    """
    free = [d for d in seen if not d.mounted]
    out: dict[int, TargetDisk] = {}
    for w in sorted(wanted, key=lambda w: w.index):
        pick = next((d for d in free if _size_matches(d, w.size_gb)), None)
        if pick is None:
            have = ", ".join(f"{d.path} {d.size_gb:.1f} GiB" for d in free) or "none"
            what = "system disk" if w.index == 0 else f"data disk {w.index}"
            raise DiskPlanError(f"no unused block device of {w.size_gb} GiB for the {what} "
                                f"(seen: {have}); check DataDisks in user.json against the instance's disks")
        free.remove(pick)
        out[w.index] = pick
    return out


def _describe_parts(disk: TargetDisk) -> str:
    return ", ".join(f"{p.device} {p.fstype or 'no filesystem'}{' (ESP)' if p.is_esp else ''}"
                     for p in disk.partitions) or "no partitions"


def pick_root(disk: TargetDisk, source_root: FsIdentity | None) -> FsIdentity:
    """The system disk's filesystem that receives ``/``: chosen by what it is, never by its position.

    Candidates are Linux filesystems (never the ESP, swap, a BIOS boot
    partition, an LVM/RAID member); those of the source root's type win; among
    them the largest (``/boot`` partitions are small).
    """
    linux = [p for p in disk.partitions if p.is_linux]
    if not linux:
        raise DiskPlanError(f"the system disk {disk.path} has no Linux filesystem to receive / (seen: "
                            f"{_describe_parts(disk)}); create the instance from a Linux image")
    same = [p for p in linux if source_root is not None and source_root.fstype and p.fstype == source_root.fstype]
    return max(same or linux, key=lambda p: p.size or _part_size_hint(p))


def source_esp(source_filesystems: Sequence[FsIdentity], esp_mount: str = "") -> FsIdentity | None:
    """The source's ESP: the filesystem at ``esp_mount`` (the facts' ESP), else a FAT one at an ESP mount point."""
    if esp_mount:
        return next((fs for fs in source_filesystems if fs.mount_point == esp_mount),
                    FsIdentity(mount_point=esp_mount, fstype="vfat"))
    return next((fs for mp in ESP_MOUNT_POINTS for fs in source_filesystems
                 if fs.mount_point == mp and fs.fstype in ("vfat", "msdos", "fat")), None)


def build_plan(wanted: Sequence[WantedDisk], seen: Sequence[TargetDisk],
               source_filesystems: Sequence[FsIdentity], *, boot_mode: str = "bios", esp_mount: str = "") -> DiskPlan:
    """The plan for ``wanted`` disks on the ``seen`` devices.

    The system disk's root filesystem is picked by :func:`pick_root`; its ESP
    (if the source has one: ``esp_mount``, the facts' ESP, or a FAT source
    filesystem at /boot/efi, /efi, /boot) receives the source's ESP mount
    point.  A data disk receives the source filesystem mounted at its
    ``mount_point``; a blank one will be formatted with that filesystem's type.
    Source filesystems with no wanted disk (other than /) are listed without a
    target: their content lands on the system disk, and fstab loses them.
    """
    matched = match_disks(wanted, seen)
    by_mount = {fs.mount_point: fs for fs in source_filesystems if fs.mount_point}
    assignments: list[DiskAssignment] = []
    mounts: list[MountMap] = []
    esp_src = source_esp(source_filesystems, esp_mount)
    esp_map: MountMap | None = None
    for w in sorted(wanted, key=lambda w: w.index):
        disk = matched[w.index]
        src = by_mount.get(w.mount_point, FsIdentity(mount_point=w.mount_point, fstype="ext4"))
        linux = [p for p in disk.partitions if p.is_linux]
        target: FsIdentity | None
        if w.index == 0:
            target = pick_root(disk, by_mount.get("/"))
            assignments.append(DiskAssignment("system", 0, disk, "/", target.fstype))
            if esp_src is not None:
                esp = next((p for p in disk.partitions if p.is_esp), None)
                esp_map = MountMap(esp_src.mount_point, esp_src,
                                   replace(esp, mount_point=esp_src.mount_point) if esp else None)
        else:
            needs = disk.blank
            fstype = src.fstype if needs else (linux[0].fstype if linux else src.fstype)
            if needs and fstype not in MKFS:
                raise DiskPlanError(f"cannot create a {fstype!r} filesystem on {disk.path} for {w.mount_point}; "
                                    f"supported: {', '.join(MKFS)}")
            target = None if needs else (linux[0] if linux else None)
            assignments.append(DiskAssignment("data", w.index, disk, w.mount_point, fstype, needs_format=needs))
        mounts.append(MountMap(w.mount_point, replace(src, mount_point=w.mount_point),
                               replace(target, mount_point=w.mount_point) if target else None))
        if esp_map is not None and w.index == 0:
            mounts.append(esp_map)
    for fs in source_filesystems:
        if fs.mount_point and fs.mount_point not in {m.mount_point for m in mounts} and fs.fstype != "swap":
            mounts.append(MountMap(fs.mount_point, fs, None))
    if esp_src is not None and boot_mode == "bios" and any(m.mount_point == esp_src.mount_point and m.target
                                                           for m in mounts):
        boot_mode = "uefi"    # a source with an ESP and a target with one: grub-install --target=x86_64-efi
    return DiskPlan(mounts=tuple(mounts), system_disk=matched[0].path if 0 in matched else "",
                    source_filesystems=tuple(source_filesystems), assignments=tuple(assignments), boot_mode=boot_mode)


def _part_size_hint(p: FsIdentity) -> int:
    try:
        name = Path(p.device).name
        return int(Path(f"/sys/class/block/{name}/size").read_text())
    except (OSError, ValueError):
        return 0


# --------------------------------------------------------------------------- applying

def _run(argv: list[str]) -> str:
    logger.info("running: %s", " ".join(argv))
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise DiskPlanError(f"{argv[0]} failed (exit {proc.returncode}): {proc.stderr.strip()[-300:]}")
    return proc.stdout


def blkid(device: str) -> FsIdentity:
    """The filesystem and partition identity of ``device``, probed now (``blkid -p``: no stale cache, and the
    partition entry's type and size, which tell the ESP from the root without udev)."""
    out = subprocess.run(["blkid", "-p", "-o", "export", device], capture_output=True, text=True).stdout
    kv = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    sectors = kv.get("PART_ENTRY_SIZE", "")
    return FsIdentity(fstype=kv.get("TYPE", ""), uuid=kv.get("UUID", ""), label=kv.get("LABEL", ""),
                      partuuid=kv.get("PART_ENTRY_UUID", "") or kv.get("PARTUUID", ""), device=device,
                      parttype=kv.get("PART_ENTRY_TYPE", ""), size=int(sectors) * 512 if sectors.isdigit() else 0)


def partition_path(disk: str, n: int) -> str:
    """/dev/vdb + 1 -> /dev/vdb1; /dev/nvme0n1 or /dev/loop3 + 1 -> ...p1."""
    return f"{disk}p{n}" if disk[-1].isdigit() else f"{disk}{n}"


def format_blank_disk(disk: str, fstype: str, *, label: str = "") -> FsIdentity:
    """MBR table, one Linux partition from sector 2048 to the end, and a ``fstype`` filesystem on it."""
    if fstype not in MKFS:
        raise DiskPlanError(f"cannot create a {fstype!r} filesystem; supported: {', '.join(MKFS)}")
    table = f"label: dos\nstart={FIRST_SECTOR}, type=83\n"
    logger.info("partitioning %s: %s", disk, table.replace("\n", "; "))
    proc = subprocess.run(["sfdisk", "-q", "--no-reread", disk], input=table, capture_output=True, text=True)
    if proc.returncode != 0:
        raise DiskPlanError(f"sfdisk {disk} failed: {proc.stderr.strip()[-300:]}")
    _refresh_partitions(disk)
    part = partition_path(disk, 1)
    argv = list(MKFS[fstype]) + ([{"xfs": "-L", "btrfs": "-L"}.get(fstype, "-L"), label] if label else []) + [part]
    _run(argv)
    return blkid(part)


def _refresh_partitions(disk: str) -> None:
    """Make the kernel see the new table; kernels that do not scan tables need partx -a."""
    subprocess.run(["partx", "-d", disk], capture_output=True)
    proc = subprocess.run(["partx", "-a", disk], capture_output=True, text=True)
    if proc.returncode != 0:
        subprocess.run(["blockdev", "--rereadpt", disk], capture_output=True)
    for _ in range(50):
        if os.path.exists(partition_path(disk, 1)):
            return
        time.sleep(0.1)
    raise DiskPlanError(f"the kernel does not show {partition_path(disk, 1)} after partitioning {disk}")


def mount_esp(device: str, where: Path, *, fuse: bool = False) -> list[str]:
    """Mount the target's ESP at ``where``; the command that unmounts it.

    The kernel's vfat first.  With ``fuse``, a rescue kernel without FAT support falls back to Debian's
    ``fusefat`` (read-write, ``fsname=DEVICE``: grub-install finds the ESP's disk by the mount's source name).
    FUSE is for the boot loader's install only: fusefat implements neither chown nor chmod and dies on utime,
    so it never receives the transfer.  Fails with one line saying what to do.
    """
    proc = subprocess.run(["mount", device, str(where)], capture_output=True, text=True)
    if proc.returncode == 0:
        return ["umount", str(where)]
    why = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[0][-200:]
    version = _fat_version(device) if fuse and shutil.which("fusefat") else ""
    if version and version != "FAT32":
        why += f"; not mounted with fusefat: it corrupts the allocation table of a {version} volume"
    elif version:
        fproc = subprocess.run(["fusefat", "-o", f"rw+,fsname={device}", device, str(where)], capture_output=True,
                               text=True)
        if fproc.returncode == 0 and os.path.ismount(where):
            logger.info("mounted the EFI system partition %s at %s with fusefat (%s)", device, where, why)
            return ["fusermount", "-u", str(where)]
        why += "; fusefat: " + ((fproc.stderr.strip().splitlines() or [f"exit {fproc.returncode}"])[0][-200:])
    raise DiskPlanError(f"cannot mount the EFI system partition {device} at {where} ({why}); "
                        f"grub-install needs it mounted to make the target bootable under UEFI: load FAT support "
                        f"(modprobe vfat) or install fusefat (apt-get install fusefat)")


def _fat_version(device: str) -> str:
    """FAT12, FAT16 or FAT32 (blkid's VERSION of a vfat filesystem); "" when it is not FAT."""
    out = subprocess.run(["blkid", "-p", "-o", "export", device], capture_output=True, text=True).stdout
    kv = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return kv.get("VERSION", "") if kv.get("TYPE") == "vfat" else ""


def unmount(argv: Sequence[str]) -> None:
    """Run an unmount command from :func:`mount_esp`; lazily when the mount is still busy."""
    for _ in range(10):
        if subprocess.run(list(argv), capture_output=True).returncode == 0:
            return
        time.sleep(0.3)
    subprocess.run(["umount", "-l", argv[-1]], capture_output=True)


@dataclass
class AppliedPlan:
    plan: DiskPlan
    mounted: list[Path] = field(default_factory=list)

    def unmount(self) -> None:
        for path in reversed(self.mounted):
            subprocess.run(["umount", str(path)], capture_output=True)
        self.mounted.clear()


def apply_plan(plan: DiskPlan, root: Path, *, yes: bool, mount_root: bool = True) -> AppliedPlan:
    """Format blank data disks and mount the plan's filesystems under ``root``.

    Logs the plan first; writes nothing unless ``yes``.  Returns the plan with
    the new filesystems' identities filled in, and what was mounted (to
    unmount in reverse order).
    """
    logger.info("%s", plan.describe())
    if not yes:
        raise PlanNotConfirmed("confirmation required")
    mounts = list(plan.mounts)
    for a in plan.assignments:
        if a.role == "data" and a.needs_format:
            ident = replace(format_blank_disk(a.disk.path, a.fstype), mount_point=a.mount_point)
            mounts = [replace(m, target=ident) if m.mount_point == a.mount_point else m for m in mounts]
    plan = replace(plan, mounts=tuple(mounts),
                   assignments=tuple(replace(a, needs_format=False) for a in plan.assignments))
    applied = AppliedPlan(plan)
    try:
        targets = [(m, m.target) for m in plan.mounts if m.target is not None]
        def depth(mt: tuple[MountMap, FsIdentity]) -> int:   # parents before children, / first
            return -1 if mt[0].mount_point == "/" else mt[0].mount_point.count("/")
        for m, target in sorted(targets, key=depth):
            if m.mount_point == "/" and not mount_root:
                continue
            where = root / m.mount_point.lstrip("/")
            where.mkdir(parents=True, exist_ok=True)
            if target.is_esp:
                if os.path.ismount(where):
                    logger.info("%s is already mounted; used as the ESP for %s", where, m.mount_point)
                    continue
                try:
                    mount_esp(target.device, where)
                except DiskPlanError as exc:
                    # the transfer does not need it: the source's ESP files land in the directory, and stage 3
                    # mounts the ESP (fusefat if need be) for grub-install, or fails saying what to do
                    logger.warning("%s. The transfer goes on without it; the fix-ups mount it for grub-install",
                                   exc)
                    continue
            else:
                _run(["mount", target.device, str(where)])
            applied.mounted.append(where)
    except BaseException:
        applied.unmount()
        raise
    return applied
