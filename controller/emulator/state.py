"""The emulator's world: key pairs, instances with their state machine, MSP tasks, the call log.

Why a separate model: the HTTP layer only speaks the wire protocol; what the
cloud *is* lives here, behind one lock, so actions stay small and the whole
world can be saved to a JSON file and loaded by a restarted emulator (crash
and resume tests need a cloud that remembers).  State transitions are lazy:
an instance entering rescue mode records the target state and the wall-clock
time it is reached; every read advances it.  No timers, nothing to stop, and a
saved file resumes correctly after a restart.

With an existing state file, its instances, tasks and call log win over the
config's instances (keys, delays and faults always come from the config).

The config (a dict, usually from JSON) uses Tencent Cloud's own field names
for instances; see ``default_config()`` for a complete example.  Secret keys
are config only: they are never written to the state file and never logged.
"""
from __future__ import annotations

import copy
import json
import logging
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cvmigrate.controller.emulator.faults import FaultPlan, FaultRule

logger = logging.getLogger(__name__)

STATE_FORMAT_VERSION = 1

#: A documented, non-secret key pair so that `cvmigrate demo` and tests work
#: without any account.  It only ever opens the emulator.
DEFAULT_SECRET_ID = "AKIDcvmigrateEMULATOR0000000000000000"  # noqa: S105 - the emulator's public demo key
DEFAULT_SECRET_KEY = "cvmigrate-emulator-secret-key-0000"  # noqa: S105 - the emulator's public demo key
DEFAULT_REGION = "ap-guangzhou"
DEFAULT_INSTANCE_ID = "ins-cvmemu01"

#: Default seconds an instance spends in the transitional states.
DEFAULT_DELAYS = {"enter_rescue": 2.0, "exit_rescue": 2.0}


def default_instance(instance_id: str = DEFAULT_INSTANCE_ID, region: str = DEFAULT_REGION) -> dict[str, Any]:
    """A typical small Linux CVM: one system disk, one data disk, public and private IP."""
    return {
        "InstanceId": instance_id,
        "Region": region,
        "Zone": f"{region}-3",
        "InstanceName": "cvmigrate-target",
        "InstanceType": "S5.MEDIUM4",
        "CPU": 2,
        "Memory": 4,
        "InstanceState": "RUNNING",
        "OsName": "Ubuntu Server 22.04 LTS 64bit",
        "ImageId": "img-487zeit5",
        "SystemDisk": {"DiskType": "CLOUD_PREMIUM", "DiskSize": 50, "DiskId": "disk-sys00001"},
        "DataDisks": [{"DiskType": "CLOUD_PREMIUM", "DiskSize": 100, "DiskId": "disk-dat00001"}],
        "PrivateIpAddresses": ["10.0.0.12"],
        "PublicIpAddresses": ["203.0.113.10"],
        "VpcId": "vpc-emu00001",
        "SubnetId": "subnet-emu00001",
    }


def default_config(rescue_delay: float | None = None) -> dict[str, Any]:
    """The emulator model used by `cvmigrate emulator` and `cvmigrate demo` without --config.

    ``rescue_delay``: seconds an instance takes to enter and to leave rescue mode (tests want it short).
    """
    delays = dict(DEFAULT_DELAYS) if rescue_delay is None else {"enter_rescue": rescue_delay,
                                                                 "exit_rescue": rescue_delay}
    return {
        "keys": {DEFAULT_SECRET_ID: DEFAULT_SECRET_KEY},
        "instances": [default_instance()],
        "delays": delays,
        "faults": [],
    }


def default_user_json(**extra: Any) -> dict[str, Any]:
    """A go2tencentcloud user.json that opens the emulator's default instance (``extra``: DataDisks ...)."""
    return {"SecretId": DEFAULT_SECRET_ID, "SecretKey": DEFAULT_SECRET_KEY, "Region": DEFAULT_REGION,
            "InstanceId": DEFAULT_INSTANCE_ID, **extra}


