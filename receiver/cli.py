"""`cvmigrate receive`: serve a target root until SIGTERM/SIGINT."""
from __future__ import annotations

import argparse
import logging
import signal
import threading
from typing import TYPE_CHECKING

from cvmigrate.common.durable import write_file
from cvmigrate.common.errors import CvmError, UsageError
from cvmigrate.common.netaddr import HostPort, format_hostport, parse_hostport
from cvmigrate.common.rpc import serve_until_signalled
from cvmigrate.common.shards import MAX_STREAMS, usable_cores
from cvmigrate.common.tls import TransportSecurity
from cvmigrate.receiver.session import ReceiverConfig
from cvmigrate.security_flags import add_security_arguments, security_from_args

if TYPE_CHECKING:
    from cvmigrate.receiver.shards import PassGate

logger = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--listen", default="0.0.0.0:0", metavar="HOST:PORT",
                   help="address to serve on (port 0 picks a free port; see --port-file)")
    p.add_argument("--root", required=True, help="the target root directory (the mounted target disk)")
    p.add_argument("--port-file", help="write the bound port number here once listening")
    p.add_argument("--state-dir", help="journal location (default ROOT/.cvmigrate)")
    p.add_argument("--no-delete", action="store_true", help="never delete target entries missing on the source")
    p.add_argument("--disk-plan", metavar="FILE",
                   help="the controller's disk plan: match the target's disks, show the plan, and (once "
                        "confirmed) partition blank data disks and mount everything under ROOT before serving")
    p.add_argument("--yes", action="store_true", help="do not ask before applying --disk-plan")
    p.add_argument("--finalize", action="store_true",
                   help="end the migration: remove the journal and partial files from ROOT, then exit")
    p.add_argument("--block-target", action="append", default=[], metavar="DEVICE",
                   help="a disk or image file block-level pushes may write (repeatable; no other is ever written)")
    p.add_argument("--metrics-listen", metavar="HOST:PORT",
                   help="serve Prometheus /metrics here (bytes, files, chunks verified, retries, open sessions); "
                        "counts one process: implies --workers 1 unless --workers is given")
    p.add_argument("--workers", type=int, default=0, metavar="N",
                   help="worker processes serving the port (a parallel pass's streams spread over them); "
                        "default: the usable cores, at most 8; 1 = serve in this process")
    add_security_arguments(p, "server")


def raise_nofile_limit() -> None:
    """Raise the soft RLIMIT_NOFILE to the hard limit: a pass over many changed files opens many at once
    (the session still keeps to a budget of a quarter of it, see receiver.session.fd_budget)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            logger.warning("cannot raise the open-file limit from %d to %d: %s", soft, hard, exc)


def run(args: argparse.Namespace) -> int:
    if args.finalize:
        from cvmigrate.receiver.finalize import finalize

        done = finalize(args.root, args.state_dir)
        print(f"finalized {args.root}: {'journal removed' if done.state_removed else 'no journal'}, "
              f"{done.temporary_files_removed} temporary file(s) removed")
        return 0
    from cvmigrate.receiver.server import create_server
    from cvmigrate.receiver.shards import MAX_WORKERS

    listen = parse_hostport(args.listen, "--listen", listen=True)
    security = security_from_args(args, "server")  # UsageError with the fix; warns on --insecure
    raise_nofile_limit()
    if args.disk_plan:
        from cvmigrate.receiver.diskplan_cli import apply_disk_plan

        apply_disk_plan(args.disk_plan, args.root, yes=args.yes)  # mounts stay for the transfer and fix-ups
    cfg = ReceiverConfig(root=args.root, state_dir=args.state_dir, delete=not args.no_delete)
    workers = args.workers or (1 if args.metrics_listen else min(usable_cores(), MAX_STREAMS))
    if not 1 <= workers <= MAX_WORKERS:
        raise UsageError(f"--workers {args.workers}: give 1 to {MAX_WORKERS}")
    if workers > 1:
        gates = _shared_gates()
        if gates is not None:
            return _run_workers(args, cfg, listen, security, workers, gates)
    handle = create_server(cfg, str(listen), credentials=security.server_credentials(),
                           interceptors=security.interceptors(), block_targets=tuple(args.block_target))
    logger.info("receiver listening on %s (%s), root %s", format_hostport(listen.host, handle.port),
                security.describe(), args.root)
    if args.metrics_listen:
        from cvmigrate.common import metrics

        logger.info("metrics on http://%s:%d/metrics", args.metrics_listen.rsplit(":", 1)[0],
                    metrics.serve(args.metrics_listen, "receiver"))
    serve_until_signalled(handle.stop, port=handle.port, port_file=args.port_file)
    return 0


def _shared_gates() -> tuple[PassGate, PassGate] | None:
    """The pass gate and the block gate shared by worker processes (one pass, one block session at a time),
    or None where this system cannot share them (no /dev/shm): the receiver then serves from one process."""
    from cvmigrate.receiver.shards import PassGate

    try:
        return PassGate(shared=True), PassGate(shared=True)
    except OSError as exc:
        logger.warning("serving from one process: worker processes need shared memory, which this system "
                       "does not offer (%s; is /dev/shm mounted?)", exc.strerror or exc)
        return None


def _run_workers(args: argparse.Namespace, cfg: ReceiverConfig, listen: HostPort, security: TransportSecurity,
                 workers: int, gates: tuple[PassGate, PassGate]) -> int:
    """Serve with ``workers`` processes on one port (receiver/workers.py); no gRPC object exists here."""
    from cvmigrate.receiver.server import create_server
    from cvmigrate.receiver.workers import WorkerPool, reserve_port

    gate, block_gate = gates
    try:
        reserved = reserve_port(listen.host, listen.port)
        port = reserved.__enter__()
    except OSError as exc:
        raise CvmError(f"cannot listen on {listen}: {exc.strerror or exc}; the address is in use or not local "
                       "to this host") from None
    try:
        address = format_hostport(listen.host, port)

        def serve() -> object:
            return create_server(cfg, address, credentials=security.server_credentials(),
                                 interceptors=security.interceptors(), block_targets=tuple(args.block_target),
                                 gate=gate, block_gate=block_gate, reuse_port=True)

        pool = WorkerPool(workers, serve, enlist=gate.enlist)
        pool.start()
        logger.info("receiver listening on %s (%s), root %s, %d worker processes", address, security.describe(),
                    args.root, workers)
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):   # before the port file: see common.rpc.serve_until_signalled
            signal.signal(sig, lambda *_: stop.set())
        if args.port_file:
            write_file(args.port_file, f"{port}\n")
        pool.watch(stop)
        logger.info("shutting down")
        pool.stop()
    finally:
        reserved.__exit__(None, None, None)
    return 0
