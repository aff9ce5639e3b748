"""go2tencentcloud's user.json / client.json: the shipped shapes load, broken ones fail clearly.

The table below is the contract for error messages: each broken file must
produce a ConfigError whose text contains the fragment (field path and fix).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from cvmigrate.common.errors import ConfigError
from cvmigrate.controller.config import (
    ClientConfig,
    CredentialSource,
    DataDisk,
    NetMode,
    Secret,
    load_client_config,
    load_user_config,
    parse_client_config,
    parse_user_config,
)

DATA = Path(__file__).resolve().parent.parent / "data"
USER_EXAMPLE = DATA / "user.json.example"
CLIENT_EXAMPLE = DATA / "client.json.example"

SECRET_KEY = "sk-VERY-SECRET-0123456789abcdef"
PROXY_PASSWORD = "pw-VERY-SECRET-proxy"


def user(**fields: object) -> str:
    """A valid user.json with some fields replaced (a value of ... removes the field)."""
    base: dict[str, object] = {
        "SecretId": "AKIDexample",
        "SecretKey": SECRET_KEY,
        "Region": "ap-guangzhou",
        "InstanceId": "ins-1a2b3c4d",
    }
    for key, value in fields.items():
        if value is ...:
            base.pop(key, None)
        else:
            base[key] = value
    return json.dumps(base)


def disks(*entries: dict) -> str:
    return user(DataDisks=list(entries))


def client(client_section: dict | None = None, **top: object) -> str:
    doc: dict[str, object] = {}
    if client_section is not None:
        doc["Client"] = client_section
    doc.update(top)
    return json.dumps(doc)


D1 = {"Index": 1, "Size": 10, "MountPoint": "/mnt/disk1"}

BROKEN = [
    # ---- files / JSON syntax
    ("user.json", "", "the file is empty"),
    ("user.json", '{\n  "Region": "ap-guangzhou",\n  "InstanceId": "ins-1a2b3c4d",\n}',
     "invalid JSON at line 4, column 1"),
    ("user.json", '{\n  "Region": "ap-guangzhou"\n  "InstanceId": "ins-1a2b3c4d"\n}',
     "invalid JSON at line 3, column 3: Expecting ','"),
    ("user.json", "{'Region': 'ap-guangzhou'}", "invalid JSON at line 1, column 2"),
    ("client.json", '{\n  // comment\n  "Client": {}\n}', "invalid JSON at line 2, column 3"),
    ("user.json", '["Region", "ap-guangzhou"]', "expected a JSON object {...} at the top level, got an array"),
    ("user.json", '{"Region": "ap-guangzhou", "Region": "ap-beijing", "InstanceId": "ins-1a2b3c4d"}',
     "key 'Region' appears twice"),
    ("client.json", '{"Cvmigrate": {"Timeouts": {"transfer": NaN}}}', "NaN is not valid JSON"),
    # ---- user.json: required fields and formats
    ("user.json", user(Region=...), "Region: required"),
    ("user.json", user(Region=""), "Region: required"),
    ("user.json", user(Region="ap-guangzhou-3"),
     'Region: "ap-guangzhou-3" is an availability zone, not a region; use the region "ap-guangzhou"'),
    ("user.json", user(Region="AP-GUANGZHOU"), 'Region: region names are lowercase; use "ap-guangzhou"'),
    ("user.json", user(Region="guangzhou"), 'Region: expected a region such as "ap-guangzhou", got string "guangzhou"'),
    ("user.json", user(Region=12), 'Region: expected a region name string such as "ap-guangzhou", got number 12'),
    ("user.json", user(InstanceId=...), "InstanceId: required"),
    ("user.json", user(InstanceId="your instance id"), "InstanceId: still the example placeholder"),
    ("user.json", user(InstanceId="ins-xxxxxxxx"), "InstanceId: still the example placeholder"),
    ("user.json", user(InstanceId="ins-123"),
     'InstanceId: expected "ins-" followed by 8 lowercase letters or digits, got string "ins-123"'),
    ("user.json", user(InstanceId="INS-1A2B3C4D"), 'use "ins-1a2b3c4d"'),
    ("user.json", user(SecretId="your secretId"), "SecretId: still the example placeholder"),
    ("user.json", user(SecretKey=...), "SecretKey: missing while SecretId is set"),
    ("user.json", user(SecretId=""), "SecretId: missing while SecretKey is set"),
    ("user.json", user(SecretKey=12345), "SecretKey: expected a string, got a number (value hidden)"),
    # ---- user.json: unknown / misspelt keys
    ("user.json", user(Regoin="ap-guangzhou"), "Regoin: unknown field; did you mean Region?"),
    ("user.json", user(region="ap-guangzhou"), "region: wrong letter case; the field is spelled Region"),
    ("user.json", user(Zone="ap-guangzhou-3"), "Zone: unknown field; remove it"),
    # ---- user.json: DataDisks
    ("user.json", user(DataDisks={"Index": 1}),
     "DataDisks: expected an array of {Index, Size, MountPoint} objects, got an object"),
    ("user.json", user(DataDisks=[dict(D1, Index=i, MountPoint=f"/mnt/d{i}") for i in range(1, 22)]),
     "DataDisks: 21 entries; go2tencentcloud supports at most 20"),
    ("user.json", disks({"Index": 1, "Size": 10}), "DataDisks[0].MountPoint: required"),
    ("user.json", disks(dict(D1, Index=0)), "DataDisks[0].Index: 0 is out of range; expected 1..20"),
    ("user.json", disks(dict(D1, Index=21)), "DataDisks[0].Index: 21 is out of range; expected 1..20"),
    ("user.json", disks(dict(D1, Index="1")),
     'DataDisks[0].Index: expected an integer 1..20 (Nth data disk of the target CVM), got string "1"'),
    ("user.json", disks(dict(D1, Size=5)), "DataDisks[0].Size: 5 is out of range; expected 10..16000"),
    ("user.json", disks(dict(D1, Size=16001)), "DataDisks[0].Size: 16001 is out of range"),
    ("user.json", disks(dict(D1, Size=10.5)), "DataDisks[0].Size: expected an integer 10..16000"),
    ("user.json", disks(dict(D1, MountPoint="mnt/disk1")),
     'DataDisks[0].MountPoint: expected an absolute path such as "/mnt/disk1"'),
    ("user.json", disks(dict(D1, MountPoint="/")), 'DataDisks[0].MountPoint: "/" is the system disk'),
    ("user.json", disks(D1, dict(D1, MountPoint="/mnt/disk2")),
     "DataDisks[1].Index: 1 is already used by DataDisks[0]"),
    ("user.json", disks(D1, dict(D1, Index=2, MountPoint="/mnt/disk1/")),
     'DataDisks[1].MountPoint: "/mnt/disk1" is already listed in DataDisks[0]'),
    ("user.json", disks(dict(D1, Mountpoint="/x")),
     "DataDisks[0].Mountpoint: wrong letter case; the field is spelled DataDisks[0].MountPoint"),
    ("user.json", user(DataDisks=["/mnt/disk1"]),
     "DataDisks[0]: expected an object {Index, Size, MountPoint}, got string"),
    # ---- client.json: typos, types, ranges
    ("client.json", client({"Net": {"Mod": 3}}), "Client.Net.Mod: unknown field; did you mean Client.Net.Mode?"),
    ("client.json", client({"Rsync": {"BandwithLimit": "100"}}),
     "Client.Rsync.BandwithLimit: unknown field; did you mean Client.Rsync.BandwidthLimit?"),
    ("client.json", client({"Net": {"Proxy": {"IP": "10.0.0.1"}}}),
     "Client.Net.Proxy.IP: wrong letter case; the field is spelled Client.Net.Proxy.Ip"),
    ("client.json", json.dumps({"Clinet": {}}), "Clinet: unknown field; did you mean Client?"),
    ("client.json", client({"Net": {"Mode": "3"}}),
     'Client.Net.Mode: expected an integer 0..3 (0 public, 1-3 private network scenarios), got string "3"'),
    ("client.json", client({"Net": {"Mode": 4}}), "Client.Net.Mode: 4 is not a mode; use 0 (public network)"),
    ("client.json", client({"Net": {"Mode": True}}), "Client.Net.Mode: expected an integer 0..3"),
    ("client.json", client({"Net": {"Mode": 3}}), "Client.Net.Proxy.Ip: required when Client.Net.Mode is 3"),
    ("client.json", client({"Net": {"Mode": 3, "Proxy": {"Ip": "10.0.0.1", "Port": ""}}}),
     "Client.Net.Proxy.Port: required when Client.Net.Mode is 3"),
    ("client.json", client({"Net": {"Mode": 3, "Proxy": {"Ip": "10.0.0.1", "Port": 70000}}}),
     "Client.Net.Proxy.Port: 70000 is out of range; expected 1..65535"),
    ("client.json", client({"Net": {"Proxy": {"Port": "31x8"}}}),
     'Client.Net.Proxy.Port: expected a port number 1..65535 (a number or a string such as "3128"), got string "31x8"'),
    ("client.json", client({"Net": {"Proxy": {"Ip": "not an ip!"}}}),
     "Client.Net.Proxy.Ip: expected the proxy's IP address"),
    ("client.json", client({"Net": {"Proxy": {"Password": PROXY_PASSWORD}}}),
     "Client.Net.Proxy.User: required when Client.Net.Proxy.Password is set"),
    ("client.json", client({"Net": {"Proxy": {"User": "u", "Password": 1234}}}),
     "Client.Net.Proxy.Password: expected a string, got a number (value hidden)"),
    ("client.json", client({"Net": {"Proxy": {"IPv6": "true"}}}),
     'Client.Net.Proxy.IPv6: expected true or false (without quotes), got string "true"'),
    ("client.json", client({"Extra": {"IgnoreCheck": 1}}),
     "Client.Extra.IgnoreCheck: expected true or false (without quotes), got number 1"),
    ("client.json", client({"ToolMode": "false"}),
     'Client.ToolMode: expected true or false (without quotes), got string "false"'),
    ("client.json", client({"Net": []}), "Client.Net: expected an object {...}, got an array"),
    ("client.json", client({"Rsync": {"BandwidthLimit": "fast"}}),
     'Client.Rsync.BandwidthLimit: expected a whole number of KBytes/s such as "10240" (or "" for unlimited), '
     'got string "fast"'),
    ("client.json", client({"Rsync": {"BandwidthLimit": 2**31}}),
     "Client.Rsync.BandwidthLimit: 2147483648 KBytes/s is out of range; expected 0..2147483647"),
    ("client.json", client({"Rsync": {"BandwidthLimit": -1}}),
     "Client.Rsync.BandwidthLimit: -1 KBytes/s is out of range"),
    ("client.json", client({"Rsync": {"BandwidthLimit": 12.5}}),
     "Client.Rsync.BandwidthLimit: expected a whole number"),
    # ---- client.json: our Cvmigrate section is strict
    ("client.json", client(Cvmigrate={"Timeout": {}}),
     "Cvmigrate.Timeout: unknown field; did you mean Cvmigrate.Timeouts?"),
    ("client.json", client(Cvmigrate={"Retries": 3}), "Cvmigrate.Retries: unknown field; remove it"),
    ("client.json", client(Cvmigrate={"Timeouts": {"transfer": 0}}),
     "Cvmigrate.Timeouts.transfer: 0 is not a positive number of seconds"),
    ("client.json", client(Cvmigrate={"Timeouts": {"transfer": -5}}),
     "Cvmigrate.Timeouts.transfer: -5 is not a positive number"),
    ("client.json", client(Cvmigrate={"Timeouts": {"transfer": "600"}}),
     'Cvmigrate.Timeouts.transfer: expected a positive number of seconds, got string "600"'),
    ("client.json", client(Cvmigrate={"Timeouts": [600]}),
     "Cvmigrate.Timeouts: expected an object {...}, got an array"),
    ("client.json", client(Cvmigrate={"Streams": 9}),
     "Cvmigrate.Streams: 9 is out of range; expected 1..8, or 0 for what both sides' cores allow"),
    ("client.json", client(Cvmigrate={"Streams": "4"}),
     'Cvmigrate.Streams: expected a whole number of streams 0..8, got string "4"'),
    ("client.json", client(Cvmigrate={"Streams": True}), "Cvmigrate.Streams: expected a whole number"),
]


def _ids() -> list[str]:
    return [f"{i:02d}-{kind}-{frag[:40]}" for i, (kind, _, frag) in enumerate(BROKEN)]


@pytest.mark.parametrize(("kind", "content", "fragment"), BROKEN, ids=_ids())
def test_broken_config_is_rejected_with_field_and_fix(tmp_path: Path, kind: str, content: str, fragment: str) -> None:
    path = tmp_path / kind
    path.write_text(content, encoding="utf-8")
    loader = load_user_config if kind == "user.json" else load_client_config
    with pytest.raises(ConfigError) as info:
        loader(path)
    message = str(info.value)
    assert fragment in message
    # Every message starts with the file it is about.
    assert message.startswith(str(path))
    # Secrets never appear in a message, even when the secret field is the broken one.
    assert SECRET_KEY not in message and PROXY_PASSWORD not in message
    assert info.value.exit_code == 2


def test_table_is_big_enough() -> None:
    assert len(BROKEN) >= 20
    assert {kind for kind, _, _ in BROKEN} == {"user.json", "client.json"}


def test_unknown_subtask_is_rejected_when_names_are_given() -> None:
    data = {"Cvmigrate": {"Timeouts": {"enter_rescue": 300}}}
    with pytest.raises(ConfigError, match=r"client\.json: Cvmigrate\.Timeouts\.enter_rescue: unknown sub-task; "
                                          r"did you mean Cvmigrate\.Timeouts\.enter_rescue_mode\?"):
        parse_client_config(data, "client.json", known_subtasks=["enter_rescue_mode", "full_sync"])
    with pytest.raises(ConfigError, match="known sub-tasks: full_sync, wait_rescue_mode"):
        parse_client_config({"Cvmigrate": {"Timeouts": {"zzz": 1}}}, "client.json",
                            known_subtasks=["wait_rescue_mode", "full_sync"])
    # Without a list, any name is accepted: the caller validates later.
    cfg = parse_client_config(data, "client.json")
    assert cfg.timeouts == {"enter_rescue": 300.0}


# --------------------------------------------------------------------------- missing files
def test_missing_user_json_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "user.json"
    with pytest.raises(ConfigError) as info:
        load_user_config(path)
    assert f"user.json not found at {path}" in str(info.value)
    assert "Region" in str(info.value)  # says what to put in it


def test_missing_client_json_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "client.json"
    with pytest.raises(ConfigError, match=f"client.json not found at {path}"):
        load_client_config(path)


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load_user_config(tmp_path)


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "user.json"
    path.write_bytes(b'{"Region": "\xff"}')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_user_config(path)


# --------------------------------------------------------------------------- the shipped shapes load
def test_user_example_loads() -> None:
    cfg = load_user_config(USER_EXAMPLE)
    assert cfg.region == "ap-guangzhou"
    assert cfg.instance_id == "ins-1a2b3c4d"
    assert cfg.data_disks == (DataDisk(index=1, size_gb=10, mount_point="/mnt/disk1"),)
    # The example leaves the key pair "" -> not in the file.
    assert cfg.secret_id is None and cfg.secret_key is None
    assert not cfg.credentials_in_file
    assert cfg.origin == str(USER_EXAMPLE)


def test_client_example_is_the_documented_defaults() -> None:
    cfg = load_client_config(CLIENT_EXAMPLE)
    assert cfg.ignored_fields == ()
    defaults = load_client_config(None)
    # Same values as having no client.json at all (only the origin differs).
    assert (cfg.tool_mode, cfg.net, cfg.extra, cfg.rsync, dict(cfg.timeouts), cfg.streams) == (
        defaults.tool_mode,
        defaults.net,
        defaults.extra,
        defaults.rsync,
        dict(defaults.timeouts),
        0,
    )
    assert defaults.net.mode is NetMode.PUBLIC
    assert defaults.net.proxy.ip is None and defaults.net.proxy.port is None
    assert defaults.rsync.bandwidth_limit_kbps is None
    assert defaults.origin == "defaults"


@pytest.mark.parametrize(
    "doc",
    [
        # Guide, example 1.
        {"SecretId": "your-id", "SecretKey": "k", "Region": "ap-guangzhou", "InstanceId": "ins-abcd1234"},
        # Guide, example 3 (two data disks).
        {
            "SecretId": "AKID1",
            "SecretKey": "k",
            "Region": "ap-guangzhou",
            "InstanceId": "ins-abcd1234",
            "DataDisks": [
                {"Index": 1, "Size": 10, "MountPoint": "/mnt/disk1"},
                {"Index": 2, "Size": 20, "MountPoint": "/mnt/disk2"},
            ],
        },
        # Empty strings for unset credentials, empty / null DataDisks.
        {"SecretId": "", "SecretKey": "", "Region": "na-siliconvalley", "InstanceId": "ins-0000000a", "DataDisks": []},
        {"Region": "ap-shanghai-fsi", "InstanceId": "ins-0000000a", "DataDisks": None},
    ],
)
def test_documented_user_json_shapes_load(doc: dict) -> None:
    cfg = parse_user_config(doc, "user.json")
    assert cfg.region == doc["Region"]


def test_guide_example_file_text_loads(tmp_path: Path) -> None:
    # Byte for byte the guide's example 2 (tabs, trailing spaces), values filled in.
    text = (
        '{  \n\t"SecretId": "AKIDexample",\n\t"SecretKey": "secret",  \n\t"Region": "ap-guangzhou",  \n'
        '\t"InstanceId": "ins-1a2b3c4d",\n\t"DataDisks": [\n\t\t{\n\t\t\t"Index": 1,\n\t\t\t"Size": 10,\n'
        '\t\t\t"MountPoint": "/mnt/disk1"\n\t\t}\n\t]\n}  \n'
    )
    path = tmp_path / "user.json"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())  # with a BOM, as Windows editors write it
    cfg = load_user_config(path)
    assert cfg.credentials_in_file
    assert cfg.secret_key is not None and cfg.secret_key.reveal() == "secret"


def test_client_values_are_read() -> None:
    cfg = parse_client_config(
        {
            "Client": {
                "ToolMode": True,
                "Net": {"Mode": 3, "Proxy": {"Ip": "10.0.0.8", "Port": "3128", "User": "u",
                                             "Password": PROXY_PASSWORD, "IPv6": True}},
                "Extra": {"IgnoreCheck": True, "Daemon": True},
                "Rsync": {"BandwidthLimit": "10240", "Checksum": True},
            },
            "Cvmigrate": {"Timeouts": {"full_sync": 86400, "wait_rescue_mode": 300.5}, "Streams": 4},
        },
        "client.json",
    )
    assert cfg.tool_mode is True
    assert cfg.net.mode is NetMode.PRIVATE_VIA_PROXY
    proxy = cfg.net.proxy
    assert (proxy.ip, proxy.port, proxy.user, proxy.ipv6) == ("10.0.0.8", 3128, "u", True)
    assert cfg.net.proxy.password == Secret(PROXY_PASSWORD)
    assert cfg.extra.ignore_check and cfg.extra.daemon
    assert cfg.rsync.bandwidth_limit_kbps == 10240 and cfg.rsync.checksum
    assert cfg.timeouts == {"full_sync": 86400.0, "wait_rescue_mode": 300.5}
    assert cfg.streams == 4


@pytest.mark.parametrize(("value", "expected"), [
    ("", None), (None, None), ("  ", None), (0, None), ("0", None), (512, 512), ("25600", 25600), (" 100 ", 100),
    (30000, 30000), ("1048576", 1048576)])
def test_bandwidth_limit_forms(value: object, expected: int | None) -> None:
    cfg = parse_client_config({"Client": {"Rsync": {"BandwidthLimit": value}}}, "client.json")
    assert cfg.rsync.bandwidth_limit_kbps == expected


def test_proxy_port_number_or_string() -> None:
    for port in (3128, "3128"):
        cfg = parse_client_config({"Client": {"Net": {"Mode": 3, "Proxy": {"Ip": "proxy.corp.example", "Port": port}}}},
                                  "c")
        assert cfg.net.proxy.port == 3128


def test_undocumented_go2tencentcloud_fields_are_tolerated_and_listed() -> None:
    # Tencent's docs: "other configuration items in client.json usually do not
    # need to be specified" -- the shipped file has keys beyond the subset.
    cfg = parse_client_config(
        {"Client": {"Server": {"Url": "x"}, "Net": {"Mode": 0, "Tunnel": 1}, "Extra": {"LogLevel": 2}},
         "Version": "3.1"},
        "client.json",
    )
    assert set(cfg.ignored_fields) == {"Version", "Client.Server", "Client.Net.Tunnel", "Client.Extra.LogLevel"}


def test_config_objects_are_frozen() -> None:
    cfg = load_client_config(None)
    with pytest.raises(AttributeError):
        cfg.tool_mode = True  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.timeouts["x"] = 1.0  # type: ignore[index]
    ucfg = load_user_config(USER_EXAMPLE)
    with pytest.raises(AttributeError):
        ucfg.region = "ap-beijing"  # type: ignore[misc]


# --------------------------------------------------------------------------- secrets
def test_secrets_never_in_repr_or_str(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    ucfg = parse_user_config(json.loads(user()), "user.json")
    ccfg = parse_client_config(
        {"Client": {"Net": {"Mode": 0, "Proxy": {"Ip": "10.0.0.1", "Port": 8080, "User": "u",
                                                 "Password": PROXY_PASSWORD}}}},
        "client.json",
    )
    creds = ucfg.resolve_credentials({})
    for obj in (ucfg, ccfg, ccfg.net, ccfg.net.proxy, creds, ucfg.secret_key, ccfg.net.proxy.password):
        for text in (repr(obj), str(obj), f"{obj}", "%s" % (obj,)):  # noqa: UP031 - %-formatting is a way to leak
            assert SECRET_KEY not in text and PROXY_PASSWORD not in text
    assert "Secret('********')" in repr(ucfg)  # presence is still visible
    assert SECRET_KEY not in caplog.text and PROXY_PASSWORD not in caplog.text
    # ... but the value is there for the one place that needs it.
    assert ucfg.secret_key is not None and ucfg.secret_key.reveal() == SECRET_KEY


def test_secret_equality_and_truth() -> None:
    assert Secret("a") == Secret("a") and Secret("a") != Secret("b")
    assert not Secret("") and Secret("x")
    with pytest.raises(TypeError):
        Secret(123)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- credential source
def test_credentials_from_file_win_over_environment() -> None:
    cfg = parse_user_config(json.loads(user()), "user.json")
    creds = cfg.resolve_credentials({"TENCENTCLOUD_SECRET_ID": "AKIDenv", "TENCENTCLOUD_SECRET_KEY": "envkey"})
    assert creds.source is CredentialSource.USER_JSON
    assert creds.secret_id == "AKIDexample"


def test_environment_fallback_when_file_has_no_keys() -> None:
    cfg = load_user_config(USER_EXAMPLE)
    assert not cfg.credentials_in_file
    creds = cfg.resolve_credentials({"TENCENTCLOUD_SECRET_ID": "AKIDenv", "TENCENTCLOUD_SECRET_KEY": "envkey"})
    assert creds.source is CredentialSource.ENVIRONMENT
    assert creds.secret_id == "AKIDenv"
    assert creds.secret_key is not None and creds.secret_key.reveal() == "envkey"
    assert "envkey" not in repr(creds)


def test_sdk_chain_when_neither_has_keys() -> None:
    cfg = parse_user_config({"Region": "ap-guangzhou", "InstanceId": "ins-1a2b3c4d"}, "user.json")
    creds = cfg.resolve_credentials({"TENCENTCLOUD_SECRET_ID": "", "TENCENTCLOUD_SECRET_KEY": ""})
    assert creds.source is CredentialSource.SDK_CHAIN
    assert creds.secret_id is None and creds.secret_key is None


def test_half_an_environment_key_pair_is_an_error() -> None:
    cfg = parse_user_config({"Region": "ap-guangzhou", "InstanceId": "ins-1a2b3c4d"}, "user.json")
    with pytest.raises(ConfigError, match="TENCENTCLOUD_SECRET_ID is set but TENCENTCLOUD_SECRET_KEY is not"):
        cfg.resolve_credentials({"TENCENTCLOUD_SECRET_ID": "AKIDenv"})


def test_resolve_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TENCENTCLOUD_SECRET_ID", "AKIDos")
    monkeypatch.setenv("TENCENTCLOUD_SECRET_KEY", "oskey")
    cfg = parse_user_config({"Region": "ap-guangzhou", "InstanceId": "ins-1a2b3c4d"}, "user.json")
    assert cfg.resolve_credentials().source is CredentialSource.ENVIRONMENT


def test_parse_functions_reject_non_objects() -> None:
    with pytest.raises(ConfigError, match="expected a JSON object"):
        parse_user_config([], "user.json")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="expected a JSON object"):
        parse_client_config("x", "client.json")  # type: ignore[arg-type]


def test_client_config_type() -> None:
    assert isinstance(load_client_config(None), ClientConfig)
