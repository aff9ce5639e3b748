"""A Linux server's network configuration files: which interfaces use a static address, and the same files on DHCP.

Why one module for reading and rewriting: the agent reads these files on the
source to report the network facts (interface, MAC, static or DHCP, which
config system), and the receiver's network fix-up rewrites the copies on the
target so the primary interface takes the CVM's address from DHCP.  Both must
understand the files the same way.  Every function here is a pure function of
the file's text, so each config system is unit-tested on realistic files.

Config systems and their files (paths inside the root):

* ``ifupdown``: ``/etc/network/interfaces`` and ``/etc/network/interfaces.d/*``
* ``netplan``: ``/etc/netplan/*.yaml``
* ``networkmanager``: ``/etc/NetworkManager/system-connections/*.nmconnection``
* ``network-scripts``: ``/etc/sysconfig/network-scripts/ifcfg-*`` (RHEL family)
* ``systemd-networkd``: ``/etc/systemd/network/*.network``
"""
from __future__ import annotations

import re
from dataclasses import dataclass

IFUPDOWN, NETPLAN, NETWORKMANAGER, NETWORK_SCRIPTS, NETWORKD = (
    "ifupdown", "netplan", "networkmanager", "network-scripts", "systemd-networkd")
SYSTEMS = (IFUPDOWN, NETPLAN, NETWORKMANAGER, NETWORK_SCRIPTS, NETWORKD)
STATIC, DHCP, UNKNOWN = "static", "dhcp", "unknown"

#: Where each system keeps its files: (directory, glob) pairs inside the root.
LOCATIONS: dict[str, tuple[tuple[str, str], ...]] = {
    IFUPDOWN: (("/etc/network", "interfaces"), ("/etc/network/interfaces.d", "*")),
    NETPLAN: (("/etc/netplan", "*.yaml"), ("/etc/netplan", "*.yml")),
    NETWORKMANAGER: (("/etc/NetworkManager/system-connections", "*.nmconnection"),),
    NETWORK_SCRIPTS: (("/etc/sysconfig/network-scripts", "ifcfg-*"),),
    NETWORKD: (("/etc/systemd/network", "*.network"),),
}


@dataclass(frozen=True)
class NetInterface:
    """One configured interface as a config file states it."""

    name: str                          # "" when the file matches by MAC only
    method: str = UNKNOWN              # static | dhcp | unknown
    addresses: tuple[str, ...] = ()    # "192.0.2.10/24"
    gateway: str = ""
    mac: str = ""
    config_system: str = ""
    config_file: str = ""              # path inside the root
    primary: bool = False              # carries the default route (or the first configured one)


# --------------------------------------------------------------------------- ifupdown

_IFACE = re.compile(r"^(\s*)iface\s+(\S+)\s+(inet6?)\s+(\S+)(.*)$")
_STATIC_ONLY = ("address", "netmask", "gateway", "broadcast", "network", "pointopoint", "hwaddress")


def parse_ifupdown(text: str, path: str = "") -> list[NetInterface]:
    out: list[NetInterface] = []
    cur: dict[str, str] | None = None

    def close() -> None:
        if cur is not None and cur["name"] != "lo":
            addr = cur.get("address", "")
            if addr and "/" not in addr and cur.get("netmask"):
                addr = f"{addr}/{_prefix(cur['netmask'])}"
            out.append(NetInterface(cur["name"], cur["method"], (addr,) if addr else (), cur.get("gateway", ""),
                                    cur.get("hwaddress", "").replace("ether ", "").strip().lower(), IFUPDOWN, path))

    for line in text.splitlines():
        m = _IFACE.match(line)
        if m:
            close()
            cur = None
            if m.group(3) == "inet":
                method = {"static": STATIC, "dhcp": DHCP}.get(m.group(4), UNKNOWN)
                cur = {"name": m.group(2), "method": method}
            continue
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0] in ("auto", "allow-hotplug", "source", "source-directory", "mapping") or not line[:1].isspace():
            close()
            cur = None
            continue
        if cur is not None and len(words) > 1:
            cur[words[0]] = " ".join(words[1:])
    close()
    return out


