"""Every subcommand loads and answers --help; errors become one line and an exit code."""
import pytest

from cvmigrate import cli
from cvmigrate.common.errors import CvmError, TargetFull


@pytest.mark.parametrize("name", sorted(cli.SUBCOMMANDS))
def test_every_subcommand_loads_and_has_help(name, capsys):
    target = cli.load_subcommand(name)
    assert callable(target.add_arguments) and callable(target.run)
    with pytest.raises(SystemExit) as info:
        cli.main([name, "--help"])
    assert info.value.code == 0
    assert "usage: cvmigrate " + name in capsys.readouterr().out


def test_a_cvm_error_is_one_line_and_its_exit_code(monkeypatch, capsys):
    def boom(args):
        raise TargetFull("needs 5 more bytes", path=b"x/y")

    target = cli.load_subcommand("push")
    monkeypatch.setattr(target, "run", boom)
    code = cli.main(["push", "/", "--to", "127.0.0.1:1", "--insecure"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == TargetFull.exit_code and len(err) >= 1
    assert err[-1].startswith("cvmigrate push: error: target disk full writing 'x/y': needs 5 more bytes")
    assert issubclass(TargetFull, CvmError)


@pytest.mark.parametrize("details,expected", [
    ("failed to connect to all addresses; last error: UNKNOWN: ipv4:10.0.0.2:3128: HTTP proxy returned "
     "response code 407", "ConfigError"),
    ("failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:38407: Socket closed",
     "TransportError"),
])
def test_proxy_refusal_is_told_apart_from_a_port_number(details, expected):
    import grpc

    from cvmigrate.agent.push import _rpc_error

    class Err(grpc.RpcError):
        def code(self):
            return grpc.StatusCode.UNAVAILABLE

        def details(self):
            return details

    assert type(_rpc_error(Err(), "h:1")).__name__ == expected


def test_an_unexpected_error_is_one_line_and_the_traceback_needs_debug(monkeypatch, capsys):
    def boom(args):
        raise RuntimeError("disk on fire\nsecond line")

    target = cli.load_subcommand("push")
    monkeypatch.setattr(target, "run", boom)
    code = cli.main(["push", "/", "--to", "127.0.0.1:1", "--insecure"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1] == ("cvmigrate push: error: unexpected RuntimeError: disk on fire; run it again "
                                     "with --debug for the traceback, and report it")
    assert not any("Traceback" in line for line in err)
    code = cli.main(["--debug", "push", "/", "--to", "127.0.0.1:1", "--insecure"])
    assert code == 1 and "Traceback" in capsys.readouterr().err


@pytest.mark.parametrize("argv, expected", [
    ([], ["migrate"]),
    (["--check"], ["migrate", "--check"]),
    (["--debug", "--clean", "--yes"], ["--debug", "migrate", "--clean", "--yes"]),
    (["--log-format", "json", "--no-console"], ["--log-format", "json", "migrate", "--no-console"]),
    (["--log-level", "3", "--check"], ["migrate", "--log-level", "3", "--check"]),
    (["--help"], ["--help"]),
    (["--version"], ["--version"]),
    (["status", "--json"], ["status", "--json"]),
])
def test_go2tencentcloud_bare_invocation_means_migrate(argv, expected):
    assert cli.go2tencentcloud_argv(argv) == expected
