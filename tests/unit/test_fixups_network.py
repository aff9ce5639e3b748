"""Network fix-up: MAC-bound configuration removed or generalised, format by format."""
from __future__ import annotations

from collections.abc import Callable

import pytest

from cvmigrate.receiver.fixups.network import (
    add_kernel_names_arg,
    generalise_netplan,
    generalise_networkd,
    strip_ifcfg,
    strip_ifupdown,
    strip_nm_keyfile,
    strip_persistent_net,
)

MAC = "52:54:00:ab:cd:ef"

# (source text, expected text) per rewrite


IFCFG: list[tuple[str, str]] = [
    (f'DEVICE=eth0\nHWADDR={MAC}\nBOOTPROTO=dhcp\nONBOOT=yes\n', "DEVICE=eth0\nBOOTPROTO=dhcp\nONBOOT=yes\n"),
    (f'DEVICE=eth0\nHWADDR="{MAC.upper()}"\nMACADDR={MAC}\n', "DEVICE=eth0\n"),
    ("DEVICE=eth0\nBOOTPROTO=dhcp\n", "DEVICE=eth0\nBOOTPROTO=dhcp\n"),
    (f"# HWADDR={MAC} kept in a comment\n", f"# HWADDR={MAC} kept in a comment\n"),
]


NETPLAN: list[tuple[str, str]] = [
    # block-style match by MAC only, with set-name: any ethernet instead
    ("network:\n  version: 2\n  ethernets:\n    eth0:\n      match:\n        macaddress: " + MAC + "\n"
     "      set-name: eth0\n      dhcp4: true\n",
     'network:\n  version: 2\n  ethernets:\n    eth0:\n      match:\n        name: "e*"\n      dhcp4: true\n'),
    # match by MAC and driver: the driver stays, no name glob needed
    ("network:\n  ethernets:\n    lan:\n      match:\n        driver: virtio_net\n        macaddress: '" + MAC + "'\n"
     "      dhcp4: true\n",
     "network:\n  ethernets:\n    lan:\n      match:\n        driver: virtio_net\n      dhcp4: true\n"),
    # flow-style match (cloud-init's 50-cloud-init.yaml)
    ('network:\n  ethernets:\n    ens3:\n      match: {macaddress: "' + MAC
     + '"}\n      set-name: ens3\n      dhcp4: true\n',
     'network:\n  ethernets:\n    ens3:\n      match: {name: "e*"}\n      dhcp4: true\n'),
    # a MAC *setting* (spoofing the source's MAC) goes too
    ("network:\n  ethernets:\n    eth0:\n      dhcp4: true\n      macaddress: " + MAC + "\n",
     "network:\n  ethernets:\n    eth0:\n      dhcp4: true\n"),
    # nothing MAC-bound: unchanged
    ("network:\n  ethernets:\n    eth0:\n      dhcp4: true\n",
     "network:\n  ethernets:\n    eth0:\n      dhcp4: true\n"),
]


NM_KEYFILE: list[tuple[str, str]] = [
    (f"[connection]\nid=Wired\ntype=ethernet\ninterface-name=ens192\n\n[ethernet]\nmac-address={MAC.upper()}\n"
     "cloned-mac-address=" + MAC + "\n\n[ipv4]\nmethod=auto\n",
     "[connection]\nid=Wired\ntype=ethernet\n\n[ethernet]\n\n[ipv4]\nmethod=auto\n"),
    ("[connection]\nid=x\n[ipv4]\nmethod=auto\n", "[connection]\nid=x\n[ipv4]\nmethod=auto\n"),
]


NETWORKD: list[tuple[str, str]] = [
    (f"[Match]\nMACAddress={MAC}\n\n[Network]\nDHCP=yes\n", "[Match]\nName=e*\n\n[Network]\nDHCP=yes\n"),
    (f"[Match]\nName=eth0\nPermanentMACAddress={MAC}\n\n[Network]\nDHCP=yes\n",
     "[Match]\nName=eth0\n\n[Network]\nDHCP=yes\n"),
    (f"[Match]\nName=eth0\n\n[Link]\nMACAddress={MAC}\nMTUBytes=1500\n",
     "[Match]\nName=eth0\n\n[Link]\nMTUBytes=1500\n"),
    ("[Match]\nName=en*\n[Network]\nDHCP=yes\n", "[Match]\nName=en*\n[Network]\nDHCP=yes\n"),
]


