"""`cvmigrate fleet` end to end: the demo from a fresh process, a SIGKILLed runner, waves, the console's HTTP rules.

Everything here is a real process: the runner (`cvmigrate fleet run`), one
`cvmigrate migrate` per server, the console (uvicorn); the emulator and the
receivers live in the test process so that they outlive every kill and the
emulator's call log can witness that no cloud action ran twice.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from cvmigrate.agent.verify import compare_trees
from cvmigrate.common.excludes import DEFAULT_EXCLUDE_LINES, ExcludeRules
from cvmigrate.controller import fleet_state as fs
from cvmigrate.controller.checkpoint import Checkpoint
from tests.helpers.fleet import Fleet, wait_for
from tests.helpers.procs import child_env

RULES = ExcludeRules.parse(["/tmp/*", *DEFAULT_EXCLUDE_LINES], origin="test")


@pytest.fixture
def fleet_factory(tmp_path: Path) -> Iterator:
    made: list[Fleet] = []

    def make(*args, **kwargs) -> Fleet:
        f = Fleet(tmp_path, *args, **kwargs)
        made.append(f)
        return f

    yield make
    for f in made:
        f.close()


def test_fleet_demo_five_servers_from_a_fresh_process(tmp_path: Path) -> None:
    """The issue's "done when": `fleet demo --servers 5` completes, each emulated CVM entered/left rescue once."""
    t0 = time.monotonic()
    port_file = tmp_path / "port"
    proc = subprocess.run([sys.executable, "-m", "cvmigrate", "fleet", "demo", "--servers", "5",
                           "--port-file", str(port_file)], cwd=tmp_path, env=child_env(), text=True,
                          capture_output=True, timeout=240)
    seconds = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert re.search(r"^console: http://127\.0\.0\.1:\d+/\?token=\S+$", out, re.M)
    assert int(port_file.read_text()) > 0
    assert out.count("EnterRescueMode x1, ExitRescueMode x1, target RUNNING") == 5
    assert len(re.findall(r"^demo-\d +1 done +3 complete +100\.0%", out, re.M)) == 5
    assert "fleet demo complete: 5 migrations" in out
    assert "Traceback" not in proc.stderr
    print(f"fleet demo --servers 5: {seconds:.1f} s")
    assert os.listdir(tmp_path) == ["port"]  # the temp work directory is gone


