"""go2tencentcloud's ``user.json`` and ``client.json``, read as they are.

Why this module exists: users arrive with the two files they already wrote for
Tencent's go2tencentcloud tool.  We accept exactly that format -- same key
names, same nesting (``Client.Net.Proxy.Ip``), same value types, the empty
strings the tool uses for "not set" -- and turn it into frozen dataclasses, so
no other module ever looks at raw JSON.  Every error names the file, the field
path and the fix, because a migration that dies on a config typo should cost
the user one edit, not a debugging session.

Policies, each with its reason:

* ``user.json`` is fully documented (SecretId, SecretKey, Region, InstanceId,
  DataDisks), so any other key there is an error, with a "did you mean" hint.
* ``client.json`` is documented only in part: Tencent's docs say that "except
  for the above parameters, other configuration items in the client.json file
  usually do not need to be specified", i.e. the shipped file carries more keys
  than the documented subset.  An unknown key there is therefore tolerated (and
  listed in ``ClientConfig.ignored_fields``) unless it is a near miss of a
  documented key (``Client.Net.Mod``) or differs only in letter case -- those
  are typos and would silently do nothing, so they are errors.  Our own section
  (``Cvmigrate``) is strict.
* Secrets (SecretKey, Proxy.Password) are wrapped in :class:`Secret`, whose
  ``repr``/``str`` never show the value, and no error message quotes them.
* Credentials may be left out of user.json (or set to ""): then the standard
  ``TENCENTCLOUD_SECRET_ID``/``TENCENTCLOUD_SECRET_KEY`` environment variables,
  and after them the SDK's own provider chain, supply them.  See
  :meth:`UserConfig.resolve_credentials`.
"""
from __future__ import annotations

import difflib
import enum
import hmac
import ipaddress
import json
import logging
import math
import os
import posixpath
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from cvmigrate.common.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = [
    "ClientConfig",
    "CredentialSource",
    "Credentials",
    "DataDisk",
    "ExtraConfig",
    "NetConfig",
    "NetMode",
    "ProxyConfig",
    "RsyncConfig",
    "Secret",
    "UserConfig",
    "load_client_config",
    "load_user_config",
    "parse_client_config",
    "parse_user_config",
]

#: Limits from go2tencentcloud's user.json documentation.
MAX_DATA_DISKS = 20
DISK_INDEX_RANGE = (1, 20)
DISK_SIZE_GB_RANGE = (10, 16000)
#: Rate limits accepted, KBytes/s: any positive number (0 / "" = unlimited).  go2tencentcloud's console
#: slider stops at 25600 but its client.json and our --bwlimit have no upper bound.
BANDWIDTH_KBPS_RANGE = (0, 2**31 - 1)

ENV_SECRET_ID = "TENCENTCLOUD_SECRET_ID"  # noqa: S105 - the variable's name, not a secret
ENV_SECRET_KEY = "TENCENTCLOUD_SECRET_KEY"  # noqa: S105 - the variable's name, not a secret

_REGION_RE = re.compile(r"^[a-z]{2,}(?:-[a-z]+)+$")
_ZONE_RE = re.compile(r"^([a-z]{2,}(?:-[a-z]+)+)-\d+$")
_INSTANCE_ID_RE = re.compile(r"^ins-[0-9a-z]{8}$")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME_RE = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*\.?$")
#: The placeholders of Tencent's examples; a file still holding one was not edited.
_PLACEHOLDERS = {"your secretid", "your secretkey", "your instance id", "ins-xxxxxxxx"}


# --------------------------------------------------------------------------- secrets
class Secret:
    """A string that must not leak into logs, tracebacks or ``repr`` of configs.

    Why a wrapper rather than ``field(repr=False)`` alone: a config object is
    printed, logged and put into exception messages in many places; a wrapper
    keeps the value hidden however the enclosing object is rendered, while
    still showing *that* a secret is set.  Call :meth:`reveal` at the single
    point where the value is really needed (the SDK credential, the proxy
    handshake).
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError("Secret wraps a str")
        self._value = value

    def reveal(self) -> str:
        """The plain value; use it only where it is handed to its consumer."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    def __str__(self) -> str:
        return "********"

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(("Secret", self._value))


