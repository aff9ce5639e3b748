"""Network config files of each system: parsed the same way on the source (facts) and rewritten on the target (DHCP)."""
from __future__ import annotations

import pytest

from cvmigrate.common.netconfig import (
    DHCP,
    IFUPDOWN,
    NETPLAN,
    NETWORK_SCRIPTS,
    NETWORKD,
    NETWORKMANAGER,
    PARSERS,
    STATIC,
    UNKNOWN,
    NetInterface,
    choose_primary,
    to_dhcp,
)

IFUPDOWN_STATIC = """\
# This file describes the network interfaces available on your system
source /etc/network/interfaces.d/*

auto lo
iface lo inet loopback

# The primary network interface
allow-hotplug eth0
iface eth0 inet static
    address 10.10.1.20
    netmask 255.255.255.0
    gateway 10.10.1.1
    dns-nameservers 10.10.1.2 8.8.8.8
    hwaddress ether 52:54:00:12:34:56

auto eth1
iface eth1 inet dhcp
"""

NETPLAN_STATIC = """\
# This is the network config written by 'subiquity'
network:
  version: 2
  ethernets:
    ens3:
      match:
        macaddress: 52:54:00:ab:cd:ef
      set-name: ens3
      addresses:
      - 172.16.5.10/24
      routes:
      - to: default
        via: 172.16.5.1
      nameservers:
        addresses: [172.16.5.2]
        search: [corp.example]
    ens4:
      dhcp4: true
"""

NM_STATIC = """\
[connection]
id=Wired connection 1
uuid=6b9a2a0e-1f5c-4d4e-9d2b-3d0c3f7e1a11
type=ethernet
interface-name=enp1s0

[ethernet]
mac-address=52:54:00:AA:BB:CC

[ipv4]
address1=192.168.10.5/24,192.168.10.1
dns=192.168.10.1;
method=manual

[ipv6]
addr-gen-mode=eui64
method=auto
"""

IFCFG_STATIC = """\
TYPE=Ethernet
PROXY_METHOD=none
BROWSER_ONLY=no
BOOTPROTO=none
DEFROUTE=yes
NAME=eth0
UUID=5fb06bd0-0bb0-7ffb-45f1-d6edd65f3e03
DEVICE=eth0
ONBOOT=yes
IPADDR=10.0.8.15
PREFIX=22
GATEWAY=10.0.8.1
DNS1=183.60.83.19
HWADDR=52:54:00:6e:2d:0a
"""

NETWORKD_STATIC = """\
[Match]
MACAddress=52:54:00:de:ad:01

[Network]
Address=198.51.100.7/24
Gateway=198.51.100.1
DNS=198.51.100.53

[Route]
Destination=203.0.113.0/24
Gateway=198.51.100.254
"""


@pytest.mark.parametrize("system,text,name,addr,gw,mac", [
    (IFUPDOWN, IFUPDOWN_STATIC, "eth0", "10.10.1.20/24", "10.10.1.1", "52:54:00:12:34:56"),
    (NETPLAN, NETPLAN_STATIC, "ens3", "172.16.5.10/24", "172.16.5.1", "52:54:00:ab:cd:ef"),
    (NETWORKMANAGER, NM_STATIC, "enp1s0", "192.168.10.5/24", "192.168.10.1", "52:54:00:aa:bb:cc"),
    (NETWORK_SCRIPTS, IFCFG_STATIC, "eth0", "10.0.8.15/22", "10.0.8.1", "52:54:00:6e:2d:0a"),
    (NETWORKD, NETWORKD_STATIC, "", "198.51.100.7/24", "198.51.100.1", "52:54:00:de:ad:01"),
])
def test_static_interface_is_read_then_switched_to_dhcp(system, text, name, addr, gw, mac):
    found = PARSERS[system](text, "/etc/x")
    static = found[0]
    assert (static.name, static.method, static.addresses, static.gateway, static.mac) == (
        name, STATIC, (addr,), gw, mac)
    new = to_dhcp(system, text, name)
    after = PARSERS[system](new, "/etc/x")[0]
    assert after.method == DHCP and after.addresses == () and after.gateway == ""
    assert addr.split("/")[0] not in new          # no trace of the old address
    assert to_dhcp(system, new, name) == new      # idempotent: a re-run changes nothing


def test_ifupdown_other_interfaces_and_comments_survive():
    new = to_dhcp(IFUPDOWN, IFUPDOWN_STATIC, "eth0")
    assert "iface eth0 inet dhcp" in new and "iface eth1 inet dhcp" in new and "iface lo inet loopback" in new
    assert "# The primary network interface" in new and "source /etc/network/interfaces.d/*" in new
    assert [i.name for i in PARSERS[IFUPDOWN](new)] == ["eth0", "eth1"]


def test_netplan_keeps_the_second_interface_and_the_match():
    new = to_dhcp(NETPLAN, NETPLAN_STATIC, "ens3")
    parsed = {i.name: i.method for i in PARSERS[NETPLAN](new)}
    assert parsed == {"ens3": DHCP, "ens4": DHCP}
    assert "routes:" not in new and "nameservers:" not in new and "version: 2" in new


def test_networkd_drops_route_sections_keeps_the_match():
    new = to_dhcp(NETWORKD, NETWORKD_STATIC, "")
    assert "[Route]" not in new and "DHCP=ipv4" in new
    assert "[Match]\nMACAddress=52:54:00:de:ad:01" in new     # the MAC fix-up generalises it afterwards


def test_nm_ipv6_section_untouched():
    new = to_dhcp(NETWORKMANAGER, NM_STATIC, "enp1s0")
    assert "[ipv6]\naddr-gen-mode=eui64\nmethod=auto" in new and "mac-address" not in new


def test_dhcp_and_unknown_are_recognised():
    assert PARSERS[NETWORK_SCRIPTS]("DEVICE=eth0\nBOOTPROTO=dhcp\nONBOOT=yes\n", "/x/ifcfg-eth0")[0].method == DHCP
    assert PARSERS[NETWORKD]("[Match]\nName=en*\n[Network]\nDHCP=yes\n")[0].method == DHCP
    assert PARSERS[NETWORK_SCRIPTS]("DEVICE=lo\nIPADDR=127.0.0.1\n", "/x/ifcfg-lo") == []
    assert PARSERS[NETWORKMANAGER]("[connection]\ntype=wifi\n[ipv4]\nmethod=auto\n") == []
    assert PARSERS[NETPLAN]("network:\n  ethernets:\n    eth0: {}\n")[0].method == UNKNOWN


def test_primary_is_the_default_route_else_the_gateway_holder():
    a = NetInterface("eth0", DHCP)
    b = NetInterface("eth1", STATIC, ("10.0.0.2/24",), "10.0.0.1")
    assert [i.name for i in choose_primary([a, b]) if i.primary] == ["eth1"]
    assert [i.name for i in choose_primary([a, b], "eth0") if i.primary] == ["eth0"]
    assert not any(i.primary for i in choose_primary([NetInterface("x")]))
