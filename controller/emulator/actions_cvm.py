"""Emulated CVM 2017-03-12 actions: DescribeRegions, DescribeInstances, DescribeInstancesStatus, EnterRescueMode,
ExitRescueMode.

Why these and this faithfully: they are the only CVM calls cvmigrate makes, and
the controller's idempotency depends on their exact behaviour -- which states
each action accepts, which ``UnsupportedOperation.InstanceState*`` code it
answers otherwise, the password rules of EnterRescueMode, and the output
field names the SDK's models deserialize.  Each handler takes the state (whose
lock the server holds), the request context and the request parameters, and
returns the ``Response`` body without ``RequestId``.
"""
from __future__ import annotations

import re
from typing import Any

from cvmigrate.controller.emulator.api import ApiError, Handler, RequestContext
from cvmigrate.controller.emulator.state import EmulatorState

_INSTANCE_ID_RE = re.compile(r"^ins-[0-9a-z]{8}$")
_SPECIALS = set("()`~!@#$%^&*-+=|{}[]:;',.?/")

#: InstanceState -> the UnsupportedOperation code an action answers in that state.
_STATE_ERRORS = {
    "PENDING": "UnsupportedOperation.InstanceStatePending",
    "LAUNCH_FAILED": "UnsupportedOperation.InstanceStateLaunchFailed",
    "RUNNING": "UnsupportedOperation.InstanceStateRunning",
    "STOPPED": "UnsupportedOperation.InstanceStateStopped",
    "STARTING": "UnsupportedOperation.InstanceStateStarting",
    "STOPPING": "UnsupportedOperation.InstanceStateStopping",
    "REBOOTING": "UnsupportedOperation.InstanceStateRebooting",
    "SHUTDOWN": "UnsupportedOperation.InstanceStateShutdown",
    "TERMINATING": "UnsupportedOperation.InstanceStateTerminating",
    "ENTER_RESCUE_MODE": "UnsupportedOperation.InstanceStateEnterRescueMode",
    "RESCUE_MODE": "UnsupportedOperation.InstanceStateRescueMode",
    "EXIT_RESCUE_MODE": "UnsupportedOperation.InstanceStateExitRescueMode",
    "ENTER_SERVICE_LIVE_MIGRATE": "UnsupportedOperation.InstanceStateEnterServiceLiveMigrate",
    "SERVICE_LIVE_MIGRATE": "UnsupportedOperation.InstanceStateServiceLiveMigrate",
    "EXIT_SERVICE_LIVE_MIGRATE": "UnsupportedOperation.InstanceStateExitServiceLiveMigrate",
}

_FILTERS = {
    "instance-id": lambda i: [i["InstanceId"]],
    "instance-name": lambda i: [i["InstanceName"]],
    "instance-state": lambda i: [i["InstanceState"]],
    "zone": lambda i: [i["Zone"]],
    "vpc-id": lambda i: [i["VpcId"]],
    "subnet-id": lambda i: [i["SubnetId"]],
    "private-ip-address": lambda i: list(i["PrivateIpAddresses"]),
    "public-ip-address": lambda i: list(i["PublicIpAddresses"]),
}


def _check_instance_id(value: Any) -> str:
    if not isinstance(value, str) or not _INSTANCE_ID_RE.match(value):
        raise ApiError("InvalidInstanceId.Malformed", f"The specified parameter `InstanceId` is malformed: {value!r}.")
    return value


def _instance_ids(params: dict[str, Any]) -> list[str]:
    ids = params.get("InstanceIds") or []
    if not isinstance(ids, list):
        raise ApiError("InvalidParameter", "The parameter `InstanceIds` must be an array of strings.")
    if len(ids) > 100:
        raise ApiError("InvalidInstanceId.Malformed", "At most 100 instance ids may be given.")
    return [_check_instance_id(i) for i in ids]


def _paging(params: dict[str, Any]) -> tuple[int, int]:
    try:
        offset = int(params.get("Offset", 0))
        limit = int(params.get("Limit", 20))
    except (TypeError, ValueError):
        raise ApiError("InvalidParameterValue", "`Offset` and `Limit` must be integers.") from None
    if offset < 0 or not (1 <= limit <= 100):
        raise ApiError("InvalidParameterValue", "`Offset` must be >= 0 and `Limit` within 1..100.")
    return offset, limit


def _in_region(state: EmulatorState, ctx: RequestContext) -> list[dict[str, Any]]:
    return [state.advance(i) for i in state.instances.values() if i["Region"] == ctx.region]


