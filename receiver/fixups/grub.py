"""Bootloader: root= and filesystem UUIDs in grub's configuration; grub regenerated and installed.

Two layers, so that a target boots even where the tools cannot run:

1. Text: in ``/etc/default/grub``, every ``grub.cfg`` found, BLS entries
   (``/boot/loader/entries/*.conf``), ``/etc/kernel/cmdline`` and grub2's
   environment block (``kernelopts``, kept at its 1024 bytes), every source
   filesystem UUID is replaced by its target's, ``root=`` naming a source
   device, LV or label becomes ``root=UUID=<target root>``, and ``resume=``
   naming a swap and ``rd.lvm.lv=`` naming a logical volume the target does
   not have are dropped (the initramfs would wait for them).
2. Tools (``chroot_tools``): ``grub-mkconfig`` (``grub2-mkconfig``) writes a
   fresh grub.cfg -- its diff is recorded like any edit -- and
   ``grub-install`` puts the boot code on the target's system disk
   (``--target=i386-pc``; ``x86_64-efi --removable`` for UEFI layouts).
   If grub-mkconfig still writes a loop or rescue-system device name as
   ``root=``, it is replaced by the target root's UUID.
"""
from __future__ import annotations

import os
import re
from typing import Any

from cvmigrate.receiver.fixups import FixupError

NAME = "grub"

CFG_CANDIDATES = ("/boot/grub/grub.cfg", "/boot/grub2/grub.cfg")
_UUID = r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}|[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}"
_ROOT_ARG = re.compile(r"(?<![\w.-])root=(\"[^\"]*\"|'[^']*'|[^\s\"';]+)")
_RESUME_ARG = re.compile(r"\s?(?<![\w.-])resume=(\"[^\"]*\"|[^\s\"';]+)")
_LVM_ARG = re.compile(r"\s?(?<![\w.-])(?:rd\.lvm\.lv|rd_LVM_LV)=([^\s\"';]+)")
GRUBENV = "/boot/grub2/grubenv"
GRUBENV_SIZE = 1024


def _root_target(plan: Any) -> Any:
    return plan.target_for("/")


def rewrite_boot_text(text: str, plan: Any) -> tuple[str, list[str]]:
    """``text`` (a grub.cfg, /etc/default/grub, BLS entry or kernel cmdline) with source ids mapped."""
    notes: list[str] = []
    uuid_map: dict[str, str] = {}
    for m in plan.mounts:
        if m.target is not None and m.source.uuid and m.target.uuid and m.source.uuid != m.target.uuid:
            uuid_map[m.source.uuid.lower()] = m.target.uuid
    for fs in getattr(plan, "source_filesystems", ()):
        mp = plan.mapping_for_source(fs)
        if mp is not None and mp.target is not None and fs.uuid and mp.target.uuid:
            uuid_map.setdefault(fs.uuid.lower(), mp.target.uuid)

    root = _root_target(plan)

    def root_arg(m: re.Match[str]) -> str:
        raw = m.group(1)
        spec = raw.strip("\"'")
        if spec.startswith("ZFS=") or root is None:
            return m.group(0)
        fs = plan.source_by_name(spec)
        mapping = plan.mapping_for_source(fs) if fs is not None else None
        target = mapping.target if mapping is not None else None
        # an LV of the source (RHEL's root=/dev/mapper/rl-root) maps like any device; an unknown one may be the
        # target's own LVM and stays
        if target is None and spec.startswith("/dev/") and not spec.startswith("/dev/mapper/") \
                and spec != root.device:
            target = root   # a device name of the source (sda1) or of the rescue system (loop0p1)
        if target is None or target.spec() == spec:
            return m.group(0)
        notes.append(f"root={spec} -> root={target.spec()}")
        return f"root={target.spec()}"

    def resume_arg(m: re.Match[str]) -> str:
        spec = m.group(1).strip("\"'")
        fs = plan.source_by_name(spec)
        mapping = plan.mapping_for_source(fs) if fs is not None else None
        if mapping is not None and mapping.target is not None:
            return m.group(0).replace(spec, mapping.target.spec())
        if spec.lower().removeprefix("uuid=") in uuid_map:
            return m.group(0)   # the UUID pass maps it
        notes.append(f"dropped resume={spec} (no such swap on the target)")
        return ""

    target_devices = {m.target.device for m in plan.mounts if m.target is not None and m.target.device}

    def lvm_arg(m: re.Match[str]) -> str:
        vg, _, lv = m.group(1).partition("/")
        names = {f"/dev/{vg}/{lv}", f"/dev/mapper/{vg.replace('-', '--')}-{lv.replace('-', '--')}"}
        if names & target_devices:
            return m.group(0)
        # dracut waits for every rd.lvm.lv volume: one the target does not have ends in the emergency shell
        notes.append(f"dropped rd.lvm.lv={m.group(1)} (the target has no such logical volume)")
        return ""

    def line_args(line: str) -> str:
        if line.lstrip().startswith("#"):
            return line     # comments (grub's own "root=UUID=xxx" explanation) stay as they are
        return _LVM_ARG.sub(lvm_arg, _RESUME_ARG.sub(resume_arg, _ROOT_ARG.sub(root_arg, line)))

    new = "".join(line_args(line) for line in text.splitlines(keepends=True))

    def uuid_sub(m: re.Match[str]) -> str:
        tgt = uuid_map.get(m.group(0).lower())
        return tgt if tgt else m.group(0)

    if uuid_map:
        counted = "".join(line if line.lstrip().startswith("#") else re.sub(_UUID, uuid_sub, line)
                          for line in new.splitlines(keepends=True))
        if counted != new:
            for src, tgt in uuid_map.items():
                if re.search(re.escape(src), new, re.IGNORECASE):
                    notes.append(f"UUID {src} -> {tgt}")
        new = counted
    return new, notes


