"""The migrated server boots when the whole migration goes through the controller, as a user runs it.

Unlike tests/e2e/test_boot.py (agent, receiver and fix-ups called as
functions), every step here is a `cvmigrate` process: ``cvmigrate migrate``
against the API emulator (bootstrap ``manual``: the test plays the admin who
starts the receiver in the rescue system with the files the controller
minted), ``cvmigrate receive`` on the target's disks, and in the admin-box
scenario ``cvmigrate agent`` on the "source server".  The source facts come
from the agent; stage 3 runs the fix-ups over RunFixups; then the target's
disks boot under ``qemu-system-x86_64 -accel tcg``.

Scenarios (one cached base image, tests/helpers/bootimage.py; one scenario
at a time, because TCG boots are CPU-heavy):

* in-process: ``migrate --source <mounted source image>`` (the source root is
  a mount point, not ``/``), onto a target of another layout (one ext4
  partition at 4 MiB with its own UUID, /data on a blank data disk the disk
  plan formats).  The serial console must show the source's hostname and
  data marker, and the target's new root and data UUIDs.
* admin box + static IP: the source image (with eth0 on a static address)
  is mounted only inside the agent's own mount namespace (``unshare -m``), so
  the path given to ``migrate --agent --source`` does not exist where the
  controller runs; the controller runs from another directory.  After boot
  the console shows the target's UUIDs and eth0 with a DHCP lease from
  qemu's user network (the network fix-up switched the static address to
  DHCP).
* UEFI: a GPT source (ESP first, root, data) whose ESP is only in its fstab
  (this kernel cannot mount vfat, so the agent sees it in no mount table:
  the facts name it from fstab), migrated onto a GPT target with the root
  first and its own ESP last.  The disk plan cannot mount the target's ESP
  for the transfer; stage 3 mounts it with fusefat and installs grub-efi in
  the chroot; the target boots under OVMF.  The console must show the
  firmware (uefi), the source's data and the target's new root, data and ESP
  UUIDs.  Negative control: with the EFI boot code stage 3 installed removed
  from the target's ESP, OVMF finds nothing to boot (its shell, ~20 s).

The negative control (no fstab fix-up -> emergency mode) is in test_boot.py.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cvmigrate.controller.emulator import EmulatorHandle, default_config, default_user_json, start_emulator
from cvmigrate.receiver.diskplan import apply_plan, build_plan, discover_disks
from cvmigrate.receiver.diskplan_cli import load_plan_boot, load_plan_request
from tests.helpers import bootimage
from tests.helpers.procs import ReceiverProc, child_env, start_receiver
from tests.helpers.tcpproxy import TcpProxy

pytestmark = [
    pytest.mark.boot,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (loop devices, mounts, chroot, namespaces)"),
    pytest.mark.skipif(bool(bootimage.missing_tools()), reason="missing: " + ", ".join(bootimage.missing_tools())),
]

BOOT_TIMEOUT = float(os.environ.get("CVMIGRATE_BOOT_TIMEOUT", "240"))
MIGRATE_TIMEOUT = 1500.0


@pytest.fixture
def emu() -> Iterator[EmulatorHandle]:
    """The emulator, its instance shaped like the target's disks (3 GB system disk, 1 GB data disk)."""
    config = default_config(rescue_delay=0.2)
    inst = config["instances"][0]
    inst.update(OsName="Debian 12.4 64bit", SystemDisk={"DiskType": "CLOUD_PREMIUM", "DiskSize": 3},
                DataDisks=[{"DiskType": "CLOUD_PREMIUM", "DiskSize": 1}], PrivateIpAddresses=["127.0.0.1"],
                PublicIpAddresses=["127.0.0.1"])
    with start_emulator(config) as handle:
        yield handle


def _tool_dir(work: Path) -> Path:
    tool = work / "admin"
    tool.mkdir()
    (tool / "user.json").write_text(json.dumps(default_user_json(
        DataDisks=[{"Index": 1, "Size": 10, "MountPoint": "/data"}])))
    return tool


