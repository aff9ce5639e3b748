"""The fleet directory: what the runner writes and what `fleet status`, the console and /metrics read.

Why files and not a shared process: the runner can be SIGKILLed and the
console can run on its own (``cvmigrate console --fleet DIR``); both only
need the directory.  Layout::

    DIR/plan.json                 the plan as loaded (no secrets: plans cannot hold any)
    DIR/runner.lock               flock held by the live runner
    DIR/runner.json               runner pid, start time, heartbeat, console URL
    DIR/servers/NAME/
        user.json                 Region, InstanceId, DataDisks -- never credentials
        excludes.txt              the plan's excludes for this server
        cvmigrate-state.db        the migration's own checkpoint (`cvmigrate status --state` reads it too)
        cvmigrate-state.db.cutover  created by "cut over now" (the `migrate --cutover manual` interface)
        log, output.log           the migration's log file and its plain progress lines
        run.lock                  flock held by the running `cvmigrate migrate` child (survives the runner)
        runner.json               phase (pending/running/paused/failed/done/cleaning/cleaned), pid, attempts, error
        requests/*.json           console actions waiting for the runner (pause, resume, retry, clean, bwlimit)

A request is a file renamed into place, consumed (deleted) by the runner: two
writers never race on one file.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

from cvmigrate.common.durable import write_file

STATE_NAME = "cvmigrate-state.db"
PHASES = ("pending", "running", "paused", "failed", "done", "cleaning", "cleaned")
ACTIONS = ("cutover", "bwlimit", "pause", "resume", "retry", "clean")
#: Seconds after which a runner heartbeat counts as stale.
HEARTBEAT_STALE = 10.0


def server_dir(fleet_dir: str | os.PathLike[str], name: str) -> Path:
    return Path(fleet_dir) / "servers" / name


def state_file(fleet_dir: str | os.PathLike[str], name: str) -> Path:
    return server_dir(fleet_dir, name) / STATE_NAME


def cutover_file(fleet_dir: str | os.PathLike[str], name: str) -> Path:
    return Path(f"{state_file(fleet_dir, name)}.cutover")


def read_json(path: str | os.PathLike[str], default: Any = None) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return default


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    write_file(path, json.dumps(data, indent=1, sort_keys=True))


def lock_held(path: str | os.PathLike[str]) -> bool:
    """Whether some process holds an flock on ``path`` (probing takes and drops a shared lock)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return True
        raise
    finally:
        os.close(fd)
    return False


def runner_alive(fleet_dir: str | os.PathLike[str]) -> bool:
    return lock_held(Path(fleet_dir) / "runner.lock")


def post_request(fleet_dir: str | os.PathLike[str], name: str, action: str, **args: Any) -> Path:
    """Queue an action for the runner (the runner applies it within a second)."""
    if action not in ACTIONS:
        raise ValueError(action)
    d = server_dir(fleet_dir, name) / "requests"
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{time.time():.6f}-{uuid.uuid4().hex[:8]}-{action}.json"
    write_json(path, {"action": action, "args": args, "at": time.time()})
    return path


