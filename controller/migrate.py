"""`cvmigrate migrate`, `cvmigrate status` and `cvmigrate clean`: the admin's commands.

go2tencentcloud compatibility: its flags are accepted on ``migrate`` --
``--check`` (checks only, nothing changes), ``--clean`` (the same as
``cvmigrate clean``), ``--log-file`` (default ``log``), ``--log-level 1|2|3``,
``--version``, ``--help`` -- and ``user.json`` / ``client.json`` are read from
the current directory by default, as the tool reads them from its own
directory.  So ``cvmigrate migrate --check`` is the spelling of
``./go2tencentcloud --check``.

All-in-one mode: ``sudo cvmigrate migrate`` on the source host runs the agent
in this process (``--source /`` by default) and drives the cloud API itself.
The receiver is started in the target's rescue system either by the admin
(``--bootstrap manual``, the default: the controller mints the certificates
and token, prints the command, and waits for the receiver to answer at
``--receiver HOST:PORT``) or over ssh (``--bootstrap ssh``).

Re-running the same command resumes at the first unfinished sub-task; the
state lives in ``--state FILE`` (default ``cvmigrate-state.db`` beside
user.json).  ``--cutover manual`` keeps doing incremental passes until the
cut-over file (default: the state file plus ``.cutover``) exists, or Enter is
pressed on a terminal; one final pass follows.

The three subcommands live in this one module; ``status`` and ``clean`` are
exposed to ``cvmigrate.cli`` as the namespaces
``cvmigrate.controller.migrate.status`` / ``.clean`` (registered below), each
with ``add_arguments(parser)`` and ``run(args)``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from cvmigrate import __version__
from cvmigrate.common import logsetup
from cvmigrate.common.errors import ConfigError, UsageError
from cvmigrate.common.netaddr import parse_hostport

if TYPE_CHECKING:
    from cvmigrate.controller.context import Verification

logger = logging.getLogger(__name__)

DEFAULT_STATE_NAME = "cvmigrate-state.db"
EXCLUDES_NAME = "rsync_excludes_linux.txt"


# ============================================================================ shared
def _add_config_arguments(p: argparse.ArgumentParser, *, confirm: bool = True) -> None:
    """The flags every admin command shares (migrate, check, clean): one discovery of the configs, one endpoint."""
    g = p.add_argument_group("configuration (go2tencentcloud's files)")
    g.add_argument("--user-json", default="user.json", metavar="FILE", help="user.json (default ./user.json)")
    g.add_argument("--client-json", default=None, metavar="FILE",
                   help="client.json (default: client.json beside user.json when it exists, else all defaults)")
    g.add_argument("--state", default=None, metavar="FILE",
                   help=f"the migration's state file (default {DEFAULT_STATE_NAME} beside user.json)")
    g.add_argument("--api-endpoint", default=None, metavar="URL",
                   help="Tencent Cloud API endpoint override, e.g. https://{service}.internal.tencentcloudapi.com "
                        "or the emulator's http://127.0.0.1:PORT (also $CVMIGRATE_API_ENDPOINT)")
    g.add_argument("--endpoint", dest="api_endpoint", help=argparse.SUPPRESS)  # the old spelling of `check`
    g.add_argument("--log-file", dest="cmd_log_file", default="log", metavar="FILE",
                   help="log file (default ./log, as go2tencentcloud)")
    g.add_argument("--log-level", dest="cmd_log_level", type=int, choices=(1, 2, 3), default=None,
                   help="1 ERROR, 2 INFO (default), 3 DEBUG")
    g.add_argument("--version", action="version", version=f"cvmigrate {__version__}")
    if confirm:
        g.add_argument("--yes", "-y", action="store_true", help="do not ask before changing the target instance")


def _configure_logging(args: argparse.Namespace, *, file: bool = True) -> None:
    level = args.cmd_log_level if args.cmd_log_level is not None else getattr(args, "log_level", 2)
    log_file = getattr(args, "log_file", None) or (args.cmd_log_file if file else None)
    logsetup.configure(level, log_file or None, debug=getattr(args, "debug", False))


def state_path(args: argparse.Namespace) -> Path:
    if args.state:
        return Path(args.state)
    return Path(args.user_json).absolute().parent / DEFAULT_STATE_NAME


def _known_subtasks() -> tuple[str, ...]:
    from cvmigrate.controller.runner import SUBTASK_NAMES
    return SUBTASK_NAMES


def load_configs(args: argparse.Namespace) -> tuple[Any, Any]:
    from cvmigrate.controller.config import load_client_config, load_user_config

    user = load_user_config(args.user_json)
    client_json = args.client_json
    if client_json is None:
        default = Path(args.user_json).absolute().parent / "client.json"
        client_json = str(default) if default.exists() else None
    client = load_client_config(client_json, known_subtasks=_known_subtasks())
    return user, client


def open_cloud(user: Any, client: Any, endpoint: str | None, **kwargs: Any) -> Any:
    """make_cloud, then its preflight (endpoint, proxy, keys and Region checked by one call, not retried).

    Every admin command opens the cloud through here, so `check`, `migrate --check`,
    `migrate` and `clean` fail the same way, in the same one line, before any other call.
    """
    cloud = make_cloud(user, client, endpoint, **kwargs)
    cloud.preflight()
    return cloud


def make_cloud(user: Any, client: Any, endpoint: str | None, **kwargs: Any) -> Any:
    """The CloudClient for user.json's region, with client.json's proxy (Net.Mode 3)."""
    from cvmigrate.common.netaddr import proxy_url
    from cvmigrate.controller.cloud import CloudClient, load_credentials
    from cvmigrate.controller.config import NetMode

    creds = load_credentials(user.secret_id, user.secret_key.reveal() if user.secret_key else None)
    proxy = None
    px = client.net.proxy
    if client.net.mode is NetMode.PRIVATE_VIA_PROXY and px.ip:
        proxy = proxy_url(px.ip, px.port or 0, px.user or "", px.password.reveal() if px.password else "")
    return CloudClient(creds, user.region, endpoint=endpoint or os.environ.get("CVMIGRATE_API_ENDPOINT") or None,
                       proxy=proxy, **kwargs)


def confirm(args: argparse.Namespace, question: str) -> None:
    if args.yes:
        return
    if sys.stdin is not None and sys.stdin.isatty():
        answer = input(f"{question} [y/N] ").strip().lower()
        if answer in ("y", "yes"):
            return
        raise UsageError("not confirmed; nothing was changed")
    raise UsageError(f"{question} -- no terminal to ask: pass --yes to confirm")


def _quiet_stderr_for_live_display() -> None:
    """While the progress display is the console, stderr shows warnings only (the log file keeps everything)."""
    for h in logging.getLogger().handlers:
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
            h.setLevel(logging.WARNING)


# ============================================================================ migrate
def add_arguments(p: argparse.ArgumentParser) -> None:
    from cvmigrate.controller.context import BOOTSTRAP_MODES, CUTOVER_MODES, DEFAULT_RECEIVER_PORT, DEFAULT_TARGET_ROOT
    from cvmigrate.security_flags import add_security_arguments
    from cvmigrate.transfer_flags import add_streams_argument

    _add_config_arguments(p)
    g = p.add_argument_group("go2tencentcloud modes")
    g.add_argument("--check", action="store_true", help="run the pre-checks only (nothing on the target changes)")
    g.add_argument("--clean", action="store_true",
                   help="force the target out of rescue mode and delete the state (= cvmigrate clean)")
    g.add_argument("--no-console", action="store_true",
                   help="tool-only mode (= Client.ToolMode): do not register the migration in the MSP console")
    g.add_argument("--daemon", dest="daemon", action="store_true", default=None,
                   help="run in the background (= Client.Extra.Daemon): detach, log to the log file, follow it "
                        "with `cvmigrate status`")
    g.add_argument("--foreground", dest="daemon", action="store_false",
                   help="stay in the foreground even when client.json sets Client.Extra.Daemon")
    g = p.add_argument_group("migration")
    g.add_argument("--source", default="/", metavar="DIR", help="the source root (default /: this whole server)")
    g.add_argument("--cutover", choices=CUTOVER_MODES, default="after-pass",
                   help="after the full pass: now = stop; after-pass = one final incremental pass (default); "
                        "manual = incremental passes until the cut-over file exists or Enter is pressed")
    g.add_argument("--cutover-file", default=None, metavar="FILE",
                   help="--cutover manual ends when this file exists (default: the state file + .cutover)")
    g.add_argument("--pass-interval", type=float, default=10.0, metavar="SECONDS",
                   help="pause between incremental passes with --cutover manual (default 10)")
    g.add_argument("--exclude-from", action="append", default=None, metavar="FILE",
                   help=f"rsync-syntax exclude file (repeatable; default {EXCLUDES_NAME} beside user.json when it "
                        "exists); the built-in defaults always apply")
    g.add_argument("--bootstrap", choices=tuple(m for m in BOOTSTRAP_MODES if m != "local"), default="manual",
                   help="how the receiver starts in the rescue system: manual (you start `cvmigrate receive`; "
                        "default) or ssh (the controller logs in with the rescue password)")
    g.add_argument("--ssh-user", default="root", metavar="USER",
                   help="--bootstrap ssh: the rescue system's login (default root)")
    g.add_argument("--ssh-port", type=int, default=22, metavar="PORT",
                   help="--bootstrap ssh: the rescue system's SSH port (default 22)")
    g.add_argument("--executables", default=None, metavar="DIR",
                   help="--bootstrap ssh: directory holding cvmigrate-linux-<arch> (tools/build_bundle.sh); the "
                        "receiver is uploaded as that one file, so the rescue system needs no Python (default: "
                        "$CVMIGRATE_EXECUTABLES, or dist/ of a checkout)")
    g.add_argument("--receiver", default=None, metavar="HOST:PORT",
                   help="the receiver's address (default: the target's public IP, or private IP when "
                        f"Client.Net.Mode is 1-3, port {DEFAULT_RECEIVER_PORT})")
    g.add_argument("--receiver-port", type=int, default=DEFAULT_RECEIVER_PORT, metavar="PORT",
                   help=f"receiver port when --receiver is not given (default {DEFAULT_RECEIVER_PORT})")
    g.add_argument("--target-root", default=DEFAULT_TARGET_ROOT, metavar="DIR",
                   help=f"where the rescue system mounts the target disk (default {DEFAULT_TARGET_ROOT})")
    g.add_argument("--poll-interval", type=float, default=5.0, metavar="SECONDS",
                   help="instance state polling interval (default 5)")
    g.add_argument("--block-disk", action="append", default=[], metavar="SOURCE_DEVICE=TARGET_DEVICE",
                   help="also copy this source disk block by block onto that device of the target (repeatable); "
                        "the receiver must be started with --block-target TARGET_DEVICE")
    g.add_argument("--block-only", action="store_true",
                   help="block-level migration only: no file-level passes (needs --block-disk)")
    g.add_argument("--agent", default=None, metavar="HOST:PORT",
                   help="run the passes on an agent daemon (`cvmigrate agent`) on the source server instead of in "
                        "this process, so one admin box drives the migration; --source is then a path there. The "
                        "agent uses this migration's certificates: start it with --tls-ca ca.pem --tls-cert "
                        "server.pem --tls-key server.key --token-file token from the <migration>-pki directory "
                        "beside the state file (the controller prints the command and waits), or with a server "
                        "certificate signed by your --tls-ca and your --token-file. The controller sends each pass "
                        "the receiver's address and credentials over that mutual-TLS channel")
    add_streams_argument(g, "parallel streams per file-level pass", "what the source's and the receiver's cores allow")
    g.add_argument("--keep-static-ip", action="store_true",
                   help="leave a static address on the source's primary interface as it is (default: the network "
                        "fix-up switches it to DHCP, which is how a CVM gets its VPC address)")
    g.add_argument("--data-via-proxy", action="store_true",
                   help="with Client.Net.Mode 3, send the data stream through the proxy too (by default only the "
                        "API calls use it and the data goes over the private channel, as go2tencentcloud does)")
    g.add_argument("--display", choices=("auto", "rich", "plain", "none"), default="auto",
                   help="progress display: auto = live table on a terminal, plain lines otherwise")
    g.add_argument("--json", action="store_true",
                   help="print the final summary as one JSON object on stdout (on failure too: error, exit_code)")
    add_security_arguments(p, "client")
    from cvmigrate.common.errors import exit_code_help

    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = ("Without --tls-*/--token-file/--insecure the controller mints this migration's certificates and "
                "token (beside the state file). Re-run the same command to resume after any failure.\n\n"
                + exit_code_help())


def _admin_security(args: argparse.Namespace) -> Any:
    given = any(getattr(args, n, None) for n in ("tls_ca", "tls_cert", "tls_key", "token_file", "insecure"))
    if not given:
        return None
    from cvmigrate.security_flags import security_from_args
    return security_from_args(args, "client")


def build_context(args: argparse.Namespace, *, ckpt: Any, display: Any, cloud: Any = None,
                  user: Any = None, client: Any = None, **opt_overrides: Any) -> Any:
    from cvmigrate.controller.context import Context, Options
    from cvmigrate.transfer_flags import streams_from_args

    if user is None or client is None:
        user, client = load_configs(args)
    if cloud is None:
        cloud = make_cloud(user, client, args.api_endpoint)
    st = state_path(args).absolute()
    excludes = args.exclude_from
    if excludes is None:
        default = Path(args.user_json).absolute().parent / EXCLUDES_NAME
        excludes = [str(default)] if default.exists() else []
    cutover_file = args.cutover_file or f"{st}.cutover"
    receiver, agent = _addresses(args)
    log_file = getattr(args, "log_file", None) or getattr(args, "cmd_log_file", None)
    opts = Options(source=args.source, cutover=args.cutover, bootstrap=args.bootstrap, receiver=receiver,
                   receiver_port=args.receiver_port, target_root=args.target_root, security=_admin_security(args),
                   ssh_user=getattr(args, "ssh_user", "root"), ssh_port=getattr(args, "ssh_port", 22),
                   executables=getattr(args, "executables", None),
                   poll_interval=args.poll_interval, pass_interval=args.pass_interval, cutover_file=cutover_file,
                   state_dir=str(st.parent), exclude_files=tuple(excludes), agent=agent,
                   block_disks=_block_disks(args), file_level=not getattr(args, "block_only", False),
                   keep_static_ip=getattr(args, "keep_static_ip", False),
                   streams=streams_from_args(args) or client.streams,
                   own_paths=tuple(p for p in (str(st), f"{st}-journal", f"{st}-wal", f"{st}-shm", cutover_file,
                                               log_file, *_config_paths(args)) if p),
                   no_console=bool(getattr(args, "no_console", False) or client.tool_mode),
                   data_via_proxy=bool(getattr(args, "data_via_proxy", False)))
    for k, v in opt_overrides.items():
        setattr(opts, k, v)
    return Context(opts=opts, user=user, client=client, cloud=cloud, ckpt=ckpt, display=display)


def _config_paths(args: argparse.Namespace) -> tuple[str, ...]:
    """user.json (the SecretKey) and client.json: the tool's own files, never migrated."""
    user = Path(args.user_json).absolute()
    client = getattr(args, "client_json", None)
    return (str(user), str(Path(client).absolute() if client else user.parent / "client.json"))


