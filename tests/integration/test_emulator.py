"""The Tencent Cloud API emulator, driven only by the real SDK over real HTTP (port 0)."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from tencentcloud.common import abstract_client
from tencentcloud.common.common_client import CommonClient
from tencentcloud.common.credential import Credential
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException
from tencentcloud.common.profile.client_profile import ClientProfile
from tencentcloud.common.profile.http_profile import HttpProfile
from tencentcloud.cvm.v20170312 import cvm_client
from tencentcloud.cvm.v20170312 import models as cvm
from tencentcloud.msp.v20180319 import models as msp
from tencentcloud.msp.v20180319 import msp_client

from cvmigrate.controller.emulator import (
    DEFAULT_INSTANCE_ID,
    DEFAULT_REGION,
    DEFAULT_SECRET_ID,
    DEFAULT_SECRET_KEY,
    EmulatorHandle,
    default_instance,
    start_emulator,
)

DELAY = 0.2
WIN_ID = "ins-win00001"
STOPPED_ID = "ins-stop0001"


def _config() -> dict[str, Any]:
    win = default_instance(WIN_ID)
    win.update(OsName="Windows Server 2019 DataCenter 64bit", DataDisks=[], PublicIpAddresses=[])
    stopped = default_instance(STOPPED_ID)
    stopped.update(InstanceState="STOPPED", DataDisks=[{"DiskSize": 200}, {"DiskSize": 500, "DiskType": "CLOUD_SSD"}])
    return {
        "keys": {DEFAULT_SECRET_ID: DEFAULT_SECRET_KEY, "AKIDsecondKEY000000000000000000000000": "second-key"},
        "instances": [default_instance(), win, stopped, default_instance("ins-other001", region="ap-shanghai")],
        "delays": {"enter_rescue": DELAY, "exit_rescue": DELAY},
    }


@pytest.fixture
def emu() -> Iterator[EmulatorHandle]:
    handle = start_emulator(_config())
    try:
        yield handle
    finally:
        handle.stop()


def _profile(handle: EmulatorHandle, method: str = "POST") -> ClientProfile:
    host = handle.endpoint.split("://", 1)[1]
    return ClientProfile(httpProfile=HttpProfile(protocol="http", endpoint=host, reqMethod=method, reqTimeout=10),
                         language="en-US")


def _cvm(handle: EmulatorHandle, secret_id: str = DEFAULT_SECRET_ID, secret_key: str = DEFAULT_SECRET_KEY,
         region: str = DEFAULT_REGION, method: str = "POST") -> cvm_client.CvmClient:
    return cvm_client.CvmClient(Credential(secret_id, secret_key), region, _profile(handle, method))


def _msp(handle: EmulatorHandle) -> msp_client.MspClient:
    return msp_client.MspClient(Credential(DEFAULT_SECRET_ID, DEFAULT_SECRET_KEY), DEFAULT_REGION, _profile(handle))


def _describe(client: cvm_client.CvmClient, ids: list[str] | None = None,
              filters: list[tuple[str, list[str]]] | None = None) -> Any:
    req = cvm.DescribeInstancesRequest()
    if ids is not None:
        req.InstanceIds = ids
    if filters:
        req.Filters = []
        for name, values in filters:
            f = cvm.Filter()
            f.Name, f.Values = name, values
            req.Filters.append(f)
    return client.DescribeInstances(req)


def _status(client: cvm_client.CvmClient, instance_id: str) -> str:
    req = cvm.DescribeInstancesStatusRequest()
    req.InstanceIds = [instance_id]
    return client.DescribeInstancesStatus(req).InstanceStatusSet[0].InstanceState


def _enter(client: cvm_client.CvmClient, instance_id: str, password: str = "Migrate2Tencent!", **extra: Any) -> Any:
    req = cvm.EnterRescueModeRequest()
    req.InstanceId, req.Password = instance_id, password
    for k, v in extra.items():
        setattr(req, k, v)
    return client.EnterRescueMode(req)


def _exit(client: cvm_client.CvmClient, instance_id: str) -> Any:
    req = cvm.ExitRescueModeRequest()
    req.InstanceId = instance_id
    return client.ExitRescueMode(req)


def _code(fn: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(TencentCloudSDKException) as info:
        fn(*args, **kwargs)
    assert info.value.get_request_id(), "every error answer carries a RequestId"
    return info.value.get_code()


def _wait(client: cvm_client.CvmClient, instance_id: str, wanted: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while _status(client, instance_id) != wanted:
        assert time.monotonic() < deadline, f"{instance_id} never reached {wanted}"
        time.sleep(0.05)


# -- DescribeInstances / DescribeInstancesStatus ----------------------------------------------
def test_describe_instances_returns_the_model(emu: EmulatorHandle) -> None:
    resp = _describe(_cvm(emu), [DEFAULT_INSTANCE_ID])
    assert resp.TotalCount == 1 and resp.RequestId
    inst = resp.InstanceSet[0]
    assert inst.InstanceId == DEFAULT_INSTANCE_ID
    assert inst.InstanceState == "RUNNING"
    assert inst.OsName.startswith("Ubuntu")
    assert (inst.SystemDisk.DiskType, inst.SystemDisk.DiskSize) == ("CLOUD_PREMIUM", 50)
    assert [d.DiskSize for d in inst.DataDisks] == [100]
    assert inst.PrivateIpAddresses == ["10.0.0.12"] and inst.PublicIpAddresses == ["203.0.113.10"]
    assert inst.VirtualPrivateCloud.VpcId == "vpc-emu00001" and inst.VirtualPrivateCloud.SubnetId == "subnet-emu00001"
    assert inst.Placement.Zone == "ap-guangzhou-3"


def test_describe_instances_filters_and_regions(emu: EmulatorHandle) -> None:
    client = _cvm(emu)
    assert _describe(client).TotalCount == 3  # ap-shanghai's instance is not listed in ap-guangzhou
    assert _describe(client, filters=[("instance-state", ["STOPPED"])]).InstanceSet[0].InstanceId == STOPPED_ID
    assert _describe(client, filters=[("instance-id", [WIN_ID])]).InstanceSet[0].InstanceId == WIN_ID
    assert _describe(client, ["ins-nothere1"]).TotalCount == 0  # DescribeInstances: an empty set, not an error
    assert _describe(_cvm(emu, region="ap-shanghai")).InstanceSet[0].InstanceId == "ins-other001"
    assert _code(_describe, client, ["i-123"]) == "InvalidInstanceId.Malformed"
    assert _code(_describe, client, None, [("colour", ["blue"])]) == "InvalidFilter"
    assert _code(_describe, client, [WIN_ID], [("zone", ["ap-guangzhou-3"])]) == "InvalidParameter"


def test_describe_instances_by_get_with_form_parameters(emu: EmulatorHandle) -> None:
    resp = _describe(_cvm(emu, method="GET"), [STOPPED_ID])
    assert [d.DiskSize for d in resp.InstanceSet[0].DataDisks] == [200, 500]


def test_describe_instances_status(emu: EmulatorHandle) -> None:
    assert _status(_cvm(emu), STOPPED_ID) == "STOPPED"


def test_unknown_action_is_refused(emu: EmulatorHandle) -> None:
    cred = Credential(DEFAULT_SECRET_ID, DEFAULT_SECRET_KEY)
    client = CommonClient("cvm", "2017-03-12", cred, DEFAULT_REGION, _profile(emu))
    assert _code(client.call_json, "TerminateInstances", {"InstanceIds": [DEFAULT_INSTANCE_ID]}) == "InvalidAction"
    wrong_version = CommonClient("cvm", "2099-01-01", cred, DEFAULT_REGION, _profile(emu))
    assert _code(wrong_version.call_json, "DescribeInstances", {}) == "NoSuchVersion"


# -- authentication -------------------------------------------------------------------------------
def test_a_second_configured_key_pair_works(emu: EmulatorHandle) -> None:
    assert _describe(_cvm(emu, "AKIDsecondKEY000000000000000000000000", "second-key")).TotalCount == 3


def test_wrong_secret_key_is_a_signature_failure(emu: EmulatorHandle) -> None:
    client = _cvm(emu, secret_key="not-the-key")
    assert _code(_describe, client, [DEFAULT_INSTANCE_ID]) == "AuthFailure.SignatureFailure"
    call = emu.calls()[-1]
    assert (call.action, call.error, call.instance_id) == ("DescribeInstances", "AuthFailure.SignatureFailure",
                                                           DEFAULT_INSTANCE_ID)


def test_unknown_secret_id(emu: EmulatorHandle) -> None:
    assert _code(_describe, _cvm(emu, secret_id="AKIDnobody"), None) == "AuthFailure.SecretIdNotFound"


@pytest.mark.parametrize("skew, expected", [(-360, "AuthFailure.SignatureExpire"), (360, "AuthFailure.SignatureExpire"),
                                            (-240, None)])
def test_request_timestamp_must_be_within_five_minutes(emu: EmulatorHandle, monkeypatch: pytest.MonkeyPatch,
                                                       skew: int, expected: str | None) -> None:
    real = time.time
    # Only the SDK's clock is skewed; the emulator (same process) keeps the real one.
    monkeypatch.setattr(abstract_client, "time", SimpleNamespace(time=lambda: real() + skew))
    if expected:
        assert _code(_describe, _cvm(emu), None) == expected
    else:
        assert _describe(_cvm(emu)).TotalCount == 3


# -- rescue mode state machine ------------------------------------------------------------------------
def test_enter_and_exit_rescue_mode(emu: EmulatorHandle) -> None:
    client = _cvm(emu)
    resp = _enter(client, DEFAULT_INSTANCE_ID, StopType="SOFT_FIRST")
    assert resp.RequestId
    assert _status(client, DEFAULT_INSTANCE_ID) == "ENTER_RESCUE_MODE"
    assert _code(_enter, client, DEFAULT_INSTANCE_ID) == "UnsupportedOperation.InstanceStateEnterRescueMode"
    assert _code(_exit, client, DEFAULT_INSTANCE_ID) == "UnsupportedOperation.InstanceStateEnterRescueMode"
    started = time.monotonic()
    _wait(client, DEFAULT_INSTANCE_ID, "RESCUE_MODE")
    assert time.monotonic() - started <= DELAY + 1.0
    inst = _describe(client, [DEFAULT_INSTANCE_ID]).InstanceSet[0]
    assert (inst.LatestOperation, inst.LatestOperationState, inst.LatestOperationRequestId) == (
        "EnterRescueMode", "SUCCESS", resp.RequestId)
    assert _code(_enter, client, DEFAULT_INSTANCE_ID) == "UnsupportedOperation.InstanceStateRescueMode"

    _exit(client, DEFAULT_INSTANCE_ID)
    assert _status(client, DEFAULT_INSTANCE_ID) == "EXIT_RESCUE_MODE"
    assert _code(_exit, client, DEFAULT_INSTANCE_ID) == "UnsupportedOperation.InstanceStateExitRescueMode"
    _wait(client, DEFAULT_INSTANCE_ID, "RUNNING")
    assert _code(_exit, client, DEFAULT_INSTANCE_ID) == "UnsupportedOperation.InstanceStateRunning"


def test_a_stopped_instance_enters_rescue_mode(emu: EmulatorHandle) -> None:
    client = _cvm(emu)
    assert _code(_exit, client, STOPPED_ID) == "UnsupportedOperation.InstanceStateStopped"
    _enter(client, STOPPED_ID, StopType="HARD")
    _wait(client, STOPPED_ID, "RESCUE_MODE")


@pytest.mark.parametrize("state, code", [
    ("STOPPING", "UnsupportedOperation.InstanceStateStopping"),
    ("REBOOTING", "UnsupportedOperation.InstanceStateRebooting"),
    ("SHUTDOWN", "UnsupportedOperation.InstanceStateShutdown"),
    ("TERMINATING", "UnsupportedOperation.InstanceStateTerminating"),
])
def test_enter_rescue_mode_from_other_states(emu: EmulatorHandle, state: str, code: str) -> None:
    emu.set_instance_state(DEFAULT_INSTANCE_ID, state)
    assert _code(_enter, _cvm(emu), DEFAULT_INSTANCE_ID) == code


@pytest.mark.parametrize("instance_id, password", [
    (DEFAULT_INSTANCE_ID, "short1A"),                 # 7 characters
    (DEFAULT_INSTANCE_ID, "alllowercaseletters"),     # one class
    (DEFAULT_INSTANCE_ID, "/Starts0WithSlash"),
    (DEFAULT_INSTANCE_ID, "x" * 29 + "A1"),           # 31 characters
    (DEFAULT_INSTANCE_ID, "Пароль12345"),             # not ASCII
    (WIN_ID, "windowspassword12"),                    # Windows: three classes needed ...
    (WIN_ID, "Pa55word!"),                            # ... and 12 characters
])
def test_enter_rescue_mode_checks_the_password(emu: EmulatorHandle, instance_id: str, password: str) -> None:
    assert _code(_enter, _cvm(emu), instance_id, password) == "InvalidPassword"
    assert emu.instance_state(instance_id) == "RUNNING"


def test_enter_rescue_mode_accepts_good_passwords(emu: EmulatorHandle) -> None:
    _enter(_cvm(emu), DEFAULT_INSTANCE_ID, "lowercase123")
    _enter(_cvm(emu), WIN_ID, "Windows-Pass1")


@pytest.mark.filterwarnings("ignore:parameter `ForceStop` is deprecated:DeprecationWarning")
def test_enter_rescue_mode_parameter_errors(emu: EmulatorHandle) -> None:
    client = _cvm(emu)
    assert _code(_enter, client, DEFAULT_INSTANCE_ID, StopType="GENTLY") == "InvalidParameterValue"
    assert _code(_enter, client, DEFAULT_INSTANCE_ID, StopType="SOFT", ForceStop=True) == "InvalidParameter"
    assert _code(_enter, client, "ins-nothere1") == "InvalidInstanceId.NotFound"
    assert _code(_enter, client, "nonsense") == "InvalidInstanceId.Malformed"
    assert _code(_enter, _cvm(emu, region="ap-shanghai"), DEFAULT_INSTANCE_ID) == "InvalidInstanceId.NotFound"


# -- MSP ------------------------------------------------------------------------------------------------
def _register(client: msp_client.MspClient, name: str = "migrate web-1") -> str:
    req = msp.RegisterMigrationTaskRequest()
    req.TaskType, req.TaskName, req.ServiceSupplier, req.MigrateClass = "host", name, "cvmigrate", "host:cvm"
    src, dst = msp.SrcInfo(), msp.DstInfo()
    src.Ip = "198.51.100.7"
    dst.Region, dst.InstanceId = DEFAULT_REGION, DEFAULT_INSTANCE_ID
    req.SrcInfo, req.DstInfo = src, dst
    return client.RegisterMigrationTask(req).TaskId


def _modify(client: msp_client.MspClient, task_id: str, status: str) -> None:
    req = msp.ModifyMigrationTaskStatusRequest()
    req.TaskId, req.Status = task_id, status
    client.ModifyMigrationTaskStatus(req)


def _describe_task(client: msp_client.MspClient, task_id: str) -> list[str]:
    req = msp.DescribeMigrationTaskRequest()
    req.TaskId = task_id
    return [s.Status for s in client.DescribeMigrationTask(req).TaskStatus]


def test_msp_register_modify_describe(emu: EmulatorHandle) -> None:
    client = _msp(emu)
    task_id = _register(client)
    assert task_id.startswith("msp-")
    _modify(client, task_id, "migrating")
    _modify(client, task_id, "finish")
    assert _describe_task(client, task_id) == ["unstart", "migrating", "finish"]
    assert emu.tasks()[task_id]["DstInfo"]["InstanceId"] == DEFAULT_INSTANCE_ID
    assert _code(_modify, client, task_id, "done") == "InvalidParameterValue"
    assert _code(_describe_task, client, "msp-nothere") == "InvalidParameterValue"
    assert [c.task_id for c in emu.calls("RegisterMigrationTask")] == [task_id]


# -- fault injection and the call log ------------------------------------------------------------------------
def test_injected_throttling_hits_the_next_n_calls(emu: EmulatorHandle) -> None:
    emu.inject("DescribeInstancesStatus", error="RequestLimitExceeded", count=2)
    client = _cvm(emu)
    assert _code(_status, client, DEFAULT_INSTANCE_ID) == "RequestLimitExceeded"
    assert _describe(client).TotalCount == 3  # other actions are unaffected
    assert _code(_status, client, DEFAULT_INSTANCE_ID) == "RequestLimitExceeded"
    assert _status(client, DEFAULT_INSTANCE_ID) == "RUNNING"
    assert [c.error for c in emu.calls("DescribeInstancesStatus")] == ["RequestLimitExceeded", "RequestLimitExceeded",
                                                                       None]


def test_seeded_random_internal_errors_are_reproducible() -> None:
    def outcomes() -> list[str | None]:
        config = _config()
        config["faults"] = [{"action": "*", "error": "InternalError", "probability": 0.5, "seed": 7}]
        with start_emulator(config) as handle:
            client = _cvm(handle)
            for _ in range(12):
                try:
                    _describe(client)
                except TencentCloudSDKException as exc:
                    assert exc.get_code() == "InternalError"
            return [c.error for c in handle.calls()]

    first = outcomes()
    assert first == outcomes()
    assert "InternalError" in first and None in first


def test_slow_responses(emu: EmulatorHandle) -> None:
    emu.inject("DescribeInstances", delay=0.3, count=1)
    started = time.monotonic()
    _describe(_cvm(emu))
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    _describe(_cvm(emu))
    assert time.monotonic() - started < 0.3


def test_lost_request_and_lost_answer(emu: EmulatorHandle) -> None:
    client = _cvm(emu)
    emu.inject("EnterRescueMode", disconnect="before", count=1)
    assert _code_no_request_id(_enter, client, DEFAULT_INSTANCE_ID) == "ClientNetworkError"
    assert emu.instance_state(DEFAULT_INSTANCE_ID) == "RUNNING"  # the action never ran
    emu.inject("EnterRescueMode", disconnect="after", count=1)
    assert _code_no_request_id(_enter, client, DEFAULT_INSTANCE_ID) == "ClientNetworkError"
    assert emu.instance_state(DEFAULT_INSTANCE_ID) == "ENTER_RESCUE_MODE"  # it ran; the answer was lost
    assert [c.error for c in emu.calls("EnterRescueMode")] == ["(disconnect-before)", "(disconnect-after)"]


def test_a_configured_disconnect_true_loses_the_request() -> None:
    """A config file's `"disconnect": true` means "before": the request is lost and the action never runs."""
    config = _config()
    config["faults"] = [{"action": "EnterRescueMode", "disconnect": True, "count": 1}]
    with start_emulator(config) as handle:
        assert _code_no_request_id(_enter, _cvm(handle), DEFAULT_INSTANCE_ID) == "ClientNetworkError"
        assert handle.instance_state(DEFAULT_INSTANCE_ID) == "RUNNING"
        assert [c.error for c in handle.calls("EnterRescueMode")] == ["(disconnect-before)"]


