"""Receiver worker processes: several gRPC servers on one port (SO_REUSEPORT), one per core.

Why processes: the GIL caps one process at one core, and a parallel pass
(receiver/shards.py) is only parallel if its streams are served by different
processes.  Why one port: the firewall and security-group story stays one
rule; the kernel spreads new connections over the listening sockets by a hash
of their addresses, so each stream of a pass (its own TCP connection) lands on
some worker.  That hash alone puts two streams on one worker far too often (2
streams on 2 workers: every other pass; 8 on 8: about 5.3 distinct workers),
and Python's gRPC cannot take a connection handed over from another process.
So placement is settled at admission: each worker enlists in the shared pass
gate once it listens, and a stream that reaches a worker already serving
another stream of its pass while an enlisted live worker serves none is
refused before any data (receiver/shards.py, ``Misplaced``); the agent opens
it again on a new connection, which the kernel hashes anew.  After
PLACE_ANYWHERE attempts a stream is served where it lands; with more streams
than workers, some worker serves several (as threads: correct, less parallel).

Fork safety: gRPC's core must not exist in a process that forks.  The
supervisor creates no gRPC object at all -- it reserves the port with a plain
socket, makes the shared pass gate, and forks the workers; each worker builds
its own credentials and server.  Workers die with the supervisor
(PR_SET_PDEATHSIG), and one that dies is started again.
"""
from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

logger = logging.getLogger(__name__)

READY_TIMEOUT = 60.0
_PR_SET_PDEATHSIG = 1


@contextlib.contextmanager
def reserve_port(host: str, port: int) -> Iterator[int]:
    """Hold ``host:port`` (port 0: a free one) with SO_REUSEPORT, not listening, so that only sockets of this
    user with SO_REUSEPORT -- the workers' gRPC servers -- can bind it; yields the port."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, addr = infos[0]
    if port:
        # a busy port is refused, as a single-process receiver refuses it: bound once without SO_REUSEPORT,
        # which fails against any socket on it (another receiver's workers or reservation included)
        # (SO_REUSEADDR as gRPC's own listeners: connections of an earlier receiver in TIME_WAIT do not count)
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(addr)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(addr)
        yield sock.getsockname()[1]
    finally:
        sock.close()


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _worker(index: int, serve: Callable[[], Any], ready: Any, enlist: Callable[[int], None] | None) -> None:
    """A worker process: start its server, enlist (it listens: streams may be sent its way), say so, serve
    until SIGTERM."""
    _die_with_parent()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        handle = serve()
        if enlist is not None:
            enlist(index)
    except BaseException as exc:  # noqa: BLE001 - reported to the supervisor, which says it once
        ready.put((index, f"{type(exc).__name__}: {exc}"))
        return
    ready.put((index, ""))
    stop.wait()
    handle.stop(grace=5.0)


class WorkerPool:
    """``count`` worker processes, each running ``serve()`` (which binds the shared port and starts serving),
    then ``enlist(index)`` (PassGate.enlist: the roster placement reads)."""

    def __init__(self, count: int, serve: Callable[[], Any], enlist: Callable[[int], None] | None = None) -> None:
        self.count = count
        self._serve = serve
        self._enlist = enlist
        self._ctx = multiprocessing.get_context("fork")
        self._ready = self._ctx.SimpleQueue()
        self.procs: list[Any] = [None] * count

    def start(self) -> None:
        """Fork every worker and wait until each listens; raise the first worker's failure."""
        for i in range(self.count):
            self._spawn(i)
        try:
            self._await_ready(set(range(self.count)))
        except BaseException:
            self.stop()
            raise

    def _spawn(self, i: int) -> None:
        p = self._ctx.Process(target=_worker, args=(i, self._serve, self._ready, self._enlist), name=f"cvm-worker-{i}",
                              daemon=True)
        p.start()
        self.procs[i] = p

    def _await_ready(self, waiting: set[int]) -> None:
        from cvmigrate.common.errors import CvmError

        deadline = time.monotonic() + READY_TIMEOUT
        while waiting:
            if time.monotonic() > deadline:
                raise CvmError(f"receiver worker(s) {sorted(waiting)} did not start within {READY_TIMEOUT:.0f}s")
            if self._ready.empty():
                for i in list(waiting):
                    if not self.procs[i].is_alive():
                        raise CvmError(f"receiver worker {i} exited at start (code {self.procs[i].exitcode})")
                time.sleep(0.05)
                continue
            i, error = self._ready.get()
            if error:
                raise CvmError(f"receiver worker {i} could not start: {error}")
            waiting.discard(i)

    def watch(self, stop: threading.Event) -> None:
        """Until ``stop``: start again any worker that died (a worker killed mid-pass frees its shards)."""
        while not stop.wait(1.0):
            for i, p in enumerate(self.procs):
                if not p.is_alive():
                    logger.warning("receiver worker %d (pid %d) exited with %s; starting it again", i, p.pid,
                                   p.exitcode)
                    p.join(0)
                    self._spawn(i)
                    try:
                        self._await_ready({i})
                    except Exception as exc:  # noqa: BLE001 - keep serving with the others
                        logger.error("%s", exc)

    def stop(self) -> None:
        for p in self.procs:
            if p is not None and p.is_alive():
                os.kill(p.pid, signal.SIGTERM)
        for p in self.procs:
            if p is not None:
                p.join(10)
                if p.is_alive():
                    p.kill()
                    p.join()
