"""Stage 1: check everything, prepare the target, bring up the receiver (go2tencentcloud's pre-migration).

The crash window between a cloud call and its checkpoint is closed by
looking before acting: ``enter_rescue`` reads the instance state first and
does not send EnterRescueMode to an instance that is already entering or in
rescue mode (whether from our own lost run or an earlier crash); the rescue
password is stored *before* the call, so a resumed run still knows it.
RegisterMigrationTask has no idempotency token in MSP: a crash between the
call and its checkpoint registers a second task on the re-run (harmless: a
console entry).  Each function's idempotency rule is in the runner's table
(controller/runner.py).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from cvmigrate.common.connectfail import TlsError
from cvmigrate.common.errors import (
    AuthError,
    CheckFailed,
    CloudError,
    ConfigError,
    CvmError,
    StageTimeout,
    TransportError,
)
from cvmigrate.common.netaddr import format_hostport
from cvmigrate.common.sourcefacts import SourceFacts
from cvmigrate.controller import receiver_client
from cvmigrate.controller.checks import os_family_of
from cvmigrate.controller.context import CUTOVER_MODES, DEAD, RESCUE, STARTABLE, TRANSITIONAL, Context, Deadline
from cvmigrate.controller.manual_receiver import DISK_PLAN_NAME, receiver_command, write_disk_plan
from cvmigrate.controller.progress import human_bytes
from cvmigrate.controller.rescue_password import new_rescue_password
from cvmigrate.controller.testhooks import kill_point

logger = logging.getLogger(__name__)


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
        logger.info("transfer rate limited to %d KB/s (Client.Rsync.BandwidthLimit)",
                    ctx.client.rsync.bandwidth_limit_kbps)
    ctx.note(f"{ctx.user.instance_id} in {ctx.user.region}, source {ctx.opts.source}")
    return {"instance_id": ctx.user.instance_id, "region": ctx.user.region, "source": str(src),
            "data_disks": [dataclasses.asdict(d) for d in ctx.user.data_disks],
            "net_mode": int(ctx.client.net.mode), "cutover": ctx.opts.cutover, "bootstrap": ctx.opts.bootstrap}


def check_credentials(ctx: Context, dl: Deadline) -> dict[str, Any]:
    """Signed calls with the key pair; the target exists in the region and is in a usable state."""
    ctx.cloud.check_credentials()
    info = ctx.cloud.describe_instance(ctx.instance_id)
    if info.state in DEAD or "SERVICE_LIVE_MIGRATE" in info.state:
        raise CheckFailed(f"target {ctx.instance_id} is {info.state}; it cannot be migrated to in this state "
                          "(check it in the CVM console)")
    if info.state in RESCUE:
        logger.warning("target %s is already %s (an earlier run?); EnterRescueMode will not be sent again",
                       ctx.instance_id, info.state)
    elif info.state not in STARTABLE:
        logger.warning("target %s is %s; waiting for a stable state before EnterRescueMode", ctx.instance_id,
                       info.state)
    ctx.note(f"{info.instance_id} {info.state}, {info.os_name or 'OS unknown'}, system disk {info.system_disk_gb} GB"
               + (f", data disks {', '.join(f'{s} GB' for _, s in info.data_disks)}" if info.data_disks else ""))
    return {"target": dataclasses.asdict(info), "target_state_at_start": info.state,
            "credentials_source": getattr(ctx.cloud.credentials, "source", "?")}


def source_facts(ctx: Context, dl: Deadline) -> dict[str, Any]:
    """The source facts report, measured next to the data: in this process, or by the agent daemon (--agent)."""
    from cvmigrate.common.sourcefacts import facts_to_json

    if ctx.opts.agent:
        facts = _agent_facts(ctx, dl, ctx.opts.agent)
    else:
        from cvmigrate.agent.sourcefacts import gather

        facts = gather(os.path.abspath(ctx.opts.source), state_dir=ctx.opts.state_dir)
    ctx.remember_source_facts(facts)
    # the report's clock against ours, read as it arrives (gathering ends with the clock reading)
    skew = facts.clock_unix - time.time()
    for d in ctx.user.data_disks:
        if facts.filesystem("/" + d.mount_point.strip("/")) is None:
            logger.warning("%s: DataDisks MountPoint %s is not a filesystem of its own under the source %s; its data "
                           "lands on the system disk", ctx.user.origin, d.mount_point, facts.root)
    primary = facts.primary_interface()
    ctx.note(f"{facts.os_name() or 'unknown OS'}, kernel {facts.kernel or '?'}, {facts.boot_mode}, "
               + ", ".join(f"{f.mount_point} {f.fstype or 'dir'}" for f in facts.filesystems)
               + (f"; {primary.name or primary.mac} {primary.method} ({primary.config_system})" if primary else ""))
    return {"source_facts": json.loads(facts_to_json(facts)), "source_clock_skew": round(skew, 1)}


def _agent_facts(ctx: Context, dl: Deadline, agent: str) -> SourceFacts:
    """Ask the agent daemon; wait for it (the admin may still be starting it), except under --check."""
    from cvmigrate.controller.agent_client import AgentClient, announce

    if ctx.opts.checks_only and ctx.opts.security is None:
        raise ConfigError(f"--check --agent {ctx.opts.agent}: give the credentials the agent runs with "
                          "(--tls-ca/--tls-cert/--tls-key/--token-file, or --insecure), so the checks can ask it")
    with AgentClient(agent, ctx.agent_security()) as client:
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
        ctx.note("skipped (Client.Extra.IgnoreCheck)")
        return {"capacity": "skipped"}
    target = ctx.target()
    facts = ctx.source_facts()
    src = facts.root
    gib = 1 << 30
    problems: list[str] = []
    rows: list[dict[str, Any]] = []
    root_fs = facts.filesystem("/")
    system_used = root_fs.used_bytes if root_fs else 0
    data_sizes = dict(target.data_disks)
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
    sys_cap = target.system_disk_gb * gib
    rows.insert(0, {"source": str(src), "target": "system disk", "used": system_used, "capacity": sys_cap})
    if sys_cap and system_used > sys_cap:
        hint = (" or map data mounts with DataDisks in user.json (without it everything lands on the system disk)"
                if not ctx.user.data_disks else "")
        problems.append(f"source {src}: {human_bytes(system_used)} used but the target system disk has "
                        f"{target.system_disk_gb} GB; resize it{hint}")
    if problems:
        raise CheckFailed("capacity check failed: " + "; ".join(problems))
    ctx.note(", ".join(f"{r['target']} {human_bytes(r['used'])}/{human_bytes(r['capacity'])}" for r in rows))
    return {"capacity": rows, "source_used_bytes": sum(r["used"] for r in rows)}


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
                         keep_static_ip=ctx.opts.keep_static_ip, source_clock_skew=ctx.facts.source_clock_skew)
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
        ctx.note("skipped (Client.Extra.IgnoreCheck)")
        return {"os_check": "skipped"}
    pre = _prechecks(ctx)
    target_os = ctx.target().os_name
    facts = ctx.source_facts()
    source_os = facts.os_name() or None
    # the source's family is the agent's reading of its os-release; the target's comes from the cloud's OsName
    sf, tf = facts.os_family or None, os_family_of(target_os)
    if source_os is None:
        msg = (f"cannot tell the source OS (no etc/os-release under {ctx.opts.source} on the source); "
               f"target is {target_os!r}")
    elif sf is None or tf is None or sf != tf:
        msg = (f"source OS {source_os!r} and target OS {target_os!r} are not the same family; the target keeps its "
               "image metadata -- reinstall the target with the source's OS family to avoid surprises")
    else:
        msg = ""
    if msg:
        logger.warning("OS check: %s", msg)
        ctx.note("warning: " + msg[:80])
    else:
        c = pre["prechecks"]
        ctx.note(f"{sf} family on both sides; pre-checks {c['pass']} pass, {c['warn']} warn, {c['fail']} fail")
    return {"os_check": {"source": source_os, "target": target_os, "warning": msg or None}, **pre}


def _local_ip(towards: str) -> str:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((towards, 9))  # no packet is sent for a UDP connect
            return str(s.getsockname()[0])
    except OSError:
        return ""


def source_ip(agent: str | None, facts: SourceFacts | None, towards: str) -> str:
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
    return configured or ip


def register_msp(ctx: Context, dl: Deadline) -> dict[str, Any]:
    """RegisterMigrationTask (TaskType host) and status migrating, so the migration shows in the MSP console.

    Not with Client.ToolMode / --no-console: go2tencentcloud's tool-only mode registers nothing."""
    if ctx.client.tool_mode or ctx.opts.no_console:
        ctx.note("skipped (tool mode: Client.ToolMode / --no-console)")
        return {"msp_task_id": None}
    target = ctx.target()
    dst_ip = (target.public_ips or target.private_ips or ("",))[0]
    name = f"cvmigrate-{ctx.migration_id}"
    try:
        src_ip = source_ip(ctx.opts.agent, ctx.source_facts() if ctx.opts.agent else None, dst_ip or "192.0.2.1")
        task_id = ctx.cloud.register_migration_task(name, src_ip=src_ip,
                                                    dst_instance_id=ctx.instance_id, dst_ip=dst_ip)
        kill_point("register_msp:sent")
        ctx.cloud.modify_migration_task_status(task_id, "migrating")
    except CloudError as exc:
        if exc.retryable:
            raise
        logger.warning("MSP registration failed (%s); the migration continues but will not show in the MSP "
                       "console", exc)
        ctx.note("not registered: " + exc.code)
        return {"msp_task_id": None}
    ctx.note(f"MSP task {task_id}")
    return {"msp_task_id": task_id, "msp_status": "migrating"}


