"""The ``cvmigrate`` command: one entry point, subcommands, one error mapping.

Why one ``main()``: every CvmError (and Ctrl-C) becomes exactly one line on
stderr -- what failed, why, what to do -- and a distinct exit code; ``--debug``
adds the traceback.  Subcommand modules are imported lazily so that the
receiver in a rescue system never needs the controller's dependencies.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Any, Callable

from cvmigrate import __version__
from cvmigrate.common import logsetup
from cvmigrate.common.errors import CvmError

logger = logging.getLogger(__name__)

#: name -> (module path, help); the module (or "module:attribute") has add_arguments(parser) and run(args) -> int
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "receive": ("cvmigrate.receiver.cli", "serve a target root (run inside the target's rescue system)"),
    "push": ("cvmigrate.agent.cli", "push a source tree to a receiver"),
    "agent": ("cvmigrate.agent.daemon", "run the agent as a daemon the controller drives over gRPC"),
    "demo": ("cvmigrate.controller.demo", "run a complete sample migration locally (no cloud account needed)"),
    "emulator": ("cvmigrate.controller.emulator.cli", "run the Tencent Cloud API emulator (tests, demo)"),
    "check": ("cvmigrate.controller.checks", "pre-checks of the source and the target (go2tencentcloud --check)"),
    "migrate": ("cvmigrate.controller.migrate", "migrate this server to a CVM (go2tencentcloud's --check/--clean are migrate flags)"),
    "status": ("cvmigrate.controller.migrate:status", "show a migration's stages, sub-tasks and transfer progress"),
    "bwlimit": ("cvmigrate.controller.migrate:bwlimit", "change a running migration's bandwidth limit (KB/s)"),
    "clean": ("cvmigrate.controller.migrate:clean", "force the target out of rescue mode and delete the migration state"),
    "fleet": ("cvmigrate.controller.fleet", "many migrations from one admin box: run a plan, its status, a demo"),
    "console": ("cvmigrate.controller.console", "the fleet's web console and Prometheus /metrics"),
}


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cvmigrate", description="Online server migration to Tencent Cloud CVM.")
    parser.add_argument("--version", action="version", version=f"cvmigrate {__version__}")
    parser.add_argument("--log-level", type=int, choices=(1, 2, 3), default=2, help="1 ERROR, 2 INFO, 3 DEBUG")
    parser.add_argument("--log-file", default=None, help="also write the log to this file")
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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_selected_command(argv))
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help(sys.stderr)
        return 2
    logsetup.configure(args.log_level, args.log_file, debug=args.debug)
    run: Callable[[argparse.Namespace], int] = args._run
    try:
        return int(run(args) or 0)
    except CvmError as exc:
        if args.debug:
            logger.exception("failed")
        print(f"cvmigrate {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"cvmigrate {args.command}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
