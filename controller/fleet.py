"""`cvmigrate fleet run|status|cutover|demo`: many migrations from one admin box.

Why each server is a `cvmigrate migrate` child process: every migration keeps
the checkpoint, resume rules and cloud-call idempotency that a single
`migrate` already has (controller/checkpoint.py, controller/runner.py); the
runner only decides *when* each one runs, with which cut-over mode and which
share of the bandwidth, and it talks to them through their public interfaces:
the command line, the cut-over file (``--cutover manual``) and the
``bwlimit_override`` fact that `cvmigrate bwlimit` writes.

Crash safety: each child holds an flock on its ``run.lock`` (the runner hands
it the locked descriptor and closes its own), runs in its own session and
writes to files, so SIGKILLing the runner interrupts no transfer.  A new
runner *adopts* a child whose lock is still held and waits for it; a child
that died meanwhile is re-run, which resumes at its first unfinished sub-task
(the stages read the instance state before every rescue-mode call).  A
SIGTERM or Ctrl-C on the runner, on the other hand, stops the children it
runs (they resume on the next `fleet run`).
"""
from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cvmigrate.common.errors import ConfigError, UsageError
from cvmigrate.controller import fleet_state as fs
from cvmigrate.controller.fleet_plan import FleetPlan, ServerPlan, load_plan

logger = logging.getLogger(__name__)

#: How often the runner looks at its children, requests and bandwidth shares.
TICK = 0.5
#: How long a paused/stopped child gets after SIGTERM before SIGKILL.
STOP_GRACE = 10.0


# ============================================================================ one server
@dataclass
class _Child:
    """A running `cvmigrate migrate`: ours (Popen) or adopted from a previous runner (pid + lock only)."""

    pid: int
    proc: subprocess.Popen[bytes] | None

    def finished(self, lock: Path) -> tuple[bool, int | None]:
        if self.proc is not None:
            rc = self.proc.poll()
            return rc is not None, rc
        return not fs.lock_held(lock), None