def _wait_stable(ctx: Context, dl: Deadline) -> str:
    state = ctx.cloud.instance_status(ctx.instance_id)
    if state in TRANSITIONAL:
        state = ctx.wait_target(STARTABLE | RESCUE, dl)
    return state


def enter_rescue(ctx: Context, dl: Deadline) -> dict[str, Any]:
    """EnterRescueMode with a generated password -- unless the instance is already entering or in rescue mode."""
    state = _wait_stable(ctx, dl)
    if state in RESCUE:
        known = ctx.ckpt.secret("rescue_password") is not None
        logger.warning("target %s is already %s: EnterRescueMode not sent%s", ctx.instance_id, state,
                       "" if known else " (its rescue password is not in this state file)")
        if not known and ctx.opts.bootstrap == "ssh":
            raise CheckFailed(f"target {ctx.instance_id} is already in rescue mode with a password this state file "
                              "does not know, so the ssh bootstrap cannot log in; run `cvmigrate clean` to take it "
                              "out of rescue mode, then migrate again (or use --bootstrap manual)")
        ctx.note(f"already {state}; EnterRescueMode not sent")
        return {"enter_rescue_sent": False, "enter_rescue_found": state}
    if state not in STARTABLE:
        raise CheckFailed(f"target {ctx.instance_id} is {state}; EnterRescueMode needs RUNNING or STOPPED")
    password = ctx.ckpt.secret("rescue_password")
    if password is None:
        password = new_rescue_password()
        # Stored before the call: a run that dies after the call still knows the password.
        ctx.ckpt.set_secret("rescue_password", password)
    ctx.cloud.enter_rescue_mode(ctx.instance_id, password, stop_type="SOFT_FIRST")
    kill_point("enter_rescue:sent")
    ctx.note(f"EnterRescueMode sent ({state} -> ENTER_RESCUE_MODE)")
    return {"enter_rescue_sent": True, "enter_rescue_at": time.time()}