def _code_no_request_id(fn: Any, *args: Any) -> str:
    with pytest.raises(TencentCloudSDKException) as info:
        fn(*args)
    return info.value.get_code()


def test_call_log_matches_request_ids_and_never_holds_the_password(emu: EmulatorHandle,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="cvmigrate")
    resp = _enter(_cvm(emu), DEFAULT_INSTANCE_ID, "Secret-Rescue-99")
    (call,) = emu.calls("EnterRescueMode")
    assert (call.request_id, call.instance_id, call.error, call.secret_id) == (
        resp.RequestId, DEFAULT_INSTANCE_ID, None, DEFAULT_SECRET_ID)
    assert call.time <= time.time()
    assert "Secret-Rescue-99" not in caplog.text
    assert DEFAULT_SECRET_KEY not in caplog.text


# -- persistence ------------------------------------------------------------------------------------------------
def test_state_file_survives_a_restart(tmp_path: Path) -> None:
    state_file = tmp_path / "cloud.json"
    with start_emulator(_config(), state_file=state_file) as first:
        _enter(_cvm(first), DEFAULT_INSTANCE_ID)
        task_id = _register(_msp(first))
    saved = state_file.read_text()
    assert "Migrate2Tencent!" not in saved and DEFAULT_SECRET_KEY not in saved
    assert not list(tmp_path.glob("*.tmp")), "atomic writes leave no temp files"

    time.sleep(DELAY)  # the transition completes while the emulator is down
    with start_emulator(_config(), state_file=state_file) as second:
        assert _status(_cvm(second), DEFAULT_INSTANCE_ID) == "RESCUE_MODE"
        assert _describe_task(_msp(second), task_id) == ["unstart"]
        assert _register(_msp(second), "second") != task_id
        actions = [c.action for c in second.calls()]
        assert actions[:2] == ["EnterRescueMode", "RegisterMigrationTask"]
        assert [c.seq for c in second.calls()] == list(range(1, len(actions) + 1))


