"""initramfs: regenerated with the virtio drivers when they are missing.

A CVM's disks and NIC are virtio.  A kernel that has virtio_blk as a module
but an initramfs built for another hypervisor (host-only dracut images,
``MODULES=dep`` on Debian) cannot find its root filesystem.  For every
installed kernel we check, without running anything, whether each driver is
built in (``modules.builtin``) or inside the initramfs image (the image is a
concatenation of newc cpio archives, some compressed; :func:`initramfs_names`
lists them in pure Python).  When one is missing, the distribution's own
generator is told to include them (``/etc/initramfs-tools/modules``,
``/etc/dracut.conf.d/``, ``/etc/mkinitcpio.conf``) and run in the chroot.
"""
from __future__ import annotations

import gzip
import io
import lzma
import re
from pathlib import Path
from typing import Any

NAME = "initramfs"

VIRTIO_DRIVERS = ("virtio_pci", "virtio_blk", "virtio_scsi", "virtio_net")
#: Drivers without which the root filesystem cannot be found (virtio_net is wanted, not vital).
VITAL = ("virtio_pci", "virtio_blk")


def _decompress(data: bytes) -> bytes | None:
    if data[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=io.BytesIO(data)).read()
    if data[:6] == b"\xfd7zXZ\x00" or data[:3] == b"\x5d\x00\x00":
        return lzma.LZMADecompressor().decompress(data)
    if data[:4] == b"\x28\xb5\x2f\xfd":
        import zstandard
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return None


def _cpio_names(data: bytes, pos: int, out: list[str]) -> int:
    """Append the names of one newc/crc cpio archive at ``pos``; return the offset after its trailer."""
    while data[pos:pos + 6] in (b"070701", b"070702"):
        namesize = int(data[pos + 94:pos + 102], 16)
        filesize = int(data[pos + 54:pos + 62], 16)
        name = data[pos + 110:pos + 110 + namesize - 1].decode("utf-8", "surrogateescape")
        pos = (pos + 110 + namesize + 3) & ~3
        pos = (pos + filesize + 3) & ~3
        if name == "TRAILER!!!":
            return pos
        out.append(name)
    return pos


def initramfs_names(data: bytes) -> list[str]:
    """Every path in an initramfs image (early uncompressed cpio parts and the compressed main part)."""
    names: list[str] = []
    pos = 0
    while pos < len(data):
        while pos < len(data) and data[pos] == 0:
            pos += 1   # padding between archives
        if pos >= len(data):
            break
        if data[pos:pos + 5] in (b"07070",):
            pos = _cpio_names(data, pos, names)
            continue
        inner = _decompress(data[pos:])
        if inner is None:
            break
        names += initramfs_names(inner)
        break
    return names


def modules_in(names: list[str]) -> set[str]:
    """Module names (virtio_blk) among initramfs paths (usr/lib/modules/.../virtio_blk.ko.zst)."""
    out = set()
    for n in names:
        base = n.rsplit("/", 1)[-1]
        m = re.match(r"^(.+?)\.ko(\.(gz|xz|zst))?$", base)
        if m:
            out.add(m.group(1).replace("-", "_"))
    return out


def builtin_modules(modules_builtin_text: str) -> set[str]:
    """Module names in a ``modules.builtin`` file."""
    return {line.rsplit("/", 1)[-1].split(".ko")[0].replace("-", "_") for line in modules_builtin_text.split()}


def kernels(root: Path) -> list[str]:
    base = root / "lib/modules"
    if not base.is_dir():
        base = root / "usr/lib/modules"
    return sorted(p.name for p in base.iterdir() if (p / "modules.builtin").exists() or (p / "kernel").is_dir()) \
        if base.is_dir() else []


def initramfs_path(root: Path, version: str) -> Path | None:
    for name in (f"boot/initrd.img-{version}", f"boot/initramfs-{version}.img", f"boot/initrd-{version}",
                 "boot/initramfs-linux.img"):
        if (root / name).exists():
            return root / name
    return None