# --------------------------------------------------------------------------- user.json
@dataclass(frozen=True)
class DataDisk:
    """One ``DataDisks`` entry: which source mount point goes to which target data disk.

    Why it matters: without a mapping everything lands on the target's system
    disk, the documented cause of "disk full" failures in go2tencentcloud.
    """

    #: 1-based position of the target CVM's data disk (1 = first data disk).
    index: int
    #: Size of the source data disk in GB, as the user declared it (10..16000).
    size_gb: int
    #: Absolute mount point on the source, normalised (no trailing slash).
    mount_point: str


class CredentialSource(enum.Enum):
    """Where the API key pair comes from; shown to the user so a wrong key is easy to trace."""

    USER_JSON = "user.json"
    ENVIRONMENT = "environment"
    #: Neither: the SDK's default chain (profile file, CVM role) is asked.
    SDK_CHAIN = "sdk-chain"


@dataclass(frozen=True)
class Credentials:
    """The resolved API key pair and where it came from.

    ``secret_id``/``secret_key`` are None when ``source`` is SDK_CHAIN: then the
    caller builds no explicit credential and lets the SDK find one.
    """

    source: CredentialSource
    secret_id: str | None = None
    secret_key: Secret | None = None


@dataclass(frozen=True)
class UserConfig:
    """go2tencentcloud's ``user.json``: who we are and which CVM is the target.

    Credentials are optional here (unlike Tencent's table says) because
    environment variables or the SDK chain may supply them and keeping keys out
    of files is the safer habit; ``secret_id``/``secret_key`` are None when the
    file omits them or leaves them "".
    """

    #: Region of the target CVM, e.g. ``ap-guangzhou`` (never a zone).
    region: str
    #: Target CVM, ``ins-`` plus 8 lowercase letters/digits.
    instance_id: str
    secret_id: str | None = None
    secret_key: Secret | None = None
    data_disks: tuple[DataDisk, ...] = ()
    #: The file (or other source) this was read from, for messages.
    origin: str = "user.json"

    @property
    def credentials_in_file(self) -> bool:
        """True when user.json itself carries the key pair."""
        return self.secret_id is not None and self.secret_key is not None

    def resolve_credentials(self, environ: Mapping[str, str] | None = None) -> Credentials:
        """Pick the key pair: user.json first (as go2tencentcloud does), then the environment.

        Why this order: the file is what the user edited for this migration;
        the environment variables are the fallback the SDK also understands.
        Returns SDK_CHAIN when neither has them.  Raises ConfigError when only
        half of the pair is in the environment, since that is always a mistake.
        """
        if self.credentials_in_file:
            return Credentials(CredentialSource.USER_JSON, self.secret_id, self.secret_key)
        env = os.environ if environ is None else environ
        sid = env.get(ENV_SECRET_ID) or None
        skey = env.get(ENV_SECRET_KEY) or None
        if sid and skey:
            return Credentials(CredentialSource.ENVIRONMENT, sid, Secret(skey))
        if sid or skey:
            missing = ENV_SECRET_KEY if sid else ENV_SECRET_ID
            present = ENV_SECRET_ID if sid else ENV_SECRET_KEY
            raise ConfigError(
                f"environment: {present} is set but {missing} is not; set both, "
                f"or put SecretId and SecretKey in {self.origin}",
                field=missing,
            )
        return Credentials(CredentialSource.SDK_CHAIN)


# --------------------------------------------------------------------------- client.json
class NetMode(enum.IntEnum):
    """``Client.Net.Mode``: how the API is reached and how data travels."""

    #: 0: source calls the API and sends data over the public network.
    PUBLIC = 0
    #: 1: a gateway host calls the API; data goes over the private channel.
    PRIVATE_VIA_GATEWAY = 1
    #: 2: the source calls the API over the internet; data over the private channel.
    PRIVATE_DIRECT_API = 2
    #: 3: the source calls the API through an HTTP proxy; data over the private channel.
    PRIVATE_VIA_PROXY = 3