def _text_files(ctx: Any) -> list[str]:
    files = ["/etc/default/grub", "/etc/kernel/cmdline", *CFG_CANDIDATES]
    files += ctx.glob("boot/loader/entries/*.conf")
    files += ctx.glob("boot/efi/EFI/*/grub.cfg")
    return [f for f in files if ctx.read(f) is not None]


def rewrite_grubenv(text: str, plan: Any) -> tuple[str, list[str]]:
    """grub2's environment block (RHEL 8 keeps ``kernelopts`` there): same rewrite, padded back to 1024 bytes."""
    body = text.rstrip("#")
    new_body, notes = rewrite_boot_text(body, plan)
    pad = GRUBENV_SIZE - len(new_body.encode())
    if new_body == body or pad < 0:
        if pad < 0:
            notes.append("grubenv would exceed 1024 bytes; left as it is (grub2-mkconfig rewrites kernelopts)")
        return text, notes
    return new_body + "#" * pad, notes


def is_mount_point(ctx: Any, inner: str) -> bool:
    """Is ``inner`` (inside the migrated root, no symlink followed out of it) a mount point of its own?"""
    path = ctx.path(inner)
    return path.is_dir() and not path.is_symlink() and os.path.ismount(path)


def fix(ctx: Any) -> None:
    env = ctx.read(GRUBENV)
    if env is not None and len(env.encode()) == GRUBENV_SIZE:
        new, notes = rewrite_grubenv(env, ctx.plan)
        for n in dict.fromkeys(notes):
            ctx.note(f"{GRUBENV}: {n}")
        ctx.write(GRUBENV, new, "kernelopts names the target's filesystems")
    for inner in _text_files(ctx):
        old = ctx.read(inner)
        new, notes = rewrite_boot_text(old, ctx.plan)
        for n in dict.fromkeys(notes):
            ctx.note(f"{inner}: {n}")
        ctx.write(inner, new, "boot configuration names the target's filesystems")

    mkconfig = ctx.which("grub-mkconfig", "grub2-mkconfig")
    install = ctx.which("grub-install", "grub2-install")
    cfg = next((c for c in CFG_CANDIDATES if ctx.read(c) is not None), None)
    if mkconfig is None and install is None:
        ctx.note("grub is not installed in the migrated system; bootloader left as it is")
        return
    if not ctx.chroot_tools:
        ctx.note("tools disabled: grub not regenerated nor installed")
        return
    if cfg is None:
        cfg = "/boot/grub2/grub.cfg" if "grub2" in (mkconfig or install or "") else "/boot/grub/grub.cfg"
    if mkconfig is not None:
        tmp = cfg + ".cvmigrate-new"
        ctx.chroot([mkconfig, "-o", tmp])
        fresh = ctx.read(tmp) or ""
        ctx.discard(tmp)
        root = _root_target(ctx.plan)
        if root is not None and root.uuid:
            fixed = re.sub(r"root=/dev/(loop\d+p\d+|[a-z]+\d+|nvme\d+n\d+p\d+)(?=[\s'\"])", f"root=UUID={root.uuid}",
                           fresh)
            if fixed != fresh:
                ctx.note("grub-mkconfig wrote a device name as root=; replaced by the target root's UUID")
                fresh = fixed
        ctx.write(cfg, fresh, f"regenerated by {mkconfig.rsplit('/', 1)[-1]}")
    disk = getattr(ctx.plan, "system_disk", "")
    if install is None:
        ctx.note("no grub-install in the migrated system; boot code not reinstalled")
        return
    if not disk:
        ctx.note("the plan names no system disk; boot code not reinstalled")
        return
    if getattr(ctx.plan, "boot_mode", "bios") == "uefi":
        esp = next((m for m in ctx.plan.mounts if m.target is not None and m.target.is_esp), None)
        where = esp.mount_point if esp is not None else "/boot/efi"
        if not is_mount_point(ctx, where):
            # grub-install would write the EFI binaries into a plain directory of the root filesystem, which no
            # firmware reads: the target would not boot, though every step "succeeded"
            device = esp.target.device if esp is not None and esp.target is not None else "the ESP"
            raise FixupError(f"UEFI target, but {where} in the migrated root is not a mounted EFI system partition; "
                             f"mount {device} there (mount {device} ROOT{where}, or without FAT support in the "
                             f"kernel: fusefat -o rw+,fsname={device} {device} ROOT{where}) and re-run the fix-ups",
                             step=NAME)
        ctx.chroot([install, "--target=x86_64-efi", f"--efi-directory={where}", "--removable", "--no-nvram"])
        ctx.note("grub installed for UEFI (removable path)")
    else:
        ctx.chroot([install, "--target=i386-pc", "--recheck", disk])
        ctx.note(f"grub boot code installed on {disk}")
    ctx.step.status = "changed"
