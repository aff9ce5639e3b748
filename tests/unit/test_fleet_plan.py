"""Fleet plans: the documented example loads; inline secrets and mistakes are one clear error naming the field."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cvmigrate.common.errors import ConfigError
from cvmigrate.controller.fleet_plan import load_plan

DATA = Path(__file__).resolve().parents[1] / "data"


def _plan(tmp_path: Path, text: str, name: str = "plan.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


SERVER = "  - {name: a1, instance_id: ins-aaaaaaaa, region: ap-guangzhou, agent: 10.0.0.1:7443}\n"


def test_the_example_plan_loads(tmp_path: Path) -> None:
    for f in ("fleet.example.yaml", "user.json.example"):
        shutil.copy(DATA / f, tmp_path / f)
    plan = load_plan(tmp_path / "fleet.example.yaml")
    assert [s.name for s in plan.servers] == ["web1", "web2", "db1"]
    assert plan.concurrency == 4 and plan.bandwidth_kbps == 40000
    assert plan.wave(1).cutover == "auto" and plan.wave(2).cutover == "manual"
    assert plan.state_dir == str(tmp_path / "fleet-state")
    db1 = plan.server("db1")
    assert db1.credentials.user_json == str(tmp_path / "user.json.example")
    assert db1.user_json() == {"Region": "ap-shanghai", "InstanceId": "ins-3c4d5e6f",
                               "DataDisks": [{"Index": 1, "Size": 100, "MountPoint": "/var/lib/mysql"}]}
    assert plan.server("web2").receiver == "203.0.113.12:443"
    # what the fleet directory keeps for the console names the credential source, never a value
    assert "user.json" in str(plan.as_json()) and "SecretKey" not in str(plan.as_json())


@pytest.mark.parametrize("snippet,where", [
    ("secret_key: abc\nservers:\n" + SERVER, "secret_key"),
    ("servers:\n  - {name: a1, instance_id: ins-aaaaaaaa, region: ap-guangzhou, SecretKey: x}\n", "SecretKey"),
    ("servers:\n  - {name: a1, instance_id: ins-aaaaaaaa, region: ap-guangzhou, credentials: {password: x}}\n",
     "credentials.password"),
    ("tls: {token: abc}\nservers:\n" + SERVER, "tls.token"),
])
def test_inline_secrets_are_refused_with_the_fix(tmp_path: Path, snippet: str, where: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_plan(_plan(tmp_path, snippet))
    msg = str(info.value)
    assert where in msg and "inline secrets are not allowed" in msg and "user_json" in msg
    assert "abc" not in msg


def test_env_credentials_name_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plan = load_plan(_plan(tmp_path, "credentials: {env: {secret_id: MY_ID, secret_key: MY_KEY}}\nservers:\n" + SERVER))
    creds = plan.servers[0].credentials
    monkeypatch.setenv("MY_ID", "AKIDx")
    monkeypatch.delenv("MY_KEY", raising=False)
    with pytest.raises(ConfigError, match=r"\$MY_KEY is not set"):
        creds.environment()
    monkeypatch.setenv("MY_KEY", "k")
    assert creds.environment() == {"TENCENTCLOUD_SECRET_ID": "AKIDx", "TENCENTCLOUD_SECRET_KEY": "k"}


@pytest.mark.parametrize("text,expected", [
    ("servers: []\n", "servers: expected a non-empty list"),
    ("servers:\n" + SERVER + SERVER, "two servers share the name 'a1'"),
    ("servers:\n  - {name: a1, instance_id: ins-bad, region: ap-guangzhou}\n", "InstanceId"),
    ("servers:\n  - {name: 'a b', instance_id: ins-aaaaaaaa, region: ap-guangzhou}\n", "servers[0].name"),
    ("waves: [{wave: 1, cutover: later}]\nservers:\n" + SERVER, "waves[0].cutover: 'later': use auto"),
    ("servers:\n  - {name: a1, instance_id: ins-aaaaaaaa, region: ap-guangzhou, agent: nowhere}\n",
     "expected HOST:PORT"),
    ("servers:\n  - {name: a1, instance_id: ins-aaaaaaaa, region: ap-guangzhou, wavе: 2}\n", "unknown key"),
    ("servers: [\n", "not valid YAML"),
    ("concurrency: 0\nservers:\n" + SERVER, "concurrency: expected a whole number 1..1000"),
])
def test_plan_mistakes_are_one_clear_error(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_plan(_plan(tmp_path, text))
    assert expected in str(info.value)
    assert str(tmp_path / "plan.yaml") in str(info.value)


def test_csv_plan(tmp_path: Path) -> None:
    (tmp_path / "user.json").write_text('{"Region": "ap-guangzhou", "InstanceId": "ins-aaaaaaaa"}')
    p = _plan(tmp_path, "name,wave,agent,instance_id,region,credentials,data_disks,excludes\n"
                        "a1,1,10.0.0.1:7443,ins-aaaaaaaa,ap-guangzhou,env,,/tmp/*;/var/cache\n"
                        "b2,2,10.0.0.2:7443,ins-bbbbbbbb,ap-shanghai,user_json:user.json,1:50:/data,\n", "plan.csv")
    plan = load_plan(p, overrides={"cutover": "manual", "concurrency": 2})
    a1, b2 = plan.servers
    assert a1.excludes == ("/tmp/*", "/var/cache") and a1.wave == 1
    assert b2.data_disks == ({"Index": 1, "Size": 50, "MountPoint": "/data"},) and b2.wave == 2
    assert b2.credentials.user_json == str(tmp_path / "user.json")
    assert plan.wave(1).cutover == plan.wave(2).cutover == "manual" and plan.concurrency == 2
    bad = _plan(tmp_path, "name,instance_id,region,secret_key\na1,ins-aaaaaaaa,ap-guangzhou,x\n", "bad.csv")
    with pytest.raises(ConfigError, match="column 'secret_key': inline secrets are not allowed"):
        load_plan(bad)