def wait_rescue(ctx: Context, dl: Deadline) -> dict[str, Any]:
    """Poll until RESCUE_MODE (the target is stopped, then boots the rescue system)."""
    return {"target_state": ctx.wait_target("RESCUE_MODE", dl)}


def mint_credentials(ctx: Context, dl: Deadline) -> dict[str, Any]:
    """This migration's CA, its certificates and one token per role (common/auth.py); reused when already made."""
    if ctx.opts.security is not None:
        ctx.note(f"admin-supplied: {ctx.opts.security.describe()}")
        return {"tls": ctx.opts.security.describe(), "pki_dir": None}
    from cvmigrate.common.tls import PkiPaths, new_token
    from cvmigrate.controller.pki import mint_migration_pki

    pki_dir = Path(ctx.opts.state_dir) / f"{ctx.migration_id}-pki"
    pki = PkiPaths.in_dir(pki_dir)
    if not pki.exists():
        target = ctx.target()
        hosts = [*target.public_ips, *target.private_ips, *target.ipv6_addresses]
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
    ctx.note(f"certificates in {pki_dir}")
    return {"pki_dir": str(pki_dir), "tls": "mutual TLS + token per role"}


def start_receiver(ctx: Context, dl: Deadline) -> dict[str, Any]:
    """Bring up the receiver in the rescue system: manual (the admin starts it), ssh, or local (demo, tests)."""
    mode = ctx.opts.bootstrap
    if mode == "local":
        address = ctx.receiver_address()
        ctx.note(f"in-process receiver on {address}")
        return {"receiver_address": address}
    if mode == "manual":
        address = ctx.opts.receiver or format_hostport(ctx.target_ip(), ctx.opts.receiver_port)
        port = int(address.rsplit(":", 1)[1])
        pki = ctx.facts.pki_dir
        if pki:
            write_disk_plan(ctx, Path(pki) / DISK_PLAN_NAME)
            ctx.display.message(
                f"Start the receiver in the target's rescue system (log in with the console's rescue login):\n"
                f"  copy {pki}/{{ca.pem,server.pem,server.key,token,control-token}} there, mount the target disk at "
                f"{ctx.opts.target_root}, then run\n  {receiver_command(ctx, port)}\n"
                f"waiting for it at {address} ...")
        ctx.note(f"manual receiver at {address}")
        return {"receiver_address": address}
    if mode == "ssh":
        try:
            from cvmigrate.controller import bootstrap_ssh
        except ImportError:
            raise ConfigError("ssh bootstrap not available in this cvmigrate build; start the receiver yourself and "
                              "use --bootstrap manual --receiver HOST:PORT") from None
        password = ctx.ckpt.secret("rescue_password")
        if password is None:
            raise CheckFailed("the rescue password is not in the state file; run `cvmigrate clean` and migrate again")
        host = ctx.target_ip()
        pki_dir = ctx.facts.pki_dir
        if not pki_dir:
            raise ConfigError("--bootstrap ssh needs the certificates cvmigrate mints; "
                              "drop --tls-*/--token-file/--insecure")
        endpoint_known = ctx.facts.receiver_endpoint
        known = endpoint_known.host_key_fingerprint if endpoint_known else None
        endpoint = bootstrap_ssh.bootstrap_receiver(
            host, port=ctx.opts.ssh_port, username=ctx.opts.ssh_user, password=password,
            target_root=ctx.opts.target_root, listen_port=ctx.opts.receiver_port, pki_dir=Path(pki_dir),
            token=ctx.tokens().data, control_token=ctx.tokens().control,
            timeout=dl.remaining(), known_fingerprint=known, executable=ctx.opts.executables)
        ctx.note(f"receiver started over ssh on {endpoint.address}")
        return {"receiver_address": endpoint.address, "receiver_endpoint": endpoint.as_dict()}
    raise ConfigError(f"--bootstrap {mode!r}: use manual or ssh")


def reach_receiver(ctx: Context, dl: Deadline) -> dict[str, Any]:
    """Ping the receiver (TLS + token) until it answers; a refused token or certificate fails at once."""
    from cvmigrate.common.model import PROTOCOL_VERSION

    last: CvmError | None = None
    attempts = 0
    while True:
        attempts += 1
        try:
            resp = receiver_client.ping(ctx.receiver_address(), ctx.security(),
                                        timeout=max(1.0, min(10.0, dl.remaining())))
            break
        except TlsError:
            raise                       # a certificate does not fix itself: fail now, not after the time limit
        except AuthError as exc:        # the token (or the control token's role) was refused: no retry helps
            raise CheckFailed(str(exc)) from None
        except CvmError as exc:
            if not exc.retryable:
                raise
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
    ctx.note(f"receiver {resp.receiver_version} at {ctx.receiver_address()}")
    return {"receiver_version": resp.receiver_version, "receiver_busy": resp.busy}
