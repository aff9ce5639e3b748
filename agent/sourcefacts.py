"""Gather the source facts report next to the data (``cvmigrate.common.sourcefacts``).

Why here: only the host that has the source mounted can see its filesystems,
their UUIDs, its initramfs and its network files.  The in-process controller
calls :func:`gather` directly; the agent daemon answers ``GetSourceFacts``
with the same function, so an admin box never reads its own disks instead.

Everything is read relative to the source root.  When the root is ``/`` of
the running system (``whole_server``) the live state also counts: the running
kernel, PID 1, loaded modules, MAC addresses and the default route.  For
another root (a mounted image, a chroot, a second disk) only its files count:
the newest kernel with a module tree, the ``/sbin/init`` link, the network
files' own MACs.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

from cvmigrate import __version__
from cvmigrate.common.netconfig import LOCATIONS, PARSERS, NetInterface, choose_primary
from cvmigrate.common.sourcefacts import SourceFacts, SourceFilesystem
from cvmigrate.receiver.fixups.initramfs import VIRTIO_DRIVERS, kernels, missing_drivers
from cvmigrate.receiver.fixups.selinux import selinux_mode

logger = logging.getLogger(__name__)

#: kernel and memory filesystems: nothing on a disk to map
PSEUDO = {"proc", "sysfs", "devtmpfs", "devpts", "tmpfs", "securityfs", "cgroup", "cgroup2", "pstore", "bpf",
          "debugfs", "tracefs", "configfs", "fusectl", "mqueue", "hugetlbfs", "autofs", "binfmt_misc", "ramfs",
          "rpc_pipefs", "nsfs", "efivarfs", "overlay", "squashfs", "fuse.gvfsd-fuse", "fuse.lxcfs"}

_FAMILIES = {
    "debian": ("debian", "ubuntu", "linuxmint", "raspbian"),
    "rhel": ("centos", "rhel", "fedora", "rocky", "almalinux", "ol", "tencentos", "opencloudos", "anolis", "alinux",
             "amzn"),
    "suse": ("suse", "sles", "opensuse", "opensuse-leap"),
}


def _read(root: Path, inner: str) -> str | None:
    try:
        return (root / inner.lstrip("/")).read_text(errors="replace")
    except OSError:
        return None


def _findmnt() -> list[dict[str, str]]:
    try:
        out = subprocess.run(["findmnt", "-J", "-l", "-o", "TARGET,FSTYPE,UUID,LABEL,PARTUUID,SOURCE"],
                             capture_output=True, text=True, timeout=30)
        return json.loads(out.stdout).get("filesystems", []) if out.returncode == 0 else []
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return []


def tree_usage(root: Path) -> int:
    """Allocated bytes below ``root`` on its own filesystem (du -sx), hard links once."""
    dev = root.lstat().st_dev
    total = 0
    seen: set[tuple[int, int]] = set()
    stack = [str(root)]
    while stack:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except OSError:
            continue
        with it:
            for e in it:
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                if st.st_dev != dev:
                    continue
                if st.st_nlink > 1:
                    key = (st.st_dev, st.st_ino)
                    if key in seen:
                        continue
                    seen.add(key)
                total += st.st_blocks * 512
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
    return total


def filesystems(root: str, mounts: list[dict[str, str]] | None = None) -> list[SourceFilesystem]:
    """The disk filesystems mounted at and below ``root``, with mount points relative to it ("/", "/data")."""
    real = os.path.realpath(root)
    prefix = real.rstrip("/") + "/"
    found = _findmnt() if mounts is None else mounts
    out: dict[str, SourceFilesystem] = {}
    for fs in found:
        target = str(fs.get("target") or "")
        source = str(fs.get("source") or "")
        if target != real and not target.startswith(prefix):
            continue
        # pseudo filesystems, and bind mounts ("/dev/vda[/sub/dir]"), name no disk of their own
        if fs.get("fstype") in PSEUDO or not source.startswith("/dev/") or "[" in source:
            continue
        rel = "/" + target[len(real):].lstrip("/") if target != real else "/"
        out[rel] = SourceFilesystem(rel, fs.get("fstype") or "", fs.get("uuid") or "", fs.get("label") or "",
                                    fs.get("partuuid") or "", source, *_usage(target))
    if "/" not in out:
        # the root is a directory on a bigger filesystem (a chroot, a sample tree): its own usage only
        used = tree_usage(Path(real))
        st = os.statvfs(real)
        out["/"] = SourceFilesystem("/", size_bytes=st.f_blocks * st.f_frsize, used_bytes=used,
                                    free_bytes=st.f_bavail * st.f_frsize)
    return [out[k] for k in sorted(out, key=lambda m: (m.count("/") if m != "/" else 0, m))]


def _usage(path: str) -> tuple[int, int, int]:
    try:
        st = os.statvfs(path)
    except OSError:
        return 0, 0, 0
    return st.f_blocks * st.f_frsize, (st.f_blocks - st.f_bfree) * st.f_frsize, st.f_bavail * st.f_frsize


def os_release(root: Path) -> dict[str, str]:
    text = _read(root, "/etc/os-release") or _read(root, "/usr/lib/os-release") or ""
    return {k: v.strip().strip('"').strip("'") for k, v in re.findall(r"^([A-Z_]+)=(.*)$", text, re.MULTILINE)}


def os_family(rel: dict[str, str]) -> str:
    ids = [rel.get("ID", "").lower()] + rel.get("ID_LIKE", "").lower().split()
    for family, names in _FAMILIES.items():
        if any(i in names for i in ids):
            return family
    return ""


def _init(root: Path, whole: bool) -> str:
    if whole:
        comm = (_read(root, "/proc/1/comm") or "").strip()
        return {"init": "sysvinit", "openrc-init": "openrc"}.get(comm, comm)
    for inner in ("sbin/init", "usr/sbin/init"):
        p = root / inner
        if p.is_symlink():
            return "systemd" if "systemd" in os.readlink(p) else os.path.basename(os.readlink(p))
        if p.exists():
            return "sysvinit"
    return "systemd" if (root / "lib/systemd/systemd").exists() or (root / "usr/lib/systemd/systemd").exists() else ""


def _initramfs_tool(root: Path) -> str:
    for tool, name in (("update-initramfs", "initramfs-tools"), ("dracut", "dracut"), ("mkinitcpio", "mkinitcpio")):
        if any(os.path.lexists(root / d / tool) for d in ("usr/sbin", "sbin", "usr/bin", "bin")):
            return name
    return ""


def _boot(root: Path, whole: bool, fss: list[SourceFilesystem]) -> tuple[str, str]:
    """(bios | uefi, ESP mount point)."""
    esp = next((f.mount_point for f in fss if f.mount_point in ("/boot/efi", "/efi", "/boot") and f.fstype == "vfat"),
               "")
    if not esp:
        fstab = _read(root, "/etc/fstab") or ""
        m = re.search(r"^\s*\S+\s+(/boot/efi|/efi)\s+vfat\s", fstab, re.M)
        esp = m.group(1) if m else ""
    if whole:
        return ("uefi" if (root / "sys/firmware/efi").is_dir() else "bios"), esp
    return ("uefi" if esp else "bios"), esp


def _network(root: Path, whole: bool) -> tuple[list[str], list[NetInterface]]:
    systems, found = [], []
    for system, places in LOCATIONS.items():
        files = []
        for d, pattern in places:
            base = root / d.lstrip("/")
            if base.is_dir():
                files += sorted(p for p in base.glob(pattern) if p.is_file())
        parsed = []
        for f in files:
            if system == "network-scripts" and f.name.endswith(("-lo", ".bak", "~")):
                continue
            try:
                text = f.read_text(errors="replace")
            except OSError:
                continue
            parsed += PARSERS[system](text, "/" + str(f.relative_to(root)))
        if parsed:
            systems.append(system)
            found += parsed
    default_iface = ""
    if whole:
        for line in (_read(root, "/proc/net/route") or "").splitlines()[1:]:
            parts = line.split()
            if len(parts) > 2 and parts[1] == "00000000":
                default_iface = parts[0]
                break
        live = []
        for i in found:
            mac = (_read(root, f"/sys/class/net/{i.name}/address") or "").strip() if i.name else ""
            live.append(NetInterface(**{**i.__dict__, "mac": i.mac or mac}))
        found = live
    return systems, choose_primary(found, default_iface)


def _virtio(root: Path, whole: bool, kernel: str) -> dict[str, object]:
    mod_dir = next((d for d in (root / "lib/modules" / kernel, root / "usr/lib/modules" / kernel) if d.is_dir()), None)
    facts: dict[str, object] = {"module_tree": mod_dir is not None}
    if whole:
        facts["virtio_active"] = tuple(d for d in VIRTIO_DRIVERS if (root / "sys/module" / d).exists())
    if mod_dir is None:
        facts["virtio_missing"] = tuple(VIRTIO_DRIVERS)
        facts["virtio_detail"] = f"no module tree for kernel {kernel or '?'}"
        return facts
    missing, why = missing_drivers(root, kernel)
    facts["virtio_missing"], facts["virtio_detail"] = tuple(missing), why
    facts["virtio_modules"] = tuple(sorted({p.name.split(".ko")[0].replace("-", "_")
                                            for p in mod_dir.rglob("virtio*.ko*")}))
    return facts


def gather(root: str = "/", *, state_dir: str = "/var/lib/cvmigrate", kernel: str | None = None,
           euid: int | None = None, mounts: list[dict[str, str]] | None = None,
           whole_server: bool | None = None) -> SourceFacts:
    """The report for the source at ``root`` (keyword arguments: tests on fake trees)."""
    t0 = time.monotonic()
    real = os.path.realpath(root)
    rp = Path(real)
    if not rp.is_dir():
        from cvmigrate.common.errors import ConfigError
        raise ConfigError(f"source root {root!r} is not a directory on {socket.gethostname()}")
    whole = real == "/" if whole_server is None else whole_server
    fss = filesystems(real, mounts)
    if kernel is None:
        kernel = os.uname().release if whole else (kernels(rp) or [""])[-1]
    rel = os_release(rp)
    boot_mode, esp = _boot(rp, whole, fss)
    systems, ifaces = _network(rp, whole)
    sd = Path(state_dir)
    while not sd.exists() and sd != sd.parent:
        sd = sd.parent
    hostname = socket.gethostname() if whole else (_read(rp, "/etc/hostname") or "").strip()
    bootloader = "grub2" if (rp / "boot/grub2").is_dir() else "grub" if (rp / "boot/grub").is_dir() else ""
    facts = SourceFacts(
        root=real, whole_server=whole, hostname=hostname, os_release=rel, os_family=os_family(rel),
        init=_init(rp, whole), kernel=kernel, kernels=tuple(kernels(rp)), initramfs_tool=_initramfs_tool(rp),
        selinux=selinux_mode(_read(rp, "/etc/selinux/config")), boot_mode=boot_mode, esp=esp, bootloader=bootloader,
        network_systems=tuple(systems), interfaces=tuple(ifaces), filesystems=tuple(fss), clock_unix=time.time(),
        euid=os.geteuid() if euid is None else euid, state_dir=state_dir, state_free_bytes=shutil.disk_usage(sd).free,
        agent_version=__version__, **_virtio(rp, whole, kernel))  # type: ignore[arg-type]
    logger.info("source facts for %s gathered in %.1fs: %s, kernel %s, %s, %d filesystem(s), network %s",
                real, time.monotonic() - t0, facts.os_name() or "unknown OS", kernel or "?", boot_mode, len(fss),
                ", ".join(systems) or "none")
    return facts


__all__ = ["gather", "filesystems", "tree_usage", "os_release", "os_family", "PSEUDO"]