@dataclass(frozen=True)
class Call:
    """One request the emulator answered (or refused): the call log tests read."""

    seq: int
    time: float
    action: str
    service: str
    region: str
    instance_id: str | None
    task_id: str | None
    secret_id: str | None
    error: str | None
    request_id: str


_INSTANCE_REQUIRED = ("InstanceId",)
_INSTANCE_DEFAULTS: dict[str, Any] = {
    "Region": DEFAULT_REGION,
    "InstanceName": "",
    "InstanceType": "S5.MEDIUM4",
    "CPU": 2,
    "Memory": 4,
    "InstanceState": "RUNNING",
    "OsName": "",
    "ImageId": "",
    "SystemDisk": {"DiskType": "CLOUD_PREMIUM", "DiskSize": 50},
    "DataDisks": [],
    "PrivateIpAddresses": [],
    "PublicIpAddresses": [],
    "VpcId": "",
    "SubnetId": "",
}


def normalize_instance(raw: dict[str, Any]) -> dict[str, Any]:
    """Fill defaults and check an instance definition; raises ValueError naming the field."""
    for name in _INSTANCE_REQUIRED:
        if not raw.get(name):
            raise ValueError(f"emulator instance: {name} is required")
    inst = copy.deepcopy(_INSTANCE_DEFAULTS)
    inst.update(copy.deepcopy(raw))
    vpc = inst.pop("VirtualPrivateCloud", None)
    if isinstance(vpc, dict):
        inst["VpcId"] = inst.get("VpcId") or vpc.get("VpcId", "")
        inst["SubnetId"] = inst.get("SubnetId") or vpc.get("SubnetId", "")
    inst.setdefault("Zone", f"{inst['Region']}-3")
    n = inst["InstanceId"][4:]
    inst["SystemDisk"].setdefault("DiskId", f"disk-{n[:6]}s0")
    for i, disk in enumerate(inst["DataDisks"], start=1):
        if "DiskSize" not in disk:
            raise ValueError(f"emulator instance {inst['InstanceId']}: DataDisks[{i - 1}].DiskSize is required")
        disk.setdefault("DiskType", "CLOUD_PREMIUM")
        disk.setdefault("DiskId", f"disk-{n[:6]}d{i % 10}")
    inst.setdefault("Pending", None)
    inst.setdefault("LatestOperation", None)
    inst.setdefault("LatestOperationState", None)
    inst.setdefault("LatestOperationRequestId", None)
    inst.setdefault("CreatedTime", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    return inst


class EmulatorState:
    """The whole emulated cloud, guarded by one re-entrant lock.

    Actions call ``lock`` and then mutate ``instances`` / ``tasks``; the server
    appends to the call log and calls ``save()`` after every request.
    """

    def __init__(self, config: dict[str, Any] | None = None, state_file: str | Path | None = None) -> None:
        config = default_config() if config is None else config
        unknown = set(config) - {"keys", "instances", "delays", "faults", "seed"}
        if unknown:
            raise ValueError(f"emulator config: unknown fields {sorted(unknown)}")
        self.lock = threading.RLock()
        keys = config.get("keys", {DEFAULT_SECRET_ID: DEFAULT_SECRET_KEY})
        if isinstance(keys, list):  # [{"SecretId": .., "SecretKey": ..}]
            keys = {k["SecretId"]: k["SecretKey"] for k in keys}
        self._keys: dict[str, str] = dict(keys)
        self.delays: dict[str, float] = dict(DEFAULT_DELAYS)
        self.delays.update({k: float(v) for k, v in config.get("delays", {}).items()})
        self.faults = FaultPlan([FaultRule.from_dict(r) for r in config.get("faults", [])])
        self.instances: dict[str, dict[str, Any]] = {}
        for raw in config.get("instances", []):
            inst = normalize_instance(raw)
            self.instances[inst["InstanceId"]] = inst
        self.tasks: dict[str, dict[str, Any]] = {}
        self._calls: list[Call] = []
        self._task_seq = 0
        self.state_file = Path(state_file) if state_file else None
        if self.state_file and self.state_file.exists():
            self._load(self.state_file)

    # -- keys -------------------------------------------------------------
    def secret_key_for(self, secret_id: str) -> str | None:
        return self._keys.get(secret_id)

    @property
    def secret_ids(self) -> list[str]:
        return list(self._keys)

    # -- instances ----------------------------------------------------------
    def advance(self, inst: dict[str, Any], now: float | None = None) -> dict[str, Any]:
        """Complete a pending transition whose time has come."""
        now = time.time() if now is None else now
        pending = inst.get("Pending")
        if pending and now >= pending["at"]:
            logger.debug("instance %s: %s -> %s", inst["InstanceId"], inst["InstanceState"], pending["state"])
            inst["InstanceState"] = pending["state"]
            inst["Pending"] = None
            inst["LatestOperationState"] = "SUCCESS"
        return inst

    def begin_transition(self, inst: dict[str, Any], via: str, to: str, delay: float, operation: str,
                         request_id: str) -> None:
        inst["InstanceState"] = via
        inst["Pending"] = {"state": to, "at": time.time() + max(0.0, delay)}
        inst["LatestOperation"] = operation
        inst["LatestOperationState"] = "OPERATING"
        inst["LatestOperationRequestId"] = request_id

    def instance(self, instance_id: str) -> dict[str, Any] | None:
        with self.lock:
            inst = self.instances.get(instance_id)
            return self.advance(inst) if inst else None

    def put_instance(self, raw: dict[str, Any]) -> None:
        inst = normalize_instance(raw)
        with self.lock:
            self.instances[inst["InstanceId"]] = inst
            self.save()

    def set_state(self, instance_id: str, state: str) -> None:
        with self.lock:
            inst = self.instances[instance_id]
            inst["InstanceState"] = state
            inst["Pending"] = None
            self.save()

    # -- MSP tasks ------------------------------------------------------------
    def new_task_id(self) -> str:
        with self.lock:
            self._task_seq += 1
            return f"msp-{self._task_seq:08d}"

    # -- call log ---------------------------------------------------------------
    def record(self, **fields: Any) -> Call:
        with self.lock:
            call = Call(seq=len(self._calls) + 1, time=time.time(), **fields)
            self._calls.append(call)
            return call

    def calls(self) -> list[Call]:
        with self.lock:
            return list(self._calls)

    # -- persistence ------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "version": STATE_FORMAT_VERSION,
                "instances": copy.deepcopy(list(self.instances.values())),
                "tasks": copy.deepcopy(list(self.tasks.values())),
                "task_seq": self._task_seq,
                "calls": [asdict(c) for c in self._calls],
            }

    def save(self) -> None:
        """Write the state file atomically (temp file, fsync, rename, fsync dir)."""
        if not self.state_file:
            return
        from cvmigrate.common.durable import write_file

        with self.lock:
            write_file(self.state_file, json.dumps(self.snapshot(), indent=1, sort_keys=True), 0o600)

    def _load(self, path: Path) -> None:
        data = json.loads(path.read_text(encoding="utf-8"))
        version = data.get("version")
        if version != STATE_FORMAT_VERSION:
            raise ValueError(f"emulator state file {path}: format version {version!r} is not "
                             f"{STATE_FORMAT_VERSION}; delete it or use a matching cvmigrate")
        self.instances = {i["InstanceId"]: normalize_instance(i) for i in data.get("instances", [])}
        self.tasks = {t["TaskId"]: t for t in data.get("tasks", [])}
        self._task_seq = int(data.get("task_seq", len(self.tasks)))
        self._calls = [Call(**c) for c in data.get("calls", [])]
        logger.info("emulator state loaded from %s: %d instances, %d MSP tasks, %d logged calls",
                    path, len(self.instances), len(self.tasks), len(self._calls))
