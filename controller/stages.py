"""The migration as go2tencentcloud runs it: three stages of sub-tasks, checkpointed, resumable.

Why a table of sub-tasks rather than one long function: every step that
changes the cloud (EnterRescueMode, ExitRescueMode, RegisterMigrationTask,
the MSP status) must happen exactly once across crashes and re-runs, every
step needs its own time limit (``client.json`` ``Cvmigrate.Timeouts.<name>``
overrides the defaults below), and ``cvmigrate status`` must be able to say
where a migration stands.  So each sub-task is a function with a name, a
stage, a default timeout and a written idempotency rule; the runner skips the
ones the checkpoint records as done, resumes at the first unfinished one, and
stores a sub-task's ``done`` together with the facts it learned in one
transaction.

The crash window between a cloud call and its checkpoint is closed by
looking before acting: ``enter_rescue`` reads the instance state first and
does not send EnterRescueMode to an instance that is already entering or in
rescue mode (whether from our own lost run or an earlier crash); the rescue
password is stored *before* the call, so a resumed run still knows it;
``exit_rescue`` does the same for ExitRescueMode.  RegisterMigrationTask has
no idempotency token in MSP: a crash between the call and its checkpoint
registers a second task on the re-run (harmless: a console entry).

Test-only hook: ``CVMIGRATE_TEST_KILL_AFTER=<sub-task>`` makes the runner
SIGKILL its own process right after that sub-task is checkpointed, and
``CVMIGRATE_TEST_KILL_AFTER=<sub-task>:sent`` right after its cloud call
returned but before the checkpoint (enter_rescue, exit_rescue).  The
crash-resume tests use it to kill at every boundary; it does nothing unless
the variable is set.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import secrets
import signal
import socket
import string
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from cvmigrate.common import logsetup
from cvmigrate.common.netaddr import format_hostport
from cvmigrate.common.config import ClientConfig, NetMode, UserConfig
from cvmigrate.common.errors import CheckFailed, CloudError, ConfigError, CvmError, StageTimeout, TransportError
from cvmigrate.controller.checkpoint import DONE, Checkpoint
from cvmigrate.controller.progress import Display, TransferProgress, human_bytes

logger = logging.getLogger(__name__)

KILL_ENV = "CVMIGRATE_TEST_KILL_AFTER"

CUTOVER_MODES = ("now", "after-pass", "manual")
BOOTSTRAP_MODES = ("manual", "ssh", "local")
#: go2tencentcloud documents that the target's security group must allow 80 and 443; we use 443.
DEFAULT_RECEIVER_PORT = 443
DEFAULT_TARGET_ROOT = "/mnt/cvmigrate"

#: States from which a migration can start (or continue).
_STARTABLE = {"RUNNING", "STOPPED"}
_RESCUE = {"ENTER_RESCUE_MODE", "RESCUE_MODE"}
_TRANSITIONAL = {"PENDING", "STARTING", "STOPPING", "REBOOTING", "EXIT_RESCUE_MODE"}
_DEAD = {"SHUTDOWN", "TERMINATING", "LAUNCH_FAILED"}

_PASSWORD_SPECIALS = "!@#%^*-+=.,:?"  # a subset of what EnterRescueMode accepts


# ============================================================================ the context
@dataclass
class Options:
    """What the command line chose (everything else comes from the configs)."""

    source: str = "/"
    cutover: str = "after-pass"
    bootstrap: str = "manual"
    receiver: str | None = None                 # HOST:PORT (manual mode)
    receiver_port: int = DEFAULT_RECEIVER_PORT
    target_root: str = DEFAULT_TARGET_ROOT      # where the rescue system mounts the target (ssh mode)
    ssh_user: str = "root"                      # ssh mode: the rescue system's login
    ssh_port: int = 22                          # ssh mode: its SSH port
    executables: str | None = None              # ssh mode: dir with cvmigrate-linux-<arch> (tools/build_bundle.sh)
    security: Any = None                        # TransportSecurity from admin-given files / --insecure, or None: mint
    poll_interval: float = 5.0                  # instance state polling
    pass_interval: float = 10.0                 # pause between incremental passes (cutover manual)
    cutover_file: str | None = None             # cutover manual: creating this file ends the passes
    cutover_key: bool = True                    # cutover manual: Enter on a terminal also ends them
    state_dir: str = "."                        # where the PKI directory goes
    exclude_files: tuple[str, ...] = ()
    own_paths: tuple[str, ...] = ()             # our state/log files: never migrated
    verify_target: str | None = None            # a locally readable target root to compare (demo, tests)
    workers: int = 2
    agent: str | None = None                    # HOST:PORT of `cvmigrate agent`: passes run there, not here
    block_disks: tuple[tuple[str, str], ...] = ()  # (source device, target device) copied block by block
    file_level: bool = True                     # False: block-level passes only
    keep_static_ip: bool = False                # the network fix-up leaves a static address as it is
    checks_only: bool = False                   # `--check`: nothing waits, nothing changes
    no_console: bool = False                    # --no-console / Client.ToolMode: no MSP console registration
    data_via_proxy: bool = False                # Net.Mode 3: the data stream through the proxy too (on request)


class Deadline:
    """A sub-task's time limit."""

    def __init__(self, seconds: float, name: str) -> None:
        self.seconds, self.name = seconds, name
        self.end = time.monotonic() + seconds

    def remaining(self) -> float:
        return max(0.0, self.end - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self.end

    def timeout_error(self, what: str) -> StageTimeout:
        return StageTimeout(f"{self.name}: {what} did not finish within {self.seconds:.0f} s; raise "
                            f"Cvmigrate.Timeouts.{self.name} in client.json if it needs longer, then run the same "
                            "command again to resume")


@dataclass
class Context:
    """Everything a sub-task may use."""

    opts: Options
    user: UserConfig
    client: ClientConfig
    cloud: Any                        # CloudClient
    ckpt: Checkpoint
    display: Display = field(default_factory=Display)
    #: (pki, tokens) -> "HOST:PORT": starts a receiver in this process (bootstrap "local": demo, tests);
    #: ``tokens`` is the migration's MigrationTokens (None with admin-supplied --tls-*/--token-file).
    local_receiver: Callable[[Any, Any], str] | None = None
    migration_id: str = ""
    _local_address: str | None = None
    _security: Any = None
    _facts: Any = None
    notes: dict[str, str] = field(default_factory=dict)

    def source_facts(self) -> Any:
        """The agent's report on the source (sub-task source_facts); never this host's disks in --agent mode."""
        if self._facts is None:
            from cvmigrate.common.sourcefacts import facts_from_json

            stored = self.ckpt.fact("source_facts")
            if not stored:
                raise CvmError("the source facts are not known yet (sub-task source_facts has not run)")
            self._facts = facts_from_json(json.dumps(stored))
        return self._facts

    @property
    def instance_id(self) -> str:
        return self.user.instance_id

    def timeout_for(self, name: str) -> float:
        return float(self.client.timeouts.get(name, SUBTASKS_BY_NAME[name].timeout))

    # -- transport security for the data and control channels (roles: see common/auth.py)
    def tokens(self) -> Any:
        """This migration's MigrationTokens (data, control, agent), from the checkpoint's secrets."""
        from cvmigrate.common.tls import MigrationTokens

        data, control, agent = (self.ckpt.secret(k) for k in ("token", "control_token", "agent_token"))
        if not (data and control and agent):
            raise CvmError("no tokens for this migration yet (sub-task mint_credentials has not run)")
        return MigrationTokens(data=data, control=control, agent=agent)

    def _pki(self) -> Any:
        from cvmigrate.common.tls import PkiPaths

        pki_dir = self.ckpt.fact("pki_dir")
        if not pki_dir:
            raise CvmError("no certificates for this migration yet (sub-task mint_credentials has not run)")
        return PkiPaths.in_dir(pki_dir)

    def security(self) -> Any:
        """The controller's own credential towards the receiver: control calls send the control token."""
        if self._security is not None:
            return self._security
        if self.opts.security is not None:
            self._security = self.opts.security
            return self._security
        from cvmigrate.common.tls import TransportSecurity

        self._security = TransportSecurity.from_pki(self._pki(), "client", self.tokens())
        return self._security

    def data_security(self) -> Any:
        """The data-plane credential (agent certificate + data token): what a pass uses, here or on the agent."""
        if self.opts.security is not None:
            return self.opts.security
        from cvmigrate.common.tls import TransportSecurity

        return TransportSecurity.agent_data(self._pki(), self.tokens())

    def agent_security(self) -> Any:
        """The controller's credential towards the agent daemon (its own token, never the receiver's)."""
        if self.opts.security is not None:
            return self.opts.security
        from cvmigrate.common.tls import TransportSecurity

        return TransportSecurity.to_agent(self._pki(), self.tokens())

    def receiver_address(self) -> str:
        if self.opts.bootstrap == "local":
            if self._local_address is None:
                if self.local_receiver is None:
                    raise ConfigError("bootstrap 'local' needs an in-process receiver (cvmigrate demo, tests)")
                pki = tokens = None
                if self.opts.security is None:
                    pki, tokens = self._pki(), self.tokens()
                self._local_address = self.local_receiver(pki, tokens)
            return self._local_address
        address = self.ckpt.fact("receiver_address")
        if not address:
            raise CvmError("the receiver's address is not known yet (sub-task start_receiver has not run)")
        return address

    def data_proxy(self) -> str | None:
        """client.json's HTTP proxy for the data stream, as a URL, only when asked for (--data-via-proxy).

        Net.Mode 3 is go2tencentcloud's "the source calls the API through a
        proxy, data over the private channel": the proxy carries API calls, the
        data goes straight to the target's private address.  Some networks can
        only reach the target through the proxy; ``--data-via-proxy`` says so.
        """
        px = self.client.net.proxy
        if (not self.opts.data_via_proxy or self.client.net.mode is not NetMode.PRIVATE_VIA_PROXY
                or not px.ip):
            return None
        auth = ""
        if px.user:
            from urllib.parse import quote

            password = px.password.reveal() if px.password else ""
            auth = f"{quote(px.user, safe='')}:{quote(password, safe='')}@"
        host = f"[{px.ip}]" if ":" in px.ip else px.ip
        return f"http://{auth}{host}:{px.port}"

    def target_ip(self) -> str:
        """The target address the source reaches: public for Net.Mode 0, private otherwise; its IPv6
        address when Client.Net.Proxy.IPv6 is true (go2tencentcloud's "move data over IPv6")."""
        target = self.ckpt.fact("target") or {}
        if self.client.net.proxy.ipv6:
            v6 = target.get("ipv6_addresses") or []
            if not v6:
                raise CheckFailed(f"Client.Net.Proxy.IPv6 is true but target {self.instance_id} has no IPv6 address; "
                                  "assign one to the CVM (VPC and subnet with IPv6), set IPv6 to false, or give "
                                  "--receiver [ADDRESS]:PORT")
            return v6[0]
        public, private = target.get("public_ips") or [], target.get("private_ips") or []
        ips = public if self.client.net.mode is NetMode.PUBLIC else private
        if not ips:
            ips = private or public
        if not ips:
            raise CheckFailed(f"target {self.instance_id} has no {'public' if self.client.net.mode is NetMode.PUBLIC else 'private'} "
                              "IP address; give --receiver HOST:PORT")
        return ips[0]


# ============================================================================ sub-tasks
@dataclass(frozen=True)
class SubTask:
    name: str
    stage: int
    timeout: float                 # default seconds; client.json Cvmigrate.Timeouts.<name> overrides
    idempotency: str               # why running it again after a crash is safe
    fn: Callable[[Context, Deadline], "dict[str, Any] | None"]
    check: bool = False            # part of `--check`


def _note(ctx: Context, text: str) -> None:
    ctx.notes["current"] = text


def _kill_point(point: str) -> None:
    """Test-only: SIGKILL this process at ``point`` when CVMIGRATE_TEST_KILL_AFTER names it."""
    if os.environ.get(KILL_ENV) == point:
        logger.warning("test hook %s=%s: killing this process now", KILL_ENV, point)
        for h in logging.getLogger().handlers:
            h.flush()
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)