def _wait_file(pattern: str, base: Path, proc: subprocess.Popen, timeout: float) -> Path:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = sorted(base.glob(pattern))
        if found:
            return found[0]
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"the controller ended ({proc.returncode}) before writing {pattern}:\n{out}\n"
                                 + _read(base / "log"))
        time.sleep(0.3)
    raise AssertionError(f"no {pattern} under {base} within {timeout:.0f}s:\n" + _read(base / "log"))


def _read(p: Path) -> str:
    return p.read_text(errors="replace")[-6000:] if p.exists() else f"({p} missing)"


class Target:
    """The target CVM's disks attached as loop devices, mounted per the controller's disk plan, and its receiver."""

    def __init__(self, work: Path, stack: contextlib.ExitStack, *, uefi: bool = False) -> None:
        self.work, self.stack = work, stack
        self.images = bootimage.make_target(work, uefi=uefi)
        self.sys = stack.enter_context(bootimage.LoopDisk(self.images.system))
        self.data = stack.enter_context(bootimage.LoopDisk(self.images.data))
        self.root = work / "target-root"
        self.data_uuid = ""
        self.receiver: ReceiverProc | None = None

    def start(self, pki: Path) -> ReceiverProc:
        """As the admin in the rescue system: mount the disks per disk-plan.json, start the receiver."""
        wanted, sources = load_plan_request(str(pki / "disk-plan.json"))
        plan = build_plan(wanted, discover_disks([self.sys.dev, self.data.dev]), sources,
                          **load_plan_boot(str(pki / "disk-plan.json")))
        assert [a.needs_format for a in plan.assignments] == [False, True], plan.describe()
        applied = apply_plan(plan, self.root, yes=True)
        self.stack.callback(applied.unmount)
        target = applied.plan.target_for("/data")
        self.data_uuid = target.uuid if target else ""
        self.receiver = start_receiver(
            self.root, "--tls-ca", str(pki / "ca.pem"), "--tls-cert", str(pki / "server.pem"),
            "--tls-key", str(pki / "server.key"), "--token-file", str(pki / "token"),
            "--control-token-file", str(pki / "control-token"), insecure=False,
            work_dir=self.work / "receiver")
        self.stack.callback(self.receiver.stop)
        return self.receiver


