"""/etc/fstab: the source's UUIDs, labels and device names mapped to the target's filesystems.

Each entry is looked up in the plan by what it names (``UUID=``, ``LABEL=``,
``PARTUUID=``, ``/dev/disk/by-*/``, ``/dev/sdXN``, ``/dev/mapper/...``) and,
failing that, by its mount point.  A mapped entry gets the target's
``UUID=`` (the one spelling that survives disk reordering); everything else
on the line -- options, dump, pass, spacing -- stays as it was.  An entry for
a source filesystem with no target counterpart is commented out with the
reason, because systemd drops to emergency mode on a missing non-``nofail``
filesystem -- except ``/``, which is always the target's root filesystem.  Virtual, network and bind
entries are left alone.
"""
from __future__ import annotations

import re
from typing import Any

NAME = "fstab"

VIRTUAL = {
    "proc", "sysfs", "tmpfs", "devpts", "devtmpfs", "cgroup", "cgroup2", "securityfs", "debugfs", "hugetlbfs",
    "mqueue", "efivarfs", "binfmt_misc", "configfs", "fusectl", "pstore", "bpf", "tracefs", "autofs", "ramfs",
    "rpc_pipefs", "nfsd", "overlay", "none", "iso9660", "udf", "auto.misc",
}
NETWORK = {"nfs", "nfs4", "cifs", "smbfs", "smb3", "glusterfs", "ceph", "fuse.sshfs", "sshfs", "davfs", "9p",
           "fuse.glusterfs", "lustre", "ocfs2", "gfs2", "fuse.s3fs", "fuse.ossfs", "fuse.cosfs", "fuse.goofys"}
_BLOCK_SPEC = re.compile(r"^(UUID|LABEL|PARTUUID|PARTLABEL|ID)=|^/dev/")
MARK = "# cvmigrate:"


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _replace_field(line: str, index: int, value: str) -> str:
    """``line`` with its ``index``-th whitespace-separated field replaced, spacing kept."""
    parts = re.split(r"(\s+)", line)
    # parts: [lead?, f0, ws, f1, ws, ...]; a leading '' when the line starts with a field
    fields = [i for i, p in enumerate(parts) if p and not p.isspace()]
    parts[fields[index]] = value
    return "".join(parts)


def rewrite_fstab(text: str, plan: Any) -> tuple[str, list[str]]:
    """The fixed fstab text and one note per changed or commented-out entry."""
    out: list[str] = []
    notes: list[str] = []
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\n")
        nl = line[len(body):]
        stripped = body.strip()
        if not stripped or stripped.startswith("#"):
            out.append(line)
            continue
        fields = stripped.split()
        if len(fields) < 3:
            out.append(line)
            continue
        spec, mnt, fstype = fields[0], _unescape(fields[1]), fields[2]
        opts = fields[3].split(",") if len(fields) > 3 else []
        if (fstype in VIRTUAL or fstype in NETWORK or "bind" in opts or "rbind" in opts
                or (":" in spec and not _BLOCK_SPEC.match(spec)) or spec.startswith("//")):
            out.append(line)
            continue
        fs = plan.source_by_name(spec)
        mapping = plan.mapping_for_source(fs) if fs is not None else None
        if mapping is None and fstype != "swap":
            mapping = next((m for m in plan.mounts if m.mount_point == mnt), None)
        if mnt == "/" and (mapping is None or mapping.target is None):
            # the root entry is never commented out: whatever it named, "/" is the target's root filesystem
            mapping = next((m for m in plan.mounts if m.mount_point == "/" and m.target is not None), None)
            if mapping is None:
                notes.append(f"/: {spec} left as it is (no target root filesystem in the plan)")
                out.append(line)
                continue
        if mapping is not None and mapping.target is not None:
            target = mapping.target
            new = _replace_field(body, 0, target.spec())
            if target.fstype and fstype not in ("auto", target.fstype) and fstype != "swap":
                new = _replace_field(new, 2, target.fstype)
                notes.append(f"{mnt}: filesystem type {fstype} -> {target.fstype}")
            if new != body:
                notes.append(f"{mnt}: {spec} -> {target.spec()}")
            out.append(new + nl)
            continue
        if not _BLOCK_SPEC.match(spec):
            out.append(line)   # something we do not understand (a bare label on old systems...): leave it
            continue
        if fstype == "swap":
            reason = f"swap {spec} has no counterpart on the target (add swap on the CVM if you need it)"
        elif mapping is not None:
            reason = (f"{mnt} ({spec}) was migrated into the target's root filesystem, "
                      f"which has no separate disk for it")
        else:
            reason = f"{mnt} ({spec}) is not on any disk of the target (map it in user.json DataDisks to keep it)"
        notes.append(f"commented out: {reason}")
        out.append(f"{MARK} {reason}\n#{body}{nl or chr(10)}")
    return "".join(out), notes


def fix(ctx: Any) -> None:
    old = ctx.read("/etc/fstab")
    if old is None:
        ctx.note("no /etc/fstab")
        return
    new, notes = rewrite_fstab(old, ctx.plan)
    for n in notes:
        ctx.note(n)
    ctx.write("/etc/fstab", new, "source filesystems mapped to the target's")
