"""How each tool is run and measured.

Every side of a transfer is its own child process, reaped with ``os.wait4``:
its rusage gives CPU seconds (``ru_utime + ru_stime``) and peak RSS
(``ru_maxrss``). The kernel fills wait4's rusage with RUSAGE_BOTH semantics,
so a side that forks (the rsync daemon forks a child per connection, which
forks again) is charged for the children it reaped.

Wall time is the client's lifetime (the server is already listening when the
clock starts, and a client only exits once the server has everything).

Bytes on the wire, two figures:
* ``wire``: what the tool itself reports. cvmigrate: ``bytes_sent`` of the
  push JSON (compressed content bytes, agent to receiver, no protocol
  overhead). rsync: "Total bytes sent" of the client's ``--stats`` (everything
  the client sent: file list, literal data, tokens). tar pipe: bytes between
  ``zstd -1`` and ``zstd -d``, counted by a ``dd`` in the middle.
* ``lo``: TCP/IP bytes on the loopback interface, both directions, headers
  included. Each transfer runs in a fresh network namespace (``ip netns``)
  whose only interface is ``lo``, so its counter sees that transfer and
  nothing else. This is the fair comparison: it includes rsync's block
  checksums (daemon to client) and cvmigrate's protocol messages.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: the checkout bench/ lives in (the TUN relay is ``tests.helpers.linkrelay`` of the same tree)
REPO_ROOT = Path(__file__).resolve().parents[1]

MiB = 1 << 20

#: rsync flags the issue fixes for the loopback baseline.
RSYNC_FLAGS = ["-aHAXS", "--numeric-ids"]


# --------------------------------------------------------------------------- processes
@dataclass
class ChildStats:
    rc: int
    cpu: float          # ru_utime + ru_stime, seconds
    rss_mb: float       # ru_maxrss, MiB
    wall: float         # from spawn to reap, seconds


class Child:
    """A child process reaped with wait4 (so its rusage is ours to read)."""

    def __init__(self, argv: list[str], *, stdin: Any = subprocess.DEVNULL, stdout: Any = None,
                 stderr: Any = None, env: dict[str, str] | None = None) -> None:
        self.argv = argv
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(argv, stdin=stdin, stdout=stdout, stderr=stderr, env=env)
        self.stats: ChildStats | None = None
        self.extra_killed = False
        self.extra_landed: int | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self) -> bool:
        """True once the child has exited (it is then reaped)."""
        if self.stats is not None:
            return True
        pid, status, ru = os.wait4(self.pid, os.WNOHANG)
        if pid == 0:
            return False
        self._record(status, ru)
        return True

    def wait(self, timeout: float | None = None) -> ChildStats:
        if self.stats is not None:
            return self.stats
        if timeout is None:
            _, status, ru = os.wait4(self.pid, 0)
            self._record(status, ru)
            return self.stats  # type: ignore[return-value]
        deadline = time.monotonic() + timeout
        while not self.poll():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.argv[:4]} still running after {timeout:.0f}s")
            time.sleep(0.01)
        return self.stats  # type: ignore[return-value]

    def _record(self, status: int, ru: Any) -> None:
        rc = os.waitstatus_to_exitcode(status)
        self.proc.returncode = rc       # keep Popen from waiting on a reaped pid
        self.stats = ChildStats(rc=rc, cpu=ru.ru_utime + ru.ru_stime, rss_mb=ru.ru_maxrss / 1024.0,
                                wall=time.monotonic() - self.t0)

    def signal(self, sig: int) -> None:
        if self.stats is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def stop(self, timeout: float = 30.0) -> ChildStats:
        """SIGTERM, wait, then SIGKILL."""
        self.signal(signal.SIGTERM)
        try:
            return self.wait(timeout)
        except TimeoutError:
            self.signal(signal.SIGKILL)
            return self.wait()

    def children(self) -> list[int]:
        try:
            text = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text()
        except OSError:
            return []
        return [int(x) for x in text.split()]


class MemorySampler:
    """Peak memory of each side's processes, the largest one and all of them together.

    Why not wait4 alone: the kernel keeps, for reaped children, the peak of the
    largest one, not a sum, so ``ru_maxrss`` of a receiver that runs worker
    processes is its largest worker, not what the side holds (the issue's
    target 8 asks for the total across workers too). A thread samples
    ``/proc`` every ``interval`` seconds: the process tree below each watched
    pid (all threads' children), each process's ``VmHWM`` (the kernel's own
    peak, so a process's figure is exact up to its last sample) and CPU
    seconds (which worker did the work; the link relay's share), and the sum of
    the side's ``VmRSS`` at that instant; ``total(side)`` is the largest such
    sum. Pages the processes share (a forked worker's copy of the
    interpreter) count once per process: the total is an upper bound.
    """

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self._roots: dict[str, list[int]] = {}
        self._total: dict[str, float] = {}
        self._procs: dict[str, dict[int, tuple[str, float, float]]] = {}   # pid: (name, peak MiB, CPU s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, side: str, pid: int) -> None:
        """Count ``pid`` and its descendants as ``side``'s ("send" or "recv") from now on."""
        self._roots.setdefault(side, []).append(pid)
        self._sample()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="bench-memory", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def total(self, side: str) -> float | None:
        """MiB: the peak of the sampled sum of the side's resident sets (None: nothing was sampled)."""
        return self._total.get(side)

    def processes(self, side: str) -> list[dict[str, Any]]:
        """Each process the side ran (that a sample saw): its own peak resident set in MiB and its CPU
        seconds up to its last sample (which worker did the work)."""
        return [{"pid": pid, "name": name, "rss_mb": round(mb, 1), "cpu_s": round(cpu, 2)}
                for pid, (name, mb, cpu) in sorted(self._procs.get(side, {}).items())]

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        for side, roots in list(self._roots.items()):
            procs = self._procs.setdefault(side, {})
            now = 0.0
            for pid in _descendants(roots):
                status = _proc_status(pid)
                if status is None:
                    continue
                name, rss, hwm, cpu = status
                now += rss
                peak = procs[pid][1] if pid in procs else 0.0
                procs[pid] = (name, max(peak, hwm, rss), cpu)
            if now:
                self._total[side] = max(self._total.get(side, 0.0), now)


def _descendants(roots: list[int]) -> list[int]:
    """``roots`` and every process below them (children of any of their threads)."""
    out: list[int] = []
    todo = list(roots)
    while todo:
        pid = todo.pop()
        out.append(pid)
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tasks:
            with contextlib.suppress(OSError):
                todo.extend(int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split())
    return out


def _proc_status(pid: int) -> tuple[str, float, float, float] | None:
    """(name, VmRSS MiB, VmHWM MiB, CPU seconds) of a live process; None once it is gone (or a zombie)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    if "VmRSS" not in fields:
        return None
    kb = {k: int(fields[k].split()[0]) for k in ("VmRSS", "VmHWM") if k in fields}
    cpu = (int(stat[11]) + int(stat[12])) / _CLK_TCK     # utime + stime (fields 14 and 15 of proc(5))
    return fields["Name"].strip(), kb["VmRSS"] / 1024.0, kb.get("VmHWM", 0) / 1024.0, cpu


_CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- network namespaces
class Netns:
    """A fresh network namespace with only ``lo`` up; ``prefix`` runs a command in it.

    ``ip netns exec`` sets the namespace and execs the command (no fork), so
    the pid we spawn is the tool's pid and wait4 still measures the tool.
    Falls back to the host namespace (``lo_bytes()`` is None) if namespaces
    are not available.
    """

    _ids = itertools.count()

    def __init__(self, enabled: bool = True) -> None:
        self.name: str | None = None
        if enabled and os.geteuid() == 0 and shutil.which("ip"):
            name = f"cvmbench-{os.getpid()}-{next(self._ids)}"
            r = subprocess.run(["ip", "netns", "add", name], capture_output=True)
            if r.returncode == 0:
                subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
                self.name = name

    host = "127.0.0.1"

    @property
    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name] if self.name else []

    @property
    def server_prefix(self) -> list[str]:
        return self.prefix

    @property
    def client_prefix(self) -> list[str]:
        return self.prefix

    def net_bytes(self) -> int | None:
        return self.lo_bytes()

    def lo_bytes(self) -> int | None:
        if not self.name:
            return None
        out = subprocess.run(["ip", "-n", self.name, "-j", "-s", "link", "show", "lo"],
                             capture_output=True, text=True, check=True).stdout
        # every loopback packet is transmitted once (and received once): count tx
        return int(json.loads(out)[0]["stats64"]["tx"]["bytes"])

    def close(self) -> None:
        if self.name:
            subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
            self.name = None

    def __enter__(self) -> Netns:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@dataclass(frozen=True)
class Link:
    """An emulated link: a rate per direction, a one-way delay and a random loss rate per packet.

    Without delay and loss it is a ``tbf``-shaped veth pair (``SlowLink``);
    with either, the packets go through the user-space TUN relay
    (``RelayLink``): this kernel has no ``netem``, and a relay that delays
    and drops whole IP packets makes TCP see the loss and the RTT for real.
    """

    rate_mbit: float = 100.0
    delay_ms: float = 0.0       # one way: 10 ms gives a 20 ms RTT
    loss: float = 0.0           # per packet and direction: 0.005 = 0.5 %
    seed: int = 1

    def describe(self) -> str:
        s = f"{self.rate_mbit:g} Mbit/s"
        if self.delay_ms or self.loss:
            s += f", {2 * self.delay_ms:g} ms RTT, {100 * self.loss:g} % loss (TUN relay between two netns)"
        else:
            s += " (tbf veth between two netns, no delay)"
        return s

    def open(self, work: Path) -> Netns:
        if self.delay_ms or self.loss:
            return RelayLink(self, work)
        return SlowLink(f"{self.rate_mbit:g}mbit")


class _NetnsPair(Netns):
    """Two namespaces joined by a link: the server runs in ``s``, the client in ``c``."""

    s: str
    c: str

    @property
    def server_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.s]

    @property
    def client_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.c]


class SlowLink(_NetnsPair):
    """Two namespaces joined by a veth pair, each end shaped by ``tbf`` to ``rate``.

    The server listens on 10.77.0.1 (namespace ``-s``), the client runs in
    ``-c``. No added delay (see ``RelayLink`` for delay and loss).
    ``net_bytes`` = bytes transmitted by both veth ends (both directions,
    headers included).
    """

    host = "10.77.0.1"

    def __init__(self, rate: str = "100mbit") -> None:
        self.name = None
        self.names: list[str] = []
        base = f"cvmbench-{os.getpid()}-{next(self._ids)}"
        s, c = base + "-s", base + "-c"
        cmds = [
            ["ip", "netns", "add", s], ["ip", "netns", "add", c],
            ["ip", "link", "add", "cvmb-s", "netns", s, "type", "veth", "peer", "name", "cvmb-c", "netns", c],
            ["ip", "-n", s, "addr", "add", "10.77.0.1/24", "dev", "cvmb-s"],
            ["ip", "-n", c, "addr", "add", "10.77.0.2/24", "dev", "cvmb-c"],
        ]
        for ns_, dev in ((s, "cvmb-s"), (c, "cvmb-c")):
            cmds += [["ip", "-n", ns_, "link", "set", "lo", "up"], ["ip", "-n", ns_, "link", "set", dev, "up"],
                     ["tc", "-n", ns_, "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate,
                      "burst", "32kbit", "latency", "400ms"]]
        for cmd in cmds:
            r = subprocess.run(cmd, capture_output=True, text=True)
            if cmd[:3] == ["ip", "netns", "add"] and r.returncode == 0:
                self.names.append(cmd[3])
            if r.returncode != 0:
                self.close()
                raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")
        self.s, self.c = s, c

    def net_bytes(self) -> int | None:
        total = 0
        for ns_, dev in ((self.s, "cvmb-s"), (self.c, "cvmb-c")):
            out = subprocess.run(["ip", "-n", ns_, "-j", "-s", "link", "show", dev],
                                 capture_output=True, text=True, check=True).stdout
            total += int(json.loads(out)[0]["stats64"]["tx"]["bytes"])
        return total

    def close(self) -> None:
        for n in self.names:
            subprocess.run(["ip", "netns", "del", n], capture_output=True)
        self.names = []


class RelayLink(_NetnsPair):
    """Client and server namespaces joined only by ``tests.helpers.linkrelay`` (TUN devices).

    The relay runs in a third namespace, opens a TUN device ``cvmr0`` in each
    end, and forwards IP packets after a fixed one-way delay, dropping a
    seeded random fraction per direction. Each ``cvmr0`` is shaped by ``tbf``
    to the link's rate (the relay adds delay and loss, the qdisc the rate).
    The relay runs with SCHED_FIFO priority 1 so the emulated network does not
    queue behind the hosts it connects; its CPU is charged to neither side.
    ``net_bytes`` = bytes transmitted by both TUN ends; ``relay_stats`` holds
    the relay's counters (random drops, queue drops, lateness) once closed.
    """

    host = "10.77.2.1"
    client_addr = "10.77.2.2"
    dev = "cvmr0"

    def __init__(self, link: Link, work: Path) -> None:
        self.name = None
        self.names: list[str] = []
        self.relay: subprocess.Popen[bytes] | None = None
        self.relay_stats: dict[str, Any] = {}
        base = f"cvmbench-{os.getpid()}-{next(self._ids)}"
        self.s, self.c, self.r = base + "-s", base + "-c", base + "-r"
        work.mkdir(parents=True, exist_ok=True)
        self.stats_file = work / "linkrelay.json"
        ready = work / "linkrelay.ready"
        ready.unlink(missing_ok=True)
        self.stats_file.unlink(missing_ok=True)
        try:
            for n in (self.s, self.c, self.r):
                self._run(["ip", "netns", "add", n])
                self.names.append(n)
                self._run(["ip", "-n", n, "link", "set", "lo", "up"])
            log = open(work / "linkrelay.log", "wb")  # noqa: SIM115 (the relay's stderr; closed below)
            try:
                self.relay = subprocess.Popen(
                    ["ip", "netns", "exec", self.r, sys.executable, "-m", "tests.helpers.linkrelay",
                     "--ns-a", self.c, "--dev-a", self.dev, "--ns-b", self.s, "--dev-b", self.dev,
                     "--delay-ms", str(link.delay_ms), "--loss", str(link.loss), "--seed", str(link.seed),
                     "--ready-file", str(ready), "--stats-file", str(self.stats_file)],
                    cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
            finally:
                log.close()
            deadline = time.monotonic() + 20
            while not ready.exists():
                if self.relay.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"linkrelay did not start:\n{_tail(work / 'linkrelay.log')}")
                time.sleep(0.02)
            for ns_, me, peer in ((self.s, self.host, self.client_addr), (self.c, self.client_addr, self.host)):
                self._run(["ip", "-n", ns_, "addr", "add", me, "peer", f"{peer}/32", "dev", self.dev])
                self._run(["ip", "-n", ns_, "link", "set", self.dev, "up"])
                self._run(["tc", "-n", ns_, "qdisc", "replace", "dev", self.dev, "root", "tbf",
                           "rate", f"{link.rate_mbit:g}mbit", "burst", "64kb", "latency", "100ms"])
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _run(cmd: list[str]) -> None:
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")

    def net_bytes(self) -> int | None:
        total = 0
        for ns_ in (self.s, self.c):
            out = subprocess.run(["ip", "-n", ns_, "-j", "-s", "link", "show", self.dev],
                                 capture_output=True, text=True, check=True).stdout
            total += int(json.loads(out)[0]["stats64"]["tx"]["bytes"])
        return total

    def close(self) -> None:
        if self.relay is not None:
            self.relay.terminate()  # SIGTERM: the relay writes its final counters and exits
            try:
                self.relay.wait(10)
            except subprocess.TimeoutExpired:
                self.relay.kill()
                self.relay.wait()
            self.relay = None
            with contextlib.suppress(OSError, ValueError):
                self.relay_stats = json.loads(self.stats_file.read_text())
        for n in self.names:
            subprocess.run(["ip", "netns", "del", n], capture_output=True)
        self.names = []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- results
@dataclass
class Measure:
    """One timed transfer."""
    wall: float
    cpu_send: float
    cpu_recv: float
    rss_send: float
    rss_recv: float
    wire: int | None = None
    lo: int | None = None
    ok: bool = True
    rss_send_total: float | None = None   # MemorySampler: all of a side's processes together, MiB
    rss_recv_total: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def tree_bytes(root: Path) -> int:
    """Sum of st_size below ``root`` (temp files included)."""
    total = 0
    for dirpath, _dirnames, filenames in os.walk(root):
        for n in filenames:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, n)).st_size
    return total


def empty_dir(path: Path) -> None:
    """Make ``path`` an empty directory (rm -rf is much faster than shutil on 200k files)."""
    if path.exists():
        subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=True)
    path.mkdir(parents=True)


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_bytes()[-n:].decode("utf-8", "replace")
    except OSError:
        return ""


# --------------------------------------------------------------------------- tools
class ToolError(RuntimeError):
    pass


class Server:
    """A running receiving side (cvmigrate receiver or rsync daemon)."""

    def __init__(self, child: Child, address: str, log: Path) -> None:
        self.child = child
        self.address = address
        self.log = log

    def quiesce(self, timeout: float = 60.0) -> None:
        """Wait until the server has no worker children left (rsync's per-connection forks)."""
        deadline = time.monotonic() + timeout
        while self.child.children() and time.monotonic() < deadline:
            time.sleep(0.02)

    def stop(self) -> ChildStats:
        self.quiesce()
        return self.child.stop()


class ReceiverServer(Server):
    """``cvmigrate receive``: its children are its worker processes (for its lifetime), not per-connection
    forks that end with the transfer -- nothing to wait for before it is stopped."""

    def quiesce(self, timeout: float = 60.0) -> None:
        return


def _started(child: Child, ready: Callable[[], Server | None], what: str, log: Path,
             timeout: float = 30.0) -> Server:
    """Wait until ``ready()`` returns the listening server; a server that exits or takes longer than
    ``timeout`` seconds is a ToolError carrying the end of its log."""
    deadline = time.monotonic() + timeout
    while True:
        if child.poll():
            raise ToolError(f"{what} exited {child.stats.rc}:\n{_tail(log)}")  # type: ignore[union-attr]
        server = ready()
        if server is not None:
            return server
        if time.monotonic() > deadline:
            child.stop()
            raise ToolError(f"{what} did not start:\n{_tail(log)}")
        time.sleep(0.01)


class ClientRun:
    def __init__(self, stats: ChildStats, stdout: str, stderr_path: Path, killed: bool,
                 landed_at_kill: int | None) -> None:
        self.stats = stats
        self.stdout = stdout
        self.stderr_path = stderr_path
        self.killed = killed
        self.landed_at_kill = landed_at_kill


class Tool:
    name = "?"
    #: whether the tool can do incremental passes (re-sync, no-change, resume)
    incremental = True

    def start_server(self, dst: Path, work: Path, ns: Netns) -> Server:
        raise NotImplementedError

    def client_argv(self, src: Path, server: Server) -> list[str]:
        raise NotImplementedError

    def wire_bytes(self, stdout: str) -> int | None:
        raise NotImplementedError

    def run_client(self, src: Path, server: Server, work: Path, ns: Netns, *,
                   kill_after: float | None = None, watch: Path | None = None,
                   timeout: float = 3600.0, kill_at_bytes: int | None = None,
                   memory: MemorySampler | None = None) -> ClientRun:
        out_path = work / f"{self.name}-client.out"
        err_path = work / f"{self.name}-client.err"
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            child = Child(ns.client_prefix + self.client_argv(src, server), stdout=out, stderr=err,
                          env=child_env())
            if memory is not None:
                memory.watch("send", child.pid)
            deadline = time.monotonic() + timeout
            try:
                self._watch(child, kill_after, watch, deadline, timeout, kill_at_bytes)
            except BaseException:
                child.signal(signal.SIGKILL)
                child.wait()
                raise
            killed = child.extra_killed
            landed = child.extra_landed
        stats = child.wait()
        return ClientRun(stats, out_path.read_text(errors="replace"), err_path, killed, landed)

    def _watch(self, child: Child, kill_after: float | None, watch: Path | None, deadline: float,
               timeout: float, kill_at_bytes: int | None = None) -> None:
        """Wait for the client; SIGKILL it after ``kill_after`` seconds or once the
        target under ``watch`` holds ``kill_at_bytes`` (sum of st_size, temp files included)."""
        child.extra_killed = False
        child.extra_landed = None
        next_look = 0.0
        while not child.poll():
            now = time.monotonic()
            landed_enough = False
            if kill_at_bytes is not None and watch is not None and now >= next_look:
                next_look = now + 0.05
                landed_enough = tree_bytes(watch) >= kill_at_bytes
            if landed_enough or (kill_after is not None and now - child.t0 >= kill_after):
                if watch is not None:
                    child.extra_landed = tree_bytes(watch)
                child.signal(signal.SIGKILL)
                child.wait()
                child.extra_killed = True
                break
            if now > deadline:
                child.signal(signal.SIGKILL)
                child.wait()
                raise ToolError(f"{self.name} client timed out after {timeout:.0f}s")
            time.sleep(0.005)

    # -- one complete measured transfer
    def transfer(self, src: Path, dst: Path, work: Path, *, netns: bool = True,
                 kill_after: float | None = None, timeout: float = 3600.0, link: Link | None = None,
                 kill_at_bytes: int | None = None) -> Measure:
        """One transfer; ``link`` runs it over an emulated link between two namespaces."""
        work.mkdir(parents=True, exist_ok=True)
        memory = MemorySampler()
        with (link.open(work) if link else Netns(netns)) as ns:
            server = self.start_server(dst, work, ns)
            memory.watch("recv", server.child.pid)
            relay = getattr(ns, "relay", None)
            if relay is not None:   # the emulated link's CPU, charged to neither side, shown beside them
                memory.watch("relay", relay.pid)
            try:
                run = self.run_client(src, server, work, ns, kill_after=kill_after, watch=dst,
                                      timeout=timeout, kill_at_bytes=kill_at_bytes, memory=memory)
            except BaseException:
                server.child.signal(signal.SIGKILL)
                server.child.wait()
                raise
            finally:
                memory.stop()
            server.quiesce()
            lo = ns.net_bytes()
            sstats = server.stop()
        ok = run.killed or run.stats.rc == 0
        if not ok:
            raise ToolError(f"{self.name} client exited {run.stats.rc}:\n{_tail(run.stderr_path)}\n"
                            f"--- server log\n{_tail(server.log)}")
        m = Measure(wall=run.stats.wall, cpu_send=run.stats.cpu, cpu_recv=sstats.cpu,
                    rss_send=run.stats.rss_mb, rss_recv=sstats.rss_mb,
                    wire=None if run.killed else self.wire_bytes(run.stdout), lo=lo)
        _add_memory(m, memory)
        m.extra["loadavg_after"] = round(os.getloadavg()[0], 2)
        relay = getattr(ns, "relay_stats", None)
        if relay:
            m.extra["relay"] = relay
        if run.killed:
            m.extra["killed_after_s"] = round(run.stats.wall, 3)
            m.extra["landed_at_kill"] = run.landed_at_kill
        else:
            m.extra.update(self.extra(run.stdout))  # noqa: S610 (our method, not Django's QuerySet.extra)
        return m

    def extra(self, stdout: str) -> dict[str, Any]:
        return {}


def _add_memory(m: Measure, memory: MemorySampler) -> None:
    """The sampled totals, and each process's peak (``extra["processes"]``), into a measure.

    A side's total is at least its largest process's exact peak (wait4): samples 0.1 s apart can miss
    a short process or the last moments of a peak.
    """
    m.rss_send_total = max(memory.total("send") or 0.0, m.rss_send)
    m.rss_recv_total = max(memory.total("recv") or 0.0, m.rss_recv)
    m.extra["processes"] = {side: memory.processes(side) for side in ("send", "recv", "relay")
                            if memory.processes(side)}


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.setdefault("CVMIGRATE_TOKEN", _BENCH_TOKEN)  # a plaintext (--insecure) receiver still requires a token
    return env


_BENCH_TOKEN = secrets.token_urlsafe(32)


class Cvmigrate(Tool):
    """``cvmigrate receive`` (fresh process per transfer) and ``cvmigrate push --json``."""

    name = "cvmigrate"

    def __init__(self, python: str = sys.executable, push_args: tuple[str, ...] = (),
                 streams: int | None = None) -> None:
        """``streams``: ``push --streams N`` (None: the default, what both sides' cores allow); a tool with a
        fixed count is its own row ("cvmigrate --streams 1"), so the parallel gain shows by itself."""
        self.python = python
        self.push_args = push_args + (("--streams", str(streams)) if streams else ())
        if streams:
            self.name = f"cvmigrate --streams {streams}"

    def start_server(self, dst: Path, work: Path, ns: Netns) -> Server:
        port_file = work / "receiver.port"
        port_file.unlink(missing_ok=True)
        log = work / "receiver.log"
        argv = [self.python, "-m", "cvmigrate", "receive", "--listen", f"{ns.host}:0", "--root", str(dst),
                "--port-file", str(port_file), "--insecure"]
        with open(log, "wb") as f:
            child = Child(ns.server_prefix + argv, stdout=f, stderr=subprocess.STDOUT, env=child_env())

        def ready() -> Server | None:
            with contextlib.suppress(FileNotFoundError, ValueError):
                return ReceiverServer(child, f"{ns.host}:{int(port_file.read_text().strip())}", log)
            return None
        return _started(child, ready, "receiver", log)

    def client_argv(self, src: Path, server: Server) -> list[str]:
        return [self.python, "-m", "cvmigrate", "push", str(src), "--to", server.address, "--insecure",
                "--json", "--no-default-excludes", *self.push_args]

    @staticmethod
    def summary(stdout: str) -> dict[str, Any]:
        for line in reversed(stdout.strip().splitlines()):
            if line.startswith("{"):
                return json.loads(line)
        return {}

    def wire_bytes(self, stdout: str) -> int | None:
        return self.summary(stdout).get("bytes_sent")

    def extra(self, stdout: str) -> dict[str, Any]:
        s = self.summary(stdout)
        keys = ("files", "dirs", "bytes_total", "bytes_sent", "bytes_reused", "files_skipped",
                "files_transferred", "resumed", "seconds", "streams", "placement_retries")
        return {k: s[k] for k in keys if k in s}


_STATS_RE = re.compile(r"^Total bytes (sent|received):\s+([\d,]+)", re.M)


class Rsync(Tool):
    """``rsync --daemon`` (fresh per transfer) and ``rsync -aHAXS --numeric-ids --stats SRC/ rsync://``."""

    name = "rsync"

    def __init__(self, rsync: str = "rsync", extra_flags: tuple[str, ...] = ()) -> None:
        self.rsync = rsync
        self.extra_flags = extra_flags

    def start_server(self, dst: Path, work: Path, ns: Netns) -> Server:
        # a private namespace has every port free
        port = 8873 if ns.name or isinstance(ns, SlowLink) else free_port()
        log = work / "rsyncd.log"
        log.unlink(missing_ok=True)
        conf = work / "rsyncd.conf"
        conf.write_text(
            f"log file = {log}\n"
            "use chroot = no\nuid = root\ngid = root\nnumeric ids = yes\nread only = no\n"
            f"[mod]\npath = {dst}\n")
        argv = [self.rsync, "--daemon", "--no-detach", f"--config={conf}", f"--port={port}",
                f"--address={ns.host}"]
        child = Child(ns.server_prefix + argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=child_env())
        return _started(child, lambda: Server(child, f"{ns.host}:{port}", log) if "listening on port" in _tail(log)
                        else None, "rsync daemon", log)

    def client_argv(self, src: Path, server: Server) -> list[str]:
        return [self.rsync, *RSYNC_FLAGS, *self.extra_flags, "--stats", f"{src}/",
                f"rsync://{server.address}/mod/"]

    def wire_bytes(self, stdout: str) -> int | None:
        d = {k: int(v.replace(",", "")) for k, v in _STATS_RE.findall(stdout)}
        return d.get("sent")

    def extra(self, stdout: str) -> dict[str, Any]:
        d = {k: int(v.replace(",", "")) for k, v in _STATS_RE.findall(stdout)}
        return {"rsync_bytes_received": d.get("received")}


class TarPipe(Tool):
    """``tar c | zstd -1 | zstd -d | tar x``: a local pipe, the ceiling (no network, no checks).

    Sender side = tar c + zstd -1, receiver side = zstd -d + tar x (CPU summed,
    RSS the larger of the two). A ``dd`` between the two zstd counts the
    compressed bytes; its (small) CPU is charged to neither side.
    """

    name = "tar+zstd"
    incremental = False

    def transfer(self, src: Path, dst: Path, work: Path, *, netns: bool = True,
                 kill_after: float | None = None, timeout: float = 3600.0, link: Link | None = None,
                 kill_at_bytes: int | None = None) -> Measure:
        work.mkdir(parents=True, exist_ok=True)
        dst.mkdir(parents=True, exist_ok=True)
        # both outlive the children that write them: closed in the finally blocks below
        err = open(work / "tarpipe.err", "wb")  # noqa: SIM115
        dd_err = open(work / "tarpipe.dd", "wb+")  # noqa: SIM115
        memory = MemorySampler()
        try:
            t0 = time.monotonic()
            tc = Child(["tar", "-C", str(src), "--xattrs", "--acls", "--numeric-owner", "-cf", "-", "."],
                       stdout=subprocess.PIPE, stderr=err)
            zc = Child(["zstd", "-1", "-q", "-c"], stdin=tc.proc.stdout, stdout=subprocess.PIPE, stderr=err)
            tc.proc.stdout.close()  # type: ignore[union-attr]
            dd = Child(["dd", "bs=1M"], stdin=zc.proc.stdout, stdout=subprocess.PIPE, stderr=dd_err)
            zc.proc.stdout.close()  # type: ignore[union-attr]
            zd = Child(["zstd", "-d", "-q", "-c"], stdin=dd.proc.stdout, stdout=subprocess.PIPE, stderr=err)
            dd.proc.stdout.close()  # type: ignore[union-attr]
            tx = Child(["tar", "-C", str(dst), "--xattrs", "--xattrs-include=*", "--acls", "--numeric-owner",
                        "-xpf", "-"], stdin=zd.proc.stdout, stderr=err)
            zd.proc.stdout.close()  # type: ignore[union-attr]
            for side, child in (("send", tc), ("send", zc), ("recv", zd), ("recv", tx)):
                memory.watch(side, child.pid)
            stats = [c.wait(timeout) for c in (tc, zc, dd, zd, tx)]
            wall = time.monotonic() - t0
        finally:
            memory.stop()
            err.close()
        dd_err.seek(0)
        m = re.search(rb"^(\d+) bytes", dd_err.read(), re.M)
        dd_err.close()
        if any(s.rc != 0 for s in stats):
            raise ToolError(f"tar pipe failed {[s.rc for s in stats]}:\n{_tail(work / 'tarpipe.err')}")
        measure = Measure(wall=wall, cpu_send=stats[0].cpu + stats[1].cpu, cpu_recv=stats[3].cpu + stats[4].cpu,
                          rss_send=max(stats[0].rss_mb, stats[1].rss_mb),
                          rss_recv=max(stats[3].rss_mb, stats[4].rss_mb),
                          wire=int(m.group(1)) if m else None, lo=None)
        _add_memory(measure, memory)
        return measure


def all_tools() -> list[Tool]:
    return [Cvmigrate(), Rsync(), TarPipe()]


@contextlib.contextmanager
def cleanup_netns() -> Iterator[None]:
    """Delete namespaces this process created (in case of an interrupt)."""
    try:
        yield
    finally:
        r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
        for line in r.stdout.splitlines():
            name = line.split()[0] if line.split() else ""
            if name.startswith(f"cvmbench-{os.getpid()}-"):
                subprocess.run(["ip", "netns", "del", name], capture_output=True)
