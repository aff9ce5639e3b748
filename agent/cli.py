"""`cvmigrate push`: one pass of a source tree to a receiver."""
from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from cvmigrate.common.errors import CvmError, UsageError
from cvmigrate.common.netaddr import parse_hostport
from cvmigrate.common.units import human_bytes
from cvmigrate.security_flags import add_security_arguments, security_from_args
from cvmigrate.transfer_flags import add_streams_argument, streams_from_args

if TYPE_CHECKING:
    from cvmigrate.common.excludes import ExcludeRules

logger = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="SOURCE_DIR", nargs="?", help="the source root, e.g. / (not with --block)")
    p.add_argument("--block", metavar="SOURCE_DEVICE_OR_IMAGE", help="push this disk or image block by block instead")
    p.add_argument("--target-device", metavar="DEVICE_OR_IMAGE", help="with --block: the receiver's disk to write")
    p.add_argument("--to", required=True, metavar="HOST:PORT", help="the receiver's address")
    p.add_argument("--exclude-from", action="append", default=[], metavar="FILE",
                   help="rsync-syntax exclude file (repeatable); its rules come before the defaults")
    p.add_argument("--exclude", action="append", default=[], metavar="PATTERN", help="one exclude rule (repeatable)")
    p.add_argument("--no-default-excludes", action="store_true",
                   help="do not apply go2tencentcloud's default excludes and the pseudo filesystems")
    p.add_argument("--no-delete", action="store_true", help="keep target entries that are not on the source")
    p.add_argument("--checksum", action="store_true", help="compare content even when size and mtime match")
    p.add_argument("--mount", action="append", default=[], metavar="PATH",
                   help="also enter this mount point below the source (repeatable); others are not crossed")
    p.add_argument("--workers", type=int, default=2, help="compression threads (default 2)")
    add_streams_argument(p, "split the pass over N parallel streams",
                         "what both sides' cores allow (half on loopback)")
    p.add_argument("--compress-level", type=int, default=None,
                   help="zstd level; 0 = no compression (default: adapt to the link, none on loopback)")
    add_security_arguments(p, "client")
    from cvmigrate.agent.block_cli import add_arguments as add_block_arguments
    add_block_arguments(p)
    p.add_argument("--bwlimit", type=int, default=None, metavar="KBPS",
                   help="limit the data stream to KBPS kilobytes/s on the wire (Client.Rsync.BandwidthLimit)")
    p.add_argument("--proxy", metavar="URL", default=os.environ.get("CVMIGRATE_PROXY"),
                   help="send the data stream through this HTTP CONNECT proxy, http://[user:pass@]host:port "
                        "(client.json Net.Mode 3; prefer the CVMIGRATE_PROXY environment variable for a "
                        "password: the command line is visible to other users)")
    p.add_argument("--retry-for", type=float, default=600.0, metavar="SECONDS",
                   help="keep reconnecting and resuming after a link lost mid-session for this long (default 600); "
                        "a receiver that never answered fails at once with the cause")
    p.add_argument("--json", action="store_true",
                   help="print a JSON object on stdout at the end: the summary, or {error, exit_code} on failure")


def build_rules(args: argparse.Namespace) -> ExcludeRules | None:
    """The exclude rules of the command line and the defaults; None when there are none (nothing to match)."""
    from cvmigrate.common.excludes import DEFAULT_EXCLUDE_LINES, ExcludeRules

    rules = ExcludeRules.parse(args.exclude, origin="--exclude")
    for path in args.exclude_from:
        rules = rules + ExcludeRules.from_file(path)
    if not args.no_default_excludes:
        rules = rules + ExcludeRules.parse(DEFAULT_EXCLUDE_LINES + own_installation(args.source),
                                           origin="default excludes")
    return rules if rules else None


def own_installation(source: str) -> tuple[str, ...]:
    """An exclude line for the virtualenv cvmigrate runs from, when it lies inside the source.

    Like go2tencentcloud, which never migrates its own directory: the target
    gets the server, not the migration tool.
    """
    import sys

    if sys.prefix == sys.base_prefix:
        return ()  # installed into the system Python: nothing of its own to leave out
    src, venv = os.path.realpath(source), os.path.realpath(sys.prefix)
    if venv == src or not venv.startswith(src.rstrip("/") + "/"):
        return ()
    rel = os.path.relpath(venv, src)
    from cvmigrate.common.excludes import escape_literal

    return ("/" + escape_literal(rel) + "/",)


def mount_inside(source: str, mount: str) -> bytes:
    """``--mount PATH`` as the walk needs it: relative to SOURCE_DIR; a path outside it is refused, never skipped."""
    path = os.path.abspath(mount)
    rel = os.path.relpath(path, source)
    if rel == "." or rel == ".." or rel.startswith("../"):
        hint = os.path.join(source, mount.lstrip("/")) if os.path.isabs(mount) else ""
        raise UsageError(f"--mount {mount!r} is not inside SOURCE_DIR {source}; give the mount point's path inside "
                         f"it" + (f" (e.g. --mount {hint})" if hint else ""))
    if not os.path.isdir(path):
        raise UsageError(f"--mount {mount!r}: {path} is not a directory")
    return os.fsencode(rel)


