"""Network: configuration tied to the source's MAC addresses removed or generalised.

The CVM's virtio NIC has another MAC address.  Configuration that selects an
interface by MAC never matches it, and configuration that *sets* the source's
MAC makes the VPC drop the traffic.  Per format:

* udev persistent-net rules (``/etc/udev/rules.d/*persistent-net*.rules`` and any
  rule naming a net device by ``ATTR{address}``): those rules are commented out.
* ifcfg (``/etc/sysconfig/network-scripts``, ``/etc/sysconfig/network``):
  ``HWADDR=`` and ``MACADDR=`` removed.
* netplan (``/etc/netplan/*.yaml``): ``match: {macaddress: ...}`` becomes
  ``match: {name: "e*"}`` (any ethernet), ``set-name`` (which requires a MAC
  match to be meaningful) and ``macaddress:`` settings are removed.
* NetworkManager keyfiles: ``mac-address=``, ``cloned-mac-address=`` and
  ``interface-name=`` removed, so the profile applies to any ethernet device.
* systemd-networkd ``.network``: ``MACAddress=``/``PermanentMACAddress=`` in
  ``[Match]`` become ``Name=e*`` (unless a Name= is already there); a
  ``MACAddress=`` setting in ``[Link]`` is removed.
* ifupdown (``/etc/network/interfaces``): ``hwaddress`` lines commented out.

Before that, a static address on the source's primary interface (from the
agent's source facts) is switched to DHCP in whichever system configures it
(ifupdown, netplan, NetworkManager, network-scripts, systemd-networkd): the
CVM gets its address from the VPC's DHCP, and the source's address would
leave the server unreachable.  ``--keep-static-ip`` opts out.

All transformations are line-based so comments and layout survive.
"""
from __future__ import annotations

import re
from typing import Any

NAME = "network"

_MAC = r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5}"


def strip_persistent_net(text: str) -> str:
    """Comment out udev rules that name a network interface after a MAC address."""
    out = []
    for line in text.splitlines(keepends=True):
        s = line.strip()
        if (s and not s.startswith("#") and re.search(r"ATTRS?\{address\}", s)
                and ('SUBSYSTEM=="net"' in s or "NAME=" in s)):
            out.append("# cvmigrate: bound to the source's MAC address\n# " + line)
        else:
            out.append(line)
    return "".join(out)


def strip_ifcfg(text: str) -> str:
    """An ifcfg file without HWADDR=/MACADDR= lines."""
    return "".join(line for line in text.splitlines(keepends=True)
                   if not re.match(r"^\s*(HWADDR|MACADDR)\s*=", line))


def generalise_netplan(text: str) -> str:
    """netplan YAML with MAC matches replaced by a name glob, set-name and MAC settings removed."""
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    match_indent: int | None = None     # indent of the current 'match:' key
    match_has_other = False
    mac_removed_at: int | None = None
    i = 0

    def close_match() -> None:
        nonlocal match_indent, mac_removed_at, match_has_other
        if match_indent is not None and mac_removed_at is not None and not match_has_other:
            out.insert(mac_removed_at, " " * (match_indent + 2) + 'name: "e*"\n')
        match_indent, mac_removed_at, match_has_other = None, None, False

    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        indent = len(line) - len(line.lstrip(" "))
        if match_indent is not None and stripped and not stripped.startswith("#") and indent <= match_indent:
            close_match()
        m = re.match(r"^(\s*)match:\s*(\{.*\})?\s*$", line)
        if m and m.group(2):   # flow style: match: {macaddress: "..."}
            body = m.group(2)
            if re.search(r"macaddress", body):
                rest = re.sub(r"\s*macaddress:\s*\"?'?" + _MAC + r"\"?'?\s*,?", "", body[1:-1]).strip().strip(",")
                body = "{" + (rest if rest else 'name: "e*"') + "}"
                line = f"{m.group(1)}match: {body}\n"
            out.append(line)
            i += 1
            continue
        if m:
            match_indent, match_has_other, mac_removed_at = indent, False, None
            out.append(line)
            i += 1
            continue
        if re.match(r"^\s*macaddress:\s*", line) and not stripped.startswith("#"):
            if match_indent is not None and indent > match_indent:
                mac_removed_at = len(out)
            i += 1          # a MAC match or a MAC setting: both go
            continue
        if re.match(r"^\s*set-name:\s*", line):
            i += 1
            continue
        if match_indent is not None and indent > match_indent and stripped and not stripped.startswith("#"):
            match_has_other = True
        out.append(line)
        i += 1
    close_match()
    return "".join(out)


def strip_nm_keyfile(text: str) -> str:
    """A NetworkManager keyfile without MAC and interface-name bindings."""
    return "".join(line for line in text.splitlines(keepends=True)
                   if not re.match(r"^\s*(mac-address|cloned-mac-address|interface-name)\s*=", line))


def generalise_networkd(text: str) -> str:
    """A systemd-networkd .network file whose [Match] does not depend on a MAC address."""
    out: list[str] = []
    section = ""
    has_name = bool(re.search(r"^\s*Name\s*=", _section(text, "Match"), re.MULTILINE))
    added = False
    for line in text.splitlines(keepends=True):
        s = line.strip()
        sec = re.match(r"^\[(\w+)\]", s)
        if sec:
            section = sec.group(1)
        if section == "Match" and re.match(r"^(MACAddress|PermanentMACAddress)\s*=", s):
            if not has_name and not added:
                out.append("Name=e*\n")
                added = True
            continue
        if section == "Link" and re.match(r"^MACAddress\s*=", s):
            continue
        out.append(line)
    return "".join(out)


