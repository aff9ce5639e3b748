"""Pre-checks of the source and the target: ``cvmigrate check`` (go2tencentcloud's ``--check``).

Why: the failures that waste a migration window are known in advance -- not
root, no virtio driver for the CVM's disks, a clock the API rejects, a target
disk smaller than the data.  Each check returns pass / warn / fail with the
fix in one line; ``--json`` prints the same for machines; any failure makes
the exit status non-zero.  The controller runs :func:`run_checks` at the
start of a migration unless ``Client.Extra.IgnoreCheck`` is true.

Every fact comes through :class:`SourceFacts` (a root directory to read
``/etc/os-release``, ``/proc/1/comm``, ``/lib/modules`` and the initramfs from,
the effective uid, the running kernel, the mounts and their usage), so the
checks are tested against fake trees without being root.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from cvmigrate.common.errors import CheckFailed
from cvmigrate.common.sourcefacts import SourceFacts
from cvmigrate.receiver.fixups.initramfs import VIRTIO_DRIVERS, VITAL

PASS, WARN, FAIL, SKIP = "pass", "warn", "fail", "skip"
GIB = 1024 ** 3
MIB = 1024 ** 2
#: TC3-HMAC-SHA256 requests are rejected beyond 5 minutes of skew.
SKEW_FAIL_S = 300.0
SKEW_WARN_S = 30.0
STATE_MIN_FREE = 256 * MIB
STATE_WARN_FREE = 1 * GIB
SUPPORTED_IDS = {"debian", "ubuntu", "centos", "rhel", "rocky", "almalinux", "ol", "fedora", "tencentos",
                 "opencloudos", "opensuse-leap", "sles", "amzn", "anolis", "alinux", "kylin", "uos"}
FAMILIES = {
    "debian": ("debian", "ubuntu"),
    "rhel": ("centos", "rhel", "red hat", "rocky", "almalinux", "fedora", "tencentos", "opencloudos", "oracle", "ol",
             "anolis", "alinux", "amzn", "amazon"),
    "suse": ("suse", "sles", "opensuse"),
}
REAL_FS = {"ext2", "ext3", "ext4", "xfs", "btrfs", "jfs", "reiserfs", "f2fs", "zfs", "vfat"}


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: str          # pass | warn | fail | skip
    message: str
    fix: str = ""

    def line(self) -> str:
        fix = f"  -> fix: {self.fix}" if self.fix else ""
        return f"{self.status.upper():<4}  {self.name:<16} {self.message}{fix}"


def gather_here(root: str = "/", state_dir: str = "/var/lib/cvmigrate") -> SourceFacts:
    """This host's report (``cvmigrate check`` on the source, the in-process controller)."""
    from cvmigrate.agent.sourcefacts import gather

    return gather(root, state_dir=state_dir)