def test_state_file_of_an_unknown_version_is_refused(tmp_path: Path) -> None:
    state_file = tmp_path / "cloud.json"
    state_file.write_text(json.dumps({"version": 99}))
    with pytest.raises(ValueError, match="format version"):
        start_emulator(_config(), state_file=state_file)


# -- the `cvmigrate emulator` process -----------------------------------------------------------------------------
def test_cli_subprocess_with_port_file_and_state(tmp_path: Path) -> None:
    port_file, state_file = tmp_path / "port", tmp_path / "state.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cvmigrate", "--log-level", "3", "emulator", "--listen", "127.0.0.1:0",
         "--port-file", str(port_file), "--state", str(state_file), "--enter-delay", str(DELAY)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 10
        while not port_file.exists():
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "no port file"
            time.sleep(0.05)
        port = int(port_file.read_text())
        handle_like = SimpleNamespace(endpoint=f"http://127.0.0.1:{port}")
        client = _cvm(handle_like)  # type: ignore[arg-type]
        _enter(client, DEFAULT_INSTANCE_ID)
        _wait(client, DEFAULT_INSTANCE_ID, "RESCUE_MODE")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err.decode()
    assert DEFAULT_SECRET_KEY not in err.decode() and "Migrate2Tencent!" not in err.decode()
    saved = json.loads(state_file.read_text())
    assert [c["action"] for c in saved["calls"]][0] == "EnterRescueMode"
    assert saved["instances"][0]["InstanceState"] in ("ENTER_RESCUE_MODE", "RESCUE_MODE")
