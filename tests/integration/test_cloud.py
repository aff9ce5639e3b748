"""The cloud layer (controller/cloud.py) against the emulator: real SDK, real HTTP, port 0."""
from __future__ import annotations

import logging
import pickle
import random
import time
from types import SimpleNamespace
from typing import Any

import pytest
from tencentcloud.common import abstract_client
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException

from cvmigrate.common.errors import CloudError, ConfigError, StageTimeout
from cvmigrate.common.rpc import RetryPolicy, call_with_retry
from cvmigrate.controller.cloud import (
    ClockSkewError,
    CloudAuthError,
    CloudClient,
    CloudTransientError,
    Credentials,
    InstanceInfo,
    InstanceNotFound,
    is_retryable_code,
    load_credentials,
    parse_endpoint,
    redact_url,
)
from cvmigrate.controller.emulator import (
    DEFAULT_INSTANCE_ID,
    DEFAULT_REGION,
    DEFAULT_SECRET_ID,
    DEFAULT_SECRET_KEY,
    EmulatorHandle,
    start_emulator,
)
from tests.helpers.cloudemu import cloud_client

PASSWORD = "Rescue-Pass-2024"
FAST = RetryPolicy(max_attempts=5, base_delay=0.01, max_delay=0.04, max_total=5.0)


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)
        time.sleep(seconds)


def _client(emu: EmulatorHandle, *, retry: RetryPolicy = FAST, sleep: Any = None, **kwargs: Any) -> CloudClient:
    """``kwargs``: key, secret_id (the emulator's default ones otherwise), CloudClient's own options."""
    return cloud_client(emu.endpoint, retry=retry, sleep=time.sleep if sleep is None else sleep,
                        rng=random.Random(1), **kwargs)


def _errors(emu: EmulatorHandle, action: str) -> list[str | None]:
    return [c.error for c in emu.calls(action)]


# -- the calls -------------------------------------------------------------------------------------------
def test_describe_instance(emu: EmulatorHandle) -> None:
    assert _client(emu).describe_instance(DEFAULT_INSTANCE_ID) == InstanceInfo(
        instance_id=DEFAULT_INSTANCE_ID, state="RUNNING", os_name="Ubuntu Server 22.04 LTS 64bit",
        system_disk_gb=50, data_disks=((1, 100),), private_ips=("10.0.0.12",), public_ips=("203.0.113.10",),
        vpc_id="vpc-emu00001", subnet_id="subnet-emu00001", zone="ap-guangzhou-3", instance_type="S5.MEDIUM4",
        name="cvmigrate-target", system_disk_type="CLOUD_PREMIUM")


def test_missing_instance(emu: EmulatorHandle) -> None:
    client = _client(emu)
    with pytest.raises(InstanceNotFound) as info:
        client.describe_instance("ins-nothere1")
    assert info.value.code == "InvalidInstanceId.NotFound" and info.value.request_id
    with pytest.raises(InstanceNotFound):
        client.instance_status("ins-nothere1")
    with pytest.raises(InstanceNotFound):
        client.enter_rescue_mode("ins-nothere1", PASSWORD)


def test_the_controllers_flow(emu: EmulatorHandle) -> None:
    client = _client(emu)
    client.check_credentials()
    client.enter_rescue_mode(DEFAULT_INSTANCE_ID, PASSWORD)
    assert client.instance_status(DEFAULT_INSTANCE_ID) == "ENTER_RESCUE_MODE"
    assert client.wait_for_state(DEFAULT_INSTANCE_ID, "RESCUE_MODE", timeout=5, poll=0.05) == "RESCUE_MODE"
    info = client.describe_instance(DEFAULT_INSTANCE_ID)
    assert (info.latest_operation, info.latest_operation_state) == ("EnterRescueMode", "SUCCESS")
    task_id = client.register_migration_task("web-1 -> ins-cvmemu01", src_ip="198.51.100.7",
                                             dst_instance_id=DEFAULT_INSTANCE_ID)
    client.modify_migration_task_status(task_id, "migrating")
    client.exit_rescue_mode(DEFAULT_INSTANCE_ID)
    assert client.wait_for_state(DEFAULT_INSTANCE_ID, ["RUNNING"], timeout=5, poll=0.05) == "RUNNING"
    client.modify_migration_task_status(task_id, "finish")
    task = client.describe_migration_task(task_id)
    assert task.status == "finish" and [h.status for h in task.history] == ["unstart", "migrating", "finish"]
    assert emu.tasks()[task_id]["SrcInfo"]["Ip"] == "198.51.100.7"
    rescue_calls = [c.action for c in emu.calls() if c.action in ("EnterRescueMode", "ExitRescueMode")]
    assert rescue_calls == ["EnterRescueMode", "ExitRescueMode"]
    assert all(c.error is None for c in emu.calls())