@dataclass(frozen=True)
class ProxyConfig:
    """``Client.Net.Proxy``: the HTTP proxy used in mode 3, and the IPv6 switch.

    Empty strings in the file (the shipped defaults) become None here, so
    "not set" has one spelling in the code.
    """

    ip: str | None = None
    port: int | None = None
    user: str | None = None
    password: Secret | None = None
    #: Move data over IPv6 instead of IPv4.
    ipv6: bool = False


@dataclass(frozen=True)
class NetConfig:
    """``Client.Net``."""

    mode: NetMode = NetMode.PUBLIC
    proxy: ProxyConfig = field(default_factory=ProxyConfig)


@dataclass(frozen=True)
class ExtraConfig:
    """``Client.Extra``."""

    #: Skip the start-up environment pre-checks.
    ignore_check: bool = False
    #: Run in the background.
    daemon: bool = False


@dataclass(frozen=True)
class RsyncConfig:
    """``Client.Rsync``: kept under go2tencentcloud's name although we do not use rsync.

    Why keep the name: the user's file says ``Rsync``; the meaning (rate limit,
    stronger verification) carries over to our own transfer.
    """

    #: Rate limit in KBytes/s; None = unlimited ("" or 0 in the file, as rsync's --bwlimit=0).
    bandwidth_limit_kbps: int | None = None
    #: Stronger consistency check at a CPU/speed cost.
    checksum: bool = False


def _empty_timeouts() -> Mapping[str, float]:
    return MappingProxyType({})


@dataclass(frozen=True)
class ClientConfig:
    """go2tencentcloud's ``client.json`` (documented subset) plus our ``Cvmigrate`` section.

    ``timeouts`` is a read-only mapping (sub-task name -> seconds) so the
    frozen object cannot be changed through it; it compares equal to a dict.
    """

    tool_mode: bool = False
    net: NetConfig = field(default_factory=NetConfig)
    extra: ExtraConfig = field(default_factory=ExtraConfig)
    rsync: RsyncConfig = field(default_factory=RsyncConfig)
    #: ``Cvmigrate.Timeouts``: per-sub-task time limits in seconds, overriding built-in defaults.
    timeouts: Mapping[str, float] = field(default_factory=_empty_timeouts, hash=False)
    #: ``Cvmigrate.Streams``: parallel streams per file-level pass (0 = what both sides' cores allow);
    #: ``migrate --streams`` overrides it.
    streams: int = 0
    #: Paths of go2tencentcloud keys we do not use (the undocumented rest of client.json).
    ignored_fields: tuple[str, ...] = ()
    origin: str = "defaults"


# --------------------------------------------------------------------------- helpers
def _fail(origin: str, path: str, message: str) -> ConfigError:
    where = f"{origin}: {path}" if path else origin
    return ConfigError(f"{where}: {message}", origin=origin, field=path)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _show(value: Any, *, secret: bool = False) -> str:
    """Describe a value for an error message; secrets show only their type."""
    kind = _json_type(value)
    if secret:
        return f"a {kind} (value hidden)"
    if isinstance(value, (dict, list)):
        return f"an {kind}" if kind[0] in "ao" else f"a {kind}"
    text = json.dumps(value, ensure_ascii=False)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{kind} {text}"


def _type_error(origin: str, path: str, expected: str, value: Any, *, secret: bool = False) -> ConfigError:
    return _fail(origin, path, f"expected {expected}, got {_show(value, secret=secret)}")