def quiet_collector() -> None:
    """Keep Python's cyclic garbage collector out of a pass's way (this process runs nothing else).

    A pass allocates several objects per entry, none of them in a reference cycle, and keeps up to
    ``max_pending_entries`` of them alive: with the default thresholds the collector re-scans that
    backlog over and over (about 5 % of the agent's CPU in a no-change pass).  What was imported so
    far is frozen out of its view, and it runs a hundred times less often; cycles are still collected.
    """
    gc.freeze()
    gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(max(gen0, 70_000), gen1, gen2)


def run(args: argparse.Namespace) -> int:
    """Push, and with --json say how it ended on stdout whatever happened (stderr keeps its one line)."""
    try:
        return _run(args)
    except CvmError as exc:
        if args.json:
            print_json({"error": str(exc), "exit_code": exc.exit_code, "error_type": type(exc).__name__})
        raise


def print_json(obj: dict[str, Any]) -> None:
    """``--json``: one JSON object on one line of stdout, flushed (a controller reads it as the pass ends)."""
    json.dump(obj, sys.stdout)
    sys.stdout.write("\n")
    sys.stdout.flush()


def print_summary(as_json: bool, summary: dict[str, Any], line: str) -> None:
    """The end of a pass (file or block): the ``--json`` object, or one line for a person."""
    if as_json:
        print_json(summary)
    else:
        print(line, flush=True)


class LiveProgress:
    """The live progress line of `push` on a terminal (rich, on stderr): files, bytes read and sent, rate.

    Why optional: rich is the controller's dependency; a push from a minimal
    install (the agent's light dependencies) simply shows no live line.
    """

    def __init__(self, live: Any, address: str) -> None:
        self._live, self._address = live, address
        self._session: Any = None
        self._done_read = self._done_sent = 0
        self._t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cvm-progress", daemon=True)
        self._thread.start()

    @classmethod
    def start(cls, address: str) -> LiveProgress | None:
        try:
            from rich.console import Console
            from rich.live import Live
        except ImportError:
            return None
        live = Live(console=Console(stderr=True), refresh_per_second=4, transient=True)
        live.start()
        return cls(live, address)

    def follow(self, session: Any) -> None:
        """push()'s on_session: a reconnect starts a new session; the totals carry over."""
        old = self._session
        if old is not None:
            self._done_read += old.result.bytes_read
            self._done_sent += old.result.bytes_sent
        self._session = session

    def line(self) -> str:
        s = self._session
        read = self._done_read + (s.result.bytes_read if s else 0)
        sent = self._done_sent + (s.result.bytes_sent if s else 0)
        files = s.scanner.stats.files if s else 0
        scanned = s.scanner.stats.bytes_total if s else 0
        secs = max(0.001, time.monotonic() - self._t0)
        return (f"push -> {self._address}: {files} files ({human_bytes(scanned)}) scanned, {human_bytes(read)} read, "
                f"{human_bytes(sent)} sent, {human_bytes(read / secs)}/s, {secs:.0f}s")

    def _loop(self) -> None:
        from rich.text import Text

        while not self._stop.wait(0.25):
            self._live.update(Text(self.line()))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._live.stop()


def _run(args: argparse.Namespace) -> int:
    from cvmigrate.agent.push import PushOptions, check_complete, push
    from cvmigrate.common.rpc import channel_options

    if getattr(args, "block", None) or getattr(args, "target_device", None):
        if args.source or not args.block:
            raise UsageError("give either SOURCE_DIR (file-level) or --block SOURCE --target-device TARGET, not both")
        from cvmigrate.agent.block_cli import run as run_block
        return run_block(args)
    if not args.source:
        raise UsageError("give SOURCE_DIR to push a tree, or --block SOURCE_DEVICE_OR_IMAGE to push a disk")
    if not os.path.isdir(args.source):
        raise UsageError(f"source {args.source!r} is not a directory")
    streams = streams_from_args(args)
    address = str(parse_hostport(args.to, "--to"))
    security = security_from_args(args, "client")  # UsageError with the fix; warns on --insecure
    source = os.path.abspath(args.source)
    mounts = tuple(mount_inside(source, m) for m in args.mount)
    opts = PushOptions(source=source, address=address, rules=build_rules(args), delete=not args.no_delete,
                       checksum=args.checksum, workers=max(1, args.workers), compress_level=args.compress_level,
                       include_mounts=mounts, channel_factory=security.channel_factory(channel_options(args.proxy)),
                       metadata=security.metadata(), bwlimit_kbps=args.bwlimit, transport=security.transport,
                       probe=security.probe(), streams=streams)
    progress = LiveProgress.start(args.to) if not args.json and sys.stderr.isatty() else None
    quiet_collector()
    try:
        result = push(opts, retry_for=args.retry_for, on_session=progress.follow if progress else None)
    finally:
        if progress is not None:
            progress.stop()
    print_summary(args.json, result.as_json(),
                  f"pushed {result.files} files, {result.dirs} dirs: {result.bytes_total} bytes of content, "
                  f"{result.bytes_sent} bytes sent, {result.bytes_reused} reused, {result.deleted} deleted in "
                  f"{result.seconds:.1f}s")
    check_complete(result)
    return 0