# -- stage 1 -------------------------------------------------------------------------
def validate_config(ctx: Context, dl: Deadline) -> dict[str, Any]:
    """The configs were loaded and validated before the runner started (errors name the field); record them."""
    if ctx.opts.cutover not in CUTOVER_MODES:
        raise ConfigError(f"--cutover {ctx.opts.cutover!r}: use one of {', '.join(CUTOVER_MODES)}")
    src = Path(ctx.opts.source)
    if ctx.opts.agent:
        # the source is a path on the agent's host: nothing about it is read here (sub-task source_facts asks)
        if not src.is_absolute():
            raise ConfigError(f"--source {ctx.opts.source!r}: with --agent give the source root as an absolute path "
                              "on the source server")
    else:
        if not src.is_dir():
            raise ConfigError(f"--source {ctx.opts.source!r} is not a directory")
        src = src.absolute()
    if ctx.client.rsync.bandwidth_limit_kbps:
        logger.info("transfer rate limited to %d KB/s (Client.Rsync.BandwidthLimit)", ctx.client.rsync.bandwidth_limit_kbps)
    _note(ctx, f"{ctx.user.instance_id} in {ctx.user.region}, source {ctx.opts.source}")
    return {"instance_id": ctx.user.instance_id, "region": ctx.user.region, "source": str(src),
            "data_disks": [dataclasses.asdict(d) for d in ctx.user.data_disks],
            "net_mode": int(ctx.client.net.mode), "cutover": ctx.opts.cutover, "bootstrap": ctx.opts.bootstrap}


def check_credentials(ctx: Context, dl: Deadline) -> dict[str, Any]:
    """Signed calls with the key pair; the target exists in the region and is in a usable state."""
    ctx.cloud.check_credentials()
    info = ctx.cloud.describe_instance(ctx.instance_id)
    if info.state in _DEAD or "SERVICE_LIVE_MIGRATE" in info.state:
        raise CheckFailed(f"target {ctx.instance_id} is {info.state}; it cannot be migrated to in this state "
                          "(check it in the CVM console)")
    if info.state in _RESCUE:
        logger.warning("target %s is already %s (an earlier run?); EnterRescueMode will not be sent again",
                       ctx.instance_id, info.state)
    elif info.state not in _STARTABLE:
        logger.warning("target %s is %s; waiting for a stable state before EnterRescueMode", ctx.instance_id, info.state)
    _note(ctx, f"{info.instance_id} {info.state}, {info.os_name or 'OS unknown'}, system disk {info.system_disk_gb} GB"
               + (f", data disks {', '.join(f'{s} GB' for _, s in info.data_disks)}" if info.data_disks else ""))
    return {"target": dataclasses.asdict(info), "target_state_at_start": info.state,
            "credentials_source": getattr(ctx.cloud.credentials, "source", "?")}


def source_facts(ctx: Context, dl: Deadline) -> dict[str, Any]:
    """The source facts report, measured next to the data: in this process, or by the agent daemon (--agent)."""
    from cvmigrate.common.sourcefacts import facts_to_json

    if ctx.opts.agent:
        facts = _agent_facts(ctx, dl)
    else:
        from cvmigrate.agent.sourcefacts import gather

        facts = gather(os.path.abspath(ctx.opts.source), state_dir=ctx.opts.state_dir)
    ctx._facts = facts
    # the report's clock against ours, read as it arrives (gathering ends with the clock reading)
    skew = facts.clock_unix - time.time()
    for d in ctx.user.data_disks:
        if facts.filesystem("/" + d.mount_point.strip("/")) is None:
            logger.warning("%s: DataDisks MountPoint %s is not a filesystem of its own under the source %s; its data "
                           "lands on the system disk", ctx.user.origin, d.mount_point, facts.root)
    primary = facts.primary_interface()
    _note(ctx, f"{facts.os_name() or 'unknown OS'}, kernel {facts.kernel or '?'}, {facts.boot_mode}, "
               + ", ".join(f"{f.mount_point} {f.fstype or 'dir'}" for f in facts.filesystems)
               + (f"; {primary.name or primary.mac} {primary.method} ({primary.config_system})" if primary else ""))
    return {"source_facts": json.loads(facts_to_json(facts)), "source_clock_skew": round(skew, 1)}