def _check_keys(
    origin: str,
    path: str,
    obj: Mapping[str, Any],
    known: Iterable[str],
    *,
    strict: bool,
    ignored: list[str] | None = None,
) -> None:
    """Reject typos of known keys; reject or record other unknown keys.

    Why tolerate at all: see the module docstring (client.json has
    undocumented keys).  Near misses are always errors because a misspelt key
    silently keeps the default, which is the worst kind of config bug.
    """
    known = list(known)
    for key in obj:
        if key in known:
            continue
        full = _join(path, key)
        same_case = [k for k in known if k.lower() == key.lower()]
        if same_case:
            raise _fail(origin, full, f"wrong letter case; the field is spelled {_join(path, same_case[0])}")
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6 if strict else 0.8)
        if close:
            raise _fail(origin, full, f"unknown field; did you mean {_join(path, close[0])}?")
        if strict:
            names = ", ".join(_join(path, k) for k in known)
            raise _fail(origin, full, f"unknown field; remove it (known fields here: {names})")
        if ignored is not None:
            ignored.append(full)


def _object(origin: str, path: str, value: Any, what: str = "an object {...}") -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _type_error(origin, path, what, value)
    return value


def _optional_object(origin: str, path: str, obj: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = obj.get(key)
    if value is None:
        return {}
    return _object(origin, _join(path, key), value)


def _bool(origin: str, path: str, obj: Mapping[str, Any], key: str, default: bool = False) -> bool:
    value = obj.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _type_error(origin, _join(path, key), "true or false (without quotes)", value)
    return value


def _whole_number(value: Any) -> int | None:
    """An int from a JSON integer or a digits-only string; None if it is neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*\d+\s*", value):
        return int(value)
    return None


def _optional_str(origin: str, path: str, obj: Mapping[str, Any], key: str, *, secret: bool = False) -> str | None:
    """A string field where "" and null mean "not set", as in the shipped files."""
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _type_error(origin, _join(path, key), "a string", value, secret=secret)
    return value or None


# --------------------------------------------------------------------------- user.json parsing
_USER_KEYS = ("SecretId", "SecretKey", "Region", "InstanceId", "DataDisks")
_DISK_KEYS = ("Index", "Size", "MountPoint")


def _required_string(origin: str, data: Mapping[str, Any], key: str, *, required: str, expected: str) -> str:
    """``data[key]``, a non-empty string: else "required; <required>", or "expected <expected>, got ..."."""
    value = data.get(key)
    if value is None or value == "":
        raise _fail(origin, key, f"required; {required}")
    if not isinstance(value, str):
        raise _type_error(origin, key, expected, value)
    return value


def _region(origin: str, data: Mapping[str, Any]) -> str:
    value = _required_string(origin, data, "Region", required='set the target CVM\'s region, e.g. "ap-guangzhou"',
                             expected='a region name string such as "ap-guangzhou"')
    if value != value.strip():
        raise _fail(origin, "Region", f"{value!r} has surrounding spaces; remove them")
    zone = _ZONE_RE.match(value.lower())
    if zone:
        raise _fail(
            origin,
            "Region",
            f'"{value}" is an availability zone, not a region; use the region "{zone.group(1)}" '
            "(go2tencentcloud wants the region only)",
        )
    if not _REGION_RE.match(value):
        if _REGION_RE.match(value.lower()):
            raise _fail(origin, "Region", f'region names are lowercase; use "{value.lower()}"')
        raise _fail(origin, "Region", f'expected a region such as "ap-guangzhou", got {_show(value)}')
    return value


def _instance_id(origin: str, data: Mapping[str, Any]) -> str:
    value = _required_string(origin, data, "InstanceId",
                             required='set the target CVM\'s instance ID, e.g. "ins-1a2b3c4d"',
                             expected='an instance ID string such as "ins-1a2b3c4d"')
    if value.strip().lower() in _PLACEHOLDERS:
        raise _fail(
            origin,
            "InstanceId",
            f"still the example placeholder {_show(value)}; put the target CVM's real instance ID "
            "(CVM console, or DescribeInstances)",
        )
    if not _INSTANCE_ID_RE.match(value):
        hint = ""
        if _INSTANCE_ID_RE.match(value.strip().lower()):
            hint = f'; use "{value.strip().lower()}"'
        raise _fail(
            origin,
            "InstanceId",
            f'expected "ins-" followed by 8 lowercase letters or digits, got {_show(value)}{hint}',
        )
    return value


def _credentials(origin: str, data: Mapping[str, Any]) -> tuple[str | None, Secret | None]:
    secret_id = _optional_str(origin, "", data, "SecretId")
    secret_key = _optional_str(origin, "", data, "SecretKey", secret=True)
    for key, value in (("SecretId", secret_id), ("SecretKey", secret_key)):
        if value is not None and value.strip().lower() in _PLACEHOLDERS:
            raise _fail(origin, key, f"still the example placeholder; put your API {key}, or remove SecretId and "
                                     f"SecretKey to use {ENV_SECRET_ID}/{ENV_SECRET_KEY}")
    if (secret_id is None) != (secret_key is None):
        missing, present = ("SecretKey", "SecretId") if secret_key is None else ("SecretId", "SecretKey")
        raise _fail(
            origin,
            missing,
            f"missing while {present} is set; set both, or leave both empty to use "
            f"{ENV_SECRET_ID}/{ENV_SECRET_KEY}",
        )
    return secret_id, (Secret(secret_key) if secret_key is not None else None)


def _int_in_range(origin: str, path: str, value: Any, lo: int, hi: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _type_error(origin, path, f"an integer {lo}..{hi} ({what})", value)
    if not lo <= value <= hi:
        raise _fail(origin, path, f"{value} is out of range; expected {lo}..{hi} ({what})")
    return value


def _data_disks(origin: str, data: Mapping[str, Any]) -> tuple[DataDisk, ...]:
    value = data.get("DataDisks")
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _type_error(origin, "DataDisks", "an array of {Index, Size, MountPoint} objects", value)
    if len(value) > MAX_DATA_DISKS:
        raise _fail(
            origin,
            "DataDisks",
            f"{len(value)} entries; go2tencentcloud supports at most {MAX_DATA_DISKS} data disks",
        )
    disks: list[DataDisk] = []
    seen_index: dict[int, str] = {}
    seen_mount: dict[str, str] = {}
    for i, item in enumerate(value):
        path = f"DataDisks[{i}]"
        obj = _object(origin, path, item, "an object {Index, Size, MountPoint}")
        _check_keys(origin, path, obj, _DISK_KEYS, strict=True)
        for key in _DISK_KEYS:
            if obj.get(key) is None:
                raise _fail(origin, _join(path, key), f"required in every DataDisks entry ({', '.join(_DISK_KEYS)})")
        index = _int_in_range(origin, f"{path}.Index", obj["Index"], *DISK_INDEX_RANGE,
                              "Nth data disk of the target CVM")
        size = _int_in_range(origin, f"{path}.Size", obj["Size"], *DISK_SIZE_GB_RANGE, "source data disk size in GB")
        mount = obj["MountPoint"]
        mpath = f"{path}.MountPoint"
        if not isinstance(mount, str):
            raise _type_error(origin, mpath, 'an absolute path string such as "/mnt/disk1"', mount)
        if not mount.startswith("/"):
            raise _fail(origin, mpath, f'expected an absolute path such as "/mnt/disk1", got {_show(mount)}')
        norm = posixpath.normpath(mount)
        if norm.startswith("//"):
            norm = "/" + norm.lstrip("/")
        if norm == "/":
            raise _fail(
                origin,
                mpath,
                '"/" is the system disk, not a data disk; list only data disk mount points such as "/mnt/disk1"',
            )
        if index in seen_index:
            raise _fail(origin, f"{path}.Index", f"{index} is already used by {seen_index[index]}; "
                                                 "each target data disk can take one source disk")
        if norm in seen_mount:
            raise _fail(origin, mpath, f'"{norm}" is already listed in {seen_mount[norm]}; list each mount point once')
        seen_index[index] = path
        seen_mount[norm] = path
        disks.append(DataDisk(index=index, size_gb=size, mount_point=norm))
    return tuple(disks)


def parse_user_config(data: Mapping[str, Any], origin: str = "user.json") -> UserConfig:
    """Validate the decoded content of a user.json and build a :class:`UserConfig`.

    ``origin`` names the source in messages (usually the file path).
    """
    data = _object(origin, "", data, "a JSON object {...} at the top level")
    _check_keys(origin, "", data, _USER_KEYS, strict=True)
    secret_id, secret_key = _credentials(origin, data)
    return UserConfig(
        region=_region(origin, data),
        instance_id=_instance_id(origin, data),
        secret_id=secret_id,
        secret_key=secret_key,
        data_disks=_data_disks(origin, data),
        origin=origin,
    )


# --------------------------------------------------------------------------- client.json parsing
_TOP_KEYS = ("Client", "Cvmigrate")
_CLIENT_KEYS = ("ToolMode", "Net", "Extra", "Rsync")
_NET_KEYS = ("Mode", "Proxy")
_PROXY_KEYS = ("Ip", "Port", "User", "Password", "IPv6")
_EXTRA_KEYS = ("IgnoreCheck", "Daemon")
_RSYNC_KEYS = ("BandwidthLimit", "Checksum")
_CVMIGRATE_KEYS = ("Timeouts", "Streams")


def _net_mode(origin: str, net: Mapping[str, Any]) -> NetMode:
    path = "Client.Net.Mode"
    value = net.get("Mode")
    if value is None:
        return NetMode.PUBLIC
    if isinstance(value, bool) or not isinstance(value, int):
        raise _type_error(origin, path, "an integer 0..3 (0 public, 1-3 private network scenarios)", value)
    try:
        return NetMode(value)
    except ValueError:
        raise _fail(
            origin,
            path,
            f"{value} is not a mode; use 0 (public network), 1 (private, gateway calls the API), "
            "2 (private, source calls the API over the internet) or 3 (private, API through a proxy)",
        ) from None


def _proxy(origin: str, net: Mapping[str, Any], mode: NetMode, ignored: list[str]) -> ProxyConfig:
    path = "Client.Net.Proxy"
    obj = _optional_object(origin, "Client.Net", net, "Proxy")
    _check_keys(origin, path, obj, _PROXY_KEYS, strict=False, ignored=ignored)
    ip = _optional_str(origin, path, obj, "Ip")
    ip = ip.strip() or None if ip is not None else None
    if ip is not None:
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            if not _HOSTNAME_RE.match(ip):
                raise _fail(origin, f"{path}.Ip",
                            f"expected the proxy's IP address (or host name), got {_show(ip)}") from None
    raw_port = obj.get("Port")
    port: int | None = None
    if raw_port is not None and raw_port != "":
        port = _whole_number(raw_port)
        if port is None:
            raise _type_error(origin, f"{path}.Port", 'a port number 1..65535 (a number or a string such as "3128")',
                              raw_port)
        if not 1 <= port <= 65535:
            raise _fail(origin, f"{path}.Port", f"{port} is out of range; expected 1..65535")
    user = _optional_str(origin, path, obj, "User")
    password = _optional_str(origin, path, obj, "Password", secret=True)
    if password is not None and user is None:
        raise _fail(origin, f"{path}.User", "required when Client.Net.Proxy.Password is set; "
                                            "set the proxy user name, or clear the password")
    if mode is NetMode.PRIVATE_VIA_PROXY:
        if ip is None:
            raise _fail(
                origin,
                f"{path}.Ip",
                "required when Client.Net.Mode is 3 (API through a proxy); "
                "set the proxy's address, or choose another Mode",
            )
        if port is None:
            raise _fail(
                origin,
                f"{path}.Port",
                "required when Client.Net.Mode is 3 (API through a proxy); "
                "set the proxy's port, or choose another Mode",
            )
    elif ip is not None:
        logger.warning("%s: Client.Net.Proxy.Ip is set but Client.Net.Mode is %d, not 3; the proxy is not used",
                       origin, int(mode))
    return ProxyConfig(
        ip=ip,
        port=port,
        user=user,
        password=Secret(password) if password is not None else None,
        ipv6=_bool(origin, path, obj, "IPv6"),
    )


def _bandwidth(origin: str, rsync: Mapping[str, Any]) -> int | None:
    path = "Client.Rsync.BandwidthLimit"
    value = rsync.get("BandwidthLimit")
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    kbps = _whole_number(value)
    if kbps is None:
        raise _type_error(origin, path, 'a whole number of KBytes/s such as "10240" (or "" for unlimited)', value)
    lo, hi = BANDWIDTH_KBPS_RANGE
    if not lo <= kbps <= hi:
        raise _fail(origin, path, f"{kbps} KBytes/s is out of range; expected {lo}..{hi}, or \"\" for unlimited")
    return kbps or None


def _timeouts(origin: str, data: Mapping[str, Any], known_subtasks: Iterable[str] | None) -> Mapping[str, float]:
    section = _optional_object(origin, "", data, "Cvmigrate")
    _check_keys(origin, "Cvmigrate", section, _CVMIGRATE_KEYS, strict=True)
    table = _optional_object(origin, "Cvmigrate", section, "Timeouts")
    known = list(known_subtasks) if known_subtasks is not None else None
    out: dict[str, float] = {}
    for name, value in table.items():
        path = f"Cvmigrate.Timeouts.{name}"
        if known is not None and name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = (f"did you mean Cvmigrate.Timeouts.{close[0]}?" if close
                    else f"known sub-tasks: {', '.join(sorted(known))}")
            raise _fail(origin, path, f"unknown sub-task; {hint}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _type_error(origin, path, "a positive number of seconds", value)
        if not math.isfinite(value) or value <= 0:
            raise _fail(origin, path, f"{value} is not a positive number of seconds; use e.g. 600")
        out[name] = float(value)
    return MappingProxyType(out)


def _streams(origin: str, data: Mapping[str, Any]) -> int:
    """``Cvmigrate.Streams``: a whole number 0..MAX_STREAMS (0 or absent: both sides' cores decide)."""
    from cvmigrate.common.shards import MAX_STREAMS

    section = _optional_object(origin, "", data, "Cvmigrate")
    value = section.get("Streams", 0)
    path = "Cvmigrate.Streams"
    if isinstance(value, bool) or not isinstance(value, int):
        raise _type_error(origin, path, f"a whole number of streams 0..{MAX_STREAMS}", value)
    if not 0 <= value <= MAX_STREAMS:
        raise _fail(origin, path, f"{value} is out of range; expected 1..{MAX_STREAMS}, "
                                  f"or 0 for what both sides' cores allow")
    return value


def parse_client_config(
    data: Mapping[str, Any],
    origin: str = "client.json",
    *,
    known_subtasks: Iterable[str] | None = None,
) -> ClientConfig:
    """Validate the decoded content of a client.json and build a :class:`ClientConfig`.

    ``known_subtasks``: the sub-task names ``Cvmigrate.Timeouts`` may use; the
    stage runner owns that list, so it is passed in rather than known here.
    """
    data = _object(origin, "", data, "a JSON object {...} at the top level")
    ignored: list[str] = []
    _check_keys(origin, "", data, _TOP_KEYS, strict=False, ignored=ignored)
    client = _optional_object(origin, "", data, "Client")
    _check_keys(origin, "Client", client, _CLIENT_KEYS, strict=False, ignored=ignored)
    net = _optional_object(origin, "Client", client, "Net")
    _check_keys(origin, "Client.Net", net, _NET_KEYS, strict=False, ignored=ignored)
    extra = _optional_object(origin, "Client", client, "Extra")
    _check_keys(origin, "Client.Extra", extra, _EXTRA_KEYS, strict=False, ignored=ignored)
    rsync = _optional_object(origin, "Client", client, "Rsync")
    _check_keys(origin, "Client.Rsync", rsync, _RSYNC_KEYS, strict=False, ignored=ignored)

    mode = _net_mode(origin, net)
    proxy = _proxy(origin, net, mode, ignored)
    config = ClientConfig(
        tool_mode=_bool(origin, "Client", client, "ToolMode"),
        net=NetConfig(mode=mode, proxy=proxy),
        extra=ExtraConfig(
            ignore_check=_bool(origin, "Client.Extra", extra, "IgnoreCheck"),
            daemon=_bool(origin, "Client.Extra", extra, "Daemon"),
        ),
        rsync=RsyncConfig(
            bandwidth_limit_kbps=_bandwidth(origin, rsync),
            checksum=_bool(origin, "Client.Rsync", rsync, "Checksum"),
        ),
        timeouts=_timeouts(origin, data, known_subtasks),
        streams=_streams(origin, data),
        ignored_fields=tuple(ignored),
        origin=origin,
    )
    if ignored:
        logger.debug("%s: go2tencentcloud fields not used by cvmigrate: %s", origin, ", ".join(ignored))
    return config


# --------------------------------------------------------------------------- files
class _DuplicateKey(Exception):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


def _read_json(path: str | os.PathLike[str], kind: str, create_hint: str) -> tuple[dict[str, Any], str]:
    """Read and decode one JSON config file, turning every failure into a ConfigError."""
    p = Path(path)
    origin = str(p)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{kind} not found at {origin}: {create_hint}, or give the right path",
                          origin=origin) from None
    except IsADirectoryError:
        raise ConfigError(f"{origin}: is a directory, not a {kind} file; give the path of the file itself",
                          origin=origin) from None
    except PermissionError:
        raise ConfigError(f"{origin}: permission denied reading {kind}; run as a user who can read it "
                          "(or fix its mode)", origin=origin) from None
    except OSError as exc:
        raise ConfigError(f"{origin}: cannot read {kind}: {exc.strerror}", origin=origin) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{origin}: not UTF-8 text (bad byte at offset {exc.start}); save {kind} as UTF-8", origin=origin
        ) from None
    if not text.strip():
        raise ConfigError(f"{origin}: the file is empty; {create_hint}", origin=origin)
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{origin}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}; fix the syntax there "
            "(usual causes: a missing or trailing comma, single quotes, an unquoted key, or a comment -- "
            "JSON allows none of these)",
            origin=origin,
            line=exc.lineno,
            column=exc.colno,
        ) from None
    except _DuplicateKey as exc:
        raise ConfigError(f"{origin}: key {exc.args[0]!r} appears twice in the same object; keep only one",
                          origin=origin) from None
    except ValueError as exc:  # NaN / Infinity
        raise ConfigError(f"{origin}: {exc.args[0]} is not valid JSON; write a plain number", origin=origin) from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"{origin}: expected a JSON object {{...}} at the top level, got {_show(data)}", origin=origin
        )
    return data, origin


def load_user_config(path: str | os.PathLike[str]) -> UserConfig:
    """Read and validate go2tencentcloud's user.json at ``path``."""
    data, origin = _read_json(
        path, "user.json", 'create it with at least {"Region": "ap-guangzhou", "InstanceId": "ins-..."}'
    )
    return parse_user_config(data, origin)


def load_client_config(
    path: str | os.PathLike[str] | None,
    *,
    known_subtasks: Iterable[str] | None = None,
) -> ClientConfig:
    """Read and validate client.json at ``path``; None means go2tencentcloud's defaults.

    Why None is allowed: client.json is optional for the user (every field
    has a default), unlike user.json.
    """
    if path is None:
        return parse_client_config({}, "defaults", known_subtasks=known_subtasks)
    data, origin = _read_json(path, "client.json", 'create it (an empty object "{}" means all defaults)')
    return parse_client_config(data, origin, known_subtasks=known_subtasks)
