"""Emulated MSP 2018-03-19 actions: RegisterMigrationTask, ModifyMigrationTaskStatus, DescribeMigrationTask.

Why: cvmigrate registers each migration with Tencent's Migration Service
Platform so it shows up in the console; the emulator keeps the tasks (and
their status history) so tests and the demo can see what the controller told
MSP.  Field names follow the SDK's models; DescribeMigrationTask answers the
``TaskStatus`` list the SDK's response model carries.
"""
from __future__ import annotations

import time
from typing import Any

from cvmigrate.controller.emulator.api import ApiError, Handler, RequestContext
from cvmigrate.controller.emulator.state import EmulatorState

TASK_TYPES = ("database", "file", "host")
STATUSES = ("unstart", "migrating", "finish", "fail")
_PROGRESS = {"unstart": "0", "migrating": "50", "finish": "100", "fail": "0"}


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())


def _task(state: EmulatorState, params: dict[str, Any]) -> dict[str, Any]:
    task_id = params.get("TaskId")
    if not task_id:
        raise ApiError("MissingParameter", "The request is missing a required parameter `TaskId`.")
    task = state.tasks.get(task_id)
    if task is None:
        raise ApiError("InvalidParameterValue", f"The migration task `{task_id}` does not exist.")
    return task


def register_migration_task(state: EmulatorState, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    for name in ("TaskType", "TaskName", "ServiceSupplier", "SrcInfo", "DstInfo"):
        if not params.get(name):
            raise ApiError("MissingParameter", f"The request is missing a required parameter `{name}`.")
    if params["TaskType"] not in TASK_TYPES:
        raise ApiError("InvalidParameterValue", f"`TaskType` must be one of {', '.join(TASK_TYPES)}.")
    task_id = state.new_task_id()
    now = _now()
    state.tasks[task_id] = {
        "TaskId": task_id,
        "Region": ctx.region,
        "TaskType": params["TaskType"],
        "TaskName": params["TaskName"],
        "ServiceSupplier": params["ServiceSupplier"],
        "MigrateClass": params.get("MigrateClass", ""),
        "SrcInfo": dict(params["SrcInfo"]),
        "DstInfo": dict(params["DstInfo"]),
        "CreateTime": params.get("CreateTime") or now,
        "UpdateTime": params.get("UpdateTime") or now,
        "Status": "unstart",
        "History": [{"Status": "unstart", "Progress": "0", "UpdateTime": now}],
    }
    return {"TaskId": task_id}


def modify_migration_task_status(state: EmulatorState, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    task = _task(state, params)
    status = params.get("Status")
    if status not in STATUSES:
        raise ApiError("InvalidParameterValue", f"`Status` must be one of {', '.join(STATUSES)}, not {status!r}.")
    now = _now()
    task["Status"] = status
    task["UpdateTime"] = now
    task["History"].append({"Status": status, "Progress": _PROGRESS[status], "UpdateTime": now})
    return {}


def describe_migration_task(state: EmulatorState, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    task = _task(state, params)
    return {"TaskStatus": [dict(h) for h in task["History"]]}


ACTIONS: dict[str, Handler] = {
    "RegisterMigrationTask": register_migration_task,
    "ModifyMigrationTaskStatus": modify_migration_task_status,
    "DescribeMigrationTask": describe_migration_task,
}