def _agent_facts(ctx: Context, dl: Deadline) -> Any:
    """Ask the agent daemon; wait for it (the admin may still be starting it), except under --check."""
    from cvmigrate.controller.agent_client import AgentClient, announce

    if ctx.opts.checks_only and ctx.opts.security is None:
        raise ConfigError(f"--check --agent {ctx.opts.agent}: give the credentials the agent runs with "
                          "(--tls-ca/--tls-cert/--tls-key/--token-file, or --insecure), so the checks can ask it")
    with AgentClient(ctx.opts.agent, ctx.agent_security()) as client:
        if not ctx.opts.checks_only:
            announce(ctx, client)
        waits = 0
        while True:
            try:
                return client.source_facts(ctx.opts.source, timeout=max(5.0, min(600.0, dl.remaining())))
            except TransportError as exc:
                if ctx.opts.checks_only:
                    raise CheckFailed(f"no agent answers at {ctx.opts.agent} ({exc}); start `cvmigrate agent` on "
                                      "the source server, then run the check again") from None
                if dl.remaining() < 1:
                    raise StageTimeout(f"source_facts: the agent at {ctx.opts.agent} did not answer within "
                                       f"{dl.seconds:.0f} s ({exc}); start `cvmigrate agent` on the source server, "
                                       "then run the same command again") from None
                if waits % 10 == 0:
                    logger.info("agent not reachable yet (%s); waiting for it", exc)
                waits += 1
                time.sleep(min(2.0, dl.remaining()))


def check_capacity(ctx: Context, dl: Deadline) -> dict[str, Any]:
    """Used bytes of each source mount <= the target disk it maps to (DataDisks); the system disk takes the rest."""
    if ctx.client.extra.ignore_check:
        _note(ctx, "skipped (Client.Extra.IgnoreCheck)")
        return {"capacity": "skipped"}
    target = ctx.ckpt.fact("target") or {}
    facts = ctx.source_facts()
    src = facts.root
    gib = 1 << 30
    problems, rows = [], []
    root_fs = facts.filesystem("/")
    system_used = root_fs.used_bytes if root_fs else 0
    data_sizes = dict(tuple(x) for x in target.get("data_disks") or [])
    for i, d in enumerate(ctx.user.data_disks):
        fs = facts.filesystem("/" + d.mount_point.strip("/"))
        field_name = f"DataDisks[{i}]"
        if d.index not in data_sizes:
            problems.append(f"{ctx.user.origin}: {field_name}.Index is {d.index} but target {ctx.instance_id} has "
                            f"{len(data_sizes)} data disk(s); attach the disk or fix Index")
            continue
        if fs is None:
            logger.warning("%s.MountPoint %s is not a separate filesystem on the source; its data counts towards "
                           "the system disk", field_name, d.mount_point)
            continue
        used = fs.used_bytes
        cap = data_sizes[d.index] * gib
        rows.append({"source": d.mount_point, "target": f"data disk {d.index}", "used": used, "capacity": cap})
        if used > cap:
            problems.append(f"{field_name} ({d.mount_point}): {human_bytes(used)} used on the source but target data "
                            f"disk {d.index} has {data_sizes[d.index]} GB; resize the target disk")
    sys_cap = int(target.get("system_disk_gb") or 0) * gib
    rows.insert(0, {"source": str(src), "target": "system disk", "used": system_used, "capacity": sys_cap})
    if sys_cap and system_used > sys_cap:
        hint = (" or map data mounts with DataDisks in user.json (without it everything lands on the system disk)"
                if not ctx.user.data_disks else "")
        problems.append(f"source {src}: {human_bytes(system_used)} used but the target system disk has "
                        f"{target.get('system_disk_gb')} GB; resize it{hint}")
    if problems:
        raise CheckFailed("capacity check failed: " + "; ".join(problems))
    _note(ctx, ", ".join(f"{r['target']} {human_bytes(r['used'])}/{human_bytes(r['capacity'])}" for r in rows))
    return {"capacity": rows, "source_used_bytes": sum(r["used"] for r in rows)}


_FAMILIES = {
    "debian": ("debian", "ubuntu", "linuxmint", "raspbian"),
    "rhel": ("centos", "rhel", "red hat", "rocky", "almalinux", "alma", "fedora", "tencentos", "opencloudos",
             "oracle", "ol", "anolis", "alibaba", "amzn", "amazon"),
    "suse": ("suse", "sles", "opensuse"),
    "windows": ("windows",),
}


def _family(text: str) -> str | None:
    t = text.lower()
    for family, names in _FAMILIES.items():
        if any(re.search(rf"\b{re.escape(n)}\b", t) for n in names):
            return family
    return None


def _prechecks(ctx: Context) -> dict[str, Any]:
    """The pre-checks of `cvmigrate check` (virtio, SELinux, clock, distribution, space, ...).

    A failure stops the migration when the source is this whole server; for
    another source root (the demo's sample tree, tests) the checks about the
    running system do not describe it, so their failures are only warnings.
    """
    from cvmigrate.controller.checks import FAIL, failed, run_checks

    facts = ctx.source_facts()
    whole_server = facts.whole_server
    instance = ctx.cloud.describe_instance(ctx.instance_id)
    results = run_checks(facts, cloud=ctx.cloud, instance=instance, data_disks=ctx.user.data_disks,
                         keep_static_ip=ctx.opts.keep_static_ip, source_clock_skew=ctx.ckpt.fact("source_clock_skew"))
    for r in results:
        (logger.warning if r.status == FAIL else logger.info)("pre-check %s", r.line())
    bad = failed(results)
    if bad and whole_server:
        raise CheckFailed("pre-checks failed: " + "; ".join(f"{r.name}: {r.message} (fix: {r.fix})" for r in bad)
                          + "; fix them, or set Client.Extra.IgnoreCheck to true in client.json to go on")
    counts = {st: sum(1 for r in results if r.status == st) for st in ("pass", "warn", "fail", "skip")}
    return {"prechecks": counts, "prechecks_failed": [r.line() for r in bad]}


def check_os(ctx: Context, dl: Deadline) -> dict[str, Any]:
    """The pre-checks, and the source and target OS family (should match; a warning only)."""
    if ctx.client.extra.ignore_check:
        _note(ctx, "skipped (Client.Extra.IgnoreCheck)")
        return {"os_check": "skipped"}
    pre = _prechecks(ctx)
    target_os = (ctx.ckpt.fact("target") or {}).get("os_name", "")
    source_os = ctx.source_facts().os_name() or None
    sf, tf = _family(source_os or ""), _family(target_os)
    if source_os is None:
        msg = f"cannot tell the source OS (no etc/os-release under {ctx.opts.source} on the source); target is {target_os!r}"
    elif sf is None or tf is None or sf != tf:
        msg = (f"source OS {source_os!r} and target OS {target_os!r} are not the same family; the target keeps its "
               "image metadata -- reinstall the target with the source's OS family to avoid surprises")
    else:
        msg = ""
    if msg:
        logger.warning("OS check: %s", msg)
        _note(ctx, "warning: " + msg[:80])
    else:
        c = pre["prechecks"]
        _note(ctx, f"{sf} family on both sides; pre-checks {c['pass']} pass, {c['warn']} warn, {c['fail']} fail")
    return {"os_check": {"source": source_os, "target": target_os, "warning": msg or None}, **pre}


def _local_ip(towards: str) -> str:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((towards, 9))  # no packet is sent for a UDP connect
            return s.getsockname()[0]
    except OSError:
        return ""