def test_runner_sigkilled_mid_fleet_resumes_every_migration_without_repeating_cloud_actions(fleet_factory) -> None:
    """SIGKILL the runner (and one migration with it) mid-wave-1, start it again: all complete, each cloud action once.

    Wave 2 may only start after wave 1 has cut over, so the kill also checks that the restarted runner keeps the
    wave order; the adopted migration (still running when the runner died) is not started twice.
    """
    fleet = fleet_factory([("w1a", 1), ("w1b", 1), ("w2a", 2), ("w2b", 2)], files=250)
    fleet.write_plan(concurrency=2, bandwidth_kbps=1200)
    runner = fleet.start_runner()
    try:
        # mid-fleet: w1a is copying (its kill below interrupts a transfer), w1b runs, wave 2 waits
        wait_for("w1a copying while w1b runs",
                 lambda: fleet.view("w1a")["subtask"] == "full_pass" and fleet.view("w1a")["bytes_sent"] > 0
                 and fleet.record("w1b").get("phase") == "running" and not fleet.view("w1b")["cut_over"],
                 timeout=120, detail=lambda: {n: (fleet.record(n).get("phase"), fleet.view(n)["subtask"],
                                                  fleet.view(n)["bytes_sent"]) for n in fleet.ids})
        # the fleet bandwidth is split across the running migrations (the `cvmigrate bwlimit` fact)
        assert {fleet.view(n)["bwlimit_kbps"] for n in ("w1a", "w1b")} == {600}
        runner.send_signal(signal.SIGKILL)
        runner.wait(timeout=10)
        killed_pid = fleet.record("w1a")["pid"]
        os.kill(killed_pid, signal.SIGKILL)  # a migration dies too (e.g. the OOM killer took both)
        adopted_pid = fleet.record("w1b")["pid"]
        assert fs.lock_held(fs.server_dir(fleet.dir, "w1b") / "run.lock"), "w1b should outlive the runner"
        assert fleet.record("w2a").get("phase", "pending") == "pending"

        t0 = time.monotonic()
        runner = fleet.start_runner(log="runner2.out")
        rc = runner.wait(timeout=240)
        out = (fleet.tmp / "runner2.out").read_text()
        assert rc == 0, out + "\n".join((fs.server_dir(fleet.dir, n) / "output.log").read_text()
                                        for n in ("w1a", "w1b", "w2a", "w2b"))
        print(f"restarted runner finished the fleet in {time.monotonic() - t0:.1f} s")
    finally:
        if runner.poll() is None:
            runner.kill()
    assert "adopted" in (fleet.dir / "runner.log").read_text()
    assert "every migration is complete" in out
    rec = {n: fleet.record(n) for n in ("w1a", "w1b", "w2a", "w2b")}
    assert {r["phase"] for r in rec.values()} == {"done"}
    assert rec["w1a"]["attempts"] == 2, rec["w1a"]       # resumed after its kill
    assert rec["w1b"]["attempts"] == 1, rec["w1b"]       # adopted, never started again
    assert rec["w1b"].get("pid") in (None, adopted_pid)
    # each cloud action once per server, although a runner and a migration were killed mid-flight
    for name, iid in fleet.ids.items():
        for action in ("EnterRescueMode", "ExitRescueMode"):
            assert fleet.ok_calls(action, iid) == 1, (name, action)
    assert fleet.ok_calls("RegisterMigrationTask") == 4
    # wave 2 started only after every wave-1 server had cut over (finished its final pass)
    cut: list[float] = []
    for name in ("w1a", "w1b"):
        ck = Checkpoint(fs.state_file(fleet.dir, name), readonly=True)
        row = ck.subtask("incremental_passes")
        ck.close()
        assert row is not None and row.finished is not None, (name, row)
        cut.append(row.finished)
    assert min(rec["w2a"]["started"], rec["w2b"]["started"]) > max(cut)
    # and the data arrived intact
    for name in fleet.ids:
        report = compare_trees(str(fleet.sources[name]), str(fleet.targets[name]), RULES)
        assert report.ok, (name, report.differences[:5])
    status = fleet.cvmigrate("fleet", "status", str(fleet.plan), "--json")
    assert status.returncode == 0, status.stderr
    view = json.loads(status.stdout)
    assert view["complete"] and view["counts"]["done"] == 4 and not view["runner_alive"]
    assert "E2E_SECRET" not in status.stdout and "SecretKey" not in status.stdout


def _csrf_token(page: str) -> str:
    """The console page's CSRF token (its <meta name="csrf-token">)."""
    m = re.search(r'name="csrf-token" content="([^"]+)"', page)
    assert m is not None, f"no csrf-token in the page:\n{page[:2000]}"
    return m[1]


