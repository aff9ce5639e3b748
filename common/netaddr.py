"""HOST:PORT addresses, validated once for every flag that takes one.

Why one parser: ``--to``, ``--listen``, ``--receiver`` and ``--agent`` used to
split on the last colon and hand the rest to gRPC, which quietly wrapped an
out-of-range port (``:99999`` dialled and listened on 34463) and read a bare
IPv6 address as host plus port.  Here a port is 1..65535 (0 only where a
listener may pick one), an IPv6 address must be written in brackets
(``[2001:db8::1]:7070``), and the error names the flag, the value and the fix.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from cvmigrate.common.errors import UsageError

_HOSTNAME = re.compile(r"(?=.{1,253}\Z)[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
                       r"(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?\Z")


@dataclass(frozen=True)
class HostPort:
    """A validated address; ``str()`` gives the form gRPC dials (IPv6 in brackets)."""

    host: str
    port: int

    @property
    def is_ipv6(self) -> bool:
        return ":" in self.host

    def __str__(self) -> str:
        return format_hostport(self.host, self.port)


def format_hostport(host: str, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def proxy_url(host: str, port: int, user: str = "", password: str = "") -> str:
    """``http://[user[:password]@]host:port`` for an HTTP CONNECT proxy (client.json Net.Proxy): the
    credentials percent-encoded, an IPv6 address in brackets.  The one place such a URL is built."""
    from urllib.parse import quote

    auth = ""
    if user:
        auth = quote(user, safe="") + (":" + quote(password, safe="") if password else "") + "@"
    return f"http://{auth}{format_hostport(host, port)}"


def parse_hostport(value: str, what: str, *, listen: bool = False, default_port: int | None = None) -> HostPort:
    """Validate ``HOST:PORT`` for the flag ``what``; raise UsageError (exit 2) naming the fix.

    ``listen``: port 0 (any free port) and an empty host (all addresses) are allowed.
    ``default_port``: a bare host (no port) gets it.
    """
    example = "0.0.0.0:7070 or [::]:7070" if listen else "203.0.113.10:7070 or [2001:db8::1]:7070"
    text = (value or "").strip()
    fix = f"write HOST:PORT, e.g. {example}"
    if not text:
        raise UsageError(f"{what}: empty address; {fix}")
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise UsageError(f"{what} {value!r}: missing ']' after the IPv6 address; {fix}")
        host, rest = text[1:end], text[end + 1:]
        try:
            if not isinstance(ipaddress.ip_address(host.split("%", 1)[0]), ipaddress.IPv6Address):
                raise ValueError
        except ValueError:
            raise UsageError(f"{what} {value!r}: {host!r} in brackets is not an IPv6 address; {fix}") from None
        if rest and not rest.startswith(":"):
            raise UsageError(f"{what} {value!r}: expected ':PORT' after ']'; {fix}")
        port_text = rest[1:] if rest else None
    else:
        if text.count(":") > 1:
            raise UsageError(f"{what} {value!r}: an IPv6 address must be in brackets, e.g. [{text}]:7070 "
                             f"or [2001:db8::1]:7070")
        host, sep, port_text_or_host = text.partition(":")
        port_text = port_text_or_host if sep else None
        if not host and not listen:
            raise UsageError(f"{what} {value!r}: the host is missing; {fix}")
        if host and not _valid_host(host):
            raise UsageError(f"{what} {value!r}: {host!r} is neither an IP address nor a host name; {fix}")
    if port_text is None:
        if default_port is None:
            raise UsageError(f"{what} {value!r}: the port is missing; {fix}")
        return HostPort(host, default_port)
    if not port_text.isdigit():
        raise UsageError(f"{what} {value!r}: port {port_text!r} is not a number; {fix}")
    port = int(port_text)
    low = 0 if listen else 1
    if not low <= port <= 65535:
        raise UsageError(f"{what} {value!r}: port {port} is out of range {low}..65535"
                         + ("" if listen else " (0 is only for a listener)") + f"; {fix}")
    return HostPort(host, port)


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(_HOSTNAME.match(host)) and not host.replace(".", "").isdigit()