def _migrate(tool: Path, emu_endpoint: str, source: str, target: Target, *extra: str,
             agent_proxy: TcpProxy | None = None, start_agent: Callable[[Path], int] | None = None
             ) -> tuple[subprocess.CompletedProcess[str], float]:
    """`cvmigrate migrate` from ``tool``; the test starts the receiver (and the agent) once the files exist."""
    t0 = time.monotonic()
    with TcpProxy(1) as link:           # the receiver's address, known before the receiver runs
        argv = [sys.executable, "-m", "cvmigrate", "migrate", "--source", source, "--api-endpoint", emu_endpoint,
                "--receiver", link.address, "--poll-interval", "0.2", "--yes", "--display", "plain", *extra]
        proc = subprocess.Popen(argv, cwd=tool, env=child_env(), text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        try:
            if start_agent is not None:
                assert agent_proxy is not None, "an agent started by the test is reached through agent_proxy"
                # the controller writes the agent daemon's own files when it first asks for the source facts
                token = _wait_file("*-pki/agent-token", tool, proc, 120)
                agent_proxy.set_upstream(start_agent(token.parent))
            plan = _wait_file("*-pki/disk-plan.json", tool, proc, 600)
            link.set_upstream(target.start(plan.parent).port)
            out, _ = proc.communicate(timeout=MIGRATE_TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    result = subprocess.CompletedProcess(argv, proc.returncode, out, "")
    return result, time.monotonic() - t0


def _status(tool: Path) -> dict:
    out = subprocess.run([sys.executable, "-m", "cvmigrate", "status", "--json"], cwd=tool, env=child_env(),
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def _diffs(snapshot: dict) -> str:
    report = (snapshot["facts"].get("fixups") or {}).get("report") or {}
    return "".join(c["diff"] for s in report.get("steps", []) for c in s.get("changes", []) if c.get("diff"))


def _boot(target: Target, name: str, *, uefi: bool = False) -> tuple[list[str], float, str]:
    """Boot the target's disks; the serial console's marker lines, the seconds until they showed, the log tail."""
    log = target.work / f"serial-{name}.log"
    ovmf_vars = None
    if uefi:
        ovmf_vars = target.work / f"ovmf-vars-{name}.fd"
        shutil.copyfile(bootimage.OVMF_VARS, ovmf_vars)
    t0 = time.monotonic()
    proc = bootimage.boot(target.images.system, target.images.data, log, ovmf_vars=ovmf_vars)
    try:
        seen = all(bootimage.wait_for(log, proc, [pattern], max(1.0, BOOT_TIMEOUT - (time.monotonic() - t0)))
                   for pattern in (bootimage.BANNER + " host=", bootimage.NET_BANNER + " "))
        text = log.read_text(errors="replace") if log.exists() else ""
        lines = [ln.strip() for ln in text.splitlines() if bootimage.BANNER in ln or bootimage.NET_BANNER in ln]
        return (lines if seen else []), time.monotonic() - t0, text[-3000:]
    finally:
        bootimage.stop(proc)


def _field(lines: list[str], key: str) -> str:
    for ln in lines:
        for word in ln.split():
            if word.startswith(key + "="):
                return word.split("=", 1)[1]
    return ""


@contextlib.contextmanager
def _source_mounted(image: Path, where: Path, root_part: int = 1, data_part: int = 2) -> Iterator[Path]:
    with contextlib.ExitStack() as stack:
        disk = stack.enter_context(bootimage.LoopDisk(image, read_only=True))
        root = stack.enter_context(bootimage.mounted(disk.part(root_part), where, "ro", "noload"))
        stack.enter_context(bootimage.mounted(disk.part(data_part), root / "data", "ro", "noload"))
        yield root


def _report(name: str, lines: list[str], diffs: str, timings: dict[str, float]) -> None:
    print(f"\n=== {name}: serial console ===\n" + "\n".join(lines))
    print(f"=== {name}: fix-up diffs ===\n{diffs}")
    print(f"=== {name}: durations ===", {k: round(v, 1) for k, v in timings.items()})


def _migrated(proc: subprocess.CompletedProcess, tool: Path, *logs: Path) -> dict:
    """The checkpoint of a migration that succeeded: both filesystems found on the source, fix-ups done."""
    assert proc.returncode == 0, proc.stdout[-6000:] + "".join(_read(p) for p in (tool / "log", *logs))
    snap = _status(tool)
    facts = snap["facts"]["source_facts"]
    assert [f["mount_point"] for f in facts["filesystems"]] == ["/", "/data"], facts["filesystems"]
    assert snap["facts"]["fixups"]["fixups"] == "done", snap["facts"]["fixups"]
    return snap


def _boot_migrated(target: Target, name: str, source: bootimage.SourceImage, report: str,
                   timings: dict[str, float], *, uefi: bool = False) -> list[str]:
    """Boot the target, print what it took, and check it came up as the source; its marker lines."""
    lines, timings["boot"], tail = _boot(target, name, uefi=uefi)
    _report(name, lines, report, timings)
    assert lines, f"no marker within {BOOT_TIMEOUT:.0f}s; serial tail:\n{tail}"
    assert _field(lines, "host") == source.hostname and _field(lines, "marker") == source.marker, lines
    assert _field(lines, "root_uuid") == target.images.root_uuid != source.root_uuid, lines
    assert _field(lines, "data_uuid") == target.data_uuid != source.data_uuid, lines
    return lines


@pytest.fixture(scope="module")
def source() -> bootimage.SourceImage:
    return bootimage.source_image()


def test_in_process_migration_of_a_mounted_image_boots(source, emu, tmp_path):
    """(a) `migrate --source <mount point>` in this process; the target has another layout and new UUIDs."""
    timings: dict[str, float] = {}
    with contextlib.ExitStack() as stack:
        root = stack.enter_context(_source_mounted(source.path, tmp_path / "src"))
        target = Target(tmp_path, stack)
        tool = _tool_dir(tmp_path)
        proc, timings["migrate"] = _migrate(tool, emu.endpoint, str(root), target)
        snap = _migrated(proc, tool)
        assert snap["facts"]["source_facts"]["filesystems"][0]["uuid"] == source.root_uuid
        diffs = _diffs(snap)
        assert target.images.root_uuid in diffs and target.data_uuid in diffs, diffs
    _boot_migrated(target, "in-process", source, diffs, timings)
    shutil.rmtree(tmp_path / "target-root", ignore_errors=True)


def _static_source(source: bootimage.SourceImage, work: Path) -> Path:
    """A copy of the source image whose eth0 has a static address (systemd-networkd)."""
    copy = work / "source-static.img"
    subprocess.run(["cp", "--sparse=always", str(source.path), str(copy)], check=True)
    with contextlib.ExitStack() as stack:
        disk = stack.enter_context(bootimage.LoopDisk(copy))
        root = stack.enter_context(bootimage.mounted(disk.part(1), work / "edit"))
        (root / bootimage.NETWORKD_FILE).write_text(bootimage.static_networkd())
    return copy


def test_admin_box_migration_with_a_static_ip_boots_on_dhcp(source, emu, tmp_path):
    """(b)+(c) `cvmigrate agent` serves the source from its own mount namespace; `migrate --agent` elsewhere."""
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    image = _static_source(source, tmp_path)
    timings["static source copy"] = time.monotonic() - t0
    ns_dir = tmp_path / "agent-ns"        # empty here; the source is mounted below it only in the agent's namespace
    ns_dir.mkdir()
    src_path = ns_dir / "srv" / "source"
    with contextlib.ExitStack() as stack:
        disk = stack.enter_context(bootimage.LoopDisk(image, read_only=True))
        target = Target(tmp_path, stack)
        tool = _tool_dir(tmp_path)
        agent_log = tmp_path / "agent.log"

        def start_agent(pki: Path) -> int:
            port_file = tmp_path / "agent.port"
            script = (f"set -e; mount -t tmpfs -o size=1m cvm-agent-ns {ns_dir}; mkdir -p {src_path}; "
                      f"mount -o ro,noload {disk.part(1)} {src_path}; "
                      f"mount -o ro,noload {disk.part(2)} {src_path}/data; "
                      f"exec {sys.executable} -m cvmigrate agent --listen 127.0.0.1:0 --port-file {port_file} "
                      f"--tls-ca {pki}/ca.pem --tls-cert {pki}/agentd.pem --tls-key {pki}/agentd.key "
                      f"--token-file {pki}/agent-token")
            agent = ReceiverProc(src_path, ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                                 port_file, agent_log, child_env()).wait_ready()
            stack.callback(agent.stop)
            return agent.port

        with TcpProxy(1) as control:
            proc, timings["migrate"] = _migrate(tool, emu.endpoint, str(src_path), target, "--agent",
                                                control.address, agent_proxy=control, start_agent=start_agent)
        assert not src_path.exists(), "the source must exist only in the agent's mount namespace"
        snap = _migrated(proc, tool, agent_log)
        facts = snap["facts"]["source_facts"]
        assert facts["root"] == str(src_path) and not facts["whole_server"]
        primary = next(i for i in facts["interfaces"] if i["primary"])
        assert (primary["name"], primary["method"], primary["config_system"]) == ("eth0", "static",
                                                                                  "systemd-networkd")
        diffs = _diffs(snap)
        assert "+DHCP=ipv4" in diffs and "-Address=192.0.2.44/24" in diffs, diffs
        # the MSP task names the source (reached over a local relay: its configured address), not this box
        [task] = emu.state.tasks.values()
        assert task["SrcInfo"]["Ip"] == "192.0.2.44", task["SrcInfo"]
        assert target.images.root_uuid in diffs and target.data_uuid in diffs, diffs
    lines = _boot_migrated(target, "admin-box-static", source, diffs, timings)
    # qemu's user network hands out 10.0.2.15; the static 192.0.2.44 is gone
    assert _field(lines, "ipv4") == "10.0.2.15" and _field(lines, "dhcp_lease") == "10.0.2.15", lines


@pytest.fixture(scope="module")
def uefi_source() -> bootimage.SourceImage:
    missing = bootimage.missing_uefi_tools()
    if missing:
        pytest.skip("missing: " + ", ".join(missing))
    return bootimage.uefi_source_image()


def _grub_commands(snapshot: dict) -> list[str]:
    report = (snapshot["facts"].get("fixups") or {}).get("report") or {}
    return [c for s in report.get("steps", []) if s["name"] == "grub" for c in s.get("commands", [])]


def test_uefi_migration_boots_under_ovmf(uefi_source, emu, tmp_path):
    """(d) GPT + ESP source -> GPT target with its own ESP elsewhere; grub-efi installed by stage 3; OVMF boot."""
    timings: dict[str, float] = {}
    with contextlib.ExitStack() as stack:
        # root p2 and data p3; the ESP (p1) stays unmounted: in the source's fstab only
        root = stack.enter_context(_source_mounted(uefi_source.path, tmp_path / "src", 2, 3))
        target = Target(tmp_path, stack, uefi=True)
        tool = _tool_dir(tmp_path)
        proc, timings["migrate"] = _migrate(tool, emu.endpoint, str(root), target)
        snap = _migrated(proc, tool)
        facts = snap["facts"]["source_facts"]
        assert (facts["boot_mode"], facts["esp"]) == ("uefi", "/boot/efi"), facts
        grub = _grub_commands(snap)
        assert any("grub-install --target=x86_64-efi --efi-directory=/boot/efi" in c for c in grub), grub
        diffs = _diffs(snap)
        for uuid in (target.images.root_uuid, target.data_uuid, target.images.esp_uuid):
            assert uuid and uuid in diffs, (uuid, diffs)
        esp_dev = target.sys.part(target.images.esp_part)
        # stage 3 mounted the ESP for grub-install only, and unmounted it again
        assert subprocess.run(["findmnt", "--source", esp_dev], capture_output=True).returncode != 0
        listing = bootimage.esp_listing(esp_dev)
        assert "BOOTX64" in listing, listing
    lines = _boot_migrated(target, "uefi", uefi_source, diffs + "\n(grub fix-up ran: " + "; ".join(grub)
                           + ")\n(target ESP EFI/BOOT:\n" + listing + ")", timings, uefi=True)
    assert _field(lines, "firmware") == "uefi", lines
    assert _field(lines, "esp_uuid") == target.images.esp_uuid != uefi_source.esp_uuid, lines

    # Negative control: the same disks without the EFI boot code stage 3 installed on the target's ESP
    # (it was empty before): the firmware finds nothing to boot and falls back to its shell.
    with bootimage.LoopDisk(target.images.system) as disk:
        bootimage.run(["mdeltree", "-i", disk.part(target.images.esp_part), "::/EFI"])
    log = tmp_path / "serial-uefi-no-boot-code.log"
    ovmf_vars = tmp_path / "ovmf-vars-no-boot-code.fd"
    shutil.copyfile(bootimage.OVMF_VARS, ovmf_vars)
    t0 = time.monotonic()
    qemu = bootimage.boot(target.images.system, target.images.data, log, ovmf_vars=ovmf_vars, nic=False)
    try:
        seen = bootimage.wait_for(log, qemu, [bootimage.BANNER, *bootimage.OVMF_NO_BOOT], BOOT_TIMEOUT)
    finally:
        bootimage.stop(qemu)
    print(f"=== UEFI negative control (ESP emptied): {seen!r} after {time.monotonic() - t0:.1f}s ===")
    assert seen in bootimage.OVMF_NO_BOOT, (seen, _read(log))
    shutil.rmtree(tmp_path / "target-root", ignore_errors=True)
