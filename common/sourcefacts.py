"""The source facts report: everything about the source server that checks, the disk plan and the fix-ups need.

Why a report: facts come from where they are true.  The agent measures them
next to the data (in this process, or the agent daemon on the source server
over the control plane); the controller on an admin box only reads the
report, never its own disks, mount table or /etc.  The receiver gets the same
report for the fix-ups.  One dataclass, one serde (:func:`facts_to_json` /
:func:`facts_from_json`), a version that unknown readers refuse.

Paths in the report are *inside the source root*: a source mounted at
``/mnt/img`` with ``/mnt/img/data`` on its own partition reports the
filesystems ``/`` and ``/data``.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from cvmigrate.common.errors import ProtocolError
from cvmigrate.common.netconfig import NetInterface

FACTS_VERSION = 1


@dataclass(frozen=True)
class SourceFilesystem:
    """One filesystem at or below the source root, with its mount point relative to it."""

    mount_point: str                  # "/", "/data", "/boot/efi"
    fstype: str = ""
    uuid: str = ""
    label: str = ""
    partuuid: str = ""
    device: str = ""                  # the device on the source host ("" when not a block device)
    size_bytes: int = 0
    used_bytes: int = 0
    free_bytes: int = 0

    def identity(self) -> dict[str, str]:
        """The fields fstab and grub name a filesystem by (the receiver's FsIdentity)."""
        return {"mount_point": self.mount_point, "fstype": self.fstype, "uuid": self.uuid, "label": self.label,
                "partuuid": self.partuuid, "device": self.device}


@dataclass(frozen=True)
class SourceFacts:
    """The source as its agent saw it."""

    root: str                                         # absolute source root on the agent's host
    whole_server: bool = False                        # root is "/" of a running system
    hostname: str = ""
    os_release: dict[str, str] = field(default_factory=dict)
    os_family: str = ""                               # debian | rhel | suse | ""
    init: str = ""                                    # systemd | sysvinit | upstart | openrc | ""
    kernel: str = ""                                  # the kernel the source boots (running one for "/")
    kernels: tuple[str, ...] = ()                     # every kernel with a module tree
    module_tree: bool = False                         # /lib/modules/<kernel> exists
    initramfs_tool: str = ""                          # initramfs-tools | dracut | mkinitcpio | ""
    virtio_missing: tuple[str, ...] = ()              # neither built in nor in the initramfs
    virtio_modules: tuple[str, ...] = ()              # available as loadable modules
    virtio_active: tuple[str, ...] = ()               # loaded now (whole server without a module tree)
    virtio_detail: str = ""
    selinux: str = ""                                 # enforcing | permissive | disabled | ""
    boot_mode: str = "bios"                           # bios | uefi
    esp: str = ""                                     # the ESP's mount point ("" under BIOS)
    bootloader: str = ""                              # grub2 | grub | ""
    network_systems: tuple[str, ...] = ()             # config systems with files present
    interfaces: tuple[NetInterface, ...] = ()
    filesystems: tuple[SourceFilesystem, ...] = ()
    clock_unix: float = 0.0                           # the agent host's clock when gathered
    euid: int = -1
    state_dir: str = ""
    state_free_bytes: int = -1
    agent_version: str = ""

    def filesystem(self, mount_point: str) -> SourceFilesystem | None:
        return next((f for f in self.filesystems if f.mount_point == mount_point), None)

    def primary_interface(self) -> NetInterface | None:
        return next((i for i in self.interfaces if i.primary), None)

    def os_name(self) -> str:
        r = self.os_release
        return " ".join(filter(None, (r.get("ID"), r.get("ID_LIKE"), r.get("PRETTY_NAME") or r.get("NAME"))))


def facts_to_json(facts: SourceFacts) -> str:
    d = asdict(facts)
    d["version"] = FACTS_VERSION
    return json.dumps(d, sort_keys=True)


def facts_from_json(text: str) -> SourceFacts:
    """The report from its JSON; a ProtocolError names what is wrong (an agent of another version, garbage)."""
    try:
        d: dict[str, Any] = json.loads(text)
        version = d.pop("version", None)
        if version != FACTS_VERSION:
            raise ProtocolError(f"source facts version {version!r}; this cvmigrate reads version {FACTS_VERSION}: "
                                "run the same cvmigrate version on the agent and the controller")
        d["filesystems"] = tuple(SourceFilesystem(**f) for f in d.get("filesystems") or ())
        d["interfaces"] = tuple(NetInterface(**{**i, "addresses": tuple(i.get("addresses") or ())})
                                for i in d.get("interfaces") or ())
        for key in ("kernels", "virtio_missing", "virtio_modules", "virtio_active", "network_systems"):
            d[key] = tuple(d.get(key) or ())
        return SourceFacts(**d)
    except ProtocolError:
        raise
    except (ValueError, TypeError, AttributeError) as exc:
        raise ProtocolError(f"the source facts report is unreadable: {exc}") from exc


__all__ = ["FACTS_VERSION", "SourceFacts", "SourceFilesystem", "facts_from_json", "facts_to_json"]
