"""The controller's one door to Tencent Cloud: CVM 2017-03-12 and MSP 2018-03-19 through the official SDK.

Why a small interface: the controller needs eight calls, and each has rules
worth keeping in one place -- credentials that never show up in a repr or a
log line, an endpoint override (Tencent's internal endpoints for admin boxes
inside a VPC, our emulator for tests and the demo), a proxy, retries with
capped jittered backoff on throttling, internal and network errors but never
on authentication or parameter errors, SDK exceptions turned into the
project's ``CloudError`` with action, code and RequestId, and a clock-skew
failure explained as such with the fix.  Everything above this module deals
in plain dataclasses (``InstanceInfo``, ``MigrationTaskInfo``), not SDK models.

Retried calls that change state are made safe for the case where an earlier
attempt did land but its answer was lost: EnterRescueMode retried after a
network or internal error accepts "already entering / in rescue mode" as
success, and ExitRescueMode likewise.
"""
from __future__ import annotations

import email.utils
import logging
import os
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from tencentcloud.common.credential import DefaultCredentialProvider
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException
from tencentcloud.common.profile.client_profile import ClientProfile
from tencentcloud.common.profile.http_profile import HttpProfile
from tencentcloud.cvm.v20170312 import cvm_client
from tencentcloud.cvm.v20170312 import models as cvm_models
from tencentcloud.msp.v20180319 import models as msp_models
from tencentcloud.msp.v20180319 import msp_client

from cvmigrate.common.errors import CloudError, ConfigError, StageTimeout
from cvmigrate.common.rpc import RetryPolicy, call_with_retry

logger = logging.getLogger(__name__)

#: The SDK logs whole request bodies at DEBUG (EnterRescueMode carries the
#: rescue password); its logger is held at INFO whenever a CloudClient exists.
SDK_LOGGER = "tencentcloud_sdk_common"

NETWORK_ERROR_CODES = frozenset({"ClientNetworkError", "ServerNetworkError"})
RETRYABLE_PREFIXES = ("RequestLimitExceeded", "InternalError")
NEVER_RETRY_PREFIXES = ("AuthFailure", "InvalidParameter")

CLOCK_FIX = ("the local clock is more than 5 minutes off; sync it and retry: "
             "`chronyc makestep` (chrony), or `timedatectl set-ntp true`, or `ntpdate -u ntp.tencentyun.com`")
CREDENTIALS_FIX = ("check SecretId/SecretKey in user.json or TENCENTCLOUD_SECRET_ID/TENCENTCLOUD_SECRET_KEY "
                   "(keys are managed at https://console.cloud.tencent.com/cam/capi)")

MSP_STATUSES = ("unstart", "migrating", "finish", "fail")
#: DescribeRegions answers the same list in every region; it is asked in one every account has.
REGION_LIST_REGION = "ap-guangzhou"
STOP_TYPES = ("SOFT", "HARD", "SOFT_FIRST")


# -- errors ---------------------------------------------------------------------
class CloudTransientError(CloudError, retryable=True):
    """A Tencent Cloud call failed for a passing reason (throttling, internal or network error) and retries ran out."""


class CloudAuthError(CloudError, exit_code=5):
    """Tencent Cloud refused the credentials or the request signature."""


class ClockSkewError(CloudAuthError):
    """AuthFailure.SignatureExpire: the request timestamp is more than five minutes from Tencent Cloud's clock."""


class InstanceNotFound(CloudError):
    """The target instance does not exist in this region (or this account)."""


class CloudUnreachable(CloudTransientError, template="cannot reach the Tencent Cloud API ({action}): {message}",
                       exit_code=10):
    """The API endpoint could not be reached at all (DNS, proxy, TLS, refused, unreachable, timeout)."""


class UnknownRegion(ConfigError):
    """user.json's Region is not in the API's region list."""