def source_ip(agent: str | None, facts: Any, towards: str) -> str:
    """The source server's IPv4 address for RegisterMigrationTask's SrcInfo.

    In-process (no ``agent``) this host is the source: its address on the way to the target.  In admin-box mode
    this host is not the source: the agent's host as the controller reaches it; when that is a loopback address
    (an SSH tunnel or a local relay), the address the source's primary interface is configured with, from its
    facts (a DHCP source has none: the loopback address is what the controller knows).
    """
    if not agent:
        return _local_ip(towards)
    from cvmigrate.common.netaddr import parse_hostport
    host = parse_hostport(agent, "--agent").host
    try:
        ip = str(socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)[0][4][0])
    except (OSError, IndexError):
        ip = ""
    if ip and not ip.startswith("127."):
        return ip
    primary = facts.primary_interface() if facts is not None else None
    configured = next((a.split("/", 1)[0] for a in (primary.addresses if primary else ()) if ":" not in a), "")
    return str(configured or ip)


def register_msp(ctx: Context, dl: Deadline) -> dict[str, Any]:
    """RegisterMigrationTask (TaskType host) and status migrating, so the migration shows in the MSP console.

    Not with Client.ToolMode / --no-console: go2tencentcloud's tool-only mode registers nothing."""
    if ctx.client.tool_mode or ctx.opts.no_console:
        _note(ctx, "skipped (tool mode: Client.ToolMode / --no-console)")
        return {"msp_task_id": None}
    target = ctx.ckpt.fact("target") or {}
    dst_ip = (target.get("public_ips") or target.get("private_ips") or [""])[0]
    name = f"cvmigrate-{ctx.migration_id}"
    try:
        src_ip = source_ip(ctx.opts.agent, ctx.source_facts() if ctx.opts.agent else None, dst_ip or "192.0.2.1")
        task_id = ctx.cloud.register_migration_task(name, src_ip=src_ip,
                                                    dst_instance_id=ctx.instance_id, dst_ip=dst_ip)
        _kill_point("register_msp:sent")
        ctx.cloud.modify_migration_task_status(task_id, "migrating")
    except CloudError as exc:
        if exc.retryable:
            raise
        logger.warning("MSP registration failed (%s); the migration continues but will not show in the MSP "
                       "console", exc)
        _note(ctx, "not registered: " + exc.code)
        return {"msp_task_id": None}
    _note(ctx, f"MSP task {task_id}")
    return {"msp_task_id": task_id, "msp_status": "migrating"}


def new_rescue_password(length: int = 24) -> str:
    """A strong password EnterRescueMode accepts: all four classes, 8..30 chars, not starting with '/'."""
    classes = (string.ascii_lowercase, string.ascii_uppercase, string.digits, _PASSWORD_SPECIALS)
    alphabet = "".join(classes)
    while True:
        pw = "".join(secrets.choice(alphabet) for _ in range(length))
        if pw[0].isalnum() and all(any(c in cls for c in pw) for cls in classes):
            return pw


def _wait_stable(ctx: Context, dl: Deadline) -> str:
    state = ctx.cloud.instance_status(ctx.instance_id)
    if state in _TRANSITIONAL:
        state = ctx.cloud.wait_for_state(ctx.instance_id, _STARTABLE | _RESCUE, timeout=dl.remaining(),
                                         poll=ctx.opts.poll_interval, unexpected=_DEAD)
    return state


def enter_rescue(ctx: Context, dl: Deadline) -> dict[str, Any]:
    """EnterRescueMode with a generated password -- unless the instance is already entering or in rescue mode."""
    state = _wait_stable(ctx, dl)
    if state in _RESCUE:
        known = ctx.ckpt.secret("rescue_password") is not None
        logger.warning("target %s is already %s: EnterRescueMode not sent%s", ctx.instance_id, state,
                       "" if known else " (its rescue password is not in this state file)")
        if not known and ctx.opts.bootstrap == "ssh":
            raise CheckFailed(f"target {ctx.instance_id} is already in rescue mode with a password this state file "
                              "does not know, so the ssh bootstrap cannot log in; run `cvmigrate clean` to take it "
                              "out of rescue mode, then migrate again (or use --bootstrap manual)")
        _note(ctx, f"already {state}; EnterRescueMode not sent")
        return {"enter_rescue_sent": False, "enter_rescue_found": state}
    if state not in _STARTABLE:
        raise CheckFailed(f"target {ctx.instance_id} is {state}; EnterRescueMode needs RUNNING or STOPPED")
    password = ctx.ckpt.secret("rescue_password")
    if password is None:
        password = new_rescue_password()
        # Stored before the call: a run that dies after the call still knows the password.
        ctx.ckpt.set_secret("rescue_password", password)
    ctx.cloud.enter_rescue_mode(ctx.instance_id, password, stop_type="SOFT_FIRST")
    _kill_point("enter_rescue:sent")
    _note(ctx, f"EnterRescueMode sent ({state} -> ENTER_RESCUE_MODE)")
    return {"enter_rescue_sent": True, "enter_rescue_at": time.time()}


def wait_rescue(ctx: Context, dl: Deadline) -> dict[str, Any]:
    """Poll until RESCUE_MODE (the target is stopped, then boots the rescue system)."""
    state = ctx.cloud.wait_for_state(ctx.instance_id, "RESCUE_MODE", timeout=dl.remaining(),
                                     poll=ctx.opts.poll_interval, unexpected=_DEAD)
    return {"target_state": state}


def mint_credentials(ctx: Context, dl: Deadline) -> dict[str, Any]:
    """This migration's CA, its certificates and one token per role (common/auth.py); reused when already made."""
    if ctx.opts.security is not None:
        _note(ctx, f"admin-supplied: {ctx.opts.security.describe()}")
        return {"tls": ctx.opts.security.describe(), "pki_dir": None}
    from cvmigrate.common.tls import PkiPaths, mint_migration_pki, new_token

    pki_dir = Path(ctx.opts.state_dir) / f"{ctx.migration_id}-pki"
    pki = PkiPaths.in_dir(pki_dir)
    if not pki.exists():
        target = ctx.ckpt.fact("target") or {}
        hosts = (list(target.get("public_ips") or []) + list(target.get("private_ips") or [])
                 + list(target.get("ipv6_addresses") or []))
        if ctx.opts.receiver:
            hosts.append(ctx.opts.receiver.rsplit(":", 1)[0].strip("[]"))
        pki = mint_migration_pki(pki_dir, hosts=sorted(set(hosts)), migration_id=ctx.migration_id, overwrite=True)
    for name in ("token", "control_token", "agent_token"):   # data plane, control plane, agent daemon
        if ctx.ckpt.secret(name) is None:
            ctx.ckpt.set_secret(name, new_token())
    if ctx.opts.bootstrap == "manual":
        # The admin copies these into the rescue system; token files are 0600 like the keys.
        from cvmigrate.common.durable import write_file

        tokens = ctx.tokens()
        write_file(pki_dir / "token", tokens.data + "\n", 0o600)
        write_file(pki_dir / "control-token", tokens.control + "\n", 0o600)
    _note(ctx, f"certificates in {pki_dir}")
    return {"pki_dir": str(pki_dir), "tls": "mutual TLS + token per role"}


DISK_PLAN_NAME = "disk-plan.json"


def write_disk_plan(ctx: Context, path: Path) -> None:
    """What the receiver needs to map the target's disks (`cvmigrate receive --disk-plan`).

    The system disk and each user.json DataDisks entry with its size (from
    DescribeInstances) and the source mount point it receives, plus the
    source's filesystems so a blank data disk gets the same filesystem type.
    """
    target = ctx.ckpt.fact("target") or {}
    sizes = {int(i): int(gb) for i, gb in target.get("data_disks") or []}
    wanted = [{"index": 0, "size_gb": int(target.get("system_disk_gb") or 0), "mount_point": "/"}]
    for d in ctx.user.data_disks:
        wanted.append({"index": d.index, "size_gb": sizes.get(d.index, d.size_gb), "mount_point": d.mount_point})
    facts = ctx.source_facts()
    plan = {"wanted": wanted, "source_filesystems": [f.identity() for f in facts.filesystems],
            "boot_mode": facts.boot_mode, "esp": facts.esp}
    path.write_text(json.dumps(plan, indent=2) + "\n")


