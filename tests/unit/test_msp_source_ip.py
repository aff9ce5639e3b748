"""RegisterMigrationTask names the source server's address, not the admin box's (issue 12, admin-box mode)."""
from __future__ import annotations

from cvmigrate.common.netconfig import NetInterface
from cvmigrate.common.sourcefacts import SourceFacts
from cvmigrate.controller.subtasks.prepare import _local_ip, source_ip

STATIC = SourceFacts(root="/srv/source", interfaces=(
    NetInterface("eth1", "static", ("198.51.100.9/24",)),
    NetInterface("eth0", "static", ("2001:db8::5/64", "192.0.2.44/24"), primary=True)))
DHCP = SourceFacts(root="/", whole_server=True, interfaces=(NetInterface("eth0", "dhcp", primary=True),))


def test_in_process_the_source_is_this_host():
    assert source_ip(None, STATIC, "127.0.0.1") == _local_ip("127.0.0.1") == "127.0.0.1"


def test_agent_mode_names_the_agents_host_not_the_admin_box():
    assert source_ip("203.0.113.7:7070", STATIC, "127.0.0.1") == "203.0.113.7"
    assert source_ip("203.0.113.7:7070", DHCP, "127.0.0.1") == "203.0.113.7"


def test_agent_over_loopback_falls_back_to_the_primary_interfaces_configured_address():
    """An SSH tunnel or local relay hides the source's address: its primary interface's IPv4 address says it."""
    assert source_ip("127.0.0.1:7070", STATIC, "127.0.0.1") == "192.0.2.44"
    assert source_ip("localhost:7070", STATIC, "127.0.0.1") == "192.0.2.44"
    # a DHCP source configures no address: what the controller knows is all there is
    assert source_ip("127.0.0.1:7070", DHCP, "127.0.0.1") == "127.0.0.1"
