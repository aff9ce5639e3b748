"""HOST:PORT validation (one parser for --to, --listen, --receiver, --agent) and the exit-code table."""
import pytest

from cvmigrate.common import errors
from cvmigrate.common.errors import UsageError
from cvmigrate.common.netaddr import HostPort, format_hostport, parse_hostport, proxy_url


@pytest.mark.parametrize("value, listen, expected", [
    ("10.0.0.5:7070", False, HostPort("10.0.0.5", 7070)),
    ("receiver.example:1", False, HostPort("receiver.example", 1)),
    ("[2001:db8::1]:65535", False, HostPort("2001:db8::1", 65535)),
    ("0.0.0.0:0", True, HostPort("0.0.0.0", 0)),  # noqa: S104
    ("[::]:0", True, HostPort("::", 0)),
    (":7070", True, HostPort("", 7070)),
])
def test_valid(value: str, listen: bool, expected: HostPort) -> None:
    assert parse_hostport(value, "--x", listen=listen) == expected


@pytest.mark.parametrize("value, listen, needle", [
    ("10.0.0.5:99999", False, "out of range 1..65535"),
    ("10.0.0.5:0", False, "out of range 1..65535"),
    ("10.0.0.5:65536", True, "out of range 0..65535"),
    ("10.0.0.5", False, "the port is missing"),
    ("10.0.0.5:", False, "is not a number"),
    ("10.0.0.5:-1", False, "is not a number"),
    ("2001:db8::1:7070", False, "must be in brackets"),
    ("[2001:db8::1:7070", False, "missing ']'"),
    ("[10.0.0.1]:7070", False, "is not an IPv6 address"),
    ("[::1]7070", False, "expected ':PORT'"),
    (":7070", False, "the host is missing"),
    ("bad host:1", False, "neither an IP address nor a host name"),
    ("999.1.1.1:1", False, "neither an IP address nor a host name"),
    ("", False, "empty address"),
])
def test_invalid_names_the_flag_and_the_fix(value: str, listen: bool, needle: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_hostport(value, "--to", listen=listen)
    assert str(info.value).startswith("--to") and needle in str(info.value) and "e.g." in str(info.value)
    assert info.value.exit_code == 2


def test_format_brackets_ipv6_only() -> None:
    assert format_hostport("2001:db8::1", 443) == "[2001:db8::1]:443"
    assert format_hostport("10.0.0.1", 443) == "10.0.0.1:443"
    assert str(parse_hostport("[fe80::1]:80", "--x")) == "[fe80::1]:80"


def _all_subclasses(cls: type[errors.CvmError]) -> list[type[errors.CvmError]]:
    out: list[type[errors.CvmError]] = []
    for sub in cls.__subclasses__():
        out += [sub, *_all_subclasses(sub)]
    return out


def test_every_error_exit_code_is_documented() -> None:
    # import the modules that define CvmError subclasses outside common.errors
    import cvmigrate.common.connectfail
    import cvmigrate.controller.cloud  # noqa: F401

    documented = {code for code, _ in errors.EXIT_CODES}
    classes: list[type[errors.CvmError]] = [errors.CvmError, *_all_subclasses(errors.CvmError)]
    for cls in classes:
        assert cls.exit_code in documented, f"{cls.__name__} exits {cls.exit_code}, not in EXIT_CODES"


def test_proxy_urls_bracket_ipv6_and_encode_credentials() -> None:
    assert proxy_url("10.0.0.2", 3128) == "http://10.0.0.2:3128"
    assert proxy_url("2001:db8::2", 3128) == "http://[2001:db8::2]:3128"
    assert proxy_url("proxy.example", 8080, "u@corp", "p:w/d") == "http://u%40corp:p%3Aw%2Fd@proxy.example:8080"
    assert proxy_url("::1", 3128, "user") == "http://user@[::1]:3128"