#: (substring of the requests/urllib3 error text, what failed, what to do); first match wins.
_NETWORK_CAUSES: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (("407 Proxy Authentication", "ProxyError('Cannot connect to proxy.', OSError('Tunnel connection failed: 407"),
     "the proxy refused the credentials (407)", "fix Client.Net.Proxy.User/Password in client.json"),
    (("ProxyError",), "the HTTP proxy {proxy} did not answer or refused the connection",
     "check Client.Net.Proxy.Ip/Port in client.json and that the proxy runs (or set Client.Net.Mode to 0-2)"),
    (("NameResolutionError", "Failed to resolve", "Name or service not known", "nodename nor servname",
      "Temporary failure in name resolution"),
     "DNS lookup of {host} failed", "check the host name (--api-endpoint) and /etc/resolv.conf, or use a proxy "
     "(Client.Net.Mode 3)"),
    (("SSLError", "CERTIFICATE_VERIFY_FAILED", "certificate verify failed", "wrong version number"),
     "TLS with {host} failed (certificate not trusted, or not an HTTPS server)",
     "check the endpoint's scheme (http:// vs https://) and the system CA store"),
    (("Connection refused",), "{host} refused the connection",
     "check --api-endpoint (host and port) and that nothing blocks outgoing HTTPS"),
    (("Network is unreachable", "No route to host"), "{host} is unreachable (no route)",
     "check this host's network and routes, or set Client.Net.Mode 3 with a proxy"),
    (("timed out", "Timeout", "timeout"), "no answer from {host} in time",
     "check the firewall towards the endpoint, or set Client.Net.Mode 3 with a proxy"),
)


def explain_network_error(text: str, *, host: str, proxy: str | None) -> str:
    """One short sentence (what failed; what to do) for a requests/urllib3 connection error text.

    ``host`` is the endpoint's host[:port]; DNS messages name the host alone."""
    name = urlsplit(f"//{host}").hostname or host
    for needles, what, fix in _NETWORK_CAUSES:
        if any(n in text for n in needles):
            shown = name if what.startswith("DNS") else host
            return f"{what.format(host=shown, proxy=redact_url(proxy) if proxy else '(none)')}; {fix}"
    first = text.split("(Caused by", 1)[-1].strip(" ()")
    return f"{first[:200]}; check the network path to {host}"


def is_retryable_code(code: str | None) -> bool:
    """True for throttling, internal and network errors; never for AuthFailure.* or InvalidParameter*."""
    code = code or ""
    if code.startswith(NEVER_RETRY_PREFIXES):
        return False
    return code in NETWORK_ERROR_CODES or code.startswith(RETRYABLE_PREFIXES)


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, CloudError) and is_retryable_code(exc.code)


# -- credentials ------------------------------------------------------------------
class Credentials:
    """A SecretId/SecretKey pair (plus optional token) in the shape the SDK signs with.

    The SDK only calls ``get_credential_info()``; the key lives in a private
    attribute and ``repr``/``str`` show the SecretId's head and the source,
    never the key.  ``provider`` is set when the pair comes from the SDK's
    credential chain (CVM role, OIDC), whose keys rotate and are fetched per call.
    """

    __slots__ = ("secret_id_hint", "source", "_secret_id", "_secret_key", "_token", "_provider")

    def __init__(self, secret_id: str = "", secret_key: str = "", token: str | None = None, *,
                 source: str = "explicit", provider: Any = None) -> None:
        if provider is None:
            for name, value in (("SecretId", secret_id), ("SecretKey", secret_key)):
                if not value or any(c.isspace() for c in value):
                    raise ConfigError(f"{name} from {source} is empty or contains spaces (a copy-paste slip?); "
                                      f"{CREDENTIALS_FIX}")
        self._secret_id, self._secret_key, self._token = secret_id, secret_key, token
        self._provider = provider
        self.source = source
        # A provider's SecretId is fetched lazily (it may need the network); it is not shown.
        self.secret_id_hint = (secret_id[:8] + "...") if secret_id else "?"

    def get_credential_info(self) -> tuple[str, str, str | None]:
        if self._provider is not None:
            # the SDK's credential providers (untyped) answer (SecretId, SecretKey, token or None)
            info: tuple[str, str, str | None] = self._provider.get_credential_info()
            return info
        return self._secret_id, self._secret_key, self._token

    @property
    def secret_id(self) -> str:
        return self.get_credential_info()[0]

    # The SDK's Credential exposes these names; keep them for code written against it.
    @property
    def secretId(self) -> str:  # SDK naming
        return self.secret_id

    @property
    def secretKey(self) -> str:  # SDK naming
        return self.get_credential_info()[1]

    def __repr__(self) -> str:
        return f"Credentials(secret_id={self.secret_id_hint!r}, source={self.source!r})"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("Credentials are not picklable (they would carry the secret key)")