def _http(url: str, *, method: str = "GET", headers: dict[str, str] | None = None, data: bytes | None = None
          ) -> tuple[int, dict[str, str], str]:
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *a, **k):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    req = urllib.request.Request(url, method=method, headers=headers or {}, data=data)  # noqa: S310 - http://127.0.0.1 only
    try:
        with opener.open(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


def test_console_login_sessions_csrf_and_metrics(fleet_factory) -> None:
    """The console over plain HTTP: a one-time token -> HttpOnly SameSite=Strict cookie; actions need CSRF + Origin."""
    fleet = fleet_factory([("m1", 1), ("m2", 1)], files=60)
    fleet.write_plan(concurrency=2, waves=[{"wave": 1, "cutover": "manual"}])
    runner = fleet.start_runner("--console", "127.0.0.1:0", "--port-file", str(fleet.tmp / "port"))
    try:
        url = wait_for("the console URL", lambda: re.search(r"^console: (\S+)$",
                                                            (fleet.tmp / "runner.out").read_text(), re.M), 60)[1]
        base, token = url.split("/?token=")
        assert base == f"http://127.0.0.1:{int((fleet.tmp / 'port').read_text())}"
        # no token, no session: refused everywhere but /metrics
        assert _http(base + "/")[0] == 401
        assert _http(base + "/api/fleet")[0] == 401
        assert _http(base + "/events")[0] == 401
        assert _http(base + "/?token=wrong")[0] == 403
        origin = {"Origin": base, "Content-Type": "application/json"}
        assert _http(base + "/api/servers/m1/cutover", method="POST", headers=origin, data=b"{}")[0] == 401
        # the one-time token becomes a session cookie, once
        code, headers, _ = _http(url)
        assert code == 303 and headers["location"] == "/"
        cookie = headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict") and token not in cookie
        assert _http(url)[0] == 403  # used up
        session = {"Cookie": cookie.split(";")[0]}
        code, _, page = _http(base + "/", headers=session)
        assert code == 200 and "cvmigrate fleet console" in page and "http://" not in page.split("<body>")[1]
        csrf = _csrf_token(page)
        view = json.loads(_http(base + "/api/fleet", headers=session)[2])
        assert [s["name"] for s in view["servers"]] == ["m1", "m2"]
        wait_for("m1 in its incremental passes", lambda: fleet.view("m1")["subtask"] == "incremental_passes", 90)
        # actions: a session alone is not enough (CSRF header), nor a foreign Origin
        act = base + "/api/servers/m1/cutover"
        assert _http(act, method="POST", headers={**session, **origin}, data=b"{}")[0] == 403
        bad_origin = {**session, **origin, "X-CSRF-Token": csrf, "Origin": "http://evil.example"}
        assert _http(act, method="POST", headers=bad_origin, data=b"{}")[0] == 403
        no_origin = {**session, "X-CSRF-Token": csrf}
        assert _http(act, method="POST", headers=no_origin, data=b"{}")[0] == 403
        assert not fs.cutover_file(fleet.dir, "m1").exists()
        good = {**session, **origin, "X-CSRF-Token": csrf}
        code, _, body = _http(base + "/api/servers/m1/bwlimit", method="POST", headers=good, data=b'{"kbps": 700}')
        assert code == 200, body
        wait_for("m1's limit applied", lambda: fleet.view("m1")["bwlimit_kbps"] == 700, 20)
        assert _http(base + "/api/servers/m1/bwlimit", method="POST", headers=good, data=b'{"kbps": -1}')[0] == 400
        assert _http(base + "/api/servers/nope/cutover", method="POST", headers=good, data=b"{}")[0] == 404
        for name in ("m1", "m2"):
            code, _, body = _http(base + f"/api/servers/{name}/cutover", method="POST", headers=good, data=b"{}")
            assert code == 200 and json.loads(body)["ok"], body
        ck = Checkpoint(fs.state_file(fleet.dir, "m2"), readonly=True)
        assert ck.fact("bwlimit_override") is None   # no fleet limit: client.json's BandwidthLimit stays in force
        ck.close()
        metrics = _http(base + "/metrics")[2]
        assert 'cvmigrate_migration_bwlimit_kbps{server="m1",wave="1"} 700.0' in metrics
        assert re.search(r'cvmigrate_migration_sent_bytes_total\{server="m1",wave="1"\} [1-9]', metrics)
        assert "cvmigrate_fleet_runner_up 1.0" in metrics
        detail = json.loads(_http(base + "/api/servers/m1", headers=session)[2])
        assert detail["subtasks"][0]["name"] == "validate_config" and detail["pass_history"]
        assert runner.wait(timeout=120) == 0, (fleet.tmp / "runner.out").read_text()
    finally:
        if runner.poll() is None:
            runner.kill()
    for name in ("m1", "m2"):
        ck = Checkpoint(fs.state_file(fleet.dir, name), readonly=True)
        assert ck.is_done("msp_finish") and ck.passes()[-1]["kind"] == "final"
        ck.close()


class _Console:
    """A logged-in HTTP client of the console a runner printed (session cookie + CSRF token + Origin)."""

    def __init__(self, runner_out: Path) -> None:
        url = wait_for("the console URL", lambda: re.search(r"^console: (\S+)$", runner_out.read_text(), re.M), 60)[1]
        self.base = url.split("/?")[0]
        code, headers, _ = _http(url)
        assert code == 303
        self.cookie = headers["set-cookie"].split(";")[0]
        page = _http(self.base + "/", headers={"Cookie": self.cookie})[2]
        self.csrf = _csrf_token(page)

    def act(self, name: str, action: str, body: bytes = b"{}") -> str:
        code, _, text = _http(f"{self.base}/api/servers/{name}/{action}", method="POST", data=body, headers={
            "Cookie": self.cookie, "Origin": self.base, "X-CSRF-Token": self.csrf,
            "Content-Type": "application/json"})
        assert code == 200, text
        return json.loads(text)["message"]


def test_console_pause_resume_retry_and_clean(fleet_factory) -> None:
    """The console's other actions reach the runner: a failed wave-1 server blocks wave 2 until retried; a paused
    migration stops and resumes from its checkpoint; clean takes a target out of rescue mode and drops its state."""
    fleet = fleet_factory([("f1", 1), ("p2", 2), ("c3", 2)], files=60)
    fleet.write_plan(concurrency=3, waves=[{"wave": 1}, {"wave": 2, "cutover": "manual"}])
    fleet.emu.inject("EnterRescueMode", error="InvalidParameter", message="injected by the test", count=1)
    runner = fleet.start_runner("--console", "127.0.0.1:0")
    try:
        console = _Console(fleet.tmp / "runner.out")
        wait_for("f1 failed", lambda: fleet.record("f1").get("phase") == "failed", 60)
        assert "injected by the test" in fs.server_view(fleet.dir, {"name": "f1"})["error"]
        time.sleep(1.5)
        assert fleet.record("p2").get("phase", "pending") == "pending"   # wave 2 waits for wave 1's cut-over
        assert "retry requested" in console.act("f1", "retry")
        wait_for("f1 done after its retry", lambda: fleet.record("f1").get("phase") == "done", 90)
        assert fleet.record("f1")["attempts"] == 2
        wait_for("p2 and c3 in their incremental passes",
                 lambda: all(fleet.view(n)["subtask"] == "incremental_passes" for n in ("p2", "c3")), 90)
        console.act("p2", "pause")
        wait_for("p2 paused", lambda: fleet.record("p2").get("phase") == "paused", 30)
        assert not fs.lock_held(fs.server_dir(fleet.dir, "p2") / "run.lock")   # its migrate process is gone
        console.act("c3", "clean")
        wait_for("c3 cleaned", lambda: fleet.record("c3").get("phase") == "cleaned", 60)
        assert fleet.emu.instance_state(fleet.ids["c3"]) == "RUNNING"
        assert not fs.state_file(fleet.dir, "c3").exists()
        console.act("p2", "resume")
        wait_for("p2 running again", lambda: fleet.record("p2").get("phase") == "running", 30)
        assert fleet.record("p2")["attempts"] == 2
        wrong = fleet.cvmigrate("fleet", "cutover", str(fleet.plan), "nope")
        assert wrong.returncode == 2 and "no server 'nope'" in wrong.stderr and "p2" in wrong.stderr
        cut = fleet.cvmigrate("fleet", "cutover", str(fleet.plan), "p2")   # the CLI spelling of "Cut over now"
        assert cut.returncode == 0 and "p2: cut-over requested" in cut.stdout, cut.stderr
        text = fleet.cvmigrate("fleet", "status", str(fleet.dir))
        assert text.returncode == 0 and "runner running" in text.stdout
        assert re.search(r"^c3 +2 cleaned", text.stdout, re.M) and re.search(r"^f1 +1 done", text.stdout, re.M)
        assert runner.wait(timeout=120) == 0, (fleet.tmp / "runner.out").read_text()
    finally:
        if runner.poll() is None:
            runner.kill()
    assert {n: fleet.record(n)["phase"] for n in fleet.ids} == {"f1": "done", "p2": "done", "c3": "cleaned"}
    for name in ("f1", "p2", "c3"):
        assert fleet.ok_calls("EnterRescueMode", fleet.ids[name]) == 1
        assert fleet.ok_calls("ExitRescueMode", fleet.ids[name]) == 1
    ck = Checkpoint(fs.state_file(fleet.dir, "p2"), readonly=True)
    row = ck.subtask("incremental_passes")
    assert row is not None and row.attempts == 2 and ck.all_done()   # resumed where the pause stopped it
    ck.close()
