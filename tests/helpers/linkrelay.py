"""A user-space link with delay and random loss (this kernel has no netem).

The relay opens one TUN device in each of two network namespaces (``setns``
into the namespace, ``open('/dev/net/tun')`` + ``TUNSETIFF``, back to its own
namespace) and forwards IP packets between them:

    ns A: tunA  --read-->  [queue A->B: due = t + delay]  --write-->  tunB  :ns B
    ns B: tunB  --read-->  [queue B->A: due = t + delay]  --write-->  tunA  :ns A

* a fixed one-way delay (``--delay-ms 10`` gives a 20 ms RTT); the delay is
  the same for every packet, so each direction is a FIFO and order is kept;
* seeded random loss per packet and direction (``--loss 0.005`` = 0.5 %),
  reproducible with ``--seed``;
* a bounded queue per direction (``--queue-packets``; tail drop when full,
  counted separately from the random loss).

The devices are not persistent: they disappear when the relay exits, so a
killed relay leaves nothing behind. Addresses and qdiscs (``tbf`` for a rate
limit) are configured by the caller (``tests.helpers.netns.NetLab``) once
``--ready-file`` exists. The relay writes counters as JSON to
``--stats-file`` every second and on SIGTERM/SIGINT: packets and bytes per
direction, random drops, queue drops, and how late packets left compared with
their due time (mean and max, in ms) -- the delay accuracy.

Run it as ``python -m tests.helpers.linkrelay --ns-a NS --dev-a NAME --ns-b NS
--dev-b NAME [--delay-ms 10] [--loss 0.005] [--seed 1] --ready-file F``.
It needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN for setns).

Single-threaded: one epoll loop, non-blocking reads drained in batches.
Packets are whole IP packets of at most the TUN MTU (the TUN device offers no
segmentation offloads, so the kernel segments before the relay sees them).
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import errno
import fcntl
import json
import os
import random
import select
import signal
import struct
import sys
import time
from pathlib import Path

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
CLONE_NEWNET = 0x40000000
#: Reads per device per loop turn (bounds latency of the other direction).
BATCH = 64
#: A packet due within this many seconds is sent now. epoll's timeout has
#: millisecond resolution, so the loop sleeps whole milliseconds (rounded
#: down, waking early rather than late) and this tolerance splits the error
#: evenly around the due time.
EARLY = 0.0005
#: Upper bounds (ms) of the lateness histogram buckets; the last bucket is "more".
LATE_BUCKETS_MS = (0.5, 1.0, 2.0, 5.0, 20.0)

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"setns: {os.strerror(e)}")


def open_tun(netns: str, name: str) -> int:
    """Create TUN device ``name`` inside namespace ``netns``; returns its fd (non-blocking)."""
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
            ifr = struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI)
            fcntl.ioctl(fd, TUNSETIFF, ifr)
        finally:
            _setns(own)
    finally:
        os.close(own)
        os.close(target)
    return fd


class Direction:
    """One direction of the link: a FIFO of (due, packet) plus counters."""

    def __init__(self, name: str, src_fd: int, dst_fd: int, delay: float, loss: float,
                 rng: random.Random, limit: int) -> None:
        self.name, self.src, self.dst = name, src_fd, dst_fd
        self.delay, self.loss, self.rng, self.limit = delay, loss, rng, limit
        self.q: collections.deque[tuple[float, bytes]] = collections.deque()
        self.rx_packets = self.rx_bytes = 0
        self.tx_packets = self.tx_bytes = 0
        self.lost = self.queue_drops = self.write_errors = 0
        self.late_sum = 0.0
        self.late_max = 0.0
        self.late_hist = [0] * (len(LATE_BUCKETS_MS) + 1)
        self.max_queue = 0

    def pull(self, now: float) -> int:
        """Read up to BATCH packets from the source device into the queue."""
        n = 0
        read = os.read
        while n < BATCH:
            try:
                pkt = read(self.src, 65536)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno in (errno.EAGAIN, errno.EINTR):
                    break
                if e.errno in (errno.EBADFD, errno.EIO):   # device went away/down
                    break
                raise
            n += 1
            self.rx_packets += 1
            self.rx_bytes += len(pkt)
            if self.loss and self.rng.random() < self.loss:
                self.lost += 1
                continue
            if len(self.q) >= self.limit:
                self.queue_drops += 1
                continue
            self.q.append((now + self.delay, pkt))
        if len(self.q) > self.max_queue:
            self.max_queue = len(self.q)
        return n

    def push(self, now: float) -> None:
        """Write every packet that is due."""
        q = self.q
        write = os.write
        limit = now + EARLY
        while q and q[0][0] <= limit:
            due, pkt = q.popleft()
            try:
                write(self.dst, pkt)
            except OSError:
                # device down (a cut link) or its queue full: the packet is lost
                self.write_errors += 1
                continue
            late = now - due            # negative: up to EARLY early
            self.late_sum += late
            if late > self.late_max:
                self.late_max = late
            ms = late * 1000.0
            for i, bound in enumerate(LATE_BUCKETS_MS):
                if ms <= bound:
                    self.late_hist[i] += 1
                    break
            else:
                self.late_hist[-1] += 1
            self.tx_packets += 1
            self.tx_bytes += len(pkt)

    def stats(self) -> dict:
        return {
            "rx_packets": self.rx_packets, "rx_bytes": self.rx_bytes,
            "tx_packets": self.tx_packets, "tx_bytes": self.tx_bytes,
            "lost_random": self.lost, "queue_drops": self.queue_drops,
            "write_errors": self.write_errors, "max_queue": self.max_queue,
            "late_mean_ms": round(1000 * self.late_sum / self.tx_packets, 3) if self.tx_packets else 0.0,
            "late_max_ms": round(1000 * self.late_max, 3),
            "late_hist_ms": {**{f"<={b:g}": n for b, n in zip(LATE_BUCKETS_MS, self.late_hist, strict=False)},
                             f">{LATE_BUCKETS_MS[-1]:g}": self.late_hist[-1]},
        }


def serve(args: argparse.Namespace) -> int:
    # The "network" must not starve behind the hosts it connects: on a busy
    # 2-CPU box, with normal priority, 2 % of packets left > 20 ms late (max
    # ~200 ms); with SCHED_FIFO (priority 1) the worst was ~11 ms.  The loop
    # sleeps in epoll, and the kernel's RT throttling bounds it anyway.
    if args.realtime:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
        except (OSError, AttributeError):
            args.realtime = False
    if not args.realtime and args.nice:
        try:
            os.nice(args.nice)
        except OSError:
            pass
    fd_a = open_tun(args.ns_a, args.dev_a)
    fd_b = open_tun(args.ns_b, args.dev_b)
    rng = random.Random(args.seed)
    delay = args.delay_ms / 1000.0
    ab = Direction("a_to_b", fd_a, fd_b, delay, args.loss, random.Random(rng.random()), args.queue_packets)
    ba = Direction("b_to_a", fd_b, fd_a, delay, args.loss, random.Random(rng.random()), args.queue_packets)
    by_fd = {fd_a: ab, fd_b: ba}

    stop = False

    def on_signal(_sig: int, _frm: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    started = time.monotonic()

    def write_stats() -> None:
        if not args.stats_file:
            return
        data = {"delay_ms": args.delay_ms, "loss": args.loss, "seed": args.seed,
                "realtime": args.realtime,
                "seconds": round(time.monotonic() - started, 3),
                "a_to_b": ab.stats(), "b_to_a": ba.stats()}
        tmp = f"{args.stats_file}.tmp"
        with open(tmp, "w") as f:
            json.dump(data, f)
        os.replace(tmp, args.stats_file)

    ep = select.epoll()
    ep.register(fd_a, select.EPOLLIN)
    ep.register(fd_b, select.EPOLLIN)
    if args.ready_file:
        tmp = f"{args.ready_file}.tmp"
        Path(tmp).write_text(f"{os.getpid()}\n")
        os.replace(tmp, args.ready_file)

    next_stats = time.monotonic() + 1.0
    mono = time.monotonic
    while not stop:
        now = mono()
        ab.push(now)
        ba.push(now)
        heads = [d.q[0][0] for d in (ab, ba) if d.q]
        # whole milliseconds, rounded down (epoll would round a fraction up)
        timeout = int((min(heads) - now) * 1000) / 1000 if heads else 0.5
        if timeout < 0:
            timeout = 0
        try:
            events = ep.poll(timeout)
        except InterruptedError:
            continue
        now = mono()
        for fd, _ev in events:
            by_fd[fd].pull(now)
        if now >= next_stats:
            write_stats()
            next_stats = now + 1.0
    write_stats()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ns-a", required=True, help="namespace of the first TUN device")
    p.add_argument("--dev-a", default="cvt0", help="its name (max 15 chars)")
    p.add_argument("--ns-b", required=True, help="namespace of the second TUN device")
    p.add_argument("--dev-b", default="cvt0")
    p.add_argument("--delay-ms", type=float, default=10.0, help="one-way delay per direction")
    p.add_argument("--loss", type=float, default=0.0, help="random loss probability per packet (0.005 = 0.5 %%)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--queue-packets", type=int, default=20000, help="queue limit per direction")
    p.add_argument("--no-realtime", dest="realtime", action="store_false",
                   help="do not ask for SCHED_FIFO priority 1 (default: ask, fall back to --nice)")
    p.add_argument("--nice", type=int, default=-10, help="priority change without SCHED_FIFO (0 = none)")
    p.add_argument("--ready-file", help="written (pid) once both devices exist")
    p.add_argument("--stats-file", help="JSON counters, refreshed every second and at exit")
    args = p.parse_args(argv)
    if not 0.0 <= args.loss < 1.0:
        p.error("--loss must be in [0, 1)")
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
