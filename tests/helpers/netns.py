"""Throw-away network namespaces for multi-host tests: hosts, wires, shapers, processes.

A ``NetLab`` owns everything it creates and removes it on ``close()`` (also on
a failing test, and at interpreter exit as a last resort):

* namespaces named ``cvm-<role>-<suffix>`` (``src``, ``dst``, ``adm``,
  ``proxy``, ``relay``...) where ``<suffix>`` is random per lab, so parallel
  runs never collide and nothing outside the lab is touched;
* veth pairs between two lab namespaces (interface names are per namespace,
  so short fixed names like ``v-dst`` are fine);
* addresses from private ranges (``10.231.x.y/24``, ``fd00:231:x::y/64``)
  that exist ONLY inside the lab's namespaces -- the host's own network is
  never configured;
* ``tc`` qdiscs (``tbf`` rate limits) on lab interfaces;
* processes started with ``ip netns exec NS argv`` (``popen``); on close they
  get SIGTERM, then SIGKILL, and anything else still living in a lab
  namespace (``ip netns pids``) is SIGKILLed before the namespace is deleted.

Where namespaces cannot be made (not root, no CAP_SYS_ADMIN, no ``ip``),
``skip_reason()`` says why; tests call ``require_netns()`` which skips.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.helpers.closing import Closing, LiveSet

IP = shutil.which("ip") or "/usr/sbin/ip"
TC = shutil.which("tc") or "/usr/sbin/tc"
#: The repository root (for ``python -m tests.helpers.xxx`` inside a namespace).
REPO = Path(__file__).resolve().parents[2]

#: Environment variables that would send gRPC (or anything) through a proxy.
PROXY_VARS = ("http_proxy", "https_proxy", "grpc_proxy", "no_proxy", "no_grpc_proxy",
              "HTTP_PROXY", "HTTPS_PROXY", "GRPC_PROXY", "NO_PROXY", "ALL_PROXY", "all_proxy")

#: One command-line argument as ``NetLab.run`` and ``NetLab.popen`` take it (passed through ``str``).
Arg = str | os.PathLike[str] | int | float

_labs: LiveSet[NetLab] = LiveSet(lambda lab: lab.close())
_skip_reason: str | None | bool = False          # False = not probed yet


class NetnsError(RuntimeError):
    """A command that configures the lab failed (its output is in the message)."""


# --------------------------------------------------------------------- probing
def skip_reason() -> str | None:
    """None when this process can create network namespaces, else why not (cached)."""
    global _skip_reason
    if _skip_reason is not False:
        return _skip_reason  # type: ignore[return-value]
    reason: str | None = None
    if not sys.platform.startswith("linux"):
        reason = "network namespaces need Linux"
    elif not os.path.exists(IP):
        reason = "iproute2 ('ip') is not installed"
    elif not os.path.exists(TC):
        reason = "iproute2's 'tc' is not installed"
    else:
        name = f"cvm-probe-{secrets.token_hex(4)}"
        r = subprocess.run([IP, "netns", "add", name], capture_output=True, text=True)
        if r.returncode != 0:
            why = (r.stderr or r.stdout).strip()
            reason = (f"cannot create network namespaces ('ip netns add' failed: {why}; "
                      f"needs root or CAP_SYS_ADMIN+CAP_NET_ADMIN, euid={os.geteuid()})")
        else:
            subprocess.run([IP, "netns", "del", name], capture_output=True)
    _skip_reason = reason
    return reason


def require_netns() -> None:
    """pytest.skip with a clear reason unless namespaces can be created here."""
    reason = skip_reason()
    if reason:
        import pytest
        pytest.skip(reason)


def clean_env(extra: dict[str, str] | None = None, *, keep_proxy: bool = False) -> dict[str, str]:
    """The environment for lab processes: no inherited proxies, unbuffered, no .pyc."""
    env = dict(os.environ)
    if not keep_proxy:
        for k in PROXY_VARS:
            env.pop(k, None)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    pp = env.get("PYTHONPATH")
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{pp}" if pp else str(REPO)
    if extra:
        env.update(extra)
    return env


def hostport(addr: str, port: int) -> str:
    """``10.0.0.1:5`` or ``[fd00::1]:5``."""
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


# --------------------------------------------------------------------- the lab
class NetLab(Closing):
    """Namespaces, wires and processes of one test. Use as a context manager."""

    def __init__(self, suffix: str | None = None) -> None:
        self.suffix = suffix or secrets.token_hex(3)
        self.namespaces: dict[str, str] = {}     # role -> namespace name
        self.procs: list[subprocess.Popen] = []
        self._logs: list[Any] = []
        self.closed = False
        _labs.add(self)

    # ------------------------------------------------------------ commands
    def _cmd(self, argv: Sequence[str], *, check: bool = True, timeout: float = 30,
             input: bytes | None = None) -> subprocess.CompletedProcess:
        r = subprocess.run(list(argv), capture_output=True, timeout=timeout, input=input)
        if check and r.returncode != 0:
            raise NetnsError(f"$ {' '.join(map(str, argv))}\nexit {r.returncode}: "
                             f"{(r.stderr or r.stdout).decode(errors='replace').strip()}")
        return r

    def ip(self, ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """``ip -n NS ARGS``."""
        return self._cmd([IP, "-n", ns, *args], check=check)

    def tc(self, ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self._cmd([IP, "netns", "exec", ns, TC, *args], check=check)

    def run(self, ns: str, argv: Sequence[Arg], *, check: bool = True, timeout: float = 60,
            env: dict[str, str] | None = None, input: bytes | None = None) -> subprocess.CompletedProcess:
        """Run ``argv`` to completion inside ``ns`` (stdout/stderr captured as bytes)."""
        full = [IP, "netns", "exec", ns, *map(str, argv)]
        r = subprocess.run(full, capture_output=True, timeout=timeout, input=input,
                           env=env if env is not None else clean_env(), cwd=REPO)
        if check and r.returncode != 0:
            raise NetnsError(f"$ {' '.join(full)}\nexit {r.returncode}:\n"
                             f"{r.stdout.decode(errors='replace')[-3000:]}\n"
                             f"{r.stderr.decode(errors='replace')[-3000:]}")
        return r

    def popen(self, ns: str, argv: Sequence[Arg], *, log: Path | None = None,
              stdout: Any = None, stderr: Any = None, env: dict[str, str] | None = None
              ) -> subprocess.Popen:
        """Start ``argv`` inside ``ns``; the lab kills it on close.

        ``ip netns exec`` execs the command, so the Popen's pid is the command's.
        With ``log``, stdout and stderr go to that file.
        """
        if log is not None:
            f = open(log, "wb")  # noqa: SIM115 - the child writes it; the lab closes it on close()
            self._logs.append(f)
            stdout, stderr = f, subprocess.STDOUT
        p = subprocess.Popen([IP, "netns", "exec", ns, *map(str, argv)], stdin=subprocess.DEVNULL,
                             stdout=stdout, stderr=stderr, cwd=REPO,
                             env=env if env is not None else clean_env())
        self.procs.append(p)
        return p

    # ------------------------------------------------------------ topology
    def add_ns(self, role: str) -> str:
        """Create ``cvm-<role>-<suffix>`` with loopback up; returns its name."""
        if role in self.namespaces:
            return self.namespaces[role]
        name = f"cvm-{role}-{self.suffix}"
        self._cmd([IP, "netns", "add", name])
        self.namespaces[role] = name
        self.ip(name, "link", "set", "lo", "up")
        return name

    def veth(self, ns_a: str, dev_a: str, ns_b: str, dev_b: str, *, mtu: int | None = None,
             addrs: tuple[str, str] | None = None, prefix: int = 24) -> None:
        """A veth pair ``ns_a:dev_a <-> ns_b:dev_b``, both ends up (``addrs``: theirs, on one ``/prefix``)."""
        self.ip(ns_a, "link", "add", dev_a, "type", "veth", "peer", "name", dev_b, "netns", ns_b)
        for ns, dev in ((ns_a, dev_a), (ns_b, dev_b)):
            if mtu:
                self.ip(ns, "link", "set", dev, "mtu", str(mtu))
            self.ip(ns, "link", "set", dev, "up")
        if addrs is not None:
            self.addr(ns_a, dev_a, f"{addrs[0]}/{prefix}")
            self.addr(ns_b, dev_b, f"{addrs[1]}/{prefix}")

    def addr(self, ns: str, dev: str, cidr: str, *, peer: str | None = None) -> None:
        """Add an address (IPv6 without duplicate address detection, so it is usable at once)."""
        iface = ipaddress.ip_interface(cidr)
        args = ["addr", "add", cidr if peer is None else str(iface.ip)]
        if peer is not None:
            args += ["peer", peer]
        args += ["dev", dev]
        if iface.version == 6:
            args.append("nodad")
        self.ip(ns, *args)

    def route(self, ns: str, dest: str, *, via: str | None = None, dev: str | None = None) -> None:
        args = ["route", "add", dest]
        if via:
            args += ["via", via]
        if dev:
            args += ["dev", dev]
        self.ip(ns, *args)

    def sysctl(self, ns: str, key: str, value: str | int) -> None:
        """Set a per-namespace sysctl (``net.ipv4.ip_forward`` ...) by writing /proc/sys."""
        path = "/proc/sys/" + key.replace(".", "/")
        self.run(ns, ["sh", "-c", f"echo {value} > {path}"])

    def link(self, ns: str, dev: str, up: bool) -> None:
        """``ip link set DEV up|down`` (a cable pulled or plugged back)."""
        self.ip(ns, "link", "set", dev, "up" if up else "down")

    def tbf(self, ns: str, dev: str, rate_mbit: float, *, burst_kb: int = 64, latency_ms: int = 100) -> None:
        """Rate-limit ``dev``'s egress with a token bucket (``tc qdisc ... tbf``)."""
        self.tc(ns, "qdisc", "replace", "dev", dev, "root", "tbf", "rate", f"{rate_mbit}mbit",
                "burst", f"{burst_kb}kb", "latency", f"{latency_ms}ms")

    def htb(self, ns: str, dev: str, rate_mbit: float) -> None:
        """Rate-limit ``dev``'s egress with one htb class (alternative to ``tbf``)."""
        self.tc(ns, "qdisc", "replace", "dev", dev, "root", "handle", "1:", "htb", "default", "10")
        self.tc(ns, "class", "add", "dev", dev, "parent", "1:", "classid", "1:10", "htb",
                "rate", f"{rate_mbit}mbit", "ceil", f"{rate_mbit}mbit")

    def qdisc_stats(self, ns: str, dev: str) -> list[dict[str, Any]]:
        r = self.tc(ns, "-s", "-j", "qdisc", "show", "dev", dev)
        return json.loads(r.stdout or b"[]")

    def link_stats(self, ns: str, dev: str) -> dict[str, int]:
        """``{'rx_bytes','tx_bytes','rx_packets','tx_packets','rx_dropped','tx_dropped'}``."""
        r = self.ip(ns, "-s", "-j", "link", "show", "dev", dev)
        s = json.loads(r.stdout)[0]["stats64"]
        return {f"{d}_{k}": s[d][k] for d in ("rx", "tx") for k in ("bytes", "packets", "dropped")}

    def can_connect(self, ns: str, addr: str, port: int, timeout: float = 2.0) -> str:
        """Try a TCP connect from ``ns``; returns 'ok' or the error's name."""
        code = ("import socket,sys\n"
                "try:\n"
                f"    socket.create_connection(({addr!r},{port}),timeout={timeout}).close(); print('ok')\n"
                "except OSError as e:\n"
                "    import errno; print(errno.errorcode.get(e.errno, type(e).__name__))\n")
        r = self.run(ns, [sys.executable, "-c", code], check=False, timeout=timeout + 10)
        return r.stdout.decode().strip() or r.stderr.decode().strip()

    def tcp_rtt_ms(self, ns: str, addr: str, port: int, count: int = 20) -> list[float]:
        """Round-trip times measured as TCP connect times (SYN -> SYN/ACK) from ``ns``."""
        code = ("import socket,time,json\n"
                "out=[]\n"
                f"for _ in range({count}):\n"
                "    t=time.perf_counter()\n"
                f"    s=socket.create_connection(({addr!r},{port}),timeout=5)\n"
                "    out.append((time.perf_counter()-t)*1000); s.close(); time.sleep(0.02)\n"
                "print(json.dumps(out))\n")
        r = self.run(ns, [sys.executable, "-c", code], timeout=60)
        return json.loads(r.stdout)

    def tcp_throughput(self, src_ns: str, dst_ns: str, dst_addr: str, nbytes: int,
                       timeout: float = 120) -> dict[str, float]:
        """Send ``nbytes`` over one TCP connection src -> dst; returns seconds and Mbit/s.

        The receiver (a tiny Python sink in ``dst_ns``) times from accept to EOF.
        """
        sink = ("import socket,sys,time,json\n"
                f"s=socket.socket(socket.AF_INET6 if ':' in {dst_addr!r} else socket.AF_INET)\n"
                f"s.bind(({dst_addr!r},0)); s.listen(1); print(s.getsockname()[1], flush=True)\n"
                "c,_=s.accept(); t=time.perf_counter(); n=0\n"
                "while True:\n"
                "    b=c.recv(1<<20)\n"
                "    if not b: break\n"
                "    n+=len(b)\n"
                "print(json.dumps({'bytes':n,'seconds':time.perf_counter()-t}), flush=True)\n")
        p = self.popen(dst_ns, [sys.executable, "-c", sink], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE)
        assert p.stdout is not None        # stdout=PIPE above
        port = int(p.stdout.readline())
        send = ("import socket,os\n"
                f"s=socket.create_connection(({dst_addr!r},{port}),timeout=30)\n"
                "buf=os.urandom(1<<20)\n"
                f"left={nbytes}\n"
                "while left>0:\n"
                "    s.sendall(buf[:min(left,len(buf))]); left-=len(buf)\n"
                "s.shutdown(socket.SHUT_WR); s.recv(1); s.close()\n")
        self.run(src_ns, [sys.executable, "-c", send], timeout=timeout)
        out, _ = p.communicate(timeout=timeout)
        res = json.loads(out.decode().strip().splitlines()[-1])
        res["mbit_per_s"] = res["bytes"] * 8 / res["seconds"] / 1e6
        return res

    # ------------------------------------------------------------ cleanup
    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for p in self.procs:
            if p.poll() is None:
                try:
                    p.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 5
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for f in self._logs:
            try:
                f.close()
            except Exception:  # noqa: BLE001 - best-effort cleanup: the rest must still run
                pass
        for name in self.namespaces.values():
            # anything still living in OUR namespace was started by this lab (or its children)
            pids = subprocess.run([IP, "netns", "pids", name], capture_output=True, text=True)
            for tok in pids.stdout.split():
                try:
                    os.kill(int(tok), signal.SIGKILL)
                except (ValueError, ProcessLookupError):
                    pass
        for name in list(self.namespaces.values())[::-1]:
            for _ in range(20):
                r = subprocess.run([IP, "netns", "del", name], capture_output=True)
                if r.returncode == 0 or not os.path.exists(f"/run/netns/{name}"):
                    break
                time.sleep(0.1)
        _labs.discard(self)

    def __repr__(self) -> str:
        return f"NetLab({self.suffix}, {sorted(self.namespaces.values())})"


def wait_for_file(path: Path, *, timeout: float = 20, proc: subprocess.Popen | None = None,
                  what: str = "file", log: Path | None = None) -> str:
    """Wait until ``path`` has non-empty content; fail early if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            text = Path(path).read_text().strip()
        except FileNotFoundError:
            text = ""
        if text:
            return text
        out = ""
        if log is not None and Path(log).exists():
            out = Path(log).read_bytes().decode(errors="replace")[-4000:]
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {proc.returncode} before writing {path}\n{out}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: nothing in {path} after {timeout:.0f}s\n{out}")
        time.sleep(0.02)


__all__ = ["NetLab", "NetnsError", "PROXY_VARS", "REPO", "clean_env", "hostport", "require_netns",
           "skip_reason", "wait_for_file"]
