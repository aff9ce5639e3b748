"""A fleet plan: many servers, their targets, credentials by reference, waves and fleet-wide limits.

Why a plan file and not N command lines: a data-centre exit is tens of servers
in waves; the plan is the one document an admin reviews, versions and hands
over.  It is YAML (or CSV, one server a row, for spreadsheet exports); the
format is in README.md ("Many servers: a fleet") and tests/data/fleet.example.yaml.

Secrets never live in a plan (plans get mailed, committed and pasted): a
``secret_key``/``password``/``token`` key anywhere is refused with the fix.
Credentials are a reference -- ``{user_json: PATH}`` (go2tencentcloud's file,
read when the fleet starts) or ``{env: true}`` / ``{env: {secret_id: VAR,
secret_key: VAR}}`` -- and reach each migration through its environment,
never through a file the fleet writes.
"""
from __future__ import annotations

import csv
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvmigrate.common.errors import ConfigError

#: Wave cut-over policies: auto = one final pass after the full one, then cut over; manual = incremental
#: passes until "cut over now" (console, `cvmigrate fleet cutover`, or the cut-over file).
CUTOVER_POLICIES = ("auto", "manual")
#: When a wave starts: after every server of the earlier waves has cut over (default), has completed, or at once.
WAVE_STARTS = ("after-cutover", "after-complete", "immediately")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_ADDRESS_RE = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):\d{1,5}$")
#: Keys that would carry a secret (compared lower-case without "_" and "-").
_SECRET_KEYS = {"secretid", "secretkey", "password", "passwd", "token", "sessiontoken", "secret", "apikey",
                "accesskey"}
_FIX = ("reference them instead: credentials: {user_json: /path/to/user.json} or credentials: {env: true} "
        "(TENCENTCLOUD_SECRET_ID/TENCENTCLOUD_SECRET_KEY)")

_TOP_KEYS = {"state_dir", "concurrency", "bandwidth_kbps", "api_endpoint", "credentials", "waves", "servers",
             "pass_interval", "poll_interval", "tls"}
_SERVER_KEYS = {"name", "wave", "agent", "source", "instance_id", "region", "credentials", "data_disks", "excludes",
                "receiver", "bootstrap", "client_json", "tls", "target_root"}
_WAVE_KEYS = {"wave", "cutover", "start"}
_TLS_KEYS = {"ca", "cert", "key", "token_file"}


@dataclass(frozen=True)
class Credentials:
    """Where a migration's Tencent Cloud keys come from: a user.json path, or environment variable names."""

    user_json: str | None = None
    env_id: str = "TENCENTCLOUD_SECRET_ID"
    env_key: str = "TENCENTCLOUD_SECRET_KEY"

    def describe(self) -> str:
        return f"user.json {self.user_json}" if self.user_json else f"environment ${self.env_id}/${self.env_key}"

    def environment(self) -> dict[str, str]:
        """The child's TENCENTCLOUD_* variables, read now (empty: the child uses the SDK's credential chain)."""
        if self.user_json:
            from cvmigrate.controller.config import load_user_config

            user = load_user_config(self.user_json)
            if not (user.secret_id and user.secret_key):
                raise ConfigError(f"{self.user_json}: SecretId/SecretKey are empty; the plan references this file for "
                                  "credentials, so fill them in (or use credentials: {env: true})")
            return {"TENCENTCLOUD_SECRET_ID": user.secret_id, "TENCENTCLOUD_SECRET_KEY": user.secret_key.reveal()}
        sid, skey = os.environ.get(self.env_id), os.environ.get(self.env_key)
        if bool(sid) != bool(skey):
            missing = self.env_key if sid else self.env_id
            raise ConfigError(f"${missing} is not set while its partner is; set both or neither")
        return {"TENCENTCLOUD_SECRET_ID": sid, "TENCENTCLOUD_SECRET_KEY": skey} if sid and skey else {}


@dataclass(frozen=True)
class Wave:
    """How one wave cuts over (CUTOVER_POLICIES) and when it may start (WAVE_STARTS)."""

    number: int
    cutover: str = "auto"
    start: str = "after-cutover"


@dataclass(frozen=True)
class ServerPlan:
    """One server of the fleet: where its agent is, which CVM it becomes, how it is reached."""

    name: str
    wave: int
    instance_id: str
    region: str
    credentials: Credentials
    agent: str | None = None            # HOST:PORT of `cvmigrate agent`; None: the source is on this box
    source: str = "/"
    data_disks: tuple[dict[str, Any], ...] = ()
    excludes: tuple[str, ...] = ()
    receiver: str | None = None
    bootstrap: str = "manual"
    client_json: str | None = None
    tls: Mapping[str, str] = field(default_factory=dict)
    target_root: str | None = None

    def user_json(self) -> dict[str, Any]:
        """The go2tencentcloud user.json this server's migration reads -- without any credentials."""
        doc: dict[str, Any] = {"Region": self.region, "InstanceId": self.instance_id}
        if self.data_disks:
            doc["DataDisks"] = [dict(d) for d in self.data_disks]
        return doc