def request_cutover(fleet_dir: str | os.PathLike[str], name: str) -> Path:
    """Cut over now: the migration's own cut-over file (what `migrate --cutover manual` waits for)."""
    path = cutover_file(fleet_dir, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    os.close(fd)
    return path


def _tail(path: Path, lines: int) -> list[str]:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read()
    except FileNotFoundError:
        return []
    return data.decode("utf-8", "replace").splitlines()[-lines:]


def _snapshot(path: Path) -> dict[str, Any] | None:
    from cvmigrate.controller.checkpoint import Checkpoint

    if not path.exists():
        return None
    try:
        ck = Checkpoint(path, readonly=True)
    except Exception:  # noqa: BLE001 - a file being created right now: no view yet
        return None
    try:
        return ck.snapshot()
    except Exception:  # noqa: BLE001 - schema not written yet
        return None
    finally:
        ck.close()


def server_view(fleet_dir: str | os.PathLike[str], entry: dict[str, Any], *, detail: bool = False) -> dict[str, Any]:
    """One server's row: phase, stage, sub-task, progress, bytes, rate, ETA, last error (plus detail on request)."""
    name = entry["name"]
    sdir = server_dir(fleet_dir, name)
    run = read_json(sdir / "runner.json", {}) or {}
    snap = _snapshot(sdir / STATE_NAME)
    phase = run.get("phase", "pending")
    view: dict[str, Any] = {
        "name": name, "wave": entry.get("wave", 1), "instance_id": entry.get("instance_id"),
        "region": entry.get("region"), "phase": phase, "stage": 0, "subtask": None, "progress": 0.0,
        "bytes_sent": 0, "bytes_read": 0, "files": 0, "rate": 0.0, "eta": None, "error": run.get("error"),
        "passes": 0, "pass_seconds": 0.0, "errors": 0, "bwlimit_kbps": None, "attempts": run.get("attempts", 0),
        "cutover": run.get("cutover", "auto"), "cutover_requested": cutover_file(fleet_dir, name).exists(),
        "cut_over": False, "complete": False, "migration_id": None,
    }
    if snap:
        rows = snap["subtasks"]
        facts = snap["facts"]
        view["migration_id"] = snap.get("migration_id")
        done = [r for r in rows if r["status"] == "done"]
        current = next((r for r in rows if r["status"] != "done"), None)
        view["complete"] = bool(rows) and current is None
        view["cut_over"] = any(r["name"] == "incremental_passes" and r["status"] == "done" for r in rows)
        if current is not None:
            view["stage"], view["subtask"] = current["stage"], current["name"]
            if current["status"] == "failed" and not view["error"]:
                view["error"] = f"{current['name']}: {current['error']}"
        elif rows:
            view["stage"], view["subtask"] = rows[-1]["stage"], "complete"
        passes = snap["passes"]
        ok = [p for p in passes if p["result"] and "error" not in p["result"]]
        view["passes"] = len(ok)
        view["errors"] = sum(1 for p in passes if p["result"] and "error" in p["result"]) + sum(
            len(p["result"].get("errors") or []) for p in ok)
        view["bytes_sent"] = sum(p["result"].get("bytes_sent", 0) for p in ok)
        view["bytes_read"] = sum(p["result"].get("bytes_read", p["result"].get("bytes_total", 0)) for p in ok)
        view["files"] = sum(p["result"].get("files_transferred", 0) for p in ok)
        if ok:
            view["pass_seconds"] = float(ok[-1]["result"].get("seconds", 0.0))
        frac = 0.0
        prog = facts.get("transfer_progress")
        running_pass = passes and passes[-1]["result"] is None and prog and prog.get("pass_no") == passes[-1]["n"]
        if running_pass and current is not None and current["status"] == "running":
            view["bytes_sent"] += int(prog.get("bytes_sent", 0))
            view["bytes_read"] += int(prog.get("bytes_read", 0))
            view["files"] += int(prog.get("files_done", 0))
            # the wire rate (what a bandwidth limit bounds); the pass's own rate counts bytes read, which run
            # ahead of the wire by the in-flight window
            elapsed = float(prog.get("elapsed") or 0.0)
            sent = int(prog.get("bytes_sent", 0))
            view["rate"] = round(sent / elapsed, 1) if elapsed > 0 else 0.0
            view["eta"] = prog.get("eta")
            if view["rate"] > 0 and view["eta"] is not None:
                # the pass's ETA is for reading (holes cost nothing); what is read but not yet on the wire (the
                # in-flight window) drains at the wire rate
                in_flight = max(0, int(prog.get("bytes_read", 0)) - sent)
                view["eta"] = round(float(view["eta"]) + in_flight / view["rate"], 1)
            scanned = prog.get("bytes_scanned") or 0
            frac = min(0.99, prog.get("bytes_read", 0) / scanned) if scanned else 0.0
        if rows:
            view["progress"] = round(100.0 * (len(done) + frac) / len(rows), 1)
        override = facts.get("bwlimit_override")
        view["bwlimit_kbps"] = override if override else None
        if detail:
            view["subtasks"] = [
                {"name": r["name"], "stage": r["stage"], "status": r["status"], "attempts": r["attempts"],
                 "seconds": (round((r["finished"] or time.time()) - r["started"], 1) if r["started"] else None),
                 "error": r["error"]} for r in rows]
            view["pass_history"] = [
                {"n": p["n"], "kind": p["kind"], "started": p["started"], "finished": p["finished"],
                 **({k: p["result"].get(k) for k in ("files", "files_transferred", "bytes_total", "bytes_sent",
                                                      "seconds", "error")} if p["result"] else {})}
                for p in passes]
    if phase == "done":
        view["progress"] = 100.0
    if detail:
        view.setdefault("subtasks", [])
        view.setdefault("pass_history", [])
        view["log"] = _tail(sdir / "log", 40)
        view["output"] = _tail(sdir / "output.log", 20)
    return view


def fleet_view(fleet_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The whole fleet: the plan's servers in plan order, the runner's liveness and totals."""
    plan = read_json(Path(fleet_dir) / "plan.json")
    if plan is None:
        from cvmigrate.common.errors import ConfigError

        raise ConfigError(f"{fleet_dir}: not a fleet directory (no plan.json); give the state_dir of a plan that "
                          "`cvmigrate fleet run` has started")
    servers = [server_view(fleet_dir, s) for s in plan["servers"]]
    runner = read_json(Path(fleet_dir) / "runner.json", {}) or {}
    counts = {p: sum(1 for s in servers if s["phase"] == p) for p in PHASES}
    return {
        "fleet_dir": str(Path(fleet_dir).absolute()), "plan": plan["path"], "runner_alive": runner_alive(fleet_dir),
        "runner_pid": runner.get("pid"), "console": runner.get("console"), "concurrency": plan["concurrency"],
        "bandwidth_kbps": plan["bandwidth_kbps"], "waves": plan["waves"], "counts": counts,
        "complete": all(s["phase"] in ("done", "cleaned") for s in servers), "servers": servers,
        "bytes_sent": sum(s["bytes_sent"] for s in servers), "rate": sum(s["rate"] for s in servers),
        "time": time.time(),
    }