def test_entering_twice_is_refused_by_the_cloud(emu: EmulatorHandle) -> None:
    client = _client(emu)
    client.enter_rescue_mode(DEFAULT_INSTANCE_ID, PASSWORD)
    client.wait_for_state(DEFAULT_INSTANCE_ID, "RESCUE_MODE", timeout=5, poll=0.05)
    with pytest.raises(CloudError) as info:
        client.enter_rescue_mode(DEFAULT_INSTANCE_ID, PASSWORD)
    assert info.value.code == "UnsupportedOperation.InstanceStateRescueMode"
    assert _errors(emu, "EnterRescueMode") == [None, "UnsupportedOperation.InstanceStateRescueMode"]


def test_wait_for_state_times_out_or_sees_an_unexpected_state(emu: EmulatorHandle) -> None:
    client = _client(emu)
    with pytest.raises(StageTimeout, match="still RUNNING"):
        client.wait_for_state(DEFAULT_INSTANCE_ID, "RESCUE_MODE", timeout=0.2, poll=0.05)
    with pytest.raises(CloudError, match="went to RUNNING"):
        client.wait_for_state(DEFAULT_INSTANCE_ID, "RESCUE_MODE", timeout=5, poll=0.05, unexpected=["RUNNING"])


def test_local_parameter_checks(emu: EmulatorHandle) -> None:
    client = _client(emu)
    with pytest.raises(ConfigError):
        client.enter_rescue_mode(DEFAULT_INSTANCE_ID, PASSWORD, stop_type="GENTLY")
    with pytest.raises(ConfigError):
        client.modify_migration_task_status("msp-00000001", "done")
    assert emu.calls() == []


# -- retries ------------------------------------------------------------------------------------------------------
def test_throttling_is_retried_with_capped_jittered_backoff(emu: EmulatorHandle) -> None:
    emu.inject("DescribeInstances", error="RequestLimitExceeded", count=3)
    sleeps = Sleeps()
    assert _client(emu, sleep=sleeps).describe_instance(DEFAULT_INSTANCE_ID).state == "RUNNING"
    assert _errors(emu, "DescribeInstances") == ["RequestLimitExceeded"] * 3 + [None]
    assert len(sleeps) == 3 and all(FAST.base_delay / 2 <= s <= FAST.max_delay for s in sleeps)


def test_internal_errors_are_retried(emu: EmulatorHandle) -> None:
    emu.inject("EnterRescueMode", error="InternalError", count=2)
    _client(emu).enter_rescue_mode(DEFAULT_INSTANCE_ID, PASSWORD)
    assert _errors(emu, "EnterRescueMode") == ["InternalError", "InternalError", None]
    assert emu.instance_state(DEFAULT_INSTANCE_ID) == "ENTER_RESCUE_MODE"


def test_retries_run_out(emu: EmulatorHandle) -> None:
    emu.inject("DescribeInstancesStatus", error="RequestLimitExceeded")
    with pytest.raises(CloudTransientError) as info:
        _client(emu).instance_status(DEFAULT_INSTANCE_ID)
    assert info.value.code == "RequestLimitExceeded" and info.value.retryable
    assert info.value.action == "DescribeInstancesStatus" and info.value.request_id
    assert len(emu.calls("DescribeInstancesStatus")) == FAST.max_attempts


def test_a_lost_request_is_retried(emu: EmulatorHandle) -> None:
    emu.inject("DescribeInstances", disconnect="before", count=2)
    assert _client(emu).describe_instance(DEFAULT_INSTANCE_ID).instance_id == DEFAULT_INSTANCE_ID
    assert _errors(emu, "DescribeInstances") == ["(disconnect-before)", "(disconnect-before)", None]


def test_a_lost_answer_to_enter_rescue_mode_is_not_a_failure(emu: EmulatorHandle) -> None:
    emu.inject("EnterRescueMode", disconnect="after", count=1)
    client = _client(emu)
    client.enter_rescue_mode(DEFAULT_INSTANCE_ID, PASSWORD)
    assert _errors(emu, "EnterRescueMode") == ["(disconnect-after)",
                                               "UnsupportedOperation.InstanceStateEnterRescueMode"]
    client.wait_for_state(DEFAULT_INSTANCE_ID, "RESCUE_MODE", timeout=5, poll=0.05)
    emu.inject("ExitRescueMode", disconnect="after", count=1)
    client.exit_rescue_mode(DEFAULT_INSTANCE_ID)
    assert _errors(emu, "ExitRescueMode") == ["(disconnect-after)", "UnsupportedOperation.InstanceStateExitRescueMode"]


