"""The migration as go2tencentcloud runs it: three stages of sub-tasks, checkpointed, resumable.

Why a table of sub-tasks rather than one long function: every step that
changes the cloud (EnterRescueMode, ExitRescueMode, RegisterMigrationTask,
the MSP status) must happen exactly once across crashes and re-runs, every
step needs its own time limit (``client.json`` ``Cvmigrate.Timeouts.<name>``
overrides the defaults below), and ``cvmigrate status`` must be able to say
where a migration stands.  So each sub-task is a function with a name, a
stage, a default timeout and a written idempotency rule; the runner skips the
ones the checkpoint records as done, resumes at the first unfinished one, and
stores a sub-task's ``done`` together with the facts it learned in one
transaction.  The sub-tasks themselves are in controller/subtasks/ (one
module per stage); a failure is recorded, shown in the MSP console (best
effort) and raised.

Test-only hook: controller/testhooks.py (``CVMIGRATE_TEST_KILL_AFTER``) kills
this process at a sub-task boundary; the crash-resume tests use it.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cvmigrate.common import logsetup
from cvmigrate.common.errors import ConfigError, CvmError
from cvmigrate.controller.checkpoint import DONE
from cvmigrate.controller.context import Context, Deadline
from cvmigrate.controller.subtasks.finish import (
    exit_rescue,
    finalize_receiver,
    fixups,
    msp_finish,
    verify,
    wait_running,
)
from cvmigrate.controller.subtasks.prepare import (
    check_capacity,
    check_credentials,
    check_os,
    enter_rescue,
    mint_credentials,
    reach_receiver,
    register_msp,
    source_facts,
    start_receiver,
    validate_config,
    wait_rescue,
)
from cvmigrate.controller.subtasks.transfer import full_pass, incremental_passes
from cvmigrate.controller.testhooks import kill_point

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SubTask:
    name: str
    stage: int
    timeout: float                 # default seconds; client.json Cvmigrate.Timeouts.<name> overrides
    idempotency: str               # why running it again after a crash is safe
    fn: Callable[[Context, Deadline], dict[str, Any] | None]
    check: bool = False            # part of `--check`


H = 3600.0
SUBTASKS: tuple[SubTask, ...] = (
    SubTask("validate_config", 1, 30, "pure: re-read and re-checked on every run", validate_config, check=True),
    SubTask("check_credentials", 1, 120, "read-only API calls", check_credentials, check=True),
    SubTask("mint_credentials", 1, 120, "reuses the certificates and token already made", mint_credentials),
    SubTask("source_facts", 1, 1800, "read-only: the agent measures the source again", source_facts, check=True),
    SubTask("check_capacity", 1, 600, "read-only: the source facts against the target's disks", check_capacity,
            check=True),
    SubTask("check_os", 1, 30, "read-only; warns only", check_os, check=True),
    SubTask("register_msp", 1, 120, "MSP has no idempotency token: a crash between the call and its checkpoint "
            "registers a second task (a console entry)", register_msp),
    SubTask("enter_rescue", 1, 600, "reads the state first: never sent to an instance entering or in rescue mode; "
            "the password is stored before the call", enter_rescue),
    SubTask("wait_rescue", 1, 1800, "polling only", wait_rescue),
    SubTask("start_receiver", 1, 1800, "manual: records the address; ssh: the bootstrap restarts a receiver that "
            "is not running", start_receiver),
    SubTask("reach_receiver", 1, 1800, "Ping only", reach_receiver),
    SubTask("full_pass", 2, 72 * H, "the receiver's journal skips what landed", full_pass),
    SubTask("incremental_passes", 2, 72 * H, "passes are idempotent", incremental_passes),
    SubTask("fixups", 3, 1800, "each fix-up must be idempotent", fixups),
    SubTask("finalize_receiver", 3, 1800, "removing what is already gone is a no-op", finalize_receiver),
    SubTask("exit_rescue", 3, 600, "reads the state first: never sent to an instance leaving or out of rescue mode",
            exit_rescue),
    SubTask("wait_running", 3, 1800, "polling only", wait_running),
    SubTask("verify", 3, 6 * H, "read-only", verify),
    SubTask("msp_finish", 3, 120, "setting the same status twice is harmless", msp_finish),
)
SUBTASKS_BY_NAME = {s.name: s for s in SUBTASKS}
SUBTASK_NAMES = tuple(SUBTASKS_BY_NAME)

def timeout_for(ctx: Context, name: str) -> float:
    """The sub-task's time limit: client.json Cvmigrate.Timeouts.<name>, else the table's default."""
    return float(ctx.client.timeouts.get(name, SUBTASKS_BY_NAME[name].timeout))


@dataclass
class RunOutcome:
    completed: bool
    ran: list[str]
    skipped: list[str]


def _stage_label(st: SubTask) -> str:
    return f"{st.stage}:{st.name}"


def check_state_matches(ctx: Context) -> None:
    """A state file belongs to one target: refuse to resume another migration's."""
    known = ctx.facts.instance_id
    if known and known != ctx.instance_id:
        raise ConfigError(f"the state file {ctx.ckpt.path} belongs to the migration to {known}, but user.json names "
                          f"{ctx.instance_id}; give another --state FILE, or run `cvmigrate clean` for {known} first")


