"""Bootable Debian disk images for the boot test: built once, cached, attached as loop devices.

What is built (all as root, with debootstrap, sfdisk, mkfs.ext4, losetup, partx):

* a Debian bookworm root filesystem (``debootstrap --variant=minbase`` plus a
  kernel, initramfs-tools, systemd and grub-pc), cached as a tarball keyed by
  the package list and mirror;
* the SOURCE server's disk: MBR, BIOS boot, ``p1`` ext4 root at 1 MiB and
  ``p2`` ext4 mounted at ``/data`` holding a marker file; grub installed; a
  hostname; a systemd unit that writes ``CVMIGRATE-BOOT-OK host=<hostname>
  marker=<marker>`` to the serial console once the system is up.  Cached as
  ``source-<key>.img``, keyed by a hash of this file (edit the build, get a new
  image);
* per test run, the TARGET: a system disk with another layout (one ext4
  partition at 4 MiB, a fresh UUID, a little "CVM image" content) and a blank
  data disk, as a freshly created CVM with one data disk has them;
* for UEFI (``uefi_source_image``, ``make_target(uefi=True)``): a GPT source
  with a FAT32 ESP at 1 MiB (``p1``, in fstab at /boot/efi), root ``p2`` and
  data ``p3``, grub installed for x86_64-efi on the removable path; a GPT
  target with the root first and its own ESP last.  This kernel has no vfat:
  ESPs are formatted with mtools' ``mformat`` and written through
  ``fusefat`` (FAT32 only: it corrupts FAT16), mounted with ``fsname=DEVICE``
  so that grub-install finds the ESP's disk.  They boot under OVMF.

This kernel does not scan partition tables, so :class:`LoopDisk` adds the
partitions with ``partx -a`` and removes them again; every helper undoes what
it did in ``finally`` blocks so a failing test leaves no loop device or mount.

Run ``python -m tests.helpers.bootimage`` to warm the cache.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

SUITE = "bookworm"
MIRROR = os.environ.get("CVMIGRATE_DEBIAN_MIRROR", "http://deb.debian.org/debian")
PACKAGES = ("systemd-sysv", "udev", "kmod", "initramfs-tools", "linux-image-amd64", "grub-pc",
            "grub-efi-amd64-bin", "e2fsprogs")
SOURCE_HOSTNAME = "cvm-boot-source"
MARKER = "marker-4f1c9e-source-data-disk"
BANNER = "CVMIGRATE-BOOT-OK"
MIB = 1024 * 1024
SECTOR = 512

SOURCE_SIZE = 2048 * MIB
SOURCE_ROOT_SECTORS = 1600 * MIB // SECTOR
TARGET_SIZE = 3 * 1024 * MIB
DATA_SIZE = 1024 * MIB
#: Host tools the build and the test need, and the Debian packages that ship them.
TOOLS = {
    "debootstrap": "debootstrap", "sfdisk": "fdisk", "partx": "util-linux", "losetup": "mount",
    "mkfs.ext4": "e2fsprogs", "blkid": "util-linux", "qemu-system-x86_64": "qemu-system-x86", "chroot": "coreutils",
}
#: What the UEFI images need on top: FAT without the kernel's vfat, and the firmware.
UEFI_TOOLS = {"mformat": "mtools", "mdir": "mtools", "mdeltree": "mtools", "fusefat": "fusefat", "fusermount": "fuse"}
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
#: ESP sizes in sectors: FAT32 with one sector per cluster needs more than 65 525 clusters.
SOURCE_ESP_SECTORS = 64 * MIB // SECTOR
TARGET_ESP_SECTORS = 100 * MIB // SECTOR

#: What the booted system reports on the serial console, as shell words (name=value).
_REPORT = " ".join([
    "host=$(cat /proc/sys/kernel/hostname)", "marker=$(cat /data/marker.txt)", "ifaces=$(echo $(ls /sys/class/net))",
    "root_uuid=$(findmnt -no UUID /)", "data_uuid=$(findmnt -no UUID /data)",
    "firmware=$(test -d /sys/firmware/efi && echo uefi || echo bios)", "esp_uuid=$(findmnt -no UUID /boot/efi)",
])
UNIT = f"""\
[Unit]
Description=cvmigrate boot test: report hostname and data marker on the serial console
After=local-fs.target
RequiresMountsFor=/data

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'echo "{BANNER} {_REPORT}" > /dev/ttyS0'