def _addresses(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """--receiver and --agent validated (UsageError naming the flag): checked before any cloud call."""
    receiver = str(parse_hostport(args.receiver, "--receiver")) if args.receiver else None
    agent = str(parse_hostport(args.agent, "--agent")) if getattr(args, "agent", None) else None
    if not 1 <= args.receiver_port <= 65535:
        raise UsageError(f"--receiver-port {args.receiver_port} is out of range 1..65535")
    return receiver, agent


def _block_disks(args: argparse.Namespace) -> tuple[tuple[str, str], ...]:
    from cvmigrate.common.errors import UsageError

    pairs = []
    for spec in getattr(args, "block_disk", None) or ():
        src, sep, dst = spec.partition("=")
        if not sep or not src.startswith("/") or not dst.startswith("/"):
            raise UsageError(f"--block-disk {spec!r}: write SOURCE_DEVICE=TARGET_DEVICE, e.g. /dev/vdb=/dev/vdb")
        pairs.append((src, dst))
    if getattr(args, "block_only", False) and not pairs:
        raise UsageError("--block-only needs at least one --block-disk SOURCE_DEVICE=TARGET_DEVICE")
    return tuple(pairs)


def run(args: argparse.Namespace) -> int:
    """`cvmigrate migrate`; with --json the outcome is one JSON object on stdout whatever happens."""
    from cvmigrate.common.errors import CvmError

    try:
        return _run(args)
    except CvmError as exc:
        if getattr(args, "json", False):
            json.dump({"complete": False, "error": str(exc), "exit_code": exc.exit_code,
                       "error_type": type(exc).__name__}, sys.stdout)
            sys.stdout.write("\n")
            sys.stdout.flush()
        raise


def _run(args: argparse.Namespace) -> int:
    if args.clean:
        return run_clean(args)
    _configure_logging(args)
    from cvmigrate.controller.checkpoint import Checkpoint
    from cvmigrate.controller.progress import make_display
    from cvmigrate.controller.runner import run_stages

    _addresses(args)
    _block_disks(args)
    user, client = load_configs(args)
    cloud = open_cloud(user, client, args.api_endpoint)
    if args.check:
        display = make_display(force=None if args.display == "auto" else args.display)
        ckpt = Checkpoint(None)
        try:
            ctx = build_context(args, ckpt=ckpt, display=display, user=user, client=client, cloud=cloud)
            run_stages(ctx, only_checks=True)
        finally:
            display.close()
        if getattr(args, "json", False):
            json.dump({"complete": True, "check": True, "exit_code": 0}, sys.stdout)
            sys.stdout.write("\n")
        else:
            print("pre-checks passed; nothing on the target was changed")
        return 0

    path = state_path(args)
    ckpt = Checkpoint(path)
    try:
        if not ckpt.is_done("enter_rescue"):
            confirm(args, f"This stops target {user.instance_id} ({user.region}) and boots it into rescue mode; "
                          "its disks will be overwritten with the source. Continue?")
        daemon = client.extra.daemon if args.daemon is None else args.daemon
        if daemon:
            ckpt.close()
            if _detach(args, path):
                return 0
            ckpt = Checkpoint(path)
            args.display = "none"
        display = make_display(force=None if args.display == "auto" else args.display)
        if display.rich or (args.display != "none" and (getattr(args, "log_file", None) or args.cmd_log_file)):
            _quiet_stderr_for_live_display()
        try:
            ctx = build_context(args, ckpt=ckpt, display=display, user=user, client=client, cloud=cloud)
            outcome = run_stages(ctx)
        finally:
            display.close()
        code = 0 if outcome.completed else 1
        if getattr(args, "json", False):
            json.dump({**summary(ckpt), "complete": outcome.completed, "exit_code": code}, sys.stdout)
            sys.stdout.write("\n")
        else:
            _print_summary(ckpt, sys.stdout)
        return code
    finally:
        ckpt.close()


def _detach(args: argparse.Namespace, state: Path) -> bool:
    """Client.Extra.Daemon / --daemon: fork; True in the parent (it reports and exits 0), False in the child.

    The child leaves the terminal's session (setsid), reads nothing, and writes
    stdout, stderr and the log to the log file, so closing the terminal does not
    stop the migration; ``cvmigrate status`` reads its progress from the state file.
    """
    log_file = getattr(args, "log_file", None) or args.cmd_log_file
    if not log_file:
        raise UsageError("running in the background needs a log file: give --log-file FILE (or --foreground)")
    log_file = os.path.abspath(log_file)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        print(f"migration running in the background (pid {pid}); log: {log_file}; follow it with "
              f"`cvmigrate status --state {state.absolute()}`", flush=True)
        return True
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    out = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(devnull)
    os.close(out)
    # stderr is the log file now: the file handler alone writes log records there, stderr only the final line
    logsetup.configure(args.cmd_log_level if args.cmd_log_level is not None else getattr(args, "log_level", 2),
                       log_file, debug=getattr(args, "debug", False), stderr_level=logging.CRITICAL + 10)
    logger.info("running in the background as pid %d", os.getpid())
    return False


def _verification(ckpt: Any) -> Verification:
    """The verify sub-task's summary (all zero before it ran)."""
    from cvmigrate.controller.context import Facts, Verification

    return Facts(ckpt).verification or Verification()


def summary(ckpt: Any) -> dict[str, Any]:
    """The final summary as data (migrate --json): what moved, what was verified."""
    v = _verification(ckpt)
    return {"migration_id": ckpt.migration_id(), "state_file": str(ckpt.path), "files": v.last.files,
            "bytes_total": v.last.bytes_total, "passes": v.passes,
            "bytes_sent": v.bytes_sent_all_passes, "errors": v.errors,
            "verified_entries": v.compared.entries if v.compared else None,
            "verified_files_hashed": v.compared.files_hashed if v.compared else None,
            "msp_task_id": ckpt.fact("msp_task_id")}


def _print_summary(ckpt: Any, out: Any) -> None:
    v = _verification(ckpt)
    from cvmigrate.controller.progress import human_bytes

    out.write(f"migration {ckpt.migration_id()} complete: {v.last.files} files, "
              f"{human_bytes(v.last.bytes_total)} of content in {v.passes} passes, "
              f"{human_bytes(v.bytes_sent_all_passes)} sent, {v.errors} errors")
    if v.compared:
        out.write(f"; verified: {v.compared.entries} entries identical on the target "
                  f"({v.compared.files_hashed} files hashed on both sides)")
    out.write("\n")
    out.flush()


# ============================================================================ status
#: Version of `status --json`'s top-level fields (schema, state, stage, subtask, percent, bytes, rate, eta).
STATUS_SCHEMA = 1
#: Sub-tasks that wait on something outside this process (the cloud, the operator, the receiver).
WAITING_SUBTASKS = frozenset({"wait_rescue", "start_receiver", "reach_receiver", "wait_running"})


def status_summary(snap: dict[str, Any]) -> dict[str, Any]:
    """Where a migration is, for scripts: state running / waiting / failed / complete, stage, sub-task,
    percent (sub-tasks done, the running pass by its bytes), bytes, rate, ETA."""
    rows = snap["subtasks"]
    done = sum(1 for r in rows if r["status"] == "done")
    current = (next((r for r in rows if r["status"] == "running"), None)
               or next((r for r in rows if r["status"] == "failed"), None)
               or next((r for r in rows if r["status"] != "done"), None))
    prog = snap["facts"].get("transfer_progress") or {}
    passing = current is not None and current["name"] in ("full_pass", "incremental_passes") and bool(prog)
    fraction = 0.0
    if passing and prog.get("bytes_scanned"):
        fraction = min(1.0, prog.get("bytes_read", 0) / prog["bytes_scanned"])
    if rows and done == len(rows):
        state, percent = "complete", 100.0
    else:
        if current is not None and current["status"] == "failed":
            state = "failed"
        elif current is not None and current["name"] in WAITING_SUBTASKS:
            state = "waiting"
        else:
            state = "running"
        percent = round(100.0 * (done + fraction) / len(rows), 1) if rows else 0.0
    return {
        "schema": STATUS_SCHEMA,
        "state": state,
        "stage": (current["stage"] if current is not None and state != "complete"
                  else (rows[-1]["stage"] if rows else 0)),
        "subtask": current["name"] if current is not None and state != "complete" else None,
        "error": current["error"] if current is not None and state == "failed" else None,
        "percent": percent,
        "bytes": {"read": prog.get("bytes_read", 0), "scanned": prog.get("bytes_scanned", 0),
                  "sent": prog.get("bytes_sent", 0)} if passing else None,
        "rate_bytes_per_s": prog.get("rate") if passing else None,
        "eta_seconds": prog.get("eta") if passing else None,
    }


def add_status_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state", default=None, metavar="FILE", help=f"state file (default ./{DEFAULT_STATE_NAME})")
    p.add_argument("--user-json", default="user.json", metavar="FILE", help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true",
                   help=f"print the state as JSON (never the secrets): schema {STATUS_SCHEMA}, state "
                        "(running/waiting/failed/complete), stage, subtask, percent, bytes, rate, ETA, then the "
                        "sub-tasks, passes and facts")


def run_status(args: argparse.Namespace) -> int:
    from cvmigrate.controller.checkpoint import Checkpoint
    from cvmigrate.controller.progress import TransferProgress, describe_progress, human_bytes
    from cvmigrate.controller.runner import SUBTASKS_BY_NAME

    ckpt = Checkpoint(state_path(args), readonly=True)
    try:
        snap = ckpt.snapshot()
    finally:
        ckpt.close()
    if args.json:
        json.dump({**status_summary(snap), **snap}, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
        return 0
    facts = snap["facts"]
    out = sys.stdout
    out.write(f"migration {snap['migration_id'] or '?'}  state {snap['state_file']}\n")
    if facts.get("instance_id"):
        t = facts.get("target") or {}
        out.write(f"target {facts['instance_id']} ({facts.get('region')}), last seen {t.get('state', '?')}; "
                  f"source {facts.get('source', '?')}\n")
    stage = 0
    for row in snap["subtasks"]:
        if row["stage"] != stage:
            stage = row["stage"]
            out.write(f"Stage {stage}\n")
        dur = ""
        if row["started"] and row["finished"] and row["status"] != "running":
            dur = f"{row['finished'] - row['started']:.1f}s"
        limit = SUBTASKS_BY_NAME[row["name"]].timeout if row["name"] in SUBTASKS_BY_NAME else 0
        out.write(f"  {row['name']:<20} {row['status']:<8} {dur:>8}  attempts {row['attempts']}"
                  + (f"  default limit {limit:.0f}s" if limit else "")
                  + (f"  error: {row['error']}" if row["error"] else "") + "\n")
    for p in snap["passes"]:
        r = p["result"] or {}
        if "error" in r:
            out.write(f"pass {p['n']} ({p['kind']}): failed: {r['error']}\n")
        elif r:
            out.write(f"pass {p['n']} ({p['kind']}): {r.get('files', 0)} files, {r.get('files_transferred', 0)} sent, "
                      f"{human_bytes(r.get('bytes_total', 0))} content, {human_bytes(r.get('bytes_sent', 0))} on the "
                      f"wire, {r.get('seconds', 0):.1f}s\n")
        else:
            out.write(f"pass {p['n']} ({p['kind']}): running or interrupted\n")
    prog = facts.get("transfer_progress")
    if prog and any(p["result"] is None for p in snap["passes"][-1:]):
        out.write("now: " + describe_progress(TransferProgress(**prog)) + "\n")
    for key in ("receiver_address", "msp_task_id", "msp_status"):
        if facts.get(key):
            out.write(f"{key.replace('_', ' ')}: {facts[key]}\n")
    if facts.get("failure"):
        out.write(f"last failure: {facts['failure']['subtask']}: {facts['failure']['reason']}\n")
    done = all(r["status"] == "done" for r in snap["subtasks"]) and snap["subtasks"]
    out.write("complete\n" if done else "not complete: run the same `cvmigrate migrate` command to resume\n")
    return 0


# ============================================================================ clean
def add_clean_arguments(p: argparse.ArgumentParser) -> None:
    _add_config_arguments(p)
    p.add_argument("--timeout", type=float, default=1800.0, metavar="SECONDS",
                   help="how long to wait for the target to leave rescue mode (default 1800)")
    p.add_argument("--poll-interval", type=float, default=5.0, metavar="SECONDS", help="state polling interval")
    p.add_argument("--no-wait", action="store_true", help="send ExitRescueMode but do not wait for RUNNING")


def run_clean(args: argparse.Namespace) -> int:
    """go2tencentcloud's --clean: force the target out of rescue mode, mark the MSP task, delete the state."""
    _configure_logging(args)
    from cvmigrate.controller.checkpoint import Checkpoint, remove_state

    user, client = load_configs(args)
    path = state_path(args)
    facts: dict[str, Any] = {}
    if path.exists():
        ck = Checkpoint(path)
        try:
            facts = ck.facts()
            migration = ck.meta("migration_id")
        finally:
            ck.close()
        if facts.get("instance_id") and facts["instance_id"] != user.instance_id:
            raise ConfigError(f"the state file {path} belongs to the migration to {facts['instance_id']}, but "
                              f"user.json names {user.instance_id}; point --user-json/--state at the same migration")
        if migration:
            logsetup.set_context(migration=migration)
    logsetup.set_context(stage="clean")
    confirm(args, f"Force target {user.instance_id} out of rescue mode and delete the migration state?")
    cloud = getattr(args, "_cloud", None) or open_cloud(user, client, args.api_endpoint)
    iid = user.instance_id
    timeout, no_wait = getattr(args, "timeout", 1800.0), getattr(args, "no_wait", False)
    state = cloud.instance_status(iid)
    print(f"target {iid} is {state}")
    if state == "ENTER_RESCUE_MODE":
        state = cloud.wait_for_state(iid, "RESCUE_MODE", timeout=timeout, poll=args.poll_interval)
    if state == "RESCUE_MODE":
        cloud.exit_rescue_mode(iid)
        print(f"ExitRescueMode sent to {iid}")
        logger.info("clean: ExitRescueMode sent to %s", iid)
        state = "EXIT_RESCUE_MODE"
    if state == "EXIT_RESCUE_MODE" and not no_wait:
        state = cloud.wait_for_state(iid, ("RUNNING", "STOPPED"), timeout=timeout, poll=args.poll_interval)
        print(f"target {iid} is {state}")
    task_id = facts.get("msp_task_id")
    if task_id and facts.get("msp_status") not in ("finish", "fail"):
        try:
            cloud.modify_migration_task_status(task_id, "fail")
            print(f"MSP task {task_id} marked fail (cleaned up)")
        except Exception as exc:  # noqa: BLE001 - best effort, reported
            logger.warning("could not mark MSP task %s: %s", task_id, exc)
    removed = remove_state(path)
    pki = facts.get("pki_dir")
    if pki and os.path.isdir(pki):
        shutil.rmtree(pki, ignore_errors=True)
        removed.append(pki)
    print("removed: " + (", ".join(removed) if removed else "nothing (no state)"))
    return 0


def add_bwlimit_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("kbps", type=int, metavar="KBPS", help="new limit in KB/s on the wire; 0 lifts the limit")
    p.add_argument("--state", default=None, metavar="FILE", help=f"state file (default ./{DEFAULT_STATE_NAME})")
    p.add_argument("--user-json", default="user.json", metavar="FILE", help=argparse.SUPPRESS)


def run_bwlimit(args: argparse.Namespace) -> int:
    """Change a running migration's bandwidth limit: the controller applies it within a second."""
    from cvmigrate.common.errors import UsageError
    from cvmigrate.controller.checkpoint import Checkpoint

    if args.kbps < 0:
        raise UsageError("KBPS must be 0 (unlimited) or a positive number of KB/s")
    path = state_path(args)
    if not path.exists():
        raise UsageError(f"no migration state at {path}: pass --state FILE of the running migration")
    ckpt = Checkpoint(path)
    try:
        ckpt.set_facts(bwlimit_override=args.kbps)
    finally:
        ckpt.close()
    print(f"bandwidth limit set to {f'{args.kbps} KB/s' if args.kbps else 'unlimited'}; the running pass applies "
          "it within a second, later passes keep it")
    return 0


#: `cvmigrate status`, `clean` and `bwlimit` (the CLI's "module:attribute" form points here)
status = SimpleNamespace(add_arguments=add_status_arguments, run=run_status)
clean = SimpleNamespace(add_arguments=add_clean_arguments, run=run_clean)
bwlimit = SimpleNamespace(add_arguments=add_bwlimit_arguments, run=run_bwlimit)
