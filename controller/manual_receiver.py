"""What the admin gets to start a receiver by hand (--bootstrap manual): the disk plan file and the command line."""
from __future__ import annotations

import json
from pathlib import Path

from cvmigrate.controller.context import Context

DISK_PLAN_NAME = "disk-plan.json"


def write_disk_plan(ctx: Context, path: Path) -> None:
    """What the receiver needs to map the target's disks (`cvmigrate receive --disk-plan`).

    The system disk and each user.json DataDisks entry with its size (from
    DescribeInstances) and the source mount point it receives, plus the
    source's filesystems so a blank data disk gets the same filesystem type.
    """
    target = ctx.target()
    sizes = dict(target.data_disks)
    wanted = [{"index": 0, "size_gb": target.system_disk_gb, "mount_point": "/"}]
    for d in ctx.user.data_disks:
        wanted.append({"index": d.index, "size_gb": sizes.get(d.index, d.size_gb), "mount_point": d.mount_point})
    facts = ctx.source_facts()
    plan = {"wanted": wanted, "source_filesystems": [f.identity() for f in facts.filesystems],
            "boot_mode": facts.boot_mode, "esp": facts.esp}
    path.write_text(json.dumps(plan, indent=2) + "\n")


def receiver_command(ctx: Context, port: int) -> str:
    """The `cvmigrate receive` line to run in the rescue system, naming the files the admin copies there."""
    if not ctx.facts.pki_dir:
        return f"cvmigrate receive --listen 0.0.0.0:{port} --root {ctx.opts.target_root} (with your TLS files)"
    blocks = "".join(f" --block-target {dst}" for _, dst in ctx.opts.block_disks)
    return (f"cvmigrate receive --listen 0.0.0.0:{port} --root {ctx.opts.target_root} --tls-ca ca.pem "
            f"--tls-cert server.pem --tls-key server.key --token-file token --control-token-file control-token "
            f"--disk-plan {DISK_PLAN_NAME}{blocks}")