def load_credentials(user_json_secret_id: str | None = None, user_json_secret_key: str | None = None, *,
                     environ: Mapping[str, str] | None = None,
                     sdk_chain: Callable[[], Any] | None = None) -> Credentials:
    """Credentials from user.json, else the environment, else the SDK's credential chain.

    Never from a command-line flag.  A half-filled pair in user.json is an
    error (naming the missing field), not a silent fall-through.
    """
    if user_json_secret_id or user_json_secret_key:
        if not user_json_secret_id:
            raise ConfigError(f"user.json has SecretKey but no SecretId; {CREDENTIALS_FIX}")
        if not user_json_secret_key:
            raise ConfigError(f"user.json has SecretId but no SecretKey; {CREDENTIALS_FIX}")
        return Credentials(user_json_secret_id, user_json_secret_key, source="user.json")
    env = os.environ if environ is None else environ
    sid, skey = env.get("TENCENTCLOUD_SECRET_ID"), env.get("TENCENTCLOUD_SECRET_KEY")
    if sid and skey:
        return Credentials(sid, skey, env.get("TENCENTCLOUD_SESSION_TOKEN") or None, source="environment")
    if sid or skey:
        missing = "TENCENTCLOUD_SECRET_KEY" if sid else "TENCENTCLOUD_SECRET_ID"
        raise ConfigError(f"{missing} is not set while its partner is; {CREDENTIALS_FIX}")
    chain = sdk_chain or (lambda: DefaultCredentialProvider().get_credentials())
    try:
        provider = chain()
    except Exception as exc:  # noqa: BLE001 - the SDK chain raises EnvironmentError (TKE_REGION), SDK errors, ...
        logger.debug("SDK credential chain: %r", exc)
        raise CredentialsMissing("no Tencent Cloud API key found in user.json, the environment or the SDK's "
                                 "profile/role chain; put SecretId and SecretKey in user.json, or export "
                                 "TENCENTCLOUD_SECRET_ID and TENCENTCLOUD_SECRET_KEY "
                                 "(keys: https://console.cloud.tencent.com/cam/capi)") from None
    return Credentials(source=f"sdk:{type(provider).__name__}", provider=provider)


class CredentialsMissing(ConfigError, exit_code=5):
    """No API key pair anywhere (user.json, environment, SDK chain)."""


# -- endpoint -----------------------------------------------------------------------
@dataclass(frozen=True)
class Endpoint:
    """Where API requests go: scheme and host[:port]; ``{service}`` in host becomes cvm / msp."""

    scheme: str
    host: str

    def host_for(self, service: str) -> str:
        return self.host.replace("{service}", service)

    def url_for(self, service: str) -> str:
        return f"{self.scheme}://{self.host_for(service)}/"


def parse_endpoint(value: str) -> Endpoint:
    """Parse an --api-endpoint value: ``http://127.0.0.1:1234``, ``https://{service}.internal.tencentcloudapi.com``,
    or a bare host (HTTPS)."""
    text = value.strip()
    if "://" not in text:
        text = "https://" + text
    parts = urlsplit(text.replace("{service}", "service-placeholder"))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"API endpoint {value!r}: expected http(s)://HOST[:PORT], e.g. https://cvm.internal.tencentcloudapi.com")
    if parts.username or parts.password or parts.query or parts.fragment or parts.path not in ("", "/"):
        raise ConfigError(f"API endpoint {value!r}: only scheme, host and port are allowed (no path, query or user)")
    return Endpoint(parts.scheme, parts.netloc.replace("service-placeholder", "{service}"))