@dataclass(frozen=True)
class FleetPlan:
    """A plan file as loaded and checked (:func:`load_plan`): its servers, their waves and the fleet-wide limits."""

    path: str
    state_dir: str
    servers: tuple[ServerPlan, ...]
    waves: Mapping[int, Wave]
    concurrency: int = 4                # migrations at once
    bandwidth_kbps: int = 0             # all of them together, KB/s on the wire; 0 = unlimited
    api_endpoint: str | None = None
    pass_interval: float = 10.0
    poll_interval: float = 5.0

    def wave(self, number: int) -> Wave:
        return self.waves.get(number) or Wave(number)

    def wave_numbers(self) -> list[int]:
        return sorted({s.wave for s in self.servers})

    def server(self, name: str) -> ServerPlan:
        for s in self.servers:
            if s.name == name:
                return s
        raise ConfigError(f"no server named {name!r} in the fleet plan {self.path}; "
                          f"known: {', '.join(s.name for s in self.servers)}")

    def as_json(self) -> dict[str, Any]:
        """The plan as the fleet directory keeps it (console, status): it holds no secrets by construction."""
        return {
            "path": self.path, "state_dir": self.state_dir, "concurrency": self.concurrency,
            "bandwidth_kbps": self.bandwidth_kbps, "api_endpoint": self.api_endpoint,
            "waves": {str(w): {"cutover": self.wave(w).cutover, "start": self.wave(w).start}
                      for w in self.wave_numbers()},
            "servers": [{"name": s.name, "wave": s.wave, "instance_id": s.instance_id, "region": s.region,
                         "agent": s.agent, "source": s.source, "credentials": s.credentials.describe()}
                        for s in self.servers],
        }


# --------------------------------------------------------------------------- loading
def _fail(origin: str, where: str, problem: str) -> ConfigError:
    return ConfigError(f"{origin}: {where}: {problem}" if where else f"{origin}: {problem}")


def _reject_secrets(origin: str, where: str, value: Any) -> None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            here = f"{where}.{k}" if where else str(k)
            if re.sub(r"[_\-\s]", "", str(k)).lower() in _SECRET_KEYS:
                raise _fail(origin, here, f"inline secrets are not allowed in a fleet plan; {_FIX}")
            if here.endswith("credentials.env") or here == "credentials.env":
                continue  # {env: {secret_id: VAR, secret_key: VAR}} names variables; _credentials checks them
            _reject_secrets(origin, here, v)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _reject_secrets(origin, f"{where}[{i}]", v)


def _check_keys(origin: str, where: str, data: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(map(str, data)) - allowed)
    if unknown:
        raise _fail(origin, where, f"unknown key {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}")