class ServerRun:
    """The runner's side of one server: its phase, its child, its bandwidth share."""

    def __init__(self, runner: FleetRunner, plan: ServerPlan) -> None:
        self.runner, self.plan = runner, plan
        self.dir = fs.server_dir(runner.fleet_dir, plan.name)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state = self.dir / fs.STATE_NAME
        self.lock = self.dir / "run.lock"
        self.record: dict[str, Any] = fs.read_json(self.dir / "runner.json", {}) or {}
        self.record.setdefault("phase", "pending")
        self.record.setdefault("attempts", 0)
        self.record["wave"] = plan.wave
        self.record["cutover"] = runner.plan.wave(plan.wave).cutover
        self.child: _Child | None = None
        self.cleaning: subprocess.Popen[bytes] | None = None
        self.applied_limit: int | None = self.record.get("bwlimit_applied")
        self._saved = ""

    # -- records
    @property
    def phase(self) -> str:
        return str(self.record["phase"])

    def set(self, **values: Any) -> None:
        self.record.update(values)
        self.save()

    def save(self) -> None:
        text = json.dumps(self.record, sort_keys=True)
        if text != self._saved:
            fs.write_json(self.dir / "runner.json", self.record)
            self._saved = text

    def checkpoint_view(self) -> dict[str, Any]:
        return fs.server_view(self.runner.fleet_dir, {"name": self.plan.name, "wave": self.plan.wave})

    def cut_over(self) -> bool:
        """Past its final pass (or finished, or dropped): the next wave may start."""
        if self.phase in ("done", "cleaned"):
            return True
        return bool(self.checkpoint_view()["cut_over"])

    # -- start-up: adopt or reset
    def recover(self) -> None:
        phase = self.phase
        if phase == "running":
            if fs.lock_held(self.lock) and self.record.get("pid"):
                self.child = _Child(int(self.record["pid"]), None)
                logger.info("%s: adopted the running migration (pid %s)", self.plan.name, self.record["pid"])
                return
            self._settle(None, adopted=True)
            phase = self.phase
        if phase == "cleaning":
            self.clean()  # interrupted with the runner; `cvmigrate clean` reads the state first, so again is safe
        if phase == "failed":
            # `fleet run` again is the retry of every failed server (each resumes from its checkpoint)
            self.set(phase="pending", error=None)

    # -- the child
    def write_inputs(self) -> None:
        fs.write_json(self.dir / "user.json", self.plan.user_json())
        (self.dir / "excludes.txt").write_text("".join(f"{e}\n" for e in self.plan.excludes))

    def command(self) -> list[str]:
        p, fleet = self.plan, self.runner.plan
        cutover = "manual" if fleet.wave(p.wave).cutover == "manual" else "after-pass"
        argv = [sys.executable, "-m", "cvmigrate", "migrate", "--user-json", str(self.dir / "user.json"),
                "--state", str(self.state), "--log-file", str(self.dir / "log"), "--source", p.source,
                "--cutover", cutover, "--cutover-file", str(fs.cutover_file(self.runner.fleet_dir, p.name)),
                "--pass-interval", str(fleet.pass_interval), "--poll-interval", str(fleet.poll_interval),
                "--exclude-from", str(self.dir / "excludes.txt"), "--display", "plain", "--yes",
                "--bootstrap", p.bootstrap]
        if p.client_json:
            argv += ["--client-json", p.client_json]
        if fleet.api_endpoint:
            argv += ["--api-endpoint", fleet.api_endpoint]
        if p.agent:
            argv += ["--agent", p.agent]
        if p.receiver:
            argv += ["--receiver", p.receiver]
        if p.target_root:
            argv += ["--target-root", p.target_root]
        for key, flag in (("ca", "--tls-ca"), ("cert", "--tls-cert"), ("key", "--tls-key"),
                          ("token_file", "--token-file")):
            if p.tls.get(key):
                argv += [flag, p.tls[key]]
        return argv

    def start(self, limit: int | None) -> bool:
        """Start (or resume) the migration; False when the lock is busy (try again next tick)."""
        self.write_inputs()
        fd = os.open(self.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        try:
            self.apply_limit(limit, force=True)
            env = dict(os.environ)
            for k in ("TENCENTCLOUD_SECRET_ID", "TENCENTCLOUD_SECRET_KEY", "TENCENTCLOUD_SESSION_TOKEN"):
                env.pop(k, None)
            env.update(self.runner.credentials[self.plan.name])
            env["PYTHONUNBUFFERED"] = "1"
            with open(self.dir / "output.log", "ab") as out:
                out.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} fleet runner starts attempt "
                          f"{self.record['attempts'] + 1}\n".encode())
                out.flush()
                proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                        env=env, cwd=self.dir, pass_fds=(fd,), start_new_session=True)
        finally:
            os.close(fd)  # the child keeps the lock: it is held while the migration runs, whoever runs the fleet
        self.child = _Child(proc.pid, proc)
        self.set(phase="running", pid=proc.pid, attempts=self.record["attempts"] + 1, started=time.time(),
                 error=None, rc=None)
        logger.info("%s: migration started (pid %d, wave %d)", self.plan.name, proc.pid, self.plan.wave)
        return True

    def poll(self) -> None:
        if self.child is None:
            return
        finished, rc = self.child.finished(self.lock)
        if finished:
            self.child = None
            self._settle(rc)

    def _settle(self, rc: int | None, *, adopted: bool = False) -> None:
        """The child ended: done, or failed with the checkpoint's error (exit codes are lost for adopted ones)."""
        view = self.checkpoint_view()
        if view["complete"]:
            self.set(phase="done", rc=rc, finished=time.time(), pid=None, error=None)
            logger.info("%s: migration complete", self.plan.name)
            return
        if self.record.get("stopping"):
            self.set(phase=self.record.pop("stopping"), rc=rc, pid=None)
            return
        if rc is None and adopted and not view["error"]:
            # died with the old runner or was killed: resume it
            self.set(phase="pending", pid=None)
            return
        error = view["error"] or self._last_error_line() or f"cvmigrate migrate exited with {rc}"
        self.set(phase="failed", rc=rc, pid=None, error=error, finished=time.time())
        logger.warning("%s: migration failed: %s", self.plan.name, error)

    def _last_error_line(self) -> str | None:
        try:
            lines = (self.dir / "output.log").read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return None
        return next((ln for ln in reversed(lines) if "error" in ln.lower()), None)

    def stop(self, then: str) -> None:
        """SIGTERM the child (SIGKILL after a grace); the phase becomes ``then`` once it has gone."""
        child = self.child
        if child is None:
            self.set(phase=then)
            return
        self.record["stopping"] = then
        try:
            os.kill(child.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + STOP_GRACE
        while time.monotonic() < deadline and not child.finished(self.lock)[0]:
            time.sleep(0.1)
        if not child.finished(self.lock)[0]:
            try:
                os.kill(child.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            while not child.finished(self.lock)[0]:
                time.sleep(0.1)
        self.poll()

    # -- bandwidth
    def apply_limit(self, limit: int | None, *, force: bool = False) -> None:
        """Write this migration's limit where `cvmigrate bwlimit` writes it (0 = unlimited)."""
        override = self.record.get("bwlimit_kbps")  # set from the console: a cap for this server
        if override:
            limit = min(limit, override) if limit else override
        value = int(limit or 0)
        if value == (self.applied_limit or 0) and (not force or self.applied_limit is None):
            # unchanged; and "unlimited" is never written unasked: it would override client.json's BandwidthLimit
            return
        from cvmigrate.controller.checkpoint import Checkpoint

        ck = Checkpoint(self.state)
        try:
            ck.set_facts(bwlimit_override=value)
        finally:
            ck.close()
        self.applied_limit = value
        self.set(bwlimit_applied=value)

    # -- console actions
    def handle_requests(self) -> None:
        rdir = self.dir / "requests"
        if not rdir.is_dir():
            return
        for path in sorted(rdir.glob("*.json")):
            req = fs.read_json(path)
            path.unlink(missing_ok=True)
            if not req:
                continue
            action, args = req.get("action"), req.get("args") or {}
            logger.info("%s: console action %s %s", self.plan.name, action, args or "")
            if action == "pause" and self.phase in ("running", "pending"):
                self.stop("paused")
            elif action == "resume" and self.phase == "paused":
                self.set(phase="pending")
            elif action == "retry" and self.phase == "failed":
                self.set(phase="pending", error=None)
            elif action == "bwlimit":
                kbps = int(args.get("kbps") or 0)
                self.record["bwlimit_kbps"] = kbps or None
                self.set()
                if self.phase == "running":
                    self.apply_limit(self.runner.share(), force=True)
            elif action == "clean" and self.phase not in ("done", "cleaned", "cleaning"):
                self.stop("paused")
                self.clean()

    def clean(self) -> None:
        """`cvmigrate clean` for this server in the background: the target leaves rescue mode, the state goes."""
        self.write_inputs()
        argv = [sys.executable, "-m", "cvmigrate", "clean", "--user-json", str(self.dir / "user.json"),
                "--state", str(self.state), "--log-file", str(self.dir / "log"), "--yes",
                "--poll-interval", str(self.runner.plan.poll_interval)]
        if self.runner.plan.api_endpoint:
            argv += ["--api-endpoint", self.runner.plan.api_endpoint]
        env = dict(os.environ)
        env.update(self.runner.credentials[self.plan.name])
        with open(self.dir / "output.log", "ab") as out:
            self.cleaning = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                             env=env, cwd=self.dir, start_new_session=True)
        self.set(phase="cleaning", pid=self.cleaning.pid)

    def poll_clean(self) -> None:
        if self.cleaning is None or self.cleaning.poll() is None:
            return
        rc, self.cleaning = self.cleaning.returncode, None
        if rc == 0:
            self.set(phase="cleaned", error=None, pid=None)
            logger.info("%s: cleaned (target out of rescue mode, state removed)", self.plan.name)
        else:
            self.set(phase="failed", pid=None, error=f"cvmigrate clean exited with {rc}; see {self.dir / 'output.log'}")


# ============================================================================ the fleet
class FleetRunner:
    """Starts servers wave by wave within the concurrency limit, splits the bandwidth, applies console actions."""

    def __init__(self, plan: FleetPlan, *, wait_on_failure: bool = False) -> None:
        self.plan = plan
        self.fleet_dir = Path(plan.state_dir)
        self.wait_on_failure = wait_on_failure
        self.stop_event = threading.Event()
        self.console_url: str | None = None
        self.credentials: dict[str, dict[str, str]] = {}
        self._lock_fd: int | None = None
        self.servers: list[ServerRun] = []

    def acquire(self) -> None:
        """Take the fleet directory (one runner at a time) and write the plan the console reads."""
        self.fleet_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.fleet_dir, 0o700)
        fd = os.open(self.fleet_dir / "runner.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            pid = (fs.read_json(self.fleet_dir / "runner.json", {}) or {}).get("pid")
            raise UsageError(f"another fleet runner (pid {pid}) is using {self.fleet_dir}; stop it first, or use "
                             "`cvmigrate fleet status` / `cvmigrate console` to watch it") from None
        self._lock_fd = fd
        # credentials are read once, now: a missing variable or file fails before any server starts
        self.credentials = {s.name: s.credentials.environment() for s in self.plan.servers}
        fs.write_json(self.fleet_dir / "plan.json", self.plan.as_json())
        self.servers = [ServerRun(self, s) for s in self.plan.servers]
        for s in self.servers:
            s.recover()
        self.heartbeat()

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def heartbeat(self) -> None:
        fs.write_json(self.fleet_dir / "runner.json", {"pid": os.getpid(), "console": self.console_url,
                                                        "heartbeat": time.time()})

    # -- scheduling
    def running(self) -> list[ServerRun]:
        return [s for s in self.servers if s.phase == "running"]

    def share(self) -> int | None:
        """Each running migration's share of the fleet's bandwidth (KB/s), None when unlimited."""
        total = self.plan.bandwidth_kbps
        if not total:
            return None
        return max(1, total // max(1, len(self.running())))

    def wave_open(self, wave: int) -> bool:
        """Whether ``wave`` may start: per its ``start`` policy, against every earlier wave's servers."""
        policy = self.plan.wave(wave).start
        if policy == "immediately":
            return True
        earlier = [s for s in self.servers if s.plan.wave < wave]
        if policy == "after-complete":
            return all(s.phase in ("done", "cleaned") for s in earlier)
        return all(s.cut_over() for s in earlier)

    def tick(self) -> None:
        for s in self.servers:
            s.poll()
            s.poll_clean()
            s.handle_requests()
        free = self.plan.concurrency - len(self.running())
        open_waves: dict[int, bool] = {}
        for s in self.servers:
            if free <= 0:
                break
            if s.phase != "pending":
                continue
            if s.plan.wave not in open_waves:
                open_waves[s.plan.wave] = self.wave_open(s.plan.wave)
            if open_waves[s.plan.wave]:
                # the share counts the one about to start
                total = self.plan.bandwidth_kbps
                limit = max(1, total // (len(self.running()) + 1)) if total else None
                if s.start(limit):
                    free -= 1
        limit = self.share()
        for s in self.running():
            s.apply_limit(limit)
        self.heartbeat()

    def finished(self) -> bool | None:
        """True: every server is done; False: stuck (failures or pauses, nothing running); None: keep going."""
        phases = [s.phase for s in self.servers]
        if all(p in ("done", "cleaned") for p in phases):
            return True
        if "running" in phases or "cleaning" in phases:
            return None
        if "pending" in phases and any(self.wave_open(s.plan.wave) for s in self.servers if s.phase == "pending"):
            return None
        if self.wait_on_failure:
            return None
        return False

    def run(self) -> bool:
        """Drive the fleet to the end; returns whether every server completed."""
        last_summary = ""
        while not self.stop_event.is_set():
            self.tick()
            summary = self.summary()
            if summary != last_summary:
                print(f"{time.strftime('%H:%M:%S')} fleet: {summary}", flush=True)
                last_summary = summary
            state = self.finished()
            if state is not None:
                return state
            self.stop_event.wait(TICK)
        return False

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for s in self.servers:
            counts[s.phase] = counts.get(s.phase, 0) + 1
        return ", ".join(f"{n} {p}" for p, n in counts.items())

    def stop_children(self) -> None:
        for s in self.running():
            s.stop("pending")


# ============================================================================ CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="fleet_command", metavar="ACTION")
    sub.required = True
    r = sub.add_parser("run", help="run (or resume) every migration of a plan",
                       description="Run (or resume) every migration of a fleet plan, wave by wave. Killing the "
                                   "runner interrupts no transfer; run the same command again to pick them up.")
    r.add_argument("plan", metavar="PLAN", help="the plan file (YAML or CSV; see tests/data/fleet.example.yaml)")
    _add_plan_overrides(r)
    r.add_argument("--console", default=None, metavar="HOST:PORT",
                   help="also serve the web console here (e.g. 127.0.0.1:8080; port 0 picks one)")
    r.add_argument("--port-file", default=None, metavar="FILE", help="write the console's port to FILE")
    s = sub.add_parser("status", help="summarise a fleet: one line per server (or --json)")
    s.add_argument("fleet", metavar="PLAN_OR_DIR", help="the plan file, or its state directory")
    s.add_argument("--json", action="store_true", help="the whole fleet view as JSON (what the console shows)")
    c = sub.add_parser("cutover", help="cut over servers of a manual wave now (their final pass follows)")
    c.add_argument("fleet", metavar="PLAN_OR_DIR")
    c.add_argument("names", nargs="+", metavar="SERVER")
    d = sub.add_parser("demo", help="N sample migrations at once against the built-in emulator, console up")
    from cvmigrate.controller.fleet_demo import add_demo_arguments
    add_demo_arguments(d)


def _add_plan_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-dir", default=None, metavar="DIR",
                   help="the fleet directory (default: the plan's state_dir, else PLAN-NAME.fleet beside the plan)")
    p.add_argument("--concurrency", type=int, default=None, metavar="N", help="migrations at once (plan: concurrency)")
    p.add_argument("--bandwidth-kbps", type=int, default=None, metavar="KBPS",
                   help="total KB/s split across the running migrations (plan: bandwidth_kbps; 0 = unlimited)")
    p.add_argument("--cutover", choices=("auto", "manual"), default=None,
                   help="cut-over policy for every wave (overrides the plan's waves)")
    p.add_argument("--api-endpoint", default=None, metavar="URL", help="Tencent Cloud API endpoint override")


def fleet_dir_of(arg: str) -> Path:
    """A fleet directory from a plan file or the directory itself."""
    p = Path(arg)
    if p.is_dir():
        return p
    if p.is_file():
        return Path(load_plan(p).state_dir)
    raise UsageError(f"{arg}: no such plan file or fleet directory")


def run(args: argparse.Namespace) -> int:
    if args.fleet_command == "run":
        return run_fleet(args)
    if args.fleet_command == "status":
        return run_status(args)
    if args.fleet_command == "cutover":
        return run_cutover(args)
    from cvmigrate.controller.fleet_demo import run_demo
    return run_demo(args)


def plan_from_args(args: argparse.Namespace) -> FleetPlan:
    return load_plan(args.plan, state_dir=args.state_dir, overrides={
        "concurrency": args.concurrency, "bandwidth_kbps": args.bandwidth_kbps, "cutover": args.cutover,
        "api_endpoint": args.api_endpoint})


def run_fleet(args: argparse.Namespace) -> int:
    plan = plan_from_args(args)
    return drive(plan, console=args.console, port_file=args.port_file)


def drive(plan: FleetPlan, *, console: str | None, port_file: str | None = None, wait_on_failure: bool | None = None,
          keep_serving: bool = False, on_ready: Any = None) -> int:
    """Run a fleet to its end (console optional); the exit code of `fleet run`."""
    runner = FleetRunner(plan, wait_on_failure=bool(console) if wait_on_failure is None else wait_on_failure)
    runner.fleet_dir.mkdir(parents=True, exist_ok=True)
    log_handler = _log_to(runner.fleet_dir / "runner.log")
    try:
        runner.acquire()
    except BaseException:
        logging.getLogger().removeHandler(log_handler)
        log_handler.close()
        raise
    server = None
    interrupted: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        interrupted.append(signum)
        runner.stop_event.set()

    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        if console:
            from cvmigrate.controller.console import start_console
            server = start_console(console, runner.fleet_dir, port_file=port_file)
            runner.console_url = server.base_url
            print(f"console: {server.login_url}", flush=True)
        print(f"fleet: {len(plan.servers)} servers in waves {plan.wave_numbers()}, up to {plan.concurrency} at once, "
              f"state in {runner.fleet_dir}", flush=True)
        if on_ready:
            on_ready(runner)
        ok = runner.run()
        if interrupted:
            runner.stop_children()
            print("fleet: stopped; run the same command again to resume every migration", file=sys.stderr)
            return 130
        view = fs.fleet_view(runner.fleet_dir)
        _print_table(view, sys.stdout)
        if keep_serving and server is not None:
            print("fleet: finished; the console keeps serving until Ctrl-C", flush=True)
            while not runner.stop_event.is_set():
                runner.stop_event.wait(0.5)
        if not ok:
            failed = [s["name"] for s in view["servers"] if s["phase"] in ("failed", "paused")]
            print(f"fleet: not complete: {', '.join(failed)} failed or paused; fix the cause (see `cvmigrate fleet "
                  f"status {runner.fleet_dir}`), then run the same command again", file=sys.stderr)
            return 1
        print("fleet: every migration is complete", flush=True)
        return 0
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        if server is not None:
            server.stop()
        runner.release()
        logging.getLogger().removeHandler(log_handler)
        log_handler.close()


def _log_to(path: Path) -> logging.Handler:
    """The runner's own log lines also go to the fleet directory (the console shows each server's own log)."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    logging.getLogger().addHandler(handler)
    return handler


def _print_table(view: dict[str, Any], out: Any) -> None:
    from cvmigrate.controller.progress import human_bytes, human_seconds

    out.write(f"{'server':<16} {'wave':>4} {'phase':<8} {'stage':>5} {'sub-task':<20} {'progress':>8} "
              f"{'sent':>10} {'rate':>11} {'ETA':>6}  last error\n")
    for s in view["servers"]:
        rate = f"{human_bytes(s['rate'])}/s" if s["rate"] else ""
        eta = human_seconds(s["eta"]) if s["eta"] is not None and s["phase"] == "running" else ""
        out.write(f"{s['name']:<16} {s['wave']:>4} {s['phase']:<8} {s['stage']:>5} {str(s['subtask'] or ''):<20} "
                  f"{s['progress']:>7.1f}% {human_bytes(s['bytes_sent']):>10} {rate:>11} {eta:>6}  "
                  f"{(s['error'] or '')[:80]}\n")
    out.flush()


def run_status(args: argparse.Namespace) -> int:
    view = fs.fleet_view(fleet_dir_of(args.fleet))
    if args.json:
        json.dump(view, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
        return 0
    c = view["counts"]
    runner = "running" if view["runner_alive"] else "not running"
    print(f"fleet {view['fleet_dir']} (plan {view['plan']}): runner {runner}"
          + (f", console {view['console']}" if view["console"] and view["runner_alive"] else ""))
    print(", ".join(f"{n} {p}" for p, n in c.items() if n))
    _print_table(view, sys.stdout)
    return 0


def run_cutover(args: argparse.Namespace) -> int:
    d = fleet_dir_of(args.fleet)
    known = {s["name"] for s in (fs.read_json(d / "plan.json", {}) or {}).get("servers", [])}
    for name in args.names:
        if name not in known:
            raise ConfigError(f"no server {name!r} in the fleet at {d}; known: {', '.join(sorted(known))}")
        fs.request_cutover(d, name)
        print(f"{name}: cut-over requested; its final pass follows the running one")
    return 0
