"""Stage 3: fix-ups on the target, clean up the receiver, leave rescue mode, boot, verify, tell MSP.

``exit_rescue`` looks before acting like ``enter_rescue``: it reads the
instance state and never sends ExitRescueMode to an instance already leaving
or out of rescue mode.  The fix-ups themselves run on the receiver
(receiver/fixups), which has the target's disks.
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

from cvmigrate.common.errors import CheckFailed
from cvmigrate.common.sourcefacts import facts_to_json
from cvmigrate.controller import receiver_client
from cvmigrate.controller.context import Context, Deadline, Verification
from cvmigrate.controller.passes import data_mounts, exclude_rules
from cvmigrate.controller.progress import human_bytes
from cvmigrate.controller.testhooks import kill_point
from cvmigrate.proto import transfer_pb2 as pb

logger = logging.getLogger(__name__)


def run_fixups(ctx: Context) -> dict[str, Any]:
    """Post-migration fix-ups on the target while it is still in rescue mode (fstab, grub, initramfs, ...).

    They run on the receiver, where the target's disks are; the agent's view of
    the source filesystems (UUIDs, labels, devices) tells it what to map.
    """
    if not ctx.opts.file_level:
        return {"fixups": "not needed", "reason": "block-level migration keeps the disks exactly as they were"}
    facts = ctx.source_facts()
    sources = [f.identity() for f in facts.filesystems]
    request = pb.FixupsRequest(source_filesystems_json=json.dumps(sources), chroot_tools=True,
                               source_facts_json=facts_to_json(facts), keep_static_ip=ctx.opts.keep_static_ip)
    resp = receiver_client.run_fixups(ctx.receiver_address(), ctx.security(), request, data_proxy=ctx.data_proxy())
    if resp.skipped:
        # a directory target (demo, tests): no disk, no bootloader -- nothing of the fix-ups applies
        return {"fixups": "not needed", "reason": resp.summary}
    for line in resp.diffs.splitlines():
        logger.info("fix-up diff: %s", line)
    if not resp.ok:
        raise CheckFailed(f"post-migration fix-ups failed: {resp.summary}; see the diffs in the log, fix the "
                          "target in rescue mode, then run the same command again")
    return {"fixups": "done", "summary": resp.summary, "report": json.loads(resp.report_json or "{}")}


def fixups(ctx: Context, dl: Deadline) -> dict[str, Any]:
    """The fix-ups on the receiver; each fix-up only changes what still needs changing, so a re-run is safe."""
    facts = run_fixups(ctx)
    ctx.note(facts.get("summary") or facts.get("reason") or facts["fixups"])
    return {"fixups": facts}


def finalize_receiver(ctx: Context, dl: Deadline) -> dict[str, Any]:
    """The receiver removes its journal and every temporary file of ours from the target (control credential)."""
    resp = receiver_client.finalize(ctx.receiver_address(), ctx.security(), timeout=max(10.0, dl.remaining()),
                                    data_proxy=ctx.data_proxy())
    ctx.note(f"journal {'removed' if resp.state_removed else 'already gone'}, "
               f"{resp.temporary_files_removed} temporary file(s) removed")
    return {"receiver_finalized": True, "temporary_files_removed": resp.temporary_files_removed}


def exit_rescue(ctx: Context, dl: Deadline) -> dict[str, Any]:
    """ExitRescueMode -- unless the instance is already leaving or out of rescue mode."""
    state = ctx.cloud.instance_status(ctx.instance_id)
    if state == "ENTER_RESCUE_MODE":
        state = ctx.wait_target("RESCUE_MODE", dl)
    if state in ("EXIT_RESCUE_MODE", "RUNNING"):
        logger.info("target %s is already %s: ExitRescueMode not sent", ctx.instance_id, state)
        ctx.note(f"already {state}; ExitRescueMode not sent")
        return {"exit_rescue_sent": False, "exit_rescue_found": state}
    if state != "RESCUE_MODE":
        raise CheckFailed(f"target {ctx.instance_id} is {state}; ExitRescueMode needs RESCUE_MODE")
    ctx.cloud.exit_rescue_mode(ctx.instance_id)
    kill_point("exit_rescue:sent")
    ctx.note("ExitRescueMode sent")
    return {"exit_rescue_sent": True, "exit_rescue_at": time.time()}


def wait_running(ctx: Context, dl: Deadline) -> dict[str, Any]:
    """Poll until RUNNING (the target boots its own, migrated, system disk)."""
    return {"target_state": ctx.wait_target("RUNNING", dl)}


def verify(ctx: Context, dl: Deadline) -> dict[str, Any]:
    """The verification summary: every pass complete, and (when the target is readable here) a tree comparison."""
    compared = None
    if ctx.opts.verify_target:
        from cvmigrate.agent.verify import compare_trees

        compared = compare_trees(os.path.abspath(ctx.opts.source), ctx.opts.verify_target, exclude_rules(ctx),
                                 include_mounts=data_mounts(ctx, ctx.source_facts()))
        if not compared.ok:
            raise CheckFailed("verification failed: " + "; ".join(compared.differences[:5]))
    summary = Verification.of(ctx.facts.completed_passes(), compared)
    note = (f"{summary.last.files} files, {human_bytes(summary.last.bytes_total)} in {summary.passes} passes, "
            f"{summary.errors} errors")
    if compared is not None:
        note += f"; {compared.entries} entries compared with the target: identical"
    ctx.note(note)
    return {"verification": summary.as_json()}


def msp_finish(ctx: Context, dl: Deadline) -> dict[str, Any]:
    """ModifyMigrationTaskStatus finish (setting the same status twice is harmless)."""
    task_id = ctx.facts.msp_task_id
    if not task_id:
        ctx.note("no MSP task")
        return {}
    ctx.cloud.modify_migration_task_status(task_id, "finish")
    ctx.note(f"MSP task {task_id}: finish")
    return {"msp_status": "finish", "finished_at": time.time()}
