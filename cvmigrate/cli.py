"""The ``cvmigrate`` command: one entry point, subcommands, one error mapping.

Why one ``main()``: every CvmError (and Ctrl-C) becomes exactly one line on
stderr -- what failed, why, what to do -- and a distinct exit code; ``--debug``
adds the traceback.  Subcommand modules are imported lazily so that the
receiver in a rescue system never needs the controller's dependencies.
"""
from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from cvmigrate import __version__
from cvmigrate.common import logsetup
from cvmigrate.common.errors import CvmError, exit_code_help

logger = logging.getLogger(__name__)

#: name -> (module path, help); the module (or "module:attribute") has add_arguments(parser) and run(args) -> int
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "receive": ("cvmigrate.receiver.cli", "serve a target root (run inside the target's rescue system)"),
    "push": ("cvmigrate.agent.cli", "push a source tree to a receiver"),
    "agent": ("cvmigrate.agent.daemon", "run the agent as a daemon the controller drives over gRPC"),
    "demo": ("cvmigrate.controller.demo", "run a complete sample migration locally (no cloud account needed)"),
    "emulator": ("cvmigrate.controller.emulator.cli", "run the Tencent Cloud API emulator (tests, demo)"),
    "check": ("cvmigrate.controller.checks", "pre-checks of the source and the target (go2tencentcloud --check)"),
    "migrate": ("cvmigrate.controller.migrate",
                "migrate this server to a CVM (go2tencentcloud's --check/--clean are migrate flags)"),
    "status": ("cvmigrate.controller.migrate:status", "show a migration's stages, sub-tasks and transfer progress"),
    "bwlimit": ("cvmigrate.controller.migrate:bwlimit", "change a running migration's bandwidth limit (KB/s)"),
    "clean": ("cvmigrate.controller.migrate:clean",
              "force the target out of rescue mode and delete the migration state"),
    "fleet": ("cvmigrate.controller.fleet", "many migrations from one admin box: run a plan, its status, a demo"),
    "console": ("cvmigrate.controller.console", "the fleet's web console and Prometheus /metrics"),
    "pki": ("cvmigrate.controller.pki",
            "mint certificates and tokens for standalone receive/push (pki init DIR --host HOST)"),
}


#: Long-running servers: stderr is their log, so it shows INFO; every other command shows warnings and its one
#: failure line there (the log file keeps everything).
SERVERS = frozenset({"receive", "agent", "emulator", "console"})

class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the fix (the usage text stays in --help)."""

    def error(self, message: str) -> Any:
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    parser = OneLineParser(prog="cvmigrate", description="Online server migration to Tencent Cloud CVM.",
                                     epilog=exit_code_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"cvmigrate {__version__}")
    parser.add_argument("--log-level", type=int, choices=(1, 2, 3), default=2, help="1 ERROR, 2 INFO, 3 DEBUG")
    parser.add_argument("--log-file", default=None, help="also write the log to this file (rotated per run)")
    parser.add_argument("--log-format", choices=logsetup.FORMATS, default="text",
                        help="text (default) or json: one JSON object per line, on stderr and in the log file")
    parser.add_argument("--verbose", "-v", action="store_true", help="show INFO lines on stderr too")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == selected:
            # Only the chosen subcommand's module is imported: `receive` in a
            # rescue system must not need the controller's dependencies.
            target = load_subcommand(name)
            target.add_arguments(p)
            p.set_defaults(_run=target.run)
    return parser


def load_subcommand(name: str) -> Any:
    """The module (or "module:attribute" object) that has add_arguments() and run() for ``name``."""
    mod_name, _, attr = SUBCOMMANDS[name][0].partition(":")
    mod = importlib.import_module(mod_name)
    return getattr(mod, attr) if attr else mod


def _selected_command(argv: list[str]) -> str | None:
    return next((a for a in argv if a in SUBCOMMANDS), None)


#: Options of the top-level parser (with whether they take a value): everything else is migrate's.
_GLOBAL_OPTIONS = {"--debug": False, "--verbose": False, "-v": False, "--log-format": True}


def go2tencentcloud_argv(argv: list[str]) -> list[str]:
    """``cvmigrate [--check|--clean|--no-console|...]`` without a subcommand means ``cvmigrate migrate ...``.

    Why: go2tencentcloud is run bare (``./go2tencentcloud_x64``, ``--check``,
    ``--clean``); an operator's habits and scripts keep working.  ``--help``
    and ``--version`` alone still describe cvmigrate itself.
    """
    if _selected_command(argv) is not None or any(a in ("-h", "--help", "--version") for a in argv):
        return argv
    head: list[str] = []
    rest: list[str] = []
    it = iter(argv)
    for a in it:
        name = a.split("=", 1)[0]
        if name in _GLOBAL_OPTIONS:
            head.append(a)
            if _GLOBAL_OPTIONS[name] and "=" not in a:
                head.append(next(it, ""))
        else:
            rest.append(a)
    return [*head, "migrate", *rest]


def _stdout_gone() -> int:
    """stdout's reader went away (``cvmigrate status --json | head``): leave quietly, as a SIGPIPE'd tool does."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return 141


def main(argv: list[str] | None = None) -> int:
    argv = go2tencentcloud_argv(sys.argv[1:] if argv is None else list(argv))
    # grpc's C core prints handshake details straight to stderr; our one line names the cause instead.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    command = "?"
    debug = "--debug" in argv
    try:
        parser = build_parser(_selected_command(argv))
        args = parser.parse_args(argv)
        if not getattr(args, "_run", None):
            parser.print_help(sys.stderr)
            return 2
        command, debug = args.command, args.debug
        quiet = command not in SERVERS and not args.verbose and args.log_level != 3
        logsetup.defaults.update(stderr_level=logging.WARNING if quiet else None, fmt=args.log_format)
        logsetup.configure(args.log_level, args.log_file, debug=args.debug)
        run: Callable[[argparse.Namespace], int] = args._run
        code = int(run(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, inside the handlers below, not at interpreter exit
        return code
    except CvmError as exc:
        if debug:
            logger.exception("failed")
        print(f"cvmigrate {command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"cvmigrate {command}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _stdout_gone()
    except OSError as exc:
        if exc.errno == errno.EPIPE:
            return _stdout_gone()
        return _unexpected(command, exc, debug)
    except Exception as exc:  # noqa: BLE001 - the one place every other failure becomes one line
        return _unexpected(command, exc, debug)


def _unexpected(command: str, exc: BaseException, debug: bool) -> int:
    if debug:
        logger.exception("unexpected failure")
    text = str(exc).splitlines()[0] if str(exc) else ""
    print(f"cvmigrate {command}: error: unexpected {type(exc).__name__}{': ' + text if text else ''}; "
          "run it again with --debug for the traceback, and report it", file=sys.stderr)
    return 1