def ifupdown_to_dhcp(text: str, name: str) -> str:
    """``iface NAME inet static`` and its address lines become ``iface NAME inet dhcp``."""
    lines, out, inside = text.splitlines(keepends=True), [], False
    for line in lines:
        m = _IFACE.match(line)
        if m:
            inside = m.group(2) == name and m.group(3) == "inet" and m.group(4) == "static"
            if inside:
                line = f"{m.group(1)}iface {name} inet dhcp\n"
            out.append(line)
            continue
        words = line.split()
        if inside and words and not line[:1].isspace() and not words[0].startswith("#"):
            inside = False
        if inside and words and words[0] in _STATIC_ONLY + ("dns-nameservers", "dns-search", "dns-domain"):
            if words[0] == "hwaddress":
                out.append(line)
            continue
        out.append(line)
    return "".join(out)


# --------------------------------------------------------------------------- netplan (a YAML subset)

def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def parse_netplan(text: str, path: str = "") -> list[NetInterface]:
    """Interfaces under ``ethernets:`` (the block style netplan files use)."""
    out: list[NetInterface] = []
    for name, block in _netplan_blocks(text):
        body = "\n".join(block)
        dhcp4 = re.search(r"^\s*dhcp4:\s*(true|yes|on)\s*$", body, re.M | re.I)
        addrs = re.findall(r"^\s*-\s*\"?([0-9.]+/\d+)\"?\s*$", body, re.M)
        addrs += [a for line in re.findall(r"^\s*addresses:\s*\[(.*)\]", body, re.M)
                  for a in re.findall(r"[0-9.]+/\d+", line)]
        gw = re.search(r"^\s*gateway4:\s*\"?([0-9.]+)", body, re.M)
        via = re.search(r"^\s*-?\s*to:\s*\"?(default|0\.0\.0\.0/0)\"?\s*\n\s*via:\s*\"?([0-9.]+)", body, re.M)
        mac = re.search(r"^\s*macaddress:\s*\"?([0-9a-fA-F:]{17})", body, re.M)
        method = DHCP if dhcp4 else STATIC if addrs else UNKNOWN
        out.append(NetInterface(name, method, tuple(addrs), gw.group(1) if gw else via.group(2) if via else "",
                                mac.group(1).lower() if mac else "", NETPLAN, path))
    return out


def _netplan_blocks(text: str) -> list[tuple[str, list[str]]]:
    lines = text.splitlines()
    blocks: list[tuple[str, list[str]]] = []
    i = 0
    while i < len(lines):
        if re.match(r"^\s*ethernets:\s*$", lines[i]):
            base = _indent(lines[i])
            i += 1
            name_indent = None
            while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > base):
                line = lines[i]
                if line.strip() and not line.strip().startswith("#"):
                    if name_indent is None:
                        name_indent = _indent(line)
                    if _indent(line) == name_indent:
                        blocks.append((line.strip().rstrip(":").strip("\"'"), []))
                    elif blocks:
                        blocks[-1][1].append(line)
                i += 1
            continue
        i += 1
    return blocks


def netplan_to_dhcp(text: str, name: str) -> str:
    """The ``ethernets: NAME:`` block: addresses, gateway and static routes out, ``dhcp4: true`` in."""
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    i = 0
    in_eth = eth_base = None
    while i < len(lines):
        line = lines[i]
        if re.match(r"^\s*ethernets:\s*$", line):
            in_eth, eth_base = True, _indent(line)
            out.append(line)
            i += 1
            continue
        if in_eth and line.strip() and _indent(line) <= (eth_base or 0):
            in_eth = False
        if in_eth and line.strip().rstrip(":").strip("\"'") == name and line.rstrip().endswith(":"):
            base = _indent(line)
            out.append(line)
            i += 1
            body: list[str] = []
            while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > base):
                body.append(lines[i])
                i += 1
            out.extend(_netplan_body_dhcp(body, base))
            continue
        out.append(line)
        i += 1
    return "".join(out)


def _netplan_body_dhcp(body: list[str], base: int) -> list[str]:
    keys_drop = ("addresses", "gateway4", "gateway6", "routes", "nameservers", "dhcp4")
    out: list[str] = []
    key_indent = next((_indent(b) for b in body if b.strip() and not b.strip().startswith("#")), base + 2)
    skip_deeper = None
    for b in body:
        if skip_deeper is not None:
            # a dropped key's block: deeper lines, and list items at the key's own indent (valid YAML)
            if not b.strip() or _indent(b) > skip_deeper or (_indent(b) == skip_deeper and b.strip().startswith("-")):
                continue
            skip_deeper = None
        key = b.strip().split(":", 1)[0]
        if _indent(b) == key_indent and key in keys_drop:
            skip_deeper = key_indent
            continue
        out.append(b)
    return [" " * key_indent + "dhcp4: true\n"] + out