def _lookup(state: EmulatorState, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    if "InstanceId" not in params:
        raise ApiError("MissingParameter", "The request is missing a required parameter `InstanceId`.")
    instance_id = _check_instance_id(params["InstanceId"])
    inst = state.instances.get(instance_id)
    if inst is None or inst["Region"] != ctx.region:
        raise ApiError("InvalidInstanceId.NotFound",
                       f"The instance `{instance_id}` does not exist in region {ctx.region}.")
    return state.advance(inst)


def instance_view(inst: dict[str, Any]) -> dict[str, Any]:
    """An instance as DescribeInstances returns it (field names of the SDK's Instance model)."""
    return {
        "Placement": {"Zone": inst["Zone"], "ProjectId": 0},
        "InstanceId": inst["InstanceId"],
        "InstanceType": inst["InstanceType"],
        "CPU": inst["CPU"],
        "Memory": inst["Memory"],
        "RestrictState": "NORMAL",
        "InstanceName": inst["InstanceName"],
        "InstanceChargeType": "POSTPAID_BY_HOUR",
        "SystemDisk": dict(inst["SystemDisk"]),
        "DataDisks": [
            {"DiskSize": d["DiskSize"], "DiskType": d["DiskType"], "DiskId": d["DiskId"], "DeleteWithInstance": True}
            for d in inst["DataDisks"]
        ],
        "PrivateIpAddresses": list(inst["PrivateIpAddresses"]),
        "PublicIpAddresses": list(inst["PublicIpAddresses"]) or None,
        "InternetAccessible": {
            "InternetChargeType": "TRAFFIC_POSTPAID_BY_HOUR",
            "InternetMaxBandwidthOut": 10 if inst["PublicIpAddresses"] else 0,
            "PublicIpAssigned": bool(inst["PublicIpAddresses"]),
        },
        "VirtualPrivateCloud": {"VpcId": inst["VpcId"], "SubnetId": inst["SubnetId"], "AsVpcGateway": False},
        "ImageId": inst["ImageId"],
        "CreatedTime": inst["CreatedTime"],
        "OsName": inst["OsName"],
        "InstanceState": inst["InstanceState"],
        "Uuid": "00000000-0000-4000-8000-" + inst["InstanceId"][4:].encode().hex()[:12].ljust(12, "0"),
        "LatestOperation": inst["LatestOperation"],
        "LatestOperationState": inst["LatestOperationState"],
        "LatestOperationRequestId": inst["LatestOperationRequestId"],
        "IPv6Addresses": list(inst.get("IPv6Addresses") or []),
    }


def describe_instances(state: EmulatorState, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    ids = _instance_ids(params)
    filters = params.get("Filters") or []
    if ids and filters:
        raise ApiError("InvalidParameter",
                       "The parameters `InstanceIds` and `Filters` cannot be specified at the same time.")
    offset, limit = _paging(params)
    found = _in_region(state, ctx)
    if ids:
        found = [i for i in found if i["InstanceId"] in ids]
    for f in filters:
        name, values = f.get("Name"), f.get("Values") or []
        if name not in _FILTERS:
            raise ApiError("InvalidFilter",
                           f"The filter `{name}` is not supported; supported: {', '.join(sorted(_FILTERS))}.")
        if name == "instance-id":
            for v in values:
                _check_instance_id(v)
        found = [i for i in found if set(_FILTERS[name](i)) & set(values)]
    found.sort(key=lambda i: i["InstanceId"])
    return {"TotalCount": len(found), "InstanceSet": [instance_view(i) for i in found[offset:offset + limit]]}


def describe_instances_status(state: EmulatorState, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    ids = _instance_ids(params)
    offset, limit = _paging(params)
    found = _in_region(state, ctx)
    if ids:
        found = [i for i in found if i["InstanceId"] in ids]
    found.sort(key=lambda i: i["InstanceId"])
    return {
        "TotalCount": len(found),
        "InstanceStatusSet": [{"InstanceId": i["InstanceId"], "InstanceState": i["InstanceState"]}
                              for i in found[offset:offset + limit]],
    }


def check_password(password: Any, os_name: str) -> None:
    """EnterRescueMode's password rules: Linux 8-30 chars of >= 2 classes, Windows 12-30 of >= 3."""
    windows = "windows" in (os_name or "").lower()
    low, classes_needed = (12, 3) if windows else (8, 2)
    rule = (f"{'Windows' if windows else 'Linux'} passwords must be {low} to 30 characters "
            f"with at least {classes_needed} of: lower-case letters, upper-case letters, digits, "
            "special characters ()`~!@#$%^&*-+=|{}[]:;',.?/, and must not start with '/'.")
    if not isinstance(password, str) or not (low <= len(password) <= 30) or password.startswith("/"):
        raise ApiError("InvalidPassword", "The password is invalid. " + rule)
    classes = [
        any(c.islower() and c.isascii() for c in password),
        any(c.isupper() and c.isascii() for c in password),
        any(c.isdigit() and c.isascii() for c in password),
        any(c in _SPECIALS for c in password),
    ]
    allowed = all((c.isascii() and c.isalnum()) or c in _SPECIALS for c in password)
    if not allowed or sum(classes) < classes_needed:
        raise ApiError("InvalidPassword", "The password is invalid. " + rule)


def enter_rescue_mode(state: EmulatorState, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    inst = _lookup(state, ctx, params)
    if "Password" not in params:
        raise ApiError("MissingParameter", "The request is missing a required parameter `Password`.")
    if "ForceStop" in params and "StopType" in params:
        raise ApiError("InvalidParameter",
                       "The parameters `ForceStop` and `StopType` cannot be specified at the same time.")
    stop_type = params.get("StopType", "SOFT")
    if stop_type not in ("SOFT", "HARD", "SOFT_FIRST"):
        raise ApiError("InvalidParameterValue",
                       f"The value `{stop_type}` of `StopType` is invalid; use SOFT, HARD or SOFT_FIRST.")
    check_password(params["Password"], inst["OsName"])
    current = inst["InstanceState"]
    if current not in ("RUNNING", "STOPPED"):
        raise ApiError(_STATE_ERRORS.get(current, "InvalidInstanceState"),
                       f"The instance `{inst['InstanceId']}` is in state {current}; "
                       "EnterRescueMode needs RUNNING or STOPPED.")
    state.begin_transition(inst, "ENTER_RESCUE_MODE", "RESCUE_MODE", state.delays["enter_rescue"], "EnterRescueMode",
                           ctx.request_id)
    return {}


def exit_rescue_mode(state: EmulatorState, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    inst = _lookup(state, ctx, params)
    current = inst["InstanceState"]
    if current != "RESCUE_MODE":
        raise ApiError(_STATE_ERRORS.get(current, "InvalidInstanceState"),
                       f"The instance `{inst['InstanceId']}` is in state {current}; ExitRescueMode needs RESCUE_MODE.")
    state.begin_transition(inst, "EXIT_RESCUE_MODE", "RUNNING", state.delays["exit_rescue"], "ExitRescueMode",
                           ctx.request_id)
    return {}


#: Tencent Cloud's public CVM regions (RegionSet of DescribeRegions, 2025), so a typo such as ``ap-guangzou``
#: is refused by the emulator's region list as the real one refuses it.
REGIONS: dict[str, str] = {
    "ap-bangkok": "Asia Pacific (Bangkok)", "ap-beijing": "North China (Beijing)",
    "ap-chengdu": "Southwest China (Chengdu)", "ap-chongqing": "Southwest China (Chongqing)",
    "ap-guangzhou": "South China (Guangzhou)", "ap-hongkong": "Hong Kong, Macau and Taiwan (China) (Hong Kong, China)",
    "ap-jakarta": "Asia Pacific (Jakarta)", "ap-mumbai": "Asia Pacific (Mumbai)", "ap-nanjing": "East China (Nanjing)",
    "ap-seoul": "Asia Pacific (Seoul)", "ap-shanghai": "East China (Shanghai)",
    "ap-shanghai-fsi": "East China (Shanghai Finance)", "ap-shenzhen-fsi": "South China (Shenzhen Finance)",
    "ap-singapore": "Asia Pacific (Singapore)", "ap-tokyo": "Asia Pacific (Tokyo)",
    "eu-frankfurt": "Europe (Frankfurt)", "na-ashburn": "US East (Virginia)",
    "na-siliconvalley": "US West (Silicon Valley)", "sa-saopaulo": "South America (São Paulo)",
}


def describe_regions(state: EmulatorState, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    """The public region list plus any region an emulated instance lives in (tests may invent one)."""
    names = dict(REGIONS)
    for inst in state.instances.values():
        names.setdefault(inst["Region"], inst["Region"])
    regions = [{"Region": r, "RegionName": names[r], "RegionState": "AVAILABLE"} for r in sorted(names)]
    return {"TotalCount": len(regions), "RegionSet": regions}


ACTIONS: dict[str, Handler] = {
    "DescribeRegions": describe_regions,
    "DescribeInstances": describe_instances,
    "DescribeInstancesStatus": describe_instances_status,
    "EnterRescueMode": enter_rescue_mode,
    "ExitRescueMode": exit_rescue_mode,
}