def _h(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


# --------------------------------------------------------------------------- source checks

def check_root(f: SourceFacts) -> CheckResult:
    if f.euid == 0:
        return CheckResult("root", PASS, "the agent runs as root")
    return CheckResult("root", FAIL, f"the agent runs as uid {f.euid}; it must read every file",
                       "run it as root: sudo cvmigrate ...")


def check_virtio(f: SourceFacts) -> CheckResult:
    k = f.kernel or "?"
    if not f.module_tree:
        present = list(f.virtio_active)
        if f.whole_server and all(d in present for d in VITAL):
            return CheckResult("virtio", PASS, f"kernel {k}: no module tree; {', '.join(present)} active (built in)")
        return CheckResult("virtio", WARN, f"kernel {k}: no /lib/modules/{k}; cannot tell whether virtio drivers "
                                           "are available",
                           "boot a distribution kernel before migrating, "
                           "or make sure virtio_blk/virtio_pci are built in")
    missing = list(f.virtio_missing)
    if not missing:
        return CheckResult("virtio", PASS,
                           f"kernel {k}: virtio drivers built in or in the initramfs ({f.virtio_detail})")
    absent = [d for d in missing if d not in f.virtio_modules]
    if any(d in absent for d in VITAL):
        return CheckResult("virtio", FAIL, f"kernel {k} has no {', '.join(absent)} (neither built in nor a module)",
                           "install a kernel with virtio support (any distribution kernel) "
                           "and boot it before migrating")
    return CheckResult("virtio", WARN, f"kernel {k}: {', '.join(missing)} not in the initramfs ({f.virtio_detail})",
                       "nothing to do: the fix-ups add them and regenerate the initramfs on the target "
                       "(or add them now to /etc/initramfs-tools/modules or dracut add_drivers and regenerate)")


def check_selinux(f: SourceFacts) -> CheckResult:
    mode = f.selinux
    if mode in ("", "disabled"):
        return CheckResult("selinux", PASS, f"SELinux {mode or 'not installed'}")
    return CheckResult("selinux", WARN, f"SELinux is {mode}",
                       "nothing to do: the target relabels on first boot (/.autorelabel, one extra reboot); "
                       "or set SELINUX=disabled in /etc/selinux/config")


def check_distribution(f: SourceFacts) -> CheckResult:
    rel = f.os_release
    if not rel:
        return CheckResult("distribution", WARN, "no /etc/os-release: unknown distribution",
                           "the fix-ups may not know its bootloader and initramfs tools; check the target boots")
    ids = {rel.get("ID", "")} | set(rel.get("ID_LIKE", "").split())
    name = rel.get("PRETTY_NAME") or rel.get("NAME") or rel.get("ID", "?")
    if ids & SUPPORTED_IDS:
        return CheckResult("distribution", PASS, name)
    return CheckResult("distribution", WARN, f"{name} is not a tested distribution",
                       "it may work; check that the target boots and test before cutting over")


def check_init(f: SourceFacts) -> CheckResult:
    comm = f.init
    if comm == "systemd":
        return CheckResult("init", PASS, "systemd")
    if comm in ("init", "sysvinit", "upstart", "openrc", "openrc-init", "runit"):
        return CheckResult("init", WARN, f"init system {comm!r}: services are not checked after boot",
                           "after migration, check the services on the target by hand")
    return CheckResult("init", WARN, f"cannot tell the init system ({comm or 'none found'}; a container?)",
                       "migrate a whole server (VM or bare metal), not a container")


def check_boot(f: SourceFacts) -> CheckResult:
    if f.boot_mode == "uefi":
        return CheckResult("boot", PASS, f"UEFI, ESP at {f.esp or '?'}" + (f"; {f.bootloader}" if f.bootloader else ""))
    return CheckResult("boot", PASS, "BIOS" + (f"; {f.bootloader}" if f.bootloader else ""))


def check_network(f: SourceFacts, keep_static_ip: bool = False) -> CheckResult:
    p = f.primary_interface()
    if p is None:
        return CheckResult("network", WARN, "no network configuration found for the primary interface",
                           "check that the target's image or cloud-init configures DHCP")
    where = f"{p.name or p.mac} ({p.config_system} {p.config_file})"
    if p.method == "static" and keep_static_ip:
        return CheckResult("network", WARN, f"{where} has the static address {', '.join(p.addresses)} and "
                                            "--keep-static-ip keeps it", "the CVM must get this address in its VPC")
    if p.method == "static":
        return CheckResult("network", PASS, f"{where} is static ({', '.join(p.addresses)}); the fix-up switches "
                                            "it to DHCP (--keep-static-ip keeps it)")
    return CheckResult("network", PASS, f"{where}: {p.method}")


def check_disk_usage(f: SourceFacts) -> list[CheckResult]:
    out = []
    for m in f.filesystems:
        if not m.size_bytes:
            continue
        pct = 100.0 * m.used_bytes / m.size_bytes
        msg = (f"{m.mount_point} ({m.fstype or 'directory'}): {_h(m.used_bytes)} used of {_h(m.size_bytes)} "
               f"({pct:.0f}%)")
        if pct >= 98:
            out.append(CheckResult(f"usage {m.mount_point}", WARN, msg,
                                   "free some space: a full filesystem makes services fail during the transfer"))
        else:
            out.append(CheckResult(f"usage {m.mount_point}", PASS, msg))
    return out


def check_state_space(f: SourceFacts) -> CheckResult:
    free = f.state_free_bytes
    msg = f"{_h(free)} free for the agent's state in {f.state_dir}"
    if free < STATE_MIN_FREE:
        return CheckResult("state space", FAIL, msg,
                           f"free at least {_h(STATE_MIN_FREE)} there, or set another state directory")
    if free < STATE_WARN_FREE:
        return CheckResult("state space", WARN, msg, f"keep at least {_h(STATE_WARN_FREE)} free for long migrations")
    return CheckResult("state space", PASS, msg)


def check_clock(cloud: Any | None) -> CheckResult:
    if cloud is None:
        return CheckResult("clock", SKIP, "no cloud API configured (user.json)")
    skew = cloud.clock_skew()
    if skew is None:
        return CheckResult("clock", WARN, "cannot read the cloud API's time",
                           "check the network path to the API endpoint")
    return _skew_check("clock", skew, f"local clock is {skew:+.0f} s from the cloud API's",
                       " (API requests are rejected beyond 300 s)",
                       "set the time: chronyc makestep, or ntpdate pool.ntp.org, or timedatectl set-ntp true",
                       "enable time synchronisation (chrony / systemd-timesyncd)")


def check_source_clock(skew: float) -> CheckResult:
    """The source's clock against the controller's: certificates minted here must be valid there."""
    return _skew_check("source clock", skew, f"the source's clock is {skew:+.0f} s from the controller's",
                       " (the migration's certificates would not be valid there)",
                       "set the source's time: chronyc makestep, or timedatectl set-ntp true, on the source",
                       "enable time synchronisation on the source")


def _skew_check(name: str, skew: float, msg: str, fail_why: str, fail_fix: str, warn_fix: str) -> CheckResult:
    """FAIL from SKEW_FAIL_S on (``fail_why`` appended to ``msg``), WARN from SKEW_WARN_S on, else PASS."""
    if abs(skew) >= SKEW_FAIL_S:
        return CheckResult(name, FAIL, msg + fail_why, fail_fix)
    if abs(skew) >= SKEW_WARN_S:
        return CheckResult(name, WARN, msg, warn_fix)
    return CheckResult(name, PASS, msg)


# --------------------------------------------------------------------------- target checks

def os_family_of(text: str) -> str | None:
    t = text.lower()
    for fam, names in FAMILIES.items():
        if any(re.search(rf"\b{re.escape(n)}\b", t) for n in names):
            return fam
    return None


def check_os_family(f: SourceFacts, instance: Any) -> CheckResult:
    rel = f.os_release
    source = " ".join(filter(None, (rel.get("ID"), rel.get("ID_LIKE"), rel.get("PRETTY_NAME"))))
    target = getattr(instance, "os_name", "") or ""
    sf, tf = os_family_of(source), os_family_of(target)
    sid = rel.get("ID", "").lower()
    if sf and sf == tf and sid and not re.search(rf"\b{re.escape(sid)}\b", target.lower()):
        return CheckResult("os family", WARN, f"same family ({sf}) but another distribution: source {source!r}, "
                                              f"target {target!r}",
                           "reinstall the target CVM with the source's distribution so its image metadata matches")
    if sf and sf == tf:
        ver = rel.get("VERSION_ID", "").split(".")[0]
        if ver and not re.search(rf"\b{re.escape(ver)}(\b|\.)", target):
            return CheckResult("os family", WARN,
                               f"same family ({sf}) but another version: source {source!r}, target {target!r}",
                               "reinstall the target CVM with the source's version so its image metadata matches")
        return CheckResult("os family", PASS, f"{sf} on both sides (target {target!r})")
    return CheckResult("os family", WARN,
                       f"source {source or '?'!r} and target {target or '?'!r} are not the same OS family",
                       "reinstall the target CVM with an image of the source's family before migrating")


def check_capacity(f: SourceFacts, instance: Any, data_disks: Sequence[Any]) -> list[CheckResult]:
    """Each mapped source mount fits its target data disk; the system disk takes everything else."""
    out: list[CheckResult] = []
    mounts = list(f.filesystems)
    sizes = dict(getattr(instance, "data_disks", ()) or ())
    mapped = set()
    for d in data_disks:
        m = f.filesystem("/" + d.mount_point.strip("/"))
        name = f"capacity disk {d.index}"
        if d.index not in sizes:
            out.append(CheckResult(name, FAIL, f"DataDisks Index {d.index} ({d.mount_point}): the target has "
                                   f"{len(sizes)} data disk(s)",
                                   "attach the data disk to the CVM or fix Index in user.json"))
            continue
        if m is None:
            out.append(CheckResult(name, WARN, f"{d.mount_point} is not a separate filesystem on the source",
                                   "its data lands on the target's system disk; "
                                   "fix MountPoint in user.json if that is not meant"))
            continue
        mapped.add(m.mount_point)
        cap = sizes[d.index] * GIB
        msg = f"{d.mount_point}: {_h(m.used_bytes)} used -> data disk {d.index} of {sizes[d.index]} GB"
        if m.used_bytes > cap:
            out.append(CheckResult(name, FAIL, msg,
                                   f"resize data disk {d.index} to at least {-(-m.used_bytes // GIB) + 1} GB"))
        elif m.used_bytes > 0.9 * cap:
            out.append(CheckResult(name, WARN, msg + " (over 90% full after migration)", "consider a larger data disk"))
        else:
            out.append(CheckResult(name, PASS, msg))
    system_used = sum(m.used_bytes for m in mounts if m.mount_point not in mapped)
    cap = int(getattr(instance, "system_disk_gb", 0) or 0) * GIB
    msg = f"{_h(system_used)} (everything not mapped by DataDisks) -> system disk of {cap // GIB} GB"
    hint = "map data mounts with DataDisks in user.json" if not data_disks else "resize the target's system disk"
    if cap and system_used > cap:
        out.append(CheckResult("capacity system", FAIL, msg,
                               hint + f" (need at least {-(-system_used // GIB) + 1} GB)"))
    elif cap and system_used > 0.9 * cap:
        out.append(CheckResult("capacity system", WARN, msg + " (over 90% full after migration)", hint))
    else:
        out.append(CheckResult("capacity system", PASS, msg))
    return out


# --------------------------------------------------------------------------- all of them

def run_checks(facts: SourceFacts | None = None, *, cloud: Any | None = None, instance: Any | None = None,
               data_disks: Sequence[Any] = (), keep_static_ip: bool = False,
               source_clock_skew: float | None = None) -> list[CheckResult]:
    """Every pre-check of the source report; target checks need ``instance`` (describe_instance's InstanceInfo)."""
    f = facts or gather_here()
    results = [check_root(f), check_virtio(f), check_selinux(f), check_clock(cloud), check_distribution(f),
               check_init(f), check_boot(f), check_network(f, keep_static_ip), *check_disk_usage(f),
               check_state_space(f)]
    if source_clock_skew is not None:
        results.append(check_source_clock(source_clock_skew))
    if instance is None:
        results.append(CheckResult("target", SKIP, "no target instance (user.json) to check against"))
    else:
        results += check_capacity(f, instance, data_disks)
        results.append(check_os_family(f, instance))
    return results


def failed(results: Sequence[CheckResult]) -> list[CheckResult]:
    return [r for r in results if r.status == FAIL]


# --------------------------------------------------------------------------- CLI

def add_arguments(p: argparse.ArgumentParser) -> None:
    """The same configuration flags as ``migrate --check`` (one discovery, one endpoint flag, one state place)."""
    from cvmigrate.controller.migrate import _add_config_arguments

    _add_config_arguments(p, confirm=False)
    p.add_argument("--source-only", action="store_true",
                   help="only the checks of this machine: no user.json, no cloud API")
    p.add_argument("--state-dir", default=None, metavar="DIR",
                   help="where the migration keeps its state (default: beside user.json, as migrate does)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.epilog = (f"Exit status: 0 all passed (warnings allowed), {CheckFailed.exit_code} a check failed, "
                "2 configuration error, 5 credentials refused, 10 API unreachable, 12 other API error.")


def run(args: argparse.Namespace, *, cloud_factory: Callable[..., Any] | None = None) -> int:
    """`cvmigrate check`: the pre-checks, reading the configs and reaching the API exactly as `migrate` does."""
    from cvmigrate.controller.migrate import _configure_logging, load_configs, open_cloud, state_path

    if hasattr(args, "cmd_log_level"):
        _configure_logging(args, file=False)
    facts = gather_here("/", state_dir=args.state_dir or str(state_path(args).absolute().parent))
    cloud = instance = None
    data_disks: Sequence[Any] = ()
    notes: list[CheckResult] = []
    if not args.source_only:
        user, client = load_configs(args)   # a missing or invalid user.json is an error, as for migrate
        if client.extra.ignore_check:
            notes.append(CheckResult("ignore check", WARN,
                                     "Client.Extra.IgnoreCheck is true: a migration would skip these",
                                     "set it to false to have them run at start"))
        data_disks = user.data_disks
        cloud = cloud_factory(user) if cloud_factory else open_cloud(user, client, args.api_endpoint)
        instance = cloud.describe_instance(user.instance_id)
    results = run_checks(facts, cloud=cloud, instance=instance, data_disks=data_disks) + notes
    if args.json:
        json.dump({"ok": not failed(results), "checks": [asdict(r) for r in results]}, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        for r in results:
            print(r.line())
        bad = failed(results)
        print(f"{len(bad)} failed, {sum(r.status == WARN for r in results)} warnings, "
              f"{sum(r.status == PASS for r in results)} passed")
    return CheckFailed.exit_code if failed(results) else 0


__all__ = ["CheckResult", "SourceFacts", "gather_here", "run_checks", "failed", "add_arguments", "run",
           "VIRTIO_DRIVERS"]