# --------------------------------------------------------------------------- ini-style files (NM, networkd)

def _ini(text: str) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    cur = sections.setdefault("", {})
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith(("#", ";")):
            continue
        if s.startswith("[") and s.endswith("]"):
            cur = sections.setdefault(s[1:-1].strip(), {})
            continue
        if "=" in s:
            k, v = s.split("=", 1)
            cur.setdefault(k.strip(), []).append(v.strip())
    return sections


def _first(sections: dict[str, dict[str, list[str]]], section: str, key: str) -> str:
    return (sections.get(section, {}).get(key) or [""])[0]


def parse_nmconnection(text: str, path: str = "") -> list[NetInterface]:
    s = _ini(text)
    if _first(s, "connection", "type") not in ("ethernet", "802-3-ethernet"):
        return []
    method = _first(s, "ipv4", "method")
    addrs = tuple(v.split(",")[0] for k, vs in s.get("ipv4", {}).items() if re.fullmatch(r"address\d*", k) for v in vs)
    gws = [v.split(",")[1] for k, vs in s.get("ipv4", {}).items() if re.fullmatch(r"address\d*", k)
           for v in vs if "," in v]
    gw = _first(s, "ipv4", "gateway") or (gws[0] if gws else "")
    mac = (_first(s, "ethernet", "mac-address") or _first(s, "802-3-ethernet", "mac-address")).lower()
    kind = STATIC if method == "manual" else DHCP if method == "auto" else UNKNOWN
    return [NetInterface(_first(s, "connection", "interface-name"), kind, addrs, gw, mac, NETWORKMANAGER, path)]


def nmconnection_to_dhcp(text: str) -> str:
    """``[ipv4] method=manual`` and its addresses become ``method=auto``; ``[ethernet] mac-address`` goes."""
    out, section = [], ""
    for line in text.splitlines(keepends=True):
        s = line.strip()
        if s.startswith("[") and s.endswith("]"):
            section = s[1:-1].strip()
            out.append(line)
            continue
        key = s.split("=", 1)[0].strip() if "=" in s else ""
        if section == "ipv4":
            if key == "method":
                out.append("method=auto\n")
                continue
            if re.fullmatch(r"address\d*|addresses|gateway|dns|dns-search|routes?\d*", key):
                continue
        if section in ("ethernet", "802-3-ethernet") and key == "mac-address":
            continue
        out.append(line)
    return "".join(out)


def parse_networkd(text: str, path: str = "") -> list[NetInterface]:
    s = _ini(text)
    name = _first(s, "Match", "Name")
    mac = _first(s, "Match", "MACAddress").lower()
    dhcp = _first(s, "Network", "DHCP").lower()
    addrs = tuple(s.get("Network", {}).get("Address", [])) + tuple(s.get("Address", {}).get("Address", []))
    gw = _first(s, "Network", "Gateway") or _first(s, "Route", "Gateway")
    if not name and not mac:
        return []
    method = DHCP if dhcp in ("yes", "true", "ipv4", "both") else STATIC if addrs else UNKNOWN
    return [NetInterface(name, method, addrs, gw, mac, NETWORKD, path)]


def networkd_to_dhcp(text: str) -> str:
    """``[Network]`` gets ``DHCP=ipv4`` instead of Address/Gateway/DNS; [Address] and [Route] sections go.

    ``[Match]`` stays: the network fix-up generalises a MAC match separately (the CVM's NIC has another MAC).
    """
    out, section, wrote = [], "", False
    drop_sections = ("Address", "Route")
    for line in text.splitlines(keepends=True):
        s = line.strip()
        if s.startswith("[") and s.endswith("]"):
            section = s[1:-1].strip()
            if section in drop_sections:
                continue
            out.append(line)
            if section == "Network" and not wrote:
                out.append("DHCP=ipv4\n")
                wrote = True
            continue
        if section in drop_sections:
            continue
        key = s.split("=", 1)[0].strip() if "=" in s else ""
        if section == "Network" and key in ("Address", "Gateway", "DNS", "DHCP"):
            continue
        out.append(line)
    if not wrote:
        out.append("\n[Network]\nDHCP=ipv4\n")
    return "".join(out)