[Install]
WantedBy=multi-user.target
"""
NET_BANNER = "CVMIGRATE-NET"
#: Waits (up to 90 s) for an IPv4 address other than loopback and reports it with networkd's DHCP lease, if any.
NET_SCRIPT = f"""\
#!/bin/sh
for i in $(seq 90); do
    a=$(awk '/^ *[|]-- /{{ip=$2}} /32 host LOCAL/{{print ip}}' /proc/net/fib_trie |
        grep -v '^127[.]' | sort -u | tr '\\n' ' ')
    [ -n "$a" ] && break
    sleep 1
done
l=$(sed -n 's/^ADDRESS=//p' /run/systemd/netif/leases/* 2>/dev/null | tr '\\n' ' ')
echo "{NET_BANNER} ipv4=${{a:-none}} dhcp_lease=${{l:-none}}" > /dev/ttyS0
"""
NET_UNIT = """\
[Unit]
Description=cvmigrate boot test: report the IPv4 address and DHCP lease on the serial console
After=systemd-networkd.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/cvmigrate-net-marker

[Install]
WantedBy=multi-user.target
"""
#: The source's network: systemd-networkd on eth0 (static in the static-IP scenario, see static_networkd()).
NETWORKD_DHCP = "[Match]\nName=eth0\n\n[Network]\nDHCP=ipv4\n"
NETWORKD_FILE = "etc/systemd/network/20-eth0.network"


def static_networkd(address: str = "192.0.2.44/24", gateway: str = "192.0.2.1") -> str:
    """eth0 with a fixed address, as a server in a data centre has it (unreachable on a CVM's VPC)."""
    return f"[Match]\nName=eth0\n\n[Network]\nAddress={address}\nGateway={gateway}\nDNS=192.0.2.53\n"


def cache_dir() -> Path:
    d = Path(os.environ.get("CVMIGRATE_BOOT_CACHE") or Path.home() / ".cache" / "cvmigrate" / "boot")
    d.mkdir(parents=True, exist_ok=True)
    return d


def missing_tools() -> list[str]:
    return [f"{t} (apt-get install {pkg})" for t, pkg in TOOLS.items() if shutil.which(t) is None]


def missing_uefi_tools() -> list[str]:
    out = [f"{t} (apt-get install {pkg})" for t, pkg in UEFI_TOOLS.items() if shutil.which(t) is None]
    return out + [f"{f} (apt-get install ovmf)" for f in (OVMF_CODE, OVMF_VARS) if not f.exists()]


def run(argv: Sequence[str | os.PathLike[str] | int], **kw: Any) -> subprocess.CompletedProcess[str]:
    logger.debug("run: %s", " ".join(map(str, argv)))
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    proc = subprocess.run([str(a) for a in argv], **kw)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} exited {proc.returncode}: {(proc.stderr or '')[-2000:]}")
    return proc


# --------------------------------------------------------------------------- loop devices and mounts

class LoopDisk:
    """An image file as a loop device with its partitions added by partx (this kernel does not scan them)."""

    def __init__(self, image: Path, *, read_only: bool = False) -> None:
        self.image = image
        self.read_only = read_only
        self.dev = ""

    def __enter__(self) -> LoopDisk:
        argv = ["losetup", "--find", "--show"] + (["--read-only"] if self.read_only else []) + [self.image]
        self.dev = run(argv).stdout.strip()
        try:
            self.rescan()
        except BaseException:
            self.__exit__()
            raise
        return self

    def rescan(self) -> None:
        subprocess.run(["partx", "-d", self.dev], capture_output=True)
        subprocess.run(["partx", "-a", self.dev], capture_output=True)   # fails harmlessly on a blank disk

    def part(self, n: int) -> str:
        p = f"{self.dev}p{n}"
        for _ in range(50):
            if os.path.exists(p):
                return p
            time.sleep(0.1)
        raise RuntimeError(f"{p} did not appear")

    def __exit__(self, *exc: object) -> None:
        if not self.dev:
            return
        subprocess.run(["partx", "-d", self.dev], capture_output=True)
        for _ in range(20):
            if subprocess.run(["losetup", "-d", self.dev], capture_output=True).returncode == 0:
                break
            time.sleep(0.25)
        self.dev = ""


@contextlib.contextmanager
def mounted(device: str, where: Path, *options: str) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    run(["mount"] + (["-o", ",".join(options)] if options else []) + [device, where])
    try:
        yield where
    finally:
        umount(where)


@contextlib.contextmanager
def fat_mounted(device: str, where: Path) -> Iterator[Path]:
    """A FAT32 filesystem mounted read-write through FUSE (this kernel has no vfat), under its device's name."""
    where.mkdir(parents=True, exist_ok=True)
    run(["fusefat", "-o", f"rw+,fsname={device}", device, where])
    try:
        yield where
    finally:
        for _ in range(10):
            if subprocess.run(["fusermount", "-u", str(where)], capture_output=True).returncode == 0:
                break
            time.sleep(0.3)
        else:
            subprocess.run(["fusermount", "-u", "-z", str(where)], capture_output=True)


def format_esp(device: str, sectors: int, label: str = "ESP") -> str:
    """A FAT32 ESP on ``device`` (``sectors`` long) made with mtools; its UUID."""
    run(["mformat", "-i", device, "-T", sectors, "-h", 64, "-s", 32, "-c", 1, "-F", "-v", label, "::"])
    return blkid_value(device, "UUID")


def esp_listing(device: str, path: str = "::/EFI/BOOT") -> str:
    """``mdir`` of a directory on a FAT filesystem (read without mounting it)."""
    return subprocess.run(["mdir", "-i", device, path], capture_output=True, text=True).stdout


def umount(where: Path) -> None:
    for _ in range(10):
        if subprocess.run(["umount", str(where)], capture_output=True).returncode == 0:
            return
        time.sleep(0.3)
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


def blkid_value(device: str, tag: str) -> str:
    return subprocess.run(["blkid", "-s", tag, "-o", "value", device], capture_output=True, text=True).stdout.strip()


# --------------------------------------------------------------------------- the Debian root filesystem

def _rootfs_key() -> str:
    return hashlib.sha256(repr((SUITE, MIRROR, PACKAGES, "v1")).encode()).hexdigest()[:12]


def rootfs_tarball() -> Path:
    """A debootstrapped bookworm with kernel, initramfs, systemd and grub-pc, as a tarball (cached)."""
    out = cache_dir() / f"rootfs-{SUITE}-{_rootfs_key()}.tar"
    if out.exists():
        return out
    work = cache_dir() / f"rootfs-build-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    try:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        logger.info("debootstrap %s into %s (a few minutes, once)", SUITE, work)
        run(["debootstrap", "--variant=minbase", "--include=" + ",".join(PACKAGES), SUITE, work, MIRROR],
            env=env, timeout=1800)
        run(["chroot", work, "apt-get", "clean"], env=env)
        for leftover in (work / "boot").glob("initrd.img-*"):
            if leftover.name.endswith((".dpkg-bak", ".new")):
                leftover.unlink()
        tmp = out.with_suffix(".tmp")
        run(["tar", "-C", work, "--numeric-owner", "--xattrs", "-cpf", tmp, "."])
        os.replace(tmp, out)
        for old in cache_dir().glob(f"rootfs-{SUITE}-*.tar"):
            if old != out:
                old.unlink(missing_ok=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


# --------------------------------------------------------------------------- the source image

@dataclass(frozen=True)
class SourceImage:
    path: Path
    hostname: str
    marker: str
    root_uuid: str
    data_uuid: str
    esp_uuid: str = ""          # UEFI images: the ESP (p1); root and data are p2 and p3


def _source_key() -> str:
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]


def source_image() -> SourceImage:
    """The source server's bootable disk image (MBR: root p1, data p2; cached; treat it as read-only)."""
    return _source_image(uefi=False)


def uefi_source_image() -> SourceImage:
    """The UEFI source server's disk (GPT: ESP p1, root p2, data p3; cached, read-only)."""
    return _source_image(uefi=True)


def _source_image(*, uefi: bool) -> SourceImage:
    """Build (once per version of this file) the source's disk: partitions, filesystems, Debian, grub."""
    name = "uefi-source" if uefi else "source"
    img = cache_dir() / f"{name}-{_source_key()}.img"
    meta = img.with_suffix(".json")
    if img.exists() and meta.exists():
        return SourceImage(path=img, **json.loads(meta.read_text()))
    tarball = rootfs_tarball()
    tmp = img.with_suffix(".img.tmp")
    tmp.unlink(missing_ok=True)
    with open(tmp, "wb") as f:
        f.truncate(SOURCE_SIZE)
    if uefi:
        table = (f"label: gpt\nstart=2048, size={SOURCE_ESP_SECTORS}, type=U\n"
                 f"size={SOURCE_ROOT_SECTORS}, type=L\ntype=L\n")
    else:
        table = (f"label: dos\nstart=2048, size={SOURCE_ROOT_SECTORS}, type=83, bootable\n"
                 f"start={2048 + SOURCE_ROOT_SECTORS}, type=83\n")
    run(["sfdisk", "-q", tmp], input=table)
    work = cache_dir() / f"{name}-mnt-{os.getpid()}"
    esp_uuid = ""
    with contextlib.ExitStack() as stack:
        disk = stack.enter_context(LoopDisk(tmp))
        first = 2 if uefi else 1           # the ESP comes first on the GPT disk
        root_dev, data_dev = disk.part(first), disk.part(first + 1)
        if uefi:
            esp_uuid = format_esp(disk.part(1), SOURCE_ESP_SECTORS)
        run(["mkfs.ext4", "-q", "-F", root_dev])
        run(["mkfs.ext4", "-q", "-F", data_dev])
        root_uuid, data_uuid = blkid_value(root_dev, "UUID"), blkid_value(data_dev, "UUID")
        root = stack.enter_context(mounted(root_dev, work))
        run(["tar", "-C", root, "--numeric-owner", "--xattrs", "-xpf", tarball])
        data = stack.enter_context(mounted(data_dev, root / "data"))
        (data / "marker.txt").write_text(MARKER + "\n")
        _configure_source(root, root_uuid, data_uuid, esp_uuid)
        mounts = [(root_dev, "/"), (data_dev, "/data")]
        if uefi:
            with fat_mounted(disk.part(1), root / "boot/efi"):
                _install_grub(root, disk.dev, mounts, uefi=True)
            if "BOOTX64" not in esp_listing(disk.part(1)):
                raise RuntimeError("grub-install left no EFI/BOOT/BOOTX64.EFI on the source's ESP")
        else:
            _install_grub(root, disk.dev, mounts)
    shutil.rmtree(work, ignore_errors=True)
    os.replace(tmp, img)
    for old in cache_dir().glob(f"{name}-*.img"):
        if old != img:
            old.unlink(missing_ok=True)
            old.with_suffix(".json").unlink(missing_ok=True)
    info = SourceImage(img, SOURCE_HOSTNAME, MARKER, root_uuid, data_uuid, esp_uuid)
    meta.write_text(json.dumps({k: v for k, v in asdict(info).items() if k != "path"}))
    return info


def _configure_source(root: Path, root_uuid: str, data_uuid: str, esp_uuid: str = "") -> None:
    (root / "etc/hostname").write_text(SOURCE_HOSTNAME + "\n")
    (root / "etc/hosts").write_text(f"127.0.0.1\tlocalhost\n127.0.1.1\t{SOURCE_HOSTNAME}\n")
    # x-systemd.device-timeout keeps the negative control shorter: a missing /data
    # drops to emergency mode after 60 s instead of systemd's default 90 s (not
    # less: on a loaded CI machine udev itself can take 20 s to announce a disk).
    esp = f"UUID={esp_uuid}\t/boot/efi\tvfat\tumask=0077,x-systemd.device-timeout=60s\t0\t1\n" if esp_uuid else ""
    (root / "etc/fstab").write_text(
        "# /etc/fstab of the source server\n"
        f"UUID={root_uuid}\t/\text4\terrors=remount-ro\t0\t1\n" + esp +
        f"UUID={data_uuid}\t/data\text4\tdefaults,x-systemd.device-timeout=60s\t0\t2\n"
        "tmpfs\t/tmp\ttmpfs\tdefaults,nosuid\t0\t0\n")
    (root / "boot/efi").mkdir(parents=True, exist_ok=True)
    grub_default = root / "etc/default/grub"
    text = grub_default.read_text() if grub_default.exists() else ""
    text += ('\n# boot test: kernel and grub on the serial console\n'
             'GRUB_TIMEOUT=1\nGRUB_CMDLINE_LINUX="console=ttyS0,115200"\nGRUB_CMDLINE_LINUX_DEFAULT=""\n'
             'GRUB_TERMINAL="serial console"\nGRUB_SERIAL_COMMAND="serial --speed=115200"\n')
    grub_default.write_text(text)
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    for name, text in (("cvmigrate-boot-marker.service", UNIT), ("cvmigrate-net-marker.service", NET_UNIT)):
        (root / "etc/systemd/system" / name).write_text(text)
        link = wants / name
        if not link.is_symlink():
            link.symlink_to(f"/etc/systemd/system/{name}")
    script = root / "usr/local/sbin/cvmigrate-net-marker"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(NET_SCRIPT)
    script.chmod(0o755)
    # systemd-networkd configures eth0 (DHCP here; the static-IP scenario rewrites the file)
    (root / NETWORKD_FILE).parent.mkdir(parents=True, exist_ok=True)
    (root / NETWORKD_FILE).write_text(NETWORKD_DHCP)
    nd = wants / "systemd-networkd.service"
    if not nd.is_symlink():
        nd.symlink_to("/lib/systemd/system/systemd-networkd.service")
    # A MAC-bound interface name, as a real server has it (the network fix-up removes it).
    rules = root / "etc/udev/rules.d/70-persistent-net.rules"
    rules.parent.mkdir(parents=True, exist_ok=True)
    rules.write_text('SUBSYSTEM=="net", ACTION=="add", DRIVERS=="?*", ATTR{address}=="00:16:3e:0a:1b:2c", '
                     'ATTR{type}=="1", KERNEL=="eth*", NAME="eth0"\n')
    (root / "etc/network").mkdir(exist_ok=True)
    (root / "etc/network/interfaces").write_text("auto lo\niface lo inet loopback\n\nallow-hotplug eth0\n"
                                                 "iface eth0 inet dhcp\n")
    (root / "etc/machine-id").write_text("")   # systemd makes one on first boot
    # The source ran on another hypervisor: a small host-specific initramfs
    # without virtio drivers (the initramfs fix-up must notice and add them).
    # Small also means grub loads it quickly under TCG.
    (root / "etc/initramfs-tools/conf.d/cvmigrate-boot-test").write_text("MODULES=list\n")
    (root / "etc/initramfs-tools/modules").write_text("# the source's storage\next4\nata_piix\nsd_mod\n")


def _install_grub(root: Path, disk: str, parts: list[tuple[str, str]], *, uefi: bool = False) -> None:
    """grub-install + grub-mkconfig for the image, in a chroot with by-uuid links (UEFI: onto the mounted ESP)."""
    from cvmigrate.receiver.diskplan import DiskPlan, FsIdentity, MountMap, blkid
    mounts = tuple(MountMap(mp, FsIdentity(mount_point=mp), blkid(dev)) for dev, mp in parts)
    plan = DiskPlan(mounts=mounts, system_disk=disk)
    from cvmigrate.receiver.fixups import chrooted
    with chrooted(root, plan) as c:
        from cvmigrate.receiver.fixups import FixupStep
        step = FixupStep("build")
        c.run(["update-initramfs", "-u", "-k", "all"], check=True, env=None, timeout=600, step=step)
        target = (["--target=x86_64-efi", "--efi-directory=/boot/efi", "--removable", "--no-nvram"] if uefi
                  else ["--target=i386-pc", disk])
        c.run(["grub-install", *target], check=True, env=None, timeout=600, step=step)
        c.run(["grub-mkconfig", "-o", "/boot/grub/grub.cfg"], check=True, env=None, timeout=600, step=step)
    cfg = (root / "boot/grub/grub.cfg").read_text()
    if "root=/dev/loop" in cfg:
        raise RuntimeError("grub-mkconfig wrote a loop device as root=; the by-uuid links are missing")


# --------------------------------------------------------------------------- the target

@dataclass(frozen=True)
class TargetImages:
    system: Path
    data: Path
    root_uuid: str
    esp_uuid: str = ""          # UEFI: the target's own ESP (p2, after the root)
    esp_part: int = 0


def make_target(workdir: Path, *, uefi: bool = False) -> TargetImages:
    """A fresh CVM's disks: system disk (ext4 at 4 MiB, its own UUID, some image content) + blank data disk.

    ``uefi``: GPT, the root first and an empty FAT32 ESP at the end of the disk (the source has it first).
    """
    system, data = workdir / "target.img", workdir / "data.img"
    for path, size in ((system, TARGET_SIZE), (data, DATA_SIZE)):
        with open(path, "wb") as f:
            f.truncate(size)
    root_sectors = TARGET_SIZE // SECTOR - 8192 - TARGET_ESP_SECTORS - 2048
    table = (f"label: gpt\nstart=8192, size={root_sectors}, type=L\nsize={TARGET_ESP_SECTORS}, type=U\n" if uefi
             else "label: dos\nstart=8192, type=83, bootable\n")
    run(["sfdisk", "-q", system], input=table)
    esp_uuid = ""
    with LoopDisk(system) as disk:
        dev = disk.part(1)
        run(["mkfs.ext4", "-q", "-F", "-L", "cvm-root", dev])
        uuid = blkid_value(dev, "UUID")
        if uefi:
            esp_uuid = format_esp(disk.part(2), TARGET_ESP_SECTORS, "CVM-ESP")
        with mounted(dev, workdir / "tmnt") as m:
            (m / "etc").mkdir()
            (m / "etc/hostname").write_text("VM-0-17-debian\n")
            (m / "etc/fstab").write_text(f"UUID={uuid} / ext4 defaults 0 1\n")
            (m / "var/lib/cvm-image").mkdir(parents=True)
            (m / "var/lib/cvm-image/stamp").write_text("from the CVM's public image\n")
    return TargetImages(system, data, uuid, esp_uuid, 2 if uefi else 0)


# --------------------------------------------------------------------------- booting

QEMU = ["qemu-system-x86_64", "-accel", "tcg", "-m", "1024", "-nographic", "-no-reboot"]


#: What OVMF prints when no disk has EFI boot code: it falls back to its UEFI shell.
OVMF_NO_BOOT = ("startup.nsh", "Shell>", "No bootable option")


def boot(system: Path, data: Path, log: Path, *, ovmf_vars: Path | None = None,
         nic: bool = True) -> subprocess.Popen[bytes]:
    """Start the target under qemu (virtio disks and NIC); the serial console goes to ``log``.

    ``ovmf_vars``: boot under UEFI (OVMF) with this copy of the firmware's variable store (written by the
    firmware, so one per boot).  ``nic=False``: no network (OVMF would try PXE first, for minutes under TCG).
    """
    firmware = ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
                "-drive", f"if=pflash,format=raw,unit=1,file={ovmf_vars}"] if ovmf_vars else []
    net = ["-netdev", "user,id=n", "-device", "virtio-net-pci,netdev=n"] if nic else ["-net", "none"]
    argv = QEMU + firmware + ["-serial", f"file:{log}", "-monitor", "none",
                              "-drive", f"file={system},if=virtio,format=raw",
                              "-drive", f"file={data},if=virtio,format=raw", *net]
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)


def wait_for(log: Path, proc: subprocess.Popen[bytes], patterns: list[str], timeout: float) -> str | None:
    """The first of ``patterns`` seen in ``log`` within ``timeout`` seconds (None: none of them)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        for p in patterns:
            if p in text:
                return p
        if proc.poll() is not None:
            return None
        time.sleep(1)
    return None


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    t0 = time.monotonic()
    print(source_image(), f"{time.monotonic() - t0:.0f}s")
    if not missing_uefi_tools():
        t0 = time.monotonic()
        print(uefi_source_image(), f"{time.monotonic() - t0:.0f}s")