def _receiver_command(ctx: Context, port: int) -> str:
    pki = ctx.ckpt.fact("pki_dir")
    if not pki:
        return f"cvmigrate receive --listen 0.0.0.0:{port} --root {ctx.opts.target_root} (with your TLS files)"
    blocks = "".join(f" --block-target {dst}" for _, dst in ctx.opts.block_disks)
    return (f"cvmigrate receive --listen 0.0.0.0:{port} --root {ctx.opts.target_root} --tls-ca ca.pem "
            f"--tls-cert server.pem --tls-key server.key --token-file token --control-token-file control-token "
            f"--disk-plan {DISK_PLAN_NAME}{blocks}")


def start_receiver(ctx: Context, dl: Deadline) -> dict[str, Any]:
    """Bring up the receiver in the rescue system: manual (the admin starts it), ssh, or local (demo, tests)."""
    mode = ctx.opts.bootstrap
    if mode == "local":
        address = ctx.receiver_address()
        _note(ctx, f"in-process receiver on {address}")
        return {"receiver_address": address}
    if mode == "manual":
        address = ctx.opts.receiver or format_hostport(ctx.target_ip(), ctx.opts.receiver_port)
        port = int(address.rsplit(":", 1)[1])
        pki = ctx.ckpt.fact("pki_dir")
        if pki:
            write_disk_plan(ctx, Path(pki) / DISK_PLAN_NAME)
            ctx.display.message(
                f"Start the receiver in the target's rescue system (log in with the console's rescue login):\n"
                f"  copy {pki}/{{ca.pem,server.pem,server.key,token,control-token}} there, mount the target disk at "
                f"{ctx.opts.target_root}, then run\n  {_receiver_command(ctx, port)}\n"
                f"waiting for it at {address} ...")
        _note(ctx, f"manual receiver at {address}")
        return {"receiver_address": address}
    if mode == "ssh":
        try:
            from cvmigrate.controller import bootstrap_ssh  # type: ignore[attr-defined]
        except ImportError:
            raise ConfigError("ssh bootstrap not available in this cvmigrate build; start the receiver yourself and "
                              "use --bootstrap manual --receiver HOST:PORT") from None
        password = ctx.ckpt.secret("rescue_password")
        if password is None:
            raise CheckFailed("the rescue password is not in the state file; run `cvmigrate clean` and migrate again")
        host = ctx.target_ip()
        pki_dir = ctx.ckpt.fact("pki_dir")
        if not pki_dir:
            raise ConfigError("--bootstrap ssh needs the certificates cvmigrate mints; drop --tls-*/--token-file/--insecure")
        known = (ctx.ckpt.fact("receiver_endpoint") or {}).get("host_key_fingerprint")
        endpoint = bootstrap_ssh.bootstrap_receiver(
            host, port=ctx.opts.ssh_port, username=ctx.opts.ssh_user, password=password,
            target_root=ctx.opts.target_root, listen_port=ctx.opts.receiver_port, pki_dir=Path(pki_dir),
            token=ctx.ckpt.secret("token"), control_token=ctx.ckpt.secret("control_token"),
            timeout=dl.remaining(), known_fingerprint=known, executable=ctx.opts.executables)
        _note(ctx, f"receiver started over ssh on {endpoint.address}")
        return {"receiver_address": endpoint.address, "receiver_endpoint": endpoint.as_dict()}
    raise ConfigError(f"--bootstrap {mode!r}: use manual or ssh")


def ping_receiver(ctx: Context, timeout: float) -> Any:
    import grpc

    from cvmigrate.agent.push import channel_options
    from cvmigrate.proto import transfer_pb2, transfer_pb2_grpc

    sec = ctx.security()
    address = ctx.receiver_address()
    channel = sec.channel(address, channel_options())
    try:
        return transfer_pb2_grpc.ReceiverStub(channel).Ping(transfer_pb2.PingRequest(), metadata=sec.metadata() or None,
                                                            timeout=timeout)
    except grpc.RpcError as exc:
        from cvmigrate.common.connectfail import TlsError, connect_failure

        code = exc.code()
        named = connect_failure(code.name if code else "UNKNOWN", exc.details() or "", peer="receiver",
                                address=address, transport=sec.transport, start_hint="`cvmigrate receive`",
                                probe=sec.probe())
        if isinstance(named, TlsError):
            raise named from None   # a certificate does not fix itself: fail now, not after the stage's timeout
        raise TransportError(f"receiver at {address}: {code.name if code else '?'}: {exc.details()}") from None
    finally:
        channel.close()


def reach_receiver(ctx: Context, dl: Deadline) -> dict[str, Any]:
    """Ping the receiver (TLS + token) until it answers; a refused token or certificate fails at once."""
    from cvmigrate.common.model import PROTOCOL_VERSION

    last: CvmError | None = None
    attempts = 0
    while True:
        attempts += 1
        try:
            resp = ping_receiver(ctx, timeout=max(1.0, min(10.0, dl.remaining())))
            break
        except TransportError as exc:
            if "UNAUTHENTICATED" in str(exc) or "PERMISSION_DENIED" in str(exc):
                raise CheckFailed(f"the receiver refused us: {exc}; start it with this migration's certificates and "
                                  "token") from None
            last = exc
            if attempts == 1 or attempts % 10 == 0:
                logger.info("receiver not reachable yet (%s); retrying until %.0f s have passed", exc, dl.seconds)
        if dl.expired():
            raise StageTimeout(f"reach_receiver: the receiver at {ctx.receiver_address()} did not answer within "
                               f"{dl.seconds:.0f} s ({last}); check that it runs in the rescue system and that the "
                               "security group allows the port") from None
        time.sleep(min(max(0.2, ctx.opts.poll_interval / 2), dl.remaining() or 0.2))
    if PROTOCOL_VERSION not in resp.protocol_versions:
        raise CheckFailed(f"the receiver speaks protocol {list(resp.protocol_versions)}, we speak {PROTOCOL_VERSION}; "
                          "run the same cvmigrate version on both sides")
    _note(ctx, f"receiver {resp.receiver_version} at {ctx.receiver_address()}")
    return {"receiver_version": resp.receiver_version, "receiver_busy": resp.busy}


# -- stage 2 -------------------------------------------------------------------------
def _data_mounts(ctx: Context, facts: Any) -> tuple[bytes, ...]:
    """Relative mount points of the DataDisks that are separate filesystems on the source: the
    pass enters them (it never crosses a filesystem otherwise), and so does the verification."""
    return tuple(os.fsencode(d.mount_point.strip("/")) for d in ctx.user.data_disks
                 if d.mount_point.strip("/") and facts.filesystem("/" + d.mount_point.strip("/")) is not None)


#: The agent's own files on a source server (agent/install.py's layout, the one-file executable's caches).
AGENT_OWN_LINES: tuple[str, ...] = ("/etc/cvmigrate/", "/var/lib/cvmigrate/", "/usr/local/lib/cvmigrate/",
                                    "/root/.cache/cvmigrate/", "/var/tmp/cvmigrate-*/", "/tmp/cvmigrate-*/")


def _rules(ctx: Context) -> Any:
    from cvmigrate.common.excludes import DEFAULT_EXCLUDE_LINES, ExcludeRules

    src = os.path.abspath(ctx.opts.source)
    # the tool's own files never migrate, wherever they sit under the source: the controller's
    # (user.json with the SecretKey, client.json, state, log, this migration's keys and tokens)
    # and the agent's (its installed executable, certificates, token and unpacked runtime)
    own = list(AGENT_OWN_LINES)
    pki_dir = ctx.ckpt.fact("pki_dir")
    for p in (*ctx.opts.own_paths, *([pki_dir] if pki_dir else [])):
        ap = os.path.abspath(p)
        if ap == src or not ap.startswith(src.rstrip("/") + "/"):
            continue
        rel = "/" + os.path.relpath(ap, src)
        own.append(rel.replace("[", "\\[").replace("*", "\\*").replace("?", "\\?") + "*")
    rules = ExcludeRules.parse(own, origin="cvmigrate's own files")
    for path in ctx.opts.exclude_files:
        rules = rules + ExcludeRules.from_file(path)
    return rules + ExcludeRules.parse(DEFAULT_EXCLUDE_LINES, origin="default excludes")