# --------------------------------------------------------------------------- network-scripts (ifcfg)

def _shell_vars(text: str) -> dict[str, str]:
    return {k: v.strip().strip("\"'") for k, v in re.findall(r"^\s*([A-Z0-9_]+)=(.*)$", text, re.M)}


def parse_ifcfg(text: str, path: str = "") -> list[NetInterface]:
    v = _shell_vars(text)
    name = v.get("DEVICE") or v.get("NAME") or path.rsplit("ifcfg-", 1)[-1]
    if name == "lo" or v.get("TYPE", "Ethernet") not in ("Ethernet", ""):
        return []
    proto = v.get("BOOTPROTO", "").lower()
    addr = v.get("IPADDR") or v.get("IPADDR0") or ""
    if addr and (v.get("PREFIX") or v.get("PREFIX0") or v.get("NETMASK")):
        addr = f"{addr}/{v.get('PREFIX') or v.get('PREFIX0') or _prefix(v['NETMASK'])}"
    method = DHCP if proto == "dhcp" else STATIC if proto in ("static", "none", "") and addr else UNKNOWN
    return [NetInterface(name, method, (addr,) if addr else (), v.get("GATEWAY", ""), v.get("HWADDR", "").lower(),
                         NETWORK_SCRIPTS, path)]


def ifcfg_to_dhcp(text: str) -> str:
    """BOOTPROTO=dhcp; IPADDR/NETMASK/PREFIX/GATEWAY/DNS and HWADDR lines go."""
    out, has_proto = [], False
    drop = re.compile(r"^\s*(IPADDR\d*|NETMASK\d*|PREFIX\d*|GATEWAY\d*|DNS\d+|HWADDR|MACADDR)=")
    for line in text.splitlines(keepends=True):
        if drop.match(line):
            continue
        if re.match(r"^\s*BOOTPROTO=", line):
            out.append("BOOTPROTO=dhcp\n")
            has_proto = True
            continue
        out.append(line)
    if not has_proto:
        if out and not out[-1].endswith("\n"):
            out[-1] += "\n"
        out.append("BOOTPROTO=dhcp\n")
    return "".join(out)


# --------------------------------------------------------------------------- one entry point per system

PARSERS = {IFUPDOWN: parse_ifupdown, NETPLAN: parse_netplan, NETWORKMANAGER: parse_nmconnection,
           NETWORK_SCRIPTS: parse_ifcfg, NETWORKD: parse_networkd}


def to_dhcp(system: str, text: str, name: str) -> str:
    """``text`` (a file of ``system``) with interface ``name`` switched to DHCP."""
    if system == IFUPDOWN:
        return ifupdown_to_dhcp(text, name)
    if system == NETPLAN:
        return netplan_to_dhcp(text, name)
    if system == NETWORKMANAGER:
        return nmconnection_to_dhcp(text)
    if system == NETWORK_SCRIPTS:
        return ifcfg_to_dhcp(text)
    if system == NETWORKD:
        return networkd_to_dhcp(text)
    raise ValueError(f"unknown network config system {system!r}")


def _prefix(netmask: str) -> int:
    if netmask.isdigit():
        return int(netmask)
    try:
        return sum(bin(int(p)).count("1") for p in netmask.split("."))
    except ValueError:
        return 24


def choose_primary(interfaces: list[NetInterface], default_route_iface: str = "") -> list[NetInterface]:
    """Mark the primary interface: the default route's, else the first with a gateway, else the first configured."""
    from dataclasses import replace

    real = [i for i in interfaces if i.method != UNKNOWN]
    pick = next((i for i in real if default_route_iface and i.name == default_route_iface), None)
    pick = pick or next((i for i in real if i.gateway), None) or (real[0] if real else None)
    return [replace(i, primary=(i is pick)) for i in interfaces]


__all__ = ["NetInterface", "SYSTEMS", "LOCATIONS", "PARSERS", "STATIC", "DHCP", "UNKNOWN", "to_dhcp",
           "choose_primary", "IFUPDOWN", "NETPLAN", "NETWORKMANAGER", "NETWORK_SCRIPTS", "NETWORKD"]