def run_stages(ctx: Context, *, only_checks: bool = False) -> RunOutcome:
    """Run (or resume) the sub-tasks in order; raises the first failure after recording it."""
    ckpt = ctx.ckpt
    ctx.migration_id = ctx.migration_id or ckpt.migration_id()
    logsetup.set_context(migration=ctx.migration_id)
    check_state_matches(ctx)
    ctx.opts.checks_only = only_checks
    table = [s for s in SUBTASKS if s.check] if only_checks else list(SUBTASKS)
    ckpt.register_subtasks((s.name, s.stage) for s in table)
    _resume_msp(ctx)
    ran: list[str] = []
    skipped: list[str] = []
    stage_shown = 0
    for st in table:
        if st.stage != stage_shown:
            stage_shown = st.stage
            ctx.display.stage(st.stage)
        row = ckpt.subtask(st.name)
        if row is not None and row.status == DONE:
            ctx.display.subtask_skipped(st.name)
            skipped.append(st.name)
            continue
        logsetup.set_context(stage=_stage_label(st))
        timeout = timeout_for(ctx, st.name)
        if row is not None and row.attempts:
            logger.info("resuming sub-task %s (attempt %d)", st.name, row.attempts + 1)
        ckpt.start(st.name)
        ctx.display.subtask_started(st.name, st.stage, timeout)
        ctx.notes.pop("current", None)
        t0 = time.monotonic()
        try:
            facts = st.fn(ctx, Deadline(timeout, st.name)) or {}
        except BaseException as exc:
            message = str(exc) or type(exc).__name__
            ckpt.fail(st.name, message)
            ctx.display.subtask_failed(st.name, message)
            if isinstance(exc, CvmError):
                logger.error("sub-task %s failed: %s", st.name, message, extra=logsetup.REPORTED)
            if not only_checks:
                _msp_fail(ctx, st.name, message)
            raise
        ckpt.finish(st.name, facts)
        ctx.display.subtask_finished(st.name, time.monotonic() - t0, ctx.notes.get("current", ""))
        logger.info("sub-task %s done in %.1fs%s", st.name, time.monotonic() - t0,
                    f": {ctx.notes['current']}" if ctx.notes.get("current") else "")
        ran.append(st.name)
        kill_point(st.name)
    logsetup.set_context(stage="-")
    return RunOutcome(completed=ckpt.all_done(), ran=ran, skipped=skipped)


def _msp_fail(ctx: Context, subtask: str, reason: str) -> None:
    """Best effort: show the failure in the MSP console (the reason goes to the log and the state file)."""
    task_id = ctx.facts.msp_task_id
    if not task_id or ctx.facts.msp_status in ("finish", "fail"):
        return
    try:
        ctx.cloud.modify_migration_task_status(task_id, "fail")
        ctx.ckpt.set_facts(msp_status="fail", failure={"subtask": subtask, "reason": reason[:500]})
        logger.info("MSP task %s marked fail (%s: %s)", task_id, subtask, reason)
    except CvmError as exc:
        logger.warning("could not mark MSP task %s as failed: %s", task_id, exc)


def _resume_msp(ctx: Context) -> None:
    """A re-run after a failure sets the MSP task back to migrating."""
    task_id = ctx.facts.msp_task_id
    if task_id and ctx.facts.msp_status == "fail":
        try:
            ctx.cloud.modify_migration_task_status(task_id, "migrating")
            ctx.ckpt.set_facts(msp_status="migrating")
        except CvmError as exc:
            logger.warning("could not set MSP task %s back to migrating: %s", task_id, exc)