class _Sampler:
    """Progress samples of one pass: the rates over a moving window, the ETA from the current rate."""

    def __init__(self, pass_no: int, kind: str, estimate: int | None, prev_files: int | None) -> None:
        from cvmigrate.controller.progress import RateWindow

        self.pass_no, self.kind, self.estimate, self.prev_files = pass_no, kind, estimate, prev_files
        self.t0 = time.monotonic()
        self.read, self.wire, self.files = RateWindow(), RateWindow(), RateWindow()

    def __call__(self, session: Any) -> TransferProgress:
        s, r = session.scanner.stats, session.result
        now = time.monotonic()
        done = r.files_transferred + r.files_skipped
        p = TransferProgress(pass_no=self.pass_no, kind=self.kind, files_scanned=s.files, files_done=done,
                             bytes_scanned=s.bytes_total, bytes_read=r.bytes_read, bytes_sent=r.bytes_sent,
                             elapsed=now - self.t0)
        p.rate, p.wire_rate = self.read.add(now, r.bytes_read), self.wire.add(now, r.bytes_sent)
        files_rate = self.files.add(now, done)
        if self.kind == "full" and self.estimate and p.rate > 0:
            p.eta = max(0.0, self.estimate - r.bytes_read) / p.rate
        elif self.prev_files and files_rate > 0:
            p.eta = max(0.0, self.prev_files - done) / files_rate
        return p


def run_pass(ctx: Context, kind: str, dl: Deadline, *, checksum: bool = False) -> dict[str, Any]:
    """One transfer pass: file level (unless --block-only), then each --block-disk block by block."""
    if ctx.opts.file_level:
        result = _file_pass(ctx, kind, dl, checksum=checksum)
    else:
        result = {"files": 0, "dirs": 0, "bytes_total": 0, "bytes_sent": 0, "deleted": 0, "seconds": 0.0}
    if ctx.opts.block_disks:
        result["block"] = [_block_pass(ctx, src, dst, kind) for src, dst in ctx.opts.block_disks]
        result["bytes_sent"] += sum(b["bytes_on_wire"] for b in result["block"])
    return result


def _block_pass(ctx: Context, source: str, target: str, kind: str) -> dict[str, Any]:
    """One block-level pass of a disk (the receiver hashes or journals the target: only changes travel)."""
    from cvmigrate.agent.blockpush import BlockPush, BlockPushOptions
    from cvmigrate.agent.push import channel_options

    sec = ctx.data_security()
    opts = BlockPushOptions(source=source, address=ctx.receiver_address(), target_device=target,
                            migration_id=ctx.migration_id, workers=ctx.opts.workers,
                            channel_factory=sec.channel_factory(channel_options(ctx.data_proxy())),
                            metadata=sec.metadata())
    r = BlockPush(opts).run()
    summary = (f"block pass ({kind}) {source} -> {target}: {r.blocks_total} blocks, {r.blocks_zero} zero, "
               f"{r.blocks_unchanged} unchanged, {r.blocks_sent} sent ({human_bytes(r.bytes_on_wire)} on the wire), "
               f"source {r.consistency}")
    logger.info("%s", summary)
    for w in r.warnings:
        logger.warning("%s: %s", source, w)
    return r.as_json()


def _file_pass(ctx: Context, kind: str, dl: Deadline, *, checksum: bool = False) -> dict[str, Any]:
    """One agent -> receiver file-level pass, retried on transport errors within the deadline.

    The agent runs in this process, or with ``--agent`` in the daemon there (same display and checkpoints).
    """
    from cvmigrate.agent.push import PushOptions, PushSession, channel_options, check_complete

    src = os.path.abspath(ctx.opts.source)
    facts = ctx.source_facts()
    mounts = _data_mounts(ctx, facts)
    previous = ctx.ckpt.completed_passes()
    prev_files = previous[-1]["result"]["files"] if previous else None
    estimate = previous[-1]["result"]["bytes_total"] if previous else ctx.ckpt.fact("source_used_bytes")
    attempt = 0
    while True:
        attempt += 1
        sec = ctx.data_security()
        opts = PushOptions(source=src, address=ctx.receiver_address(), rules=_rules(ctx), delete=True,
                           checksum=checksum, include_mounts=mounts, migration_id=ctx.migration_id,
                           workers=ctx.opts.workers,
                           channel_factory=sec.channel_factory(channel_options(ctx.data_proxy())),
                           metadata=sec.metadata(), bwlimit_kbps=_bwlimit(ctx))
        n = ctx.ckpt.begin_pass(kind)
        if ctx.opts.agent:
            from cvmigrate.controller.agent_client import remote_session
            session: Any = remote_session(ctx, opts)
        else:
            session = PushSession(opts)
        box: dict[str, Any] = {}

        def work() -> None:
            try:
                box["result"] = session.run()
            except BaseException as exc:  # handed to the runner thread
                box["error"] = exc

        sample = _Sampler(n, kind, estimate, prev_files)
        worker = threading.Thread(target=work, name=f"cvm-pass-{n}", daemon=True)
        worker.start()
        last_saved = last_limit_check = 0.0
        limit = opts.bwlimit_kbps
        while worker.is_alive():
            worker.join(0.1)
            if time.monotonic() - last_limit_check > 1.0:
                last_limit_check = time.monotonic()
                limit = _apply_bwlimit_change(ctx, session, limit)
            prog = sample(session)
            ctx.display.transfer(prog)
            if time.monotonic() - last_saved > 2.0:
                ctx.ckpt.set_facts(transfer_progress=prog.as_json())
                last_saved = time.monotonic()
            if dl.expired():
                session.cancel(f"the {kind} pass ran out of time")
                raise dl.timeout_error(f"the {kind} pass")
        prog = sample(session)
        err = box.get("error")
        if err is None:
            result = box["result"]
            ctx.ckpt.end_pass(n, result.as_json())
            ctx.ckpt.set_facts(transfer_progress=prog.as_json())
            check_complete(result)
            summary = (f"pass {n} ({kind}): {result.files} files ({result.files_transferred} sent, "
                       f"{result.files_skipped} unchanged), {human_bytes(result.bytes_total)} of content, "
                       f"{human_bytes(result.bytes_sent)} on the wire, {result.deleted} deleted, {result.seconds:.1f}s")
            ctx.display.transfer_done(prog, summary)
            logger.info("%s", summary)
            return result.as_json()
        ctx.ckpt.end_pass(n, {"error": str(err)})
        if not (isinstance(err, CvmError) and err.retryable) or attempt >= 5 or dl.remaining() < 1:
            raise err
        pause = min(30.0, 2.0 ** attempt, dl.remaining())
        logger.warning("%s pass failed (%s); the receiver keeps what landed, retrying in %.0f s", kind, err, pause)
        time.sleep(pause)


def _bwlimit(ctx: Context) -> int | None:
    """`cvmigrate bwlimit` (kept in the checkpoint) wins over client.json's Client.Rsync.BandwidthLimit."""
    override = ctx.ckpt.fact("bwlimit_override")
    if override is None:
        return ctx.client.rsync.bandwidth_limit_kbps
    return override or None


def _apply_bwlimit_change(ctx: Context, session: Any, current: int | None) -> int | None:
    """Apply a limit changed by `cvmigrate bwlimit` to the running pass (local or on the agent daemon)."""
    wanted = _bwlimit(ctx)
    if wanted == current:
        return current
    if hasattr(session, "set_bandwidth"):
        session.set_bandwidth(wanted)
    else:
        session.bucket.set_rate(wanted * 1024 if wanted else None)
    logger.info("bandwidth limit changed to %s", f"{wanted} KB/s" if wanted else "unlimited")
    return wanted


def full_pass(ctx: Context, dl: Deadline) -> dict[str, Any]:
    """The first complete copy; a re-run resumes from the receiver's journal (nothing landed is sent again)."""
    result = run_pass(ctx, "full", dl)
    _note(ctx, f"{result['files']} files, {human_bytes(result['bytes_total'])}")
    return {"full_pass": result}


