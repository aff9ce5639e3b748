"""``cvmigrate emulator``: run the Tencent Cloud API emulator as a process.

Why a subcommand: end-to-end tests and the no-account demo need the emulator
as a real process (killed, restarted with ``--state``), reachable by any
cvmigrate process through ``--api-endpoint``.  It binds port 0 unless told
otherwise and writes the port it got to ``--port-file`` (atomically, so a
reader never sees a partial number).  It serves until SIGTERM or SIGINT.
"""
from __future__ import annotations

import argparse
import json
import logging
import signal
import threading
from pathlib import Path
from typing import Any

from cvmigrate.common.errors import ConfigError

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", default="127.0.0.1:0", metavar="HOST:PORT",
                        help="address to serve on; port 0 picks a free port (default 127.0.0.1:0)")
    parser.add_argument("--port-file", type=Path, default=None, metavar="FILE",
                        help="write the bound port number to FILE once listening")
    parser.add_argument("--state", type=Path, default=None, metavar="FILE",
                        help="persist instances, MSP tasks and the call log to FILE (JSON) and resume from it")
    parser.add_argument("--config", type=Path, default=None, metavar="FILE",
                        help="emulator model as JSON: keys, instances, delays, faults "
                             "(default: one RUNNING Linux instance)")
    parser.add_argument("--enter-delay", type=float, default=None, metavar="SECONDS",
                        help="seconds an instance stays in ENTER_RESCUE_MODE")
    parser.add_argument("--exit-delay", type=float, default=None, metavar="SECONDS",
                        help="seconds an instance stays in EXIT_RESCUE_MODE")


def parse_listen(value: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[v6]:PORT`` for IPv6)."""
    from cvmigrate.common.netaddr import parse_hostport

    hp = parse_hostport(value, "--listen", listen=True)
    return hp.host or "127.0.0.1", hp.port


def load_config(path: Path | None) -> dict[str, Any]:
    from cvmigrate.controller.emulator.state import default_config

    if path is None:
        return default_config()
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"--config {path}: cannot read: {exc.strerror}") from exc
    except ValueError as exc:
        raise ConfigError(f"--config {path}: not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise ConfigError(f"--config {path}: the top level must be a JSON object")
    return config


def _write_port_file(path: Path, port: int) -> None:
    from cvmigrate.common.durable import write_file

    write_file(path, f"{port}\n")


def run(args: argparse.Namespace) -> int:
    from cvmigrate.controller.emulator.server import EmulatorHandle, create_server

    host, port = parse_listen(args.listen)
    config = load_config(args.config)
    delays = dict(config.get("delays", {}))
    if args.enter_delay is not None:
        delays["enter_rescue"] = args.enter_delay
    if args.exit_delay is not None:
        delays["exit_rescue"] = args.exit_delay
    config["delays"] = delays
    try:
        server = create_server(config, host=host, port=port, state_file=args.state)
    except ValueError as exc:
        raise ConfigError(f"emulator model: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"--listen {args.listen}: cannot bind: {exc.strerror}") from exc

    stop = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        logger.info("emulator: signal %d, stopping", signum)
        stop.set()

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="tc-emulator",
                              daemon=True)
    thread.start()
    handle = EmulatorHandle(server, thread)
    try:
        if args.port_file:
            _write_port_file(args.port_file, handle.port)
        logger.info("Tencent Cloud API emulator listening on %s (SecretIds: %s)", handle.endpoint,
                    ", ".join(server.state.secret_ids))
        while not stop.wait(0.5):
            pass
    finally:
        handle.stop()
        for sig, old in previous.items():
            signal.signal(sig, old)
        logger.info("emulator stopped; %d calls logged", len(handle.calls()))
    return 0