@pytest.mark.parametrize("text,changed", [
    (f'SUBSYSTEM=="net", ACTION=="add", DRIVERS=="?*", ATTR{{address}}=="{MAC}", ATTR{{type}}=="1", '
     'KERNEL=="eth*", NAME="eth0"\n', True),
    (f'SUBSYSTEM=="net", ATTRS{{address}}=="{MAC}", NAME="lan0"\n', True),
    ('# SUBSYSTEM=="net", ATTR{address}=="x", NAME="eth0"\n', False),
    ('SUBSYSTEM=="block", KERNEL=="sd*", ATTR{queue/scheduler}="none"\n', False),
])
def test_persistent_net_rules(text, changed):
    new = strip_persistent_net(text)
    assert (new != text) == changed
    if changed:
        assert all(line.startswith("#") for line in new.splitlines())


def test_ifupdown_hwaddress():
    text = f"auto eth0\niface eth0 inet dhcp\n    hwaddress ether {MAC}\n"
    new = strip_ifupdown(text)
    assert f"#    hwaddress ether {MAC}" in new and "iface eth0 inet dhcp" in new
    assert not [ln for ln in new.splitlines() if ln.strip().startswith("hwaddress")]


GRUB_DEFAULT: list[tuple[str, str]] = [
    ('GRUB_CMDLINE_LINUX="console=ttyS0"\n', 'GRUB_CMDLINE_LINUX="console=ttyS0 net.ifnames=0 biosdevname=0"\n'),
    ('GRUB_CMDLINE_LINUX=""\n', 'GRUB_CMDLINE_LINUX="net.ifnames=0 biosdevname=0"\n'),
    ('GRUB_TIMEOUT=5\n', 'GRUB_TIMEOUT=5\nGRUB_CMDLINE_LINUX="net.ifnames=0 biosdevname=0"\n'),
    ('GRUB_CMDLINE_LINUX="a"\nGRUB_CMDLINE_LINUX="b net.ifnames=0"\n',
     'GRUB_CMDLINE_LINUX="a"\nGRUB_CMDLINE_LINUX="b net.ifnames=0"\n'),
    ('GRUB_CMDLINE_LINUX="a"\n# x\nGRUB_CMDLINE_LINUX="b"\n',
     'GRUB_CMDLINE_LINUX="a"\n# x\nGRUB_CMDLINE_LINUX="b net.ifnames=0 biosdevname=0"\n'),
]


@pytest.mark.parametrize("rewrite,text,expected", [
    pytest.param(rewrite, text, expected, id=f"{rewrite.__name__}-{i}")
    for rewrite, table in ((strip_ifcfg, IFCFG), (generalise_netplan, NETPLAN), (strip_nm_keyfile, NM_KEYFILE),
                           (generalise_networkd, NETWORKD), (add_kernel_names_arg, GRUB_DEFAULT))
    for i, (text, expected) in enumerate(table)
])
def test_rewrite(rewrite: Callable[[str], str], text: str, expected: str) -> None:
    assert rewrite(text) == expected


@pytest.mark.parametrize("texts,uses", [
    (["auto eth0\niface eth0 inet dhcp\n"], True),
    (["auto ens3\niface ens3 inet dhcp\n"], False),
    (["# eth0 is commented\n"], False),
    (['# SUBSYSTEM=="net", ATTR{address}=="x", NAME="eth0"\n'], True),   # the rule we just disabled named it eth0
    (["DEVICE=veth0\n"], False),
])
def test_uses_eth_names(texts, uses):
    from cvmigrate.receiver.fixups.network import uses_eth_names
    assert uses_eth_names(texts) == uses