def redact_url(url: str) -> str:
    """A URL with its password replaced, for log lines."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    port = f":{parts.port}" if parts.port else ""
    return parts._replace(netloc=f"{parts.username}:***@{parts.hostname}{port}").geturl()


# -- results ----------------------------------------------------------------------------
@dataclass(frozen=True)
class InstanceInfo:
    """What the controller needs to know about a CVM."""

    instance_id: str
    state: str
    os_name: str
    system_disk_gb: int
    data_disks: tuple[tuple[int, int], ...]  # (index 1.., size GB), in the order DescribeInstances lists them
    private_ips: tuple[str, ...]
    public_ips: tuple[str, ...]
    vpc_id: str
    subnet_id: str
    zone: str
    instance_type: str = ""
    name: str = ""
    system_disk_type: str = ""
    latest_operation: str | None = None
    latest_operation_state: str | None = None
    latest_operation_request_id: str | None = None
    ipv6_addresses: tuple[str, ...] = ()


@dataclass(frozen=True)
class MigrationTaskStatus:
    status: str
    progress: str
    update_time: str


@dataclass(frozen=True)
class MigrationTaskInfo:
    task_id: str
    status: str  # the latest one
    history: tuple[MigrationTaskStatus, ...]


def _instance_info(inst: Any) -> InstanceInfo:
    sysdisk = inst.SystemDisk
    vpc = inst.VirtualPrivateCloud
    return InstanceInfo(
        instance_id=inst.InstanceId,
        state=inst.InstanceState or "",
        os_name=inst.OsName or "",
        system_disk_gb=int(sysdisk.DiskSize or 0) if sysdisk else 0,
        system_disk_type=(sysdisk.DiskType or "") if sysdisk else "",
        data_disks=tuple((i, int(d.DiskSize or 0)) for i, d in enumerate(inst.DataDisks or [], start=1)),
        private_ips=tuple(inst.PrivateIpAddresses or ()),
        public_ips=tuple(inst.PublicIpAddresses or ()),
        vpc_id=(vpc.VpcId or "") if vpc else "",
        subnet_id=(vpc.SubnetId or "") if vpc else "",
        zone=(inst.Placement.Zone or "") if inst.Placement else "",
        instance_type=inst.InstanceType or "",
        name=inst.InstanceName or "",
        latest_operation=inst.LatestOperation,
        latest_operation_state=inst.LatestOperationState,
        latest_operation_request_id=inst.LatestOperationRequestId,
        ipv6_addresses=tuple(inst.IPv6Addresses or ()),
    )


# -- the client -------------------------------------------------------------------------
class CloudClient:
    """CVM and MSP calls for one account and region, with retries and error mapping."""

    def __init__(self, credentials: Credentials | Any, region: str, *, endpoint: str | None = None,
                 proxy: str | None = None, timeout: float = 30.0, retry: RetryPolicy | None = None,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None) -> None:
        if not region:
            raise ConfigError(f"Region is required (e.g. ap-guangzhou), not {region!r}")
        if proxy and urlsplit(proxy).scheme not in ("http", "https"):
            raise ConfigError(f"proxy {redact_url(proxy)!r}: expected http://[user:password@]host:port")
        self.credentials = credentials
        self.region = region
        self.endpoint = parse_endpoint(endpoint) if endpoint else None
        self.proxy = proxy
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self._sleep, self._clock, self._rng = sleep, clock, rng
        self._clients: dict[str, Any] = {}
        # Guard the rescue password: the SDK logs request bodies at DEBUG.
        sdk_logger = logging.getLogger(SDK_LOGGER)
        if sdk_logger.getEffectiveLevel() < logging.INFO:
            sdk_logger.setLevel(logging.INFO)
        logger.debug("cloud client: region=%s endpoint=%s proxy=%s credentials=%r", region,
                     self.endpoint.url_for("{service}") if self.endpoint else "default",
                     redact_url(proxy) if proxy else "none", credentials)

    def __repr__(self) -> str:
        return f"CloudClient(region={self.region!r}, endpoint={self.endpoint!r}, credentials={self.credentials!r})"

    # -- SDK plumbing ---------------------------------------------------------------
    def _profile(self, service: str) -> ClientProfile:
        http = HttpProfile(reqMethod="POST", reqTimeout=int(max(1, self.timeout)), proxy=self.proxy)
        if self.endpoint:
            http.protocol = http.scheme = self.endpoint.scheme
            http.endpoint = self.endpoint.host_for(service)
        return ClientProfile(signMethod="TC3-HMAC-SHA256", httpProfile=http, language="en-US")

    def _client(self, service: str) -> Any:
        if service not in self._clients:
            factory = {"cvm": cvm_client.CvmClient, "msp": msp_client.MspClient}[service]
            self._clients[service] = factory(self.credentials, self.region, self._profile(service))
        return self._clients[service]

    def _map_error(self, exc: TencentCloudSDKException, action: str) -> CloudError:
        code = exc.get_code() or "UnknownError"
        message = exc.get_message() or ""
        request_id = exc.get_request_id() or ""
        if code in NETWORK_ERROR_CODES:
            return CloudUnreachable(explain_network_error(message, host=self._host_of("cvm"), proxy=self.proxy),
                                    action=action, code=code, request_id=request_id)
        if code == "AuthFailure.SignatureExpire":
            skew = self.clock_skew()
            measured = f" (measured: local clock {skew:+.0f} s from the API server's)" if skew is not None else ""
            return ClockSkewError(f"{CLOCK_FIX}{measured}; server said: {message}",
                                  action=action, code=code, request_id=request_id)
        if code.startswith("AuthFailure") or code in ("InvalidCredential", "UnauthorizedOperation"):
            return CloudAuthError(f"{message}; {CREDENTIALS_FIX}", action=action, code=code, request_id=request_id)
        if code == "InvalidInstanceId.NotFound":
            return InstanceNotFound(message, action=action, code=code, request_id=request_id)
        if is_retryable_code(code):
            return CloudTransientError(message, action=action, code=code, request_id=request_id)
        return CloudError(message, action=action, code=code, request_id=request_id)

    def _host_of(self, service: str) -> str:
        return self.endpoint.host_for(service) if self.endpoint else f"{service}.tencentcloudapi.com"

    def _call(self, service: str, action: str, request: Any, *, subject: str | None = None,
              accept_after_ambiguous: Iterable[str] = ()) -> Any:
        """One API action with retries; ``accept_after_ambiguous`` lists error codes that mean
        "an earlier attempt already did it" and count as success after a lost answer."""
        accept = frozenset(accept_after_ambiguous)
        ambiguous = [False]
        method = getattr(self._client(service), action)

        def attempt(n: int) -> Any:
            try:
                resp = method(request)
            except TencentCloudSDKException as exc:
                err = self._map_error(exc, action)
                if ambiguous[0] and err.code in accept:
                    logger.info("cloud %s %s: %s after a lost answer: the earlier attempt took effect",
                                action, subject or "", err.code)
                    return None
                if err.code in NETWORK_ERROR_CODES or err.code.startswith("InternalError"):
                    ambiguous[0] = True
                logger.debug("cloud %s.%s %s attempt %d -> %s request_id=%s", service, action, subject or "-", n,
                             err.code, err.request_id or "-")
                raise err from None
            logger.debug("cloud %s.%s %s attempt %d -> OK request_id=%s", service, action, subject or "-", n,
                         getattr(resp, "RequestId", "-"))
            return resp

        return call_with_retry(attempt, policy=self.retry, retryable=_retryable,
                               describe=f"Tencent Cloud {action} {subject or ''}".rstrip(),
                               sleep=self._sleep, clock=self._clock, rng=self._rng)

    # -- CVM --------------------------------------------------------------------------
    def preflight(self) -> list[str]:
        """The first call of every command: DescribeRegions, once, without retrying a failed connection.

        Why first and without retries: a wrong endpoint, DNS, proxy or TLS
        setting, rejected keys or a mistyped Region are configuration errors;
        retrying them only delays the one line that says what to fix.  The
        call is signed, so it also proves the key pair; it is sent for a
        region every account has (the list does not depend on it), then
        user.json's Region is looked up in the answer.  Returns the region list.
        """
        req = cvm_models.DescribeRegionsRequest()
        client = cvm_client.CvmClient(self.credentials, REGION_LIST_REGION, self._profile("cvm"))
        try:
            resp = client.DescribeRegions(req)
        except TencentCloudSDKException as exc:
            raise self._map_error(exc, "DescribeRegions") from None
        regions = sorted(r.Region for r in resp.RegionSet or [] if r.Region)
        if self.region not in regions:
            import difflib

            close = difflib.get_close_matches(self.region, regions, n=1, cutoff=0.8)
            hint = f"did you mean {close[0]}?" if close else f"known regions: {', '.join(regions)}"
            raise UnknownRegion(f"Region {self.region!r} (user.json) is not a Tencent Cloud region; {hint} "
                                "(a region, not a zone: ap-guangzhou, not ap-guangzhou-3)")
        logger.debug("preflight: endpoint reachable, key accepted, region %s known (%d regions)", self.region,
                     len(regions))
        return regions

    def check_credentials(self) -> None:
        """Make the cheapest signed call; raises CloudAuthError / ClockSkewError when refused."""
        req = cvm_models.DescribeInstancesStatusRequest()
        req.Limit = 1
        self._call("cvm", "DescribeInstancesStatus", req)

    def describe_instance(self, instance_id: str) -> InstanceInfo:
        return _instance_info(self._one_instance("DescribeInstances", cvm_models.DescribeInstancesRequest(),
                                                 "InstanceSet", instance_id))

    def instance_status(self, instance_id: str) -> str:
        status = self._one_instance("DescribeInstancesStatus", cvm_models.DescribeInstancesStatusRequest(),
                                    "InstanceStatusSet", instance_id)
        state: str = status.InstanceState
        return state

    def _one_instance(self, action: str, req: Any, answer_set: str, instance_id: str) -> Any:
        """The entry for ``instance_id`` in the ``answer_set`` of the CVM ``action`` (``req``) asked about it
        alone; InstanceNotFound when the answer does not list it."""
        req.InstanceIds = [instance_id]
        resp = self._call("cvm", action, req, subject=instance_id)
        for item in getattr(resp, answer_set) or []:
            if item.InstanceId == instance_id:
                return item
        raise InstanceNotFound(f"instance {instance_id} does not exist in region {self.region} for this account; "
                               "check InstanceId and Region in user.json", action=action,
                               code="InvalidInstanceId.NotFound", request_id=resp.RequestId or "")

    def enter_rescue_mode(self, instance_id: str, password: str, *, stop_type: str = "SOFT_FIRST",
                          username: str | None = None) -> None:
        """Start EnterRescueMode (RUNNING/STOPPED -> ENTER_RESCUE_MODE -> RESCUE_MODE); does not wait."""
        if stop_type not in STOP_TYPES:
            raise ConfigError(f"stop type {stop_type!r}: use one of {', '.join(STOP_TYPES)}")
        req = cvm_models.EnterRescueModeRequest()
        req.InstanceId = instance_id
        req.Password = password
        req.StopType = stop_type
        if username:
            req.Username = username
        self._call("cvm", "EnterRescueMode", req, subject=instance_id,
                   accept_after_ambiguous=("UnsupportedOperation.InstanceStateEnterRescueMode",
                                           "UnsupportedOperation.InstanceStateRescueMode"))

    def exit_rescue_mode(self, instance_id: str) -> None:
        """Start ExitRescueMode (RESCUE_MODE -> EXIT_RESCUE_MODE -> RUNNING); does not wait."""
        req = cvm_models.ExitRescueModeRequest()
        req.InstanceId = instance_id
        self._call("cvm", "ExitRescueMode", req, subject=instance_id,
                   accept_after_ambiguous=("UnsupportedOperation.InstanceStateExitRescueMode",
                                           "UnsupportedOperation.InstanceStateRunning"))

    def wait_for_state(self, instance_id: str, wanted: str | Iterable[str], *, timeout: float, poll: float = 5.0,
                       unexpected: Iterable[str] = ()) -> str:
        """Poll until the instance is in one of ``wanted``; StageTimeout after ``timeout`` seconds,
        CloudError at once if it reaches a state in ``unexpected``."""
        targets = {wanted} if isinstance(wanted, str) else set(wanted)
        bad = set(unexpected)
        deadline = self._clock() + timeout
        last = ""
        while True:
            state = self.instance_status(instance_id)
            if state != last:
                logger.info("instance %s is %s (waiting for %s)", instance_id, state, "/".join(sorted(targets)))
                last = state
            if state in targets:
                return state
            if state in bad:
                raise CloudError(f"instance {instance_id} went to {state} while waiting for "
                                 f"{'/'.join(sorted(targets))}",
                                 action="DescribeInstancesStatus", code="UnexpectedInstanceState")
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise StageTimeout(f"instance {instance_id} still {state} after {timeout:.0f} s waiting for "
                                   f"{'/'.join(sorted(targets))}; check it in the console, "
                                   "then run the same command again")
            self._sleep(min(poll, remaining))

    # -- MSP ----------------------------------------------------------------------------
    def register_migration_task(self, task_name: str, *, src_ip: str, dst_instance_id: str, src_region: str = "",
                                dst_ip: str = "", service_supplier: str = "cvmigrate",
                                migrate_class: str = "host:cvm") -> str:
        """Register a host migration with MSP so it shows in the console; returns the TaskId."""
        req = msp_models.RegisterMigrationTaskRequest()
        req.TaskType = "host"
        req.TaskName = task_name
        req.ServiceSupplier = service_supplier
        req.MigrateClass = migrate_class
        now = time.strftime("%Y-%m-%d %H:%M:%S")
        req.CreateTime = req.UpdateTime = now
        src = msp_models.SrcInfo()
        src.Ip, src.Region, src.InstanceId = src_ip, src_region, ""
        dst = msp_models.DstInfo()
        dst.Region, dst.InstanceId, dst.Ip = self.region, dst_instance_id, dst_ip
        req.SrcInfo, req.DstInfo = src, dst
        resp = self._call("msp", "RegisterMigrationTask", req, subject=task_name)
        task_id: str = resp.TaskId                     # the SDK's models are untyped
        return task_id

    def modify_migration_task_status(self, task_id: str, status: str) -> None:
        if status not in MSP_STATUSES:
            raise ConfigError(f"MSP status {status!r}: use one of {', '.join(MSP_STATUSES)}")
        req = msp_models.ModifyMigrationTaskStatusRequest()
        req.TaskId, req.Status = task_id, status
        self._call("msp", "ModifyMigrationTaskStatus", req, subject=task_id)

    def describe_migration_task(self, task_id: str) -> MigrationTaskInfo:
        req = msp_models.DescribeMigrationTaskRequest()
        req.TaskId = task_id
        resp = self._call("msp", "DescribeMigrationTask", req, subject=task_id)
        history = tuple(MigrationTaskStatus(s.Status or "", s.Progress or "", s.UpdateTime or "")
                        for s in resp.TaskStatus or [])
        return MigrationTaskInfo(task_id=task_id, status=history[-1].status if history else "", history=history)

    # -- clock -------------------------------------------------------------------------------
    def server_time(self) -> float | None:
        """The API server's clock from an HTTP Date header (one unsigned GET), or None if unreachable."""
        import requests  # the SDK's own HTTP library

        url = self.endpoint.url_for("cvm") if self.endpoint else "https://cvm.tencentcloudapi.com/"
        proxies = {"http": self.proxy, "https": self.proxy} if self.proxy else None
        try:
            resp = requests.get(url, timeout=min(5.0, self.timeout), proxies=proxies)
            date = resp.headers.get("Date")
            return email.utils.parsedate_to_datetime(date).timestamp() if date else None
        except (requests.RequestException, TypeError, ValueError) as exc:
            logger.debug("server time unavailable from %s: %s", url, exc)
            return None

    def clock_skew(self) -> float | None:
        """Local clock minus the API server's (seconds; Date headers have 1 s resolution), or None."""
        server = self.server_time()
        return None if server is None else time.time() - server