def _int(origin: str, where: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _fail(origin, where, f"expected a whole number {low}..{high}, got {value!r}")
    return value


def _str(origin: str, where: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(origin, where, f"expected a non-empty string, got {value!r}")
    return value.strip()


def _path(base: Path, value: str) -> str:
    p = Path(os.path.expanduser(value))
    return str(p if p.is_absolute() else (base / p).absolute())


def _credentials(origin: str, where: str, value: Any, base: Path) -> Credentials:
    if value is None or value == "env" or value == {"env": True}:
        return Credentials()
    if isinstance(value, str):
        kind, _, rest = value.partition(":")
        if kind == "user_json" and rest:
            value = {"user_json": rest}
        elif kind == "env" and rest.count(":") == 1:
            sid, skey = rest.split(":")
            value = {"env": {"secret_id": sid, "secret_key": skey}}
        else:
            raise _fail(origin, where, f"{value!r}: write env, env:ID_VAR:KEY_VAR or user_json:PATH")
    if not isinstance(value, Mapping) or len(value) != 1:
        raise _fail(origin, where, "write {user_json: PATH} or {env: true} or {env: {secret_id: VAR, secret_key: VAR}}")
    if "user_json" in value:
        path = _path(base, _str(origin, f"{where}.user_json", value["user_json"]))
        if not os.path.isfile(path):
            raise _fail(origin, f"{where}.user_json", f"{path} does not exist; give the path of a user.json that "
                                                      "holds SecretId and SecretKey")
        return Credentials(user_json=path)
    env = value.get("env")
    if isinstance(env, Mapping):
        _check_keys(origin, f"{where}.env", env, {"secret_id", "secret_key"})
        names = [_str(origin, f"{where}.env.{k}", env.get(k)) for k in ("secret_id", "secret_key")]
        for n in names:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", n):
                raise _fail(origin, f"{where}.env", f"{n!r} is not an environment variable name")
        return Credentials(env_id=names[0], env_key=names[1])
    if env is True:
        return Credentials()
    raise _fail(origin, where, "write {user_json: PATH} or {env: true} or {env: {secret_id: VAR, secret_key: VAR}}")


def _tls(origin: str, where: str, value: Any, base: Path) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _fail(origin, where, "expected {ca: PATH, cert: PATH, key: PATH, token_file: PATH}")
    _check_keys(origin, where, value, _TLS_KEYS)
    out = {k: _path(base, _str(origin, f"{where}.{k}", v)) for k, v in value.items()}
    for k, p in out.items():
        if not os.path.isfile(p):
            raise _fail(origin, f"{where}.{k}", f"{p} does not exist")
    return out


def _address(origin: str, where: str, value: Any) -> str | None:
    if value in (None, ""):
        return None
    text = _str(origin, where, value)
    if not _ADDRESS_RE.match(text):
        raise _fail(origin, where, f"{text!r}: expected HOST:PORT, e.g. 10.0.0.11:7443")
    return text


def _server(origin: str, i: int, raw: Any, base: Path, defaults: Mapping[str, Any]) -> ServerPlan:
    from cvmigrate.controller.config import parse_user_config

    where = f"servers[{i}]"
    if not isinstance(raw, Mapping):
        raise _fail(origin, where, "expected a mapping with name, instance_id, region, ...")
    _check_keys(origin, where, raw, _SERVER_KEYS)
    name = _str(origin, f"{where}.name", raw.get("name"))
    if not _NAME_RE.match(name):
        raise _fail(origin, f"{where}.name", f"{name!r}: use letters, digits, '.', '_' and '-' (it names a directory)")
    where = f"servers[{i}] ({name})"
    wave = _int(origin, f"{where}.wave", raw.get("wave", 1), 1, 1000)
    disks = raw.get("data_disks") or []
    if not isinstance(disks, list):
        raise _fail(origin, f"{where}.data_disks", "expected a list like [{Index: 1, Size: 10, MountPoint: /data}]")
    excludes = raw.get("excludes") or []
    if isinstance(excludes, str):
        excludes = [excludes]
    if not isinstance(excludes, list) or not all(isinstance(e, str) for e in excludes):
        raise _fail(origin, f"{where}.excludes", "expected a list of rsync-style patterns")
    bootstrap = raw.get("bootstrap", "manual")
    if bootstrap not in ("manual", "ssh"):
        raise _fail(origin, f"{where}.bootstrap", f"{bootstrap!r}: use manual or ssh")
    server = ServerPlan(
        name=name, wave=wave,
        instance_id=_str(origin, f"{where}.instance_id", raw.get("instance_id")),
        region=_str(origin, f"{where}.region", raw.get("region")),
        credentials=_credentials(origin, f"{where}.credentials", raw.get("credentials", defaults.get("credentials")),
                                 base),
        agent=_address(origin, f"{where}.agent", raw.get("agent")),
        source=_str(origin, f"{where}.source", raw.get("source", "/")),
        data_disks=tuple(dict(d) if isinstance(d, Mapping) else d for d in disks),
        excludes=tuple(e for e in excludes if e.strip()),
        receiver=_address(origin, f"{where}.receiver", raw.get("receiver")),
        bootstrap=bootstrap,
        client_json=_path(base, _str(origin, f"{where}.client_json", raw["client_json"])) if raw.get("client_json")
        else None,
        tls=_tls(origin, f"{where}.tls", raw.get("tls", defaults.get("tls")), base),
        target_root=raw.get("target_root"),
    )
    # The same validation `cvmigrate migrate` applies to user.json (instance id, region, DataDisks), now.
    parse_user_config(server.user_json(), f"{origin}: {where}")
    if server.agent is None and server.source != "/" and not os.path.isdir(server.source):
        raise _fail(origin, f"{where}.source", f"{server.source} is not a directory on this machine (without "
                                              "agent: the source is local)")
    return server


def _rows_from_csv(path: Path) -> list[dict[str, Any]]:
    """CSV: a header row; credentials env | env:ID_VAR:KEY_VAR | user_json:PATH; data_disks Index:Size:Mount;...;
    excludes pattern;pattern."""
    rows = []
    with path.open(newline="", encoding="utf-8") as fh:
        for n, rec in enumerate(csv.DictReader(fh), start=2):
            row: dict[str, Any] = {}
            for key, value in rec.items():
                if key is None:
                    raise ConfigError(f"{path}: line {n}: more cells than header columns")
                key = key.strip()
                value = (value or "").strip()
                if re.sub(r"[_\-\s]", "", key).lower() in _SECRET_KEYS:
                    raise ConfigError(f"{path}: column {key!r}: inline secrets are not allowed in a fleet plan; {_FIX}")
                if not value:
                    continue
                if key == "wave":
                    if not value.isdigit():
                        raise ConfigError(f"{path}: line {n}: wave {value!r} is not a number")
                    row[key] = int(value)
                elif key == "data_disks":
                    disks = []
                    for spec in value.split(";"):
                        parts = spec.split(":", 2)
                        if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit():
                            raise ConfigError(f"{path}: line {n}: data_disks {spec!r}: write Index:SizeGB:MountPoint")
                        disks.append({"Index": int(parts[0]), "Size": int(parts[1]), "MountPoint": parts[2]})
                    row[key] = disks
                elif key == "excludes":
                    row[key] = [e for e in value.split(";") if e]
                else:
                    row[key] = value
            rows.append(row)
    return rows


def load_plan(path: str | os.PathLike[str], *, state_dir: str | None = None, overrides: Mapping[str, Any] | None = None
              ) -> FleetPlan:
    """Read and validate a plan (``.yaml``/``.yml``/``.json`` or ``.csv``); every error names the field and the fix."""
    p = Path(path).absolute()
    origin = str(p)
    if not p.is_file():
        raise ConfigError(f"{origin}: no such plan file; write one like tests/data/fleet.example.yaml")
    base = p.parent
    if p.suffix.lower() == ".csv":
        data: Any = {"servers": _rows_from_csv(p)}
    else:
        import yaml

        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f"line {mark.line + 1}: " if mark else ""
            raise ConfigError(f"{origin}: {at}not valid YAML ({getattr(exc, 'problem', None) or exc}); fix the "
                              "syntax") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"{origin}: expected a mapping with servers: [...] at the top level")
    _reject_secrets(origin, "", data)
    _check_keys(origin, "", data, _TOP_KEYS)
    data = dict(data)
    for k, v in (overrides or {}).items():
        if v is not None:
            data[k] = v
    raw_servers = data.get("servers")
    if not isinstance(raw_servers, list) or not raw_servers:
        raise _fail(origin, "servers", "expected a non-empty list of servers")
    servers = [_server(origin, i, s, base, data) for i, s in enumerate(raw_servers)]
    seen: dict[str, str] = {}
    for s in servers:
        for key, what in ((s.name, "name"), (f"{s.region}/{s.instance_id}", "target")):
            if key in seen:
                raise ConfigError(f"{origin}: servers: two servers share the {what} {key!r}; each server migrates to "
                                  "its own CVM and needs its own name")
            seen[key] = what
    waves: dict[int, Wave] = {}
    raw_waves = data.get("waves") or []
    if not isinstance(raw_waves, list):
        raise _fail(origin, "waves", "expected a list like [{wave: 1, cutover: auto}, {wave: 2, cutover: manual}]")
    for i, w in enumerate(raw_waves):
        where = f"waves[{i}]"
        if not isinstance(w, Mapping):
            raise _fail(origin, where, "expected {wave: N, cutover: auto|manual, start: ...}")
        _check_keys(origin, where, w, _WAVE_KEYS)
        number = _int(origin, f"{where}.wave", w.get("wave"), 1, 1000)
        cutover = w.get("cutover", "auto")
        if cutover not in CUTOVER_POLICIES:
            raise _fail(origin, f"{where}.cutover", f"{cutover!r}: use auto (after the final pass) or manual")
        start = w.get("start", "after-cutover")
        if start not in WAVE_STARTS:
            raise _fail(origin, f"{where}.start", f"{start!r}: use one of {', '.join(WAVE_STARTS)}")
        waves[number] = Wave(number, cutover, start)
    default_cutover = (overrides or {}).get("cutover")
    if default_cutover:
        for n in {s.wave for s in servers}:
            w = waves.get(n, Wave(n))
            waves[n] = Wave(n, default_cutover, w.start)
    endpoint = data.get("api_endpoint")
    sd = state_dir or data.get("state_dir") or f"{p.stem}.fleet"
    return FleetPlan(
        path=origin, state_dir=_path(base, sd) if not state_dir else str(Path(state_dir).absolute()),
        servers=tuple(servers), waves=waves,
        concurrency=_int(origin, "concurrency", data.get("concurrency", 4), 1, 1000),
        bandwidth_kbps=_int(origin, "bandwidth_kbps", data.get("bandwidth_kbps", 0), 0, 100_000_000),
        api_endpoint=_str(origin, "api_endpoint", endpoint) if endpoint else None,
        pass_interval=float(data.get("pass_interval", 10.0)),
        poll_interval=float(data.get("poll_interval", 5.0)),
    )