def _section(text: str, name: str) -> str:
    m = re.search(rf"^\[{name}\]\s*$(.*?)(?=^\[|\Z)", text, re.MULTILINE | re.DOTALL)
    return m.group(1) if m else ""


def strip_ifupdown(text: str) -> str:
    out = []
    for line in text.splitlines(keepends=True):
        if re.match(r"^\s*hwaddress\b", line):
            out.append("# cvmigrate: the source's MAC address\n#" + line)
        else:
            out.append(line)
    return "".join(out)


_ETH_NAME = re.compile(r"(?<![\w-])eth\d+\b")


def uses_eth_names(texts: list[str]) -> bool:
    """Whether the source's network configuration names interfaces ethN (kernel names)."""
    return any(_ETH_NAME.search(line) for t in texts for line in t.splitlines() if not line.lstrip().startswith("#")
               or "NAME=" in line)


def add_kernel_names_arg(default_grub: str) -> str:
    """/etc/default/grub with ``net.ifnames=0 biosdevname=0`` on GRUB_CMDLINE_LINUX (once)."""
    if re.search(r"net\.ifnames=0", default_grub):
        return default_grub
    pattern = re.compile(r'^(GRUB_CMDLINE_LINUX=)(["\']?)(.*?)\2[ \t]*$', re.MULTILINE)
    matches = list(pattern.finditer(default_grub))
    if not matches:
        sep = "" if default_grub.endswith("\n") or not default_grub else "\n"
        return default_grub + sep + 'GRUB_CMDLINE_LINUX="net.ifnames=0 biosdevname=0"\n'
    m = matches[-1]  # the last assignment wins in a shell file
    value = (m.group(3) + " net.ifnames=0 biosdevname=0").strip()
    return default_grub[:m.start()] + f'{m.group(1)}"{value}"' + default_grub[m.end():]


def static_to_dhcp(ctx: Any) -> None:
    """The primary interface's static configuration becomes DHCP (see the module docstring)."""
    from cvmigrate.common.netconfig import STATIC, to_dhcp

    facts = getattr(ctx, "source", None)
    if facts is None:
        ctx.note("no source facts: static addresses not checked")
        return
    p = facts.primary_interface()
    if p is None or p.method != STATIC:
        return
    what = f"{p.name or p.mac} in {p.config_file} ({p.config_system}) has the static address {', '.join(p.addresses)}"
    if getattr(ctx, "keep_static_ip", False):
        ctx.note(f"{what}: kept (--keep-static-ip)")
        return
    old = ctx.read(p.config_file)
    if old is None:
        ctx.note(f"{what}, but the file is not on the target")
        return
    if ctx.write(p.config_file, to_dhcp(p.config_system, old, p.name), "primary interface: static -> DHCP"):
        ctx.note(f"{what}: switched to DHCP (the CVM's address comes from the VPC)")


def fix(ctx: Any) -> None:
    static_to_dhcp(ctx)
    jobs: list[tuple[list[str], Any, str]] = [
        (ctx.glob("etc/udev/rules.d/*.rules"), strip_persistent_net, "udev rule bound to a MAC address"),
        (ctx.glob("etc/sysconfig/network-scripts/ifcfg-*") + ctx.glob("etc/sysconfig/network/ifcfg-*"),
         strip_ifcfg, "HWADDR/MACADDR of the source NIC"),
        (ctx.glob("etc/netplan/*.yaml") + ctx.glob("etc/netplan/*.yml"), generalise_netplan, "netplan MAC match"),
        (ctx.glob("etc/NetworkManager/system-connections/*"), strip_nm_keyfile, "NetworkManager MAC binding"),
        (ctx.glob("etc/systemd/network/*.network"), generalise_networkd, "networkd MAC match"),
        (["/etc/network/interfaces"] + ctx.glob("etc/network/interfaces.d/*"), strip_ifupdown, "ifupdown hwaddress"),
    ]
    for files, transform, why in jobs:
        for inner in files:
            if inner.endswith(("lo", ".bak", "~")) and "ifcfg-" in inner:
                continue
            old = ctx.read(inner)
            if old is None:
                continue
            ctx.write(inner, transform(old), why)
    # With the MAC-bound naming rules gone, the virtio NIC would get a predictable
    # name (ens3, ens5); configuration written for ethN keeps working only with
    # kernel names -- which is also what Tencent's own images use.
    configs = (ctx.glob("etc/network/interfaces") + ctx.glob("etc/network/interfaces.d/*")
               + ctx.glob("etc/sysconfig/network-scripts/ifcfg-*") + ctx.glob("etc/netplan/*.yaml")
               + ctx.glob("etc/systemd/network/*.network") + ctx.glob("etc/udev/rules.d/*net*.rules"))
    eth_sources = [t for t in (ctx.read(f) for f in configs) if t]
    default_grub = ctx.read("/etc/default/grub")
    if (default_grub is not None and uses_eth_names(eth_sources)
            and ctx.write("/etc/default/grub", add_kernel_names_arg(default_grub),
                          "network configuration uses ethN names")):
        ctx.note("interfaces are configured as ethN: kernel names kept with net.ifnames=0 biosdevname=0")
    links = [f for f in ctx.glob("etc/systemd/network/*.link") if re.search(r"MACAddress\s*=", ctx.read(f) or "")]
    if links:
        ctx.note("interface renames by MAC (" + ", ".join(links) + ") will not apply on the target; "
                 "check the names they set")
    if ctx.step.status != "changed":
        ctx.note("no MAC-bound network configuration found")