def test_an_unreachable_endpoint_is_a_transient_network_error() -> None:
    handle = start_emulator()
    endpoint = handle.endpoint
    handle.stop()
    client = CloudClient(Credentials(DEFAULT_SECRET_ID, DEFAULT_SECRET_KEY), DEFAULT_REGION, endpoint=endpoint,
                         retry=RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.01), timeout=2)
    with pytest.raises(CloudTransientError) as info:
        client.instance_status(DEFAULT_INSTANCE_ID)
    assert info.value.code == "ClientNetworkError"


@pytest.mark.parametrize("key, secret_id, code", [
    ("wrong-key", DEFAULT_SECRET_ID, "AuthFailure.SignatureFailure"),
    (DEFAULT_SECRET_KEY, "AKIDnobody", "AuthFailure.SecretIdNotFound"),
])
def test_auth_failures_are_not_retried(emu: EmulatorHandle, key: str, secret_id: str, code: str) -> None:
    sleeps = Sleeps()
    with pytest.raises(CloudAuthError) as info:
        _client(emu, key=key, secret_id=secret_id, sleep=sleeps).check_credentials()
    assert info.value.code == code and info.value.exit_code == 5
    assert "TENCENTCLOUD_SECRET_ID" in str(info.value)
    assert len(emu.calls()) == 1 and sleeps == []


def test_invalid_parameter_errors_are_not_retried(emu: EmulatorHandle) -> None:
    emu.inject("ExitRescueMode", error="InvalidParameterValue", message="injected", count=1)
    with pytest.raises(CloudError) as info:
        _client(emu).exit_rescue_mode(DEFAULT_INSTANCE_ID)
    assert info.value.code == "InvalidParameterValue" and not info.value.retryable
    with pytest.raises(CloudError) as info:
        _client(emu).enter_rescue_mode(DEFAULT_INSTANCE_ID, "weak")
    assert info.value.code == "InvalidPassword"
    assert len(emu.calls()) == 2


def test_signature_expire_is_explained_as_a_clock_problem(emu: EmulatorHandle, monkeypatch: pytest.MonkeyPatch) -> None:
    real = time.time
    monkeypatch.setattr(abstract_client, "time", SimpleNamespace(time=lambda: real() - 600))  # only the SDK's clock
    with pytest.raises(ClockSkewError) as info:
        _client(emu).describe_instance(DEFAULT_INSTANCE_ID)
    message = str(info.value)
    assert info.value.code == "AuthFailure.SignatureExpire"
    assert "clock" in message and "chronyc makestep" in message and "timedatectl set-ntp true" in message
    assert len(emu.calls()) == 1


@pytest.mark.parametrize("code, retry", [
    ("RequestLimitExceeded", True), ("RequestLimitExceeded.UinLimitExceeded", True), ("InternalError", True),
    ("InternalError.Unknown", True), ("ClientNetworkError", True), ("ServerNetworkError", True),
    ("AuthFailure.SignatureFailure", False), ("AuthFailure.SignatureExpire", False), ("InvalidParameter", False),
    ("InvalidParameterValue.LimitExceeded", False), ("UnsupportedOperation.InstanceStateRescueMode", False),
    (None, False),
])
def test_retry_classification(code: str | None, retry: bool) -> None:
    assert is_retryable_code(code) is retry


def test_retry_policy_bounds() -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=30.0)
    rng = random.Random(3)
    for n in range(20):
        ceiling = min(30.0, 0.5 * 2 ** n)
        assert ceiling / 2 <= policy.delay(n, rng) <= ceiling
    calls: list[int] = []

    def always_fails(attempt: int) -> None:
        calls.append(attempt)
        raise CloudTransientError("x", code="InternalError")

    fake_now = [0.0]
    with pytest.raises(CloudTransientError):
        call_with_retry(always_fails, policy=RetryPolicy(max_attempts=100, base_delay=10, max_delay=10, max_total=35),
                        retryable=lambda e: True, sleep=lambda s: fake_now.__setitem__(0, fake_now[0] + s),
                        clock=lambda: fake_now[0])
    assert 3 <= len(calls) <= 8 and fake_now[0] <= 35  # the time budget, not the attempt count, ended it


# -- credentials, endpoint, proxy, clock ------------------------------------------------------------------------------
def test_credentials_never_show_the_key() -> None:
    creds = Credentials("AKIDabcdefgh12345678", "super-secret-key", source="user.json")
    assert "super-secret-key" not in repr(creds) and "super-secret-key" not in str(creds)
    assert creds.get_credential_info() == ("AKIDabcdefgh12345678", "super-secret-key", None)
    with pytest.raises(TypeError):
        pickle.dumps(creds)
    client = CloudClient(creds, DEFAULT_REGION)
    assert "super-secret-key" not in repr(client)