class CutoverSignal:
    """cutover manual: the admin ends the incremental passes by creating a file (or pressing Enter on a terminal)."""

    def __init__(self, path: str | None, *, key: bool) -> None:
        self.path = path
        self._event = threading.Event()
        if key and sys.stdin is not None and sys.stdin.isatty():
            threading.Thread(target=self._read_key, name="cvm-cutover-key", daemon=True).start()

    def _read_key(self) -> None:
        try:
            sys.stdin.readline()
        except (OSError, ValueError):
            return
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set() or bool(self.path and os.path.exists(self.path))

    def wait(self, seconds: float) -> bool:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if self.is_set():
                return True
            time.sleep(min(0.2, max(0.0, end - time.monotonic())))
        return self.is_set()


def incremental_passes(ctx: Context, dl: Deadline) -> dict[str, Any]:
    """Passes after the full one, per --cutover: now (none), after-pass (one final pass), manual (until told)."""
    mode = ctx.opts.cutover
    checksum = ctx.client.rsync.checksum
    if mode == "now":
        _note(ctx, "none (--cutover now)")
        return {"incremental_passes": 0}
    if mode == "after-pass":
        result = run_pass(ctx, "final", dl, checksum=checksum)
        _note(ctx, f"final pass{' with content checksums' if checksum else ''}: "
                   f"{human_bytes(result['bytes_sent'])} sent, {result['deleted']} deleted")
        return {"incremental_passes": 1, "final_pass": result}
    signal_ = CutoverSignal(ctx.opts.cutover_file, key=ctx.opts.cutover_key)
    ctx.display.message(f"incremental passes until cut-over: stop the applications, then create {ctx.opts.cutover_file}"
                        + (" or press Enter" if ctx.opts.cutover_key and sys.stdin and sys.stdin.isatty() else "")
                        + "; one final pass follows")
    count = 0
    while True:
        signalled = signal_.is_set()
        result = run_pass(ctx, "final" if signalled else "incremental", dl, checksum=checksum and signalled)
        count += 1
        if signalled:
            break
        signal_.wait(min(ctx.opts.pass_interval, dl.remaining()))
    _note(ctx, f"{count} passes; cut-over after pass {count}")
    return {"incremental_passes": count, "final_pass": result}


# -- stage 3 -------------------------------------------------------------------------
def run_fixups(ctx: Context) -> dict[str, Any]:
    """Post-migration fix-ups on the target while it is still in rescue mode (fstab, grub, initramfs, ...).

    They run on the receiver, where the target's disks are; the agent's view of
    the source filesystems (UUIDs, labels, devices) tells it what to map.
    """
    from cvmigrate.agent.push import channel_options
    from cvmigrate.proto import transfer_pb2 as pb
    from cvmigrate.proto import transfer_pb2_grpc as pb_grpc

    from cvmigrate.common.sourcefacts import facts_to_json

    if not ctx.opts.file_level:
        return {"fixups": "not needed", "reason": "block-level migration keeps the disks exactly as they were"}
    facts = ctx.source_facts()
    sources = [f.identity() for f in facts.filesystems]
    sec = ctx.security()
    with sec.channel(ctx.receiver_address(), channel_options(ctx.data_proxy())) as channel:
        resp = pb_grpc.ReceiverStub(channel).RunFixups(
            pb.FixupsRequest(source_filesystems_json=json.dumps(sources), chroot_tools=True,
                             source_facts_json=facts_to_json(facts), keep_static_ip=ctx.opts.keep_static_ip),
            metadata=sec.control_metadata() or None, timeout=1800)
    if resp.skipped:
        # a directory target (demo, tests): no disk, no bootloader -- nothing of the fix-ups applies
        return {"fixups": "not needed", "reason": resp.summary}
    for line in resp.diffs.splitlines():
        logger.info("fix-up diff: %s", line)
    if not resp.ok:
        raise CheckFailed(f"post-migration fix-ups failed: {resp.summary}; see the diffs in the log, fix the "
                          "target in rescue mode, then run the same command again")
    return {"fixups": "done", "summary": resp.summary, "report": json.loads(resp.report_json or "{}")}


def fixups(ctx: Context, dl: Deadline) -> dict[str, Any]:
    """The fix-ups on the receiver; each fix-up only changes what still needs changing, so a re-run is safe."""
    facts = run_fixups(ctx)
    _note(ctx, facts.get("summary") or facts.get("reason") or facts["fixups"])
    return {"fixups": facts}


def finalize_receiver(ctx: Context, dl: Deadline) -> dict[str, Any]:
    """The receiver removes its journal and every temporary file of ours from the target (control credential)."""
    import grpc

    from cvmigrate.agent.push import channel_options
    from cvmigrate.proto import transfer_pb2 as pb
    from cvmigrate.proto import transfer_pb2_grpc as pb_grpc

    sec = ctx.security()
    try:
        with sec.channel(ctx.receiver_address(), channel_options(ctx.data_proxy())) as channel:
            resp = pb_grpc.ReceiverStub(channel).Finalize(pb.FinalizeRequest(), metadata=sec.control_metadata() or None,
                                                          timeout=max(10.0, dl.remaining()))
    except grpc.RpcError as exc:
        code = exc.code()
        raise TransportError(f"finalizing the receiver at {ctx.receiver_address()}: {code.name if code else '?'}: "
                             f"{exc.details()}; run the same command again (or `cvmigrate receive --root ROOT "
                             "--finalize` in the rescue system)") from None
    _note(ctx, f"journal {'removed' if resp.state_removed else 'already gone'}, "
               f"{resp.temporary_files_removed} temporary file(s) removed")
    return {"receiver_finalized": True, "temporary_files_removed": resp.temporary_files_removed}


def exit_rescue(ctx: Context, dl: Deadline) -> dict[str, Any]:
    """ExitRescueMode -- unless the instance is already leaving or out of rescue mode."""
    state = ctx.cloud.instance_status(ctx.instance_id)
    if state == "ENTER_RESCUE_MODE":
        state = ctx.cloud.wait_for_state(ctx.instance_id, "RESCUE_MODE", timeout=dl.remaining(),
                                         poll=ctx.opts.poll_interval, unexpected=_DEAD)
    if state in ("EXIT_RESCUE_MODE", "RUNNING"):
        logger.info("target %s is already %s: ExitRescueMode not sent", ctx.instance_id, state)
        _note(ctx, f"already {state}; ExitRescueMode not sent")
        return {"exit_rescue_sent": False, "exit_rescue_found": state}
    if state != "RESCUE_MODE":
        raise CheckFailed(f"target {ctx.instance_id} is {state}; ExitRescueMode needs RESCUE_MODE")
    ctx.cloud.exit_rescue_mode(ctx.instance_id)
    _kill_point("exit_rescue:sent")
    _note(ctx, "ExitRescueMode sent")
    return {"exit_rescue_sent": True, "exit_rescue_at": time.time()}


def wait_running(ctx: Context, dl: Deadline) -> dict[str, Any]:
    """Poll until RUNNING (the target boots its own, migrated, system disk)."""
    state = ctx.cloud.wait_for_state(ctx.instance_id, "RUNNING", timeout=dl.remaining(),
                                     poll=ctx.opts.poll_interval, unexpected=_DEAD)
    return {"target_state": state}