def missing_drivers(root: Path, version: str) -> tuple[list[str], str]:
    """(drivers neither built in nor in the initramfs, explanation) for kernel ``version``."""
    mod_dir = root / "lib/modules" / version
    if not mod_dir.is_dir():
        mod_dir = root / "usr/lib/modules" / version
    try:
        builtin = builtin_modules((mod_dir / "modules.builtin").read_text())
    except OSError:
        builtin = set()
    wanted = [d for d in VIRTIO_DRIVERS if d not in builtin]
    if not wanted:
        return [], "all built in"
    image = initramfs_path(root, version)
    if image is None:
        return wanted, "no initramfs image"
    try:
        inside = modules_in(initramfs_names(image.read_bytes()))
    except Exception as exc:  # noqa: BLE001 - an unknown compression: say so, assume missing
        return wanted, f"cannot read {image.name}: {exc}"
    missing = [d for d in wanted if d not in inside]
    return missing, f"{image.name}: " + ("all present" if not missing else "missing " + ", ".join(missing))


def _generator(ctx: Any) -> str | None:
    if ctx.which("update-initramfs"):
        return "initramfs-tools"
    if ctx.which("dracut"):
        return "dracut"
    if ctx.which("mkinitcpio"):
        return "mkinitcpio"
    return None


def add_modules_initramfs_tools(text: str) -> str:
    have = {line.split()[0] for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")}
    add = [d for d in VIRTIO_DRIVERS if d not in have]
    if not add:
        return text
    sep = "" if not text or text.endswith("\n") else "\n"
    return text + sep + "# added by cvmigrate: the target's disks and NIC are virtio\n" + "\n".join(add) + "\n"


def add_modules_mkinitcpio(text: str) -> str:
    m = re.search(r"^MODULES=\(([^)]*)\)", text, re.MULTILINE)
    if m is None:
        return text + "\nMODULES=(" + " ".join(VIRTIO_DRIVERS) + ")\n"
    have = m.group(1).split()
    add = [d for d in VIRTIO_DRIVERS if d not in have]
    return text if not add else text[:m.start(1)] + " ".join(have + add) + text[m.end(1):]


DRACUT_CONF = "/etc/dracut.conf.d/90-cvmigrate-virtio.conf"


def fix(ctx: Any) -> None:
    vers = kernels(ctx.root)
    if not vers:
        ctx.note("no kernel modules found; initramfs not checked")
        return
    need: dict[str, list[str]] = {}
    for v in vers:
        missing, why = missing_drivers(ctx.root, v)
        ctx.note(f"kernel {v}: {why}")
        if missing:
            need[v] = missing
    if not need:
        return
    gen = _generator(ctx)
    if gen is None:
        raise RuntimeError("virtio drivers missing from the initramfs and no initramfs generator "
                           "(update-initramfs, dracut, mkinitcpio) is installed")
    if gen == "initramfs-tools":
        modules = ctx.read("/etc/initramfs-tools/modules") or ""
        ctx.write("/etc/initramfs-tools/modules", add_modules_initramfs_tools(modules),
                  "virtio drivers for the CVM")
    elif gen == "dracut":
        ctx.write(DRACUT_CONF, 'add_drivers+=" ' + " ".join(VIRTIO_DRIVERS) + ' "\n', "virtio drivers for the CVM")
    else:
        ctx.write("/etc/mkinitcpio.conf", add_modules_mkinitcpio(ctx.read("/etc/mkinitcpio.conf") or ""),
                  "virtio drivers for the CVM")
    if not ctx.chroot_tools:
        ctx.note("tools disabled: initramfs not regenerated")
        return
    for v in need:
        image = initramfs_path(ctx.root, v)
        backup = ctx._backup("/" + str(image.relative_to(ctx.root))) if image is not None else None
        if gen == "initramfs-tools":
            ctx.chroot(["update-initramfs", "-u", "-k", v])
        elif gen == "dracut":
            out = "/" + str(image.relative_to(ctx.root)) if image else f"/boot/initramfs-{v}.img"
            ctx.chroot(["dracut", "-f", out, v])
        else:
            ctx.chroot(["mkinitcpio", "-P"])
            break
        image = initramfs_path(ctx.root, v)
        if image is not None:
            ctx.regenerated("/" + str(image.relative_to(ctx.root)), backup)
        still, why = missing_drivers(ctx.root, v)
        ctx.note(f"kernel {v} regenerated: {why}")
        if any(d in still for d in VITAL):
            raise RuntimeError(f"kernel {v}: the regenerated initramfs still lacks {', '.join(still)}")
    ctx.step.status = "changed"