def test_load_credentials_order() -> None:
    env = {"TENCENTCLOUD_SECRET_ID": "AKIDenv", "TENCENTCLOUD_SECRET_KEY": "env-key"}
    chain = lambda: pytest.fail("the SDK chain must not be consulted")  # noqa: E731
    creds = load_credentials("AKIDjson", "json-key", environ=env, sdk_chain=chain)
    assert creds.get_credential_info()[:2] == ("AKIDjson", "json-key")
    from_env = load_credentials(None, None, environ=env, sdk_chain=chain)
    assert from_env.source == "environment" and from_env.get_credential_info()[:2] == ("AKIDenv", "env-key")
    provider = SimpleNamespace(secret_id="AKIDrole", get_credential_info=lambda: ("AKIDrole", "role-key", "tok"))
    from_chain = load_credentials(environ={}, sdk_chain=lambda: provider)
    assert from_chain.get_credential_info() == ("AKIDrole", "role-key", "tok") and from_chain.source.startswith("sdk:")


@pytest.mark.parametrize("secret_id, secret_key, env, match", [
    ("AKIDjson", None, {}, "no SecretKey"),
    (None, "json-key", {}, "no SecretId"),
    (None, None, {"TENCENTCLOUD_SECRET_ID": "AKIDenv"}, "TENCENTCLOUD_SECRET_KEY"),
    ("AKID json", "key", {}, "spaces"),
])
def test_load_credentials_errors(secret_id: str | None, secret_key: str | None, env: dict[str, str],
                                 match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_credentials(secret_id, secret_key, environ=env, sdk_chain=lambda: None)


def test_no_credentials_anywhere() -> None:
    def chain() -> None:
        raise TencentCloudSDKException("ClientSideError", "no valid credentail.")

    with pytest.raises(ConfigError, match="no Tencent Cloud API key found"):
        load_credentials(environ={}, sdk_chain=chain)


@pytest.mark.parametrize("value, scheme, host", [
    ("http://127.0.0.1:1234", "http", "127.0.0.1:1234"),
    ("https://cvm.internal.tencentcloudapi.com/", "https", "cvm.internal.tencentcloudapi.com"),
    ("https://{service}.internal.tencentcloudapi.com", "https", "{service}.internal.tencentcloudapi.com"),
    ("cvm.tencentcloudapi.com", "https", "cvm.tencentcloudapi.com"),
    ("http://[::1]:8080", "http", "[::1]:8080"),
])
def test_parse_endpoint(value: str, scheme: str, host: str) -> None:
    endpoint = parse_endpoint(value)
    assert (endpoint.scheme, endpoint.host) == (scheme, host)


@pytest.mark.parametrize("value", ["ftp://x", "http://u:p@host", "http://host/path", "http://"])
def test_parse_endpoint_errors(value: str) -> None:
    with pytest.raises(ConfigError):
        parse_endpoint(value)


def test_service_placeholder_selects_the_host_per_service() -> None:
    client = CloudClient(Credentials("AKIDx", "k"), DEFAULT_REGION, endpoint="https://{service}.internal.tencentcloudapi.com")
    assert client._profile("cvm").httpProfile.endpoint == "cvm.internal.tencentcloudapi.com"
    assert client._profile("msp").httpProfile.endpoint == "msp.internal.tencentcloudapi.com"
    assert client._profile("msp").httpProfile.scheme == "https"


def test_requests_go_through_the_proxy(emu: EmulatorHandle) -> None:
    # The "API endpoint" does not resolve; only a proxy that forwards everything (the emulator
    # itself accepts absolute-URI proxy requests) can answer.  The signature covers that host.
    client = CloudClient(Credentials(DEFAULT_SECRET_ID, DEFAULT_SECRET_KEY), DEFAULT_REGION,
                         endpoint="http://cvm.api.invalid", proxy=emu.endpoint, retry=FAST, timeout=5)
    assert client.instance_status(DEFAULT_INSTANCE_ID) == "RUNNING"
    assert redact_url("http://user:pa55@proxy.example:3128") == "http://user:***@proxy.example:3128"
    with pytest.raises(ConfigError):
        CloudClient(Credentials("AKIDx", "k"), DEFAULT_REGION, proxy="socks5://proxy:1080")


def test_server_time_and_clock_skew(emu: EmulatorHandle) -> None:
    client = _client(emu)
    server = client.server_time()
    assert server is not None and abs(server - time.time()) < 3
    skew = client.clock_skew()
    assert skew is not None and abs(skew) < 3


def test_no_secret_in_any_log_line(emu: EmulatorHandle, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client = _client(emu)
    emu.inject("EnterRescueMode", error="InternalError", count=1)
    client.enter_rescue_mode(DEFAULT_INSTANCE_ID, PASSWORD)
    client.wait_for_state(DEFAULT_INSTANCE_ID, "RESCUE_MODE", timeout=5, poll=0.05)
    assert "EnterRescueMode" in caplog.text  # the call is logged ...
    assert PASSWORD not in caplog.text and DEFAULT_SECRET_KEY not in caplog.text  # ... its secrets are not