def verify(ctx: Context, dl: Deadline) -> dict[str, Any]:
    """The verification summary: every pass complete, and (when the target is readable here) a tree comparison."""
    passes = ctx.ckpt.completed_passes()
    last = passes[-1]["result"] if passes else {}
    summary: dict[str, Any] = {
        "passes": len(passes),
        "files": last.get("files", 0), "dirs": last.get("dirs", 0), "symlinks": last.get("symlinks", 0),
        "hardlinks": last.get("hardlinks", 0), "bytes_total": last.get("bytes_total", 0),
        "bytes_sent_all_passes": sum(p["result"].get("bytes_sent", 0) for p in passes),
        "errors": sum(len(p["result"].get("errors") or []) for p in passes),
        "changed_during_last_pass": last.get("changed_during_copy", 0),
        "every_file_hash_verified_by_receiver": True,
    }
    if ctx.opts.verify_target:
        from cvmigrate.agent.verify import compare_trees

        report = compare_trees(os.path.abspath(ctx.opts.source), ctx.opts.verify_target, _rules(ctx),
                               include_mounts=_data_mounts(ctx, ctx.source_facts()))
        summary.update(compared_entries=report.entries, compared_files_hashed=report.files_hashed,
                       compared_bytes_hashed=report.bytes_hashed, differences=report.differences[:20])
        if not report.ok:
            raise CheckFailed("verification failed: " + "; ".join(report.differences[:5]))
    note = (f"{summary['files']} files, {human_bytes(summary['bytes_total'])} in {summary['passes']} passes, "
            f"{summary['errors']} errors")
    if "compared_entries" in summary:
        note += f"; {summary['compared_entries']} entries compared with the target: identical"
    _note(ctx, note)
    return {"verification": summary}


def msp_finish(ctx: Context, dl: Deadline) -> dict[str, Any]:
    """ModifyMigrationTaskStatus finish (setting the same status twice is harmless)."""
    task_id = ctx.ckpt.fact("msp_task_id")
    if not task_id:
        _note(ctx, "no MSP task")
        return {}
    ctx.cloud.modify_migration_task_status(task_id, "finish")
    _note(ctx, f"MSP task {task_id}: finish")
    return {"msp_status": "finish", "finished_at": time.time()}


# ============================================================================ the table
H = 3600.0
SUBTASKS: tuple[SubTask, ...] = (
    SubTask("validate_config", 1, 30, "pure: re-read and re-checked on every run", validate_config, check=True),
    SubTask("check_credentials", 1, 120, "read-only API calls", check_credentials, check=True),
    SubTask("mint_credentials", 1, 120, "reuses the certificates and token already made", mint_credentials),
    SubTask("source_facts", 1, 1800, "read-only: the agent measures the source again", source_facts, check=True),
    SubTask("check_capacity", 1, 600, "read-only (statvfs / a du of the source)", check_capacity, check=True),
    SubTask("check_os", 1, 30, "read-only; warns only", check_os, check=True),
    SubTask("register_msp", 1, 120, "MSP has no idempotency token: a crash between the call and its checkpoint "
            "registers a second task (a console entry)", register_msp),
    SubTask("enter_rescue", 1, 600, "reads the state first: never sent to an instance entering or in rescue mode; "
            "the password is stored before the call", enter_rescue),
    SubTask("wait_rescue", 1, 1800, "polling only", wait_rescue),
    SubTask("start_receiver", 1, 1800, "manual: records the address; ssh: the bootstrap restarts a receiver that "
            "is not running", start_receiver),
    SubTask("reach_receiver", 1, 1800, "Ping only", reach_receiver),
    SubTask("full_pass", 2, 72 * H, "the receiver's journal skips what landed", full_pass),
    SubTask("incremental_passes", 2, 72 * H, "passes are idempotent", incremental_passes),
    SubTask("fixups", 3, 1800, "each fix-up must be idempotent", fixups),
    SubTask("finalize_receiver", 3, 1800, "removing what is already gone is a no-op", finalize_receiver),
    SubTask("exit_rescue", 3, 600, "reads the state first: never sent to an instance leaving or out of rescue mode",
            exit_rescue),
    SubTask("wait_running", 3, 1800, "polling only", wait_running),
    SubTask("verify", 3, 6 * H, "read-only", verify),
    SubTask("msp_finish", 3, 120, "setting the same status twice is harmless", msp_finish),
)
SUBTASKS_BY_NAME = {s.name: s for s in SUBTASKS}
SUBTASK_NAMES = tuple(SUBTASKS_BY_NAME)


# ============================================================================ the runner
@dataclass
class RunOutcome:
    completed: bool
    ran: list[str]
    skipped: list[str]


def _stage_label(st: SubTask) -> str:
    return f"{st.stage}:{st.name}"


def check_state_matches(ctx: Context) -> None:
    """A state file belongs to one target: refuse to resume another migration's."""
    known = ctx.ckpt.fact("instance_id")
    if known and known != ctx.instance_id:
        raise ConfigError(f"the state file {ctx.ckpt.path} belongs to the migration to {known}, but user.json names "
                          f"{ctx.instance_id}; give another --state FILE, or run `cvmigrate clean` for {known} first")


def run_stages(ctx: Context, *, only_checks: bool = False) -> RunOutcome:
    """Run (or resume) the sub-tasks in order; raises the first failure after recording it."""
    ckpt = ctx.ckpt
    ctx.migration_id = ctx.migration_id or ckpt.migration_id()
    logsetup.set_context(migration=ctx.migration_id)
    check_state_matches(ctx)
    ctx.opts.checks_only = only_checks
    table = [s for s in SUBTASKS if s.check] if only_checks else list(SUBTASKS)
    ckpt.register_subtasks((s.name, s.stage) for s in table)
    _resume_msp(ctx)
    ran, skipped = [], []
    stage_shown = 0
    for st in table:
        if st.stage != stage_shown:
            stage_shown = st.stage
            ctx.display.stage(st.stage)
        row = ckpt.subtask(st.name)
        if row is not None and row.status == DONE:
            ctx.display.subtask_skipped(st.name)
            skipped.append(st.name)
            continue
        logsetup.set_context(stage=_stage_label(st))
        timeout = ctx.timeout_for(st.name)
        if row is not None and row.attempts:
            logger.info("resuming sub-task %s (attempt %d)", st.name, row.attempts + 1)
        ckpt.start(st.name)
        ctx.display.subtask_started(st.name, st.stage, timeout)
        ctx.notes.pop("current", None)
        t0 = time.monotonic()
        try:
            facts = st.fn(ctx, Deadline(timeout, st.name)) or {}
        except BaseException as exc:
            message = str(exc) or type(exc).__name__
            ckpt.fail(st.name, message)
            ctx.display.subtask_failed(st.name, message)
            if isinstance(exc, CvmError):
                logger.error("sub-task %s failed: %s", st.name, message, extra=logsetup.REPORTED)
            if not only_checks:
                _msp_fail(ctx, st.name, message)
            raise
        ckpt.finish(st.name, facts)
        ctx.display.subtask_finished(st.name, time.monotonic() - t0, ctx.notes.get("current", ""))
        logger.info("sub-task %s done in %.1fs%s", st.name, time.monotonic() - t0,
                    f": {ctx.notes['current']}" if ctx.notes.get("current") else "")
        ran.append(st.name)
        _kill_point(st.name)
    logsetup.set_context(stage="-")
    return RunOutcome(completed=ckpt.all_done(), ran=ran, skipped=skipped)


def _msp_fail(ctx: Context, subtask: str, reason: str) -> None:
    """Best effort: show the failure in the MSP console (the reason goes to the log and the state file)."""
    task_id = ctx.ckpt.fact("msp_task_id")
    if not task_id or ctx.ckpt.fact("msp_status") in ("finish", "fail"):
        return
    try:
        ctx.cloud.modify_migration_task_status(task_id, "fail")
        ctx.ckpt.set_facts(msp_status="fail", failure={"subtask": subtask, "reason": reason[:500]})
        logger.info("MSP task %s marked fail (%s: %s)", task_id, subtask, reason)
    except CvmError as exc:
        logger.warning("could not mark MSP task %s as failed: %s", task_id, exc)


def _resume_msp(ctx: Context) -> None:
    """A re-run after a failure sets the MSP task back to migrating."""
    task_id = ctx.ckpt.fact("msp_task_id")
    if task_id and ctx.ckpt.fact("msp_status") == "fail":
        try:
            ctx.cloud.modify_migration_task_status(task_id, "migrating")
            ctx.ckpt.set_facts(msp_status="migrating")
        except CvmError as exc:
            logger.warning("could not set MSP task %s back to migrating: %s", task_id, exc)
