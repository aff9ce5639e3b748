"""Multi-host migrations across real network namespaces.

Every scenario builds its own hosts with ``tests.helpers.netns.NetLab``
(namespaces ``cvm-src-*``, ``cvm-dst-*``, ``cvm-adm-*``, ``cvm-proxy-*``,
``cvm-relay-*``; private addresses that exist only inside them), starts
``cvmigrate receive`` inside the target namespace and ``cvmigrate push``
inside the source namespace as real processes, and judges the target with
the rsync oracle (``rsync -naHAXc --delete --numeric-ids --itemize-changes
--exclude=/.cvmigrate SRC/ DST/`` must print nothing).

Transport: mutual TLS with a per-test PKI (``mint_migration_pki``) plus a
token file, except where a scenario says otherwise.

Scenarios (``-m netns``; the ``netns_slow`` ones are skipped by default):
1. plain push over a 100 Mbit/s ``tbf`` link;
2. 100 Mbit/s, 20 ms RTT, 0.5 % loss through ``tests.helpers.linkrelay``;
3. the link cut for 10 s mid-transfer (``ip link set DEV down``/``up``):
   with the agent's reconnect (a ``--retry``/``--reconnect`` option in
   ``push --help``) the push must finish by itself; without it, it either
   survives on TCP retransmission or fails with a clear error, and a re-run
   must finish;
4. proxy-only path: the source has no route to the target; gRPC goes
   through an HTTP CONNECT proxy with Basic authentication (push's proxy
   option; skipped until it exists); wrong proxy credentials are refused (407);
5. a client without the token is refused with UNAUTHENTICATED and the
   target stays empty;
6. an IPv6-only data path (``fd00:231:...``).
Slow: a bigger lossy transfer, the relay's raw figures, a 2-minute cut.

Skips with a clear reason where namespaces cannot be created (not root).
Run: ``python -m pytest -m netns tests/e2e/test_netns.py -s`` (``-s`` shows
the measured figures).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.netns import Arg, NetLab, clean_env, hostport, require_netns, wait_for_file
from tests.helpers.oracle import rsync_itemize
from tests.helpers.procs import TEST_TOKEN, parse_summary

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync (the oracle) is missing"),
    pytest.mark.timeout(300),
]

MiB = 1 << 20
PY = sys.executable

# address plan (10.231.0.0/16 and fd00:231::/48, only ever inside lab namespaces)
SRC_DST = ("10.231.1.1", "10.231.1.2")       # direct veth src <-> dst
ADM_DST = ("10.231.9.1", "10.231.9.2")       # admin host <-> target (control plane)
ADM_SRC = ("10.231.8.1", "10.231.8.2")       # admin host <-> source
TUN = ("10.231.2.1", "10.231.2.2")           # relay link src <-> dst
SRC_PROXY = ("10.231.3.1", "10.231.3.2")     # src <-> proxy
PROXY_DST = ("10.231.4.1", "10.231.4.2")     # proxy <-> dst
V6 = ("fd00:231:6::1", "fd00:231:6::2")

RELAY_DELAY_MS = 10.0                         # one way -> 20 ms RTT
RELAY_LOSS = 0.005


def _push_options() -> str:
    r = subprocess.run([PY, "-m", "cvmigrate", "push", "--help"], capture_output=True, text=True,
                       env=clean_env())
    return r.stdout


def reconnect_option() -> str | None:
    """The agent's reconnect option, if the lead's reconnect-and-resume has landed."""
    m = re.search(r"(--retry[\w-]*|--reconnect[\w-]*)", _push_options())
    return m.group(1) if m else None


def proxy_option() -> str | None:
    """The push option that takes "http://user:pass@host:port" (Net.Mode 3), once it exists."""
    m = re.search(r"(--(?:http-|data-)?proxy)\b", _push_options())
    return m.group(1) if m else None


# ------------------------------------------------------------------ fixtures
@pytest.fixture
def lab() -> Iterator[NetLab]:
    require_netns()
    with NetLab() as lab:
        yield lab


def make_tree(root: Path, *, big: int, big_size: int, small: int = 300, seed: int = 5) -> int:
    """Random (incompressible) big files, small files, a symlink, odd modes; returns bytes."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    total = 0
    for i in range(big):
        data = rng.randbytes(big_size)
        (root / f"big{i}.bin").write_bytes(data)
        total += len(data)
    d = root / "etc" / "conf.d"
    d.mkdir(parents=True)
    for i in range(small):
        data = rng.randbytes(rng.randint(0, 8192))
        (d / f"f{i:04d}.conf").write_bytes(data)
        total += len(data)
    (root / "etc" / "shadow").write_text("root:$6$secret:19000:0:99999:7:::\n")
    os.chmod(root / "etc" / "shadow", 0o640)
    os.symlink("conf.d/f0001.conf", root / "etc" / "link")
    (root / "empty").mkdir()
    os.chmod(root / "empty", 0o1777)
    return total


@pytest.fixture(scope="module")
def small_tree(tmp_path_factory) -> tuple[Path, int]:
    """~24 MiB: two 10 MiB random files + 300 small files."""
    root = tmp_path_factory.mktemp("netns-src-small") / "src"
    return root, make_tree(root, big=2, big_size=10 * MiB)


@pytest.fixture(scope="module")
def mid_tree(tmp_path_factory) -> tuple[Path, int]:
    """~64 MiB: long enough at 100 Mbit/s (~5 s) to cut the link in the middle."""
    root = tmp_path_factory.mktemp("netns-src-mid") / "src"
    return root, make_tree(root, big=4, big_size=16 * MiB, seed=6)


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    token_file: Path


def make_pki(d: Path, host: str) -> Pki:
    from cvmigrate.common.tls import new_token
    from cvmigrate.controller.pki import mint_migration_pki
    paths = mint_migration_pki(d / "pki", hosts=[host], migration_id="t")
    tok = d / "token"
    fd = os.open(tok, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(new_token() + "\n")
    return Pki(Path(paths.ca_cert), Path(paths.server_cert), Path(paths.server_key),
               Path(paths.client_cert), Path(paths.client_key), tok)


@dataclass
class Receiver:
    proc: subprocess.Popen
    port: int
    root: Path
    log: Path
    addr: str

    @property
    def target(self) -> str:
        return hostport(self.addr, self.port)

    def output(self) -> str:
        return self.log.read_bytes().decode(errors="replace")


def start_receiver(lab: NetLab, ns: str, addr: str, root: Path, work: Path, pki: Pki | None,
                   *extra: str) -> Receiver:
    root.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    port_file, log = work / "receiver.port", work / "receiver.log"
    argv: list[Arg] = [PY, "-m", "cvmigrate", "receive", "--listen", hostport(addr, 0), "--root", root,
            "--port-file", port_file]
    if pki is None:
        argv.append("--insecure")
    else:
        argv += ["--tls-cert", pki.server_cert, "--tls-key", pki.server_key, "--tls-ca", pki.ca,
                 "--token-file", pki.token_file]
    argv += list(extra)
    p = lab.popen(ns, argv, log=log, env=clean_env({"CVMIGRATE_TOKEN": TEST_TOKEN}) if pki is None else None)
    port = int(wait_for_file(port_file, proc=p, what="cvmigrate receive", log=log))
    return Receiver(p, port, root, log, addr)


@dataclass
class Push:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def summary(self) -> dict[str, Any] | None:
        return parse_summary(self.stdout)

    def describe(self) -> str:
        return (f"$ {' '.join(map(str, self.argv))}\nexit {self.returncode} after {self.seconds:.1f}s\n"
                f"--- stdout\n{self.stdout[-3000:]}\n--- stderr\n{self.stderr[-6000:]}")


def push_argv(src: Path, target: str, pki: Pki | None, *extra: str, token: bool = True) -> list[Arg]:
    argv: list[Arg] = [PY, "-m", "cvmigrate", "push", src, "--to", target, "--no-default-excludes", "--json"]
    if pki is None:
        argv.append("--insecure")
    else:
        argv += ["--tls-ca", pki.ca, "--tls-cert", pki.client_cert, "--tls-key", pki.client_key]
        if token:
            argv += ["--token-file", pki.token_file]
    return argv + list(extra)


def run_push(lab: NetLab, ns: str, argv: Sequence[Arg], *, env: dict[str, str] | None = None,
             timeout: float = 180) -> Push:
    t0 = time.monotonic()
    if env is None and "--insecure" in argv:
        env = clean_env({"CVMIGRATE_TOKEN": TEST_TOKEN})  # a plaintext receiver still requires a token
    r = lab.run(ns, argv, check=False, timeout=timeout, env=env)
    return Push([str(a) for a in argv], r.returncode, r.stdout.decode(errors="replace"),
                r.stderr.decode(errors="replace"), time.monotonic() - t0)


def assert_mirrored(src: Path, dst: Path, push: Push | None = None) -> None:
    diff = rsync_itemize(src, dst)
    assert diff == [], ("target differs from source:\n" + "\n".join(diff[:40])
                        + ("\n" + push.describe() if push else ""))


def report(name: str, **figures: Any) -> None:
    """One line of figures per scenario (visible with -s)."""
    print(f"\n[netns] {name}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))


# ------------------------------------------------------------------ topologies
def direct_topology(lab: NetLab, *, v6: bool = False) -> tuple[str, str, str, str]:
    """src <-> dst on one veth (plus an admin host wired to both); returns (src, dst, dst_addr, src_dev)."""
    src, dst, adm = lab.add_ns("src"), lab.add_ns("dst"), lab.add_ns("adm")
    lab.veth(src, "v-dst", dst, "v-src", addrs=V6 if v6 else SRC_DST, prefix=64 if v6 else 24)
    lab.veth(adm, "v-dst", dst, "v-adm", addrs=ADM_DST)
    lab.veth(adm, "v-src", src, "v-adm", addrs=ADM_SRC)
    return src, dst, (V6[1] if v6 else SRC_DST[1]), "v-dst"


def relay_topology(lab: NetLab, work: Path, *, delay_ms: float = RELAY_DELAY_MS, loss: float = RELAY_LOSS,
                   rate_mbit: float | None = 100, seed: int = 1) -> tuple[str, str, Path]:
    """src and dst joined ONLY by the user-space relay (TUN devices); returns (src, dst, stats_file)."""
    src, dst, rl = lab.add_ns("src"), lab.add_ns("dst"), lab.add_ns("relay")
    work.mkdir(parents=True, exist_ok=True)
    ready, stats, log = work / "relay.ready", work / "relay.json", work / "relay.log"
    p = lab.popen(rl, [PY, "-m", "tests.helpers.linkrelay", "--ns-a", src, "--dev-a", "cvt0",
                       "--ns-b", dst, "--dev-b", "cvt0", "--delay-ms", delay_ms, "--loss", loss,
                       "--seed", seed, "--ready-file", ready, "--stats-file", stats], log=log)
    wait_for_file(ready, proc=p, what="linkrelay", log=log)
    for ns, (me, peer) in ((src, TUN), (dst, TUN[::-1])):
        lab.addr(ns, "cvt0", f"{me}/32", peer=f"{peer}/32")
        lab.ip(ns, "link", "set", "cvt0", "up")
        if rate_mbit:
            lab.tbf(ns, "cvt0", rate_mbit)
    return src, dst, stats


def rtt_ms(lab: NetLab, src: str, dst: str, addr: str, count: int = 10) -> list[float]:
    code = ("import socket\n"
            f"s=socket.socket(socket.AF_INET6 if ':' in {addr!r} else socket.AF_INET)\n"
            f"s.bind(({addr!r},0)); s.listen(64); print(s.getsockname()[1], flush=True)\n"
            "while True: s.accept()[0].close()\n")
    p = lab.popen(dst, [PY, "-c", code], stdout=subprocess.PIPE)
    assert p.stdout is not None
    port = int(p.stdout.readline())
    try:
        return lab.tcp_rtt_ms(src, addr, port, count)
    finally:
        p.kill()


# ------------------------------------------------------------------ 1. rate-limited link
def test_push_over_rate_limited_link(lab, small_tree, tmp_path):
    src_dir, nbytes = small_tree
    src, dst, addr, dev = direct_topology(lab)
    lab.tbf(src, dev, 100)
    lab.tbf(dst, "v-src", 100)
    pki = make_pki(tmp_path, addr)
    rcv = start_receiver(lab, dst, addr, tmp_path / "dst", tmp_path / "rw", pki)
    before = lab.link_stats(src, dev)
    p = run_push(lab, src, push_argv(src_dir, rcv.target, pki))
    assert p.returncode == 0, p.describe()
    wire = lab.link_stats(src, dev)["tx_bytes"] - before["tx_bytes"]
    assert_mirrored(src_dir, rcv.root, p)
    mbit = wire * 8 / p.seconds / 1e6
    report("rate-limited 100 Mbit/s", content_mib=round(nbytes / MiB, 1), wire_mib=round(wire / MiB, 1),
           push_s=round(p.seconds, 2), wire_mbit_s_incl_startup=round(mbit, 1))
    # the shaper is really there: nothing crosses faster than 100 Mbit/s (+ tbf burst)
    assert mbit < 105, f"{mbit:.1f} Mbit/s over a 100 Mbit/s tbf link"


# ------------------------------------------------------------------ 2. delay + loss via the relay
def _lossy(lab, tree, tmp_path, name: str) -> None:
    src_dir, nbytes = tree
    src, dst, stats_file = relay_topology(lab, tmp_path / "relay")
    addr = TUN[1]
    rtts = rtt_ms(lab, src, dst, addr)
    pki = make_pki(tmp_path, addr)
    rcv = start_receiver(lab, dst, addr, tmp_path / "dst", tmp_path / "rw", pki)
    p = run_push(lab, src, push_argv(src_dir, rcv.target, pki), timeout=600)
    assert p.returncode == 0, p.describe()
    assert_mirrored(src_dir, rcv.root, p)
    time.sleep(1.1)                      # the relay rewrites its counters every second
    st = json.loads(stats_file.read_text())
    ab = st["a_to_b"]
    report(name, content_mib=round(nbytes / MiB, 1), push_s=round(p.seconds, 2),
           content_mbit_s_incl_startup=round(nbytes * 8 / p.seconds / 1e6, 1),
           rtt_median_ms=round(statistics.median(rtts), 2), rtt_min_ms=round(min(rtts), 2),
           packets=ab["rx_packets"], lost=ab["lost_random"],
           loss_pct=round(100 * ab["lost_random"] / max(1, ab["rx_packets"]), 3),
           late_mean_ms=ab["late_mean_ms"], late_max_ms=ab["late_max_ms"], late_hist=ab["late_hist_ms"],
           realtime=st.get("realtime"))
    # the link really had the configured properties
    assert min(rtts) >= 19.0 and statistics.median(rtts) < 26, rtts
    assert ab["lost_random"] > 0 and 0.002 < ab["lost_random"] / ab["rx_packets"] < 0.01, ab
    assert ab["queue_drops"] == 0, ab


def test_push_over_lossy_delayed_link(lab, small_tree, tmp_path):
    _lossy(lab, small_tree, tmp_path, "100 Mbit/s + 20 ms RTT + 0.5 % loss")


@pytest.mark.netns_slow
def test_push_over_lossy_delayed_link_large(lab, tmp_path):
    tree = tmp_path / "src-large"
    nbytes = make_tree(tree, big=8, big_size=32 * MiB, seed=8)
    _lossy(lab, (tree, nbytes), tmp_path, "lossy link, 256 MiB")


@pytest.mark.netns_slow
def test_relay_raw_figures(lab, tmp_path):
    """What the relay itself achieves: throughput with and without the 100 Mbit/s shaper, RTT."""
    src, dst, stats_file = relay_topology(lab, tmp_path / "relay", loss=0.0, rate_mbit=None)
    rtts = rtt_ms(lab, src, dst, TUN[1], 30)
    unshaped = lab.tcp_throughput(src, dst, TUN[1], 200 * MiB)
    lab.tbf(src, "cvt0", 100)
    lab.tbf(dst, "cvt0", 100)
    shaped = lab.tcp_throughput(src, dst, TUN[1], 100 * MiB)
    time.sleep(1.1)
    st = json.loads(stats_file.read_text())
    report("relay raw", rtt_median_ms=round(statistics.median(rtts), 2), rtt_min_ms=round(min(rtts), 2),
           rtt_max_ms=round(max(rtts), 2), unshaped_mbit_s=round(unshaped["mbit_per_s"], 1),
           shaped_100_mbit_s=round(shaped["mbit_per_s"], 1), late=st["a_to_b"]["late_hist_ms"],
           late_max_ms=st["a_to_b"]["late_max_ms"], tun_src=lab.link_stats(src, "cvt0"))
    assert shaped["mbit_per_s"] > 80
    assert unshaped["mbit_per_s"] > 100, "the relay cannot keep up with 100 Mbit/s"
    assert abs(statistics.median(rtts) - 2 * RELAY_DELAY_MS) < 3


# ------------------------------------------------------------------ 3. link cut
def _cut(lab, tree, tmp_path, cut_s: float, name: str, side: str = "src") -> None:
    """Cut the link mid-transfer for ``cut_s`` seconds.

    ``side="src"``: the source's own interface goes down -- its route
    disappears, so the kernel answers sendmsg with ENETUNREACH at once.
    ``side="dst"``: the far end goes down -- the source keeps its route
    and only loses carrier, packets vanish silently (a failure somewhere on
    the path); only timeouts and keepalives can notice.
    """
    src_dir, nbytes = tree
    src, dst, addr, dev = direct_topology(lab)
    lab.tbf(src, dev, 100)
    pki = make_pki(tmp_path, addr)
    rcv = start_receiver(lab, dst, addr, tmp_path / "dst", tmp_path / "rw", pki)
    opt = reconnect_option()
    argv = push_argv(src_dir, rcv.target, pki)
    log = tmp_path / "push1.out"
    errlog = tmp_path / "push1.err"
    base = lab.link_stats(dst, "v-src")["rx_bytes"]
    t0 = time.monotonic()
    with open(errlog, "wb") as err, open(log, "wb") as out:
        proc = lab.popen(src, argv, stdout=out, stderr=err)
        # cut once ~30 % of the content has crossed
        while lab.link_stats(dst, "v-src")["rx_bytes"] - base < 0.3 * nbytes:
            assert proc.poll() is None, f"push ended before the cut:\n{errlog.read_text()}"
            assert time.monotonic() - t0 < 120, "transfer never reached 30 %"
            time.sleep(0.05)
        t_cut = time.monotonic() - t0
        cut_ns, cut_dev = (src, dev) if side == "src" else (dst, "v-src")
        lab.link(cut_ns, cut_dev, False)
        t_down = time.monotonic()
        exited_during_cut = None         # seconds after the cut when the push gave up, if it did
        while time.monotonic() - t_down < cut_s:
            if exited_during_cut is None and proc.poll() is not None:
                exited_during_cut = time.monotonic() - t_down
            time.sleep(0.1)
        lab.link(cut_ns, cut_dev, True)
        t_up = time.monotonic()
        try:
            rc = proc.wait(timeout=300)
            t_end = time.monotonic()
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(f"push hung after the link came back:\n{errlog.read_text()[-4000:]}") from None
    first = Push([str(a) for a in argv], rc, log.read_text(errors="replace"),
                 errlog.read_text(errors="replace"), t_end - t0)
    if exited_during_cut is not None:
        when = f"{exited_during_cut:.1f}s into the cut"
    else:
        when = f"{t_end - t_up:.1f}s after the link came back"
    outcome = "completed by itself" if rc == 0 else f"failed (exit {rc})"
    rerun = None
    if rc != 0:
        assert opt is None, f"push has {opt} but did not survive a {cut_s:.0f}s cut:\n{first.describe()}"
        # without reconnect: the failure must be clear (one line naming the receiver), not a traceback
        last = first.stderr.strip().splitlines()[-1] if first.stderr.strip() else ""
        assert "error" in last and "Traceback" not in first.stderr, first.describe()
        rerun = run_push(lab, src, argv)
        assert rerun.returncode == 0, rerun.describe()
    assert_mirrored(src_dir, rcv.root, rerun or first)
    report(name, side=side, reconnect_option=opt, cut_after_s=round(t_cut, 1), cut_s=cut_s, first_push=outcome,
           first_push_ended=when, first_error=(first.stderr.strip().splitlines() or [""])[-1][:300],
           rerun_s=round(rerun.seconds, 1) if rerun else None,
           rerun_resumed=(rerun.summary or {}).get("resumed") if rerun else None)


def test_link_cut_10s_mid_transfer(lab, mid_tree, tmp_path):
    _cut(lab, mid_tree, tmp_path, 10.0, "link cut 10 s")


@pytest.mark.netns_slow
def test_link_blackhole_10s_mid_transfer(lab, mid_tree, tmp_path):
    _cut(lab, mid_tree, tmp_path, 10.0, "far end down 10 s", side="dst")


@pytest.mark.netns_slow
@pytest.mark.parametrize("side", ["src", "dst"])
def test_link_cut_2min_mid_transfer(lab, mid_tree, tmp_path, side):
    _cut(lab, mid_tree, tmp_path, 120.0, "link cut 120 s", side=side)


# ------------------------------------------------------------------ 4. proxy-only path
def proxy_topology(lab: NetLab, work: Path, user: str, password: str) -> tuple[str, str, int, Path, Path]:
    """src -- proxy -- dst with no forwarding and no route src -> dst; returns (src, dst, proxy_port, stats, log)."""
    src, px, dst = lab.add_ns("src"), lab.add_ns("proxy"), lab.add_ns("dst")
    lab.veth(src, "v-proxy", px, "v-src", addrs=SRC_PROXY)
    lab.veth(px, "v-dst", dst, "v-proxy", addrs=PROXY_DST)
    lab.sysctl(px, "net.ipv4.ip_forward", 0)
    lab.sysctl(px, "net.ipv6.conf.all.forwarding", 0)
    work.mkdir(parents=True, exist_ok=True)
    creds = work / "proxy.creds"
    fd = os.open(creds, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"{user}:{password}\n")
    port_file, stats, log = work / "proxy.port", work / "proxy.json", work / "proxy.log"
    p = lab.popen(px, [PY, "-m", "tests.helpers.httpproxy", "--listen", f"{SRC_PROXY[1]}:0",
                       "--port-file", port_file, "--auth-file", creds, "--stats-file", stats], log=log)
    port = int(wait_for_file(port_file, proc=p, what="httpproxy", log=log))
    return src, dst, port, stats, log


def test_proxy_only_path(lab, small_tree, tmp_path):
    """gRPC through an HTTP CONNECT proxy with Basic auth.

    agent/push.py passes the proxy as the ``grpc.http_proxy`` channel argument
    and switches gRPC's own http(s)_proxy/grpc_proxy environment handling off
    (so a proxy meant for the cloud API never captures the data path); the
    proxy therefore comes from a push option.
    """
    popt = proxy_option()
    if popt is None:
        pytest.skip("cvmigrate push has no --proxy option yet (gRPC's proxy environment variables are "
                    "deliberately ignored by agent/push.py channel_options)")
    src_dir, nbytes = small_tree
    src, dst, pport, stats, plog = proxy_topology(lab, tmp_path / "proxy", "mig", "s3cr3t-pw")
    addr = PROXY_DST[1]
    pki = make_pki(tmp_path, addr)
    rcv = start_receiver(lab, dst, addr, tmp_path / "dst", tmp_path / "rw", pki)
    # the only way from src to dst is the proxy
    assert lab.can_connect(src, addr, rcv.port) in ("ENETUNREACH", "EHOSTUNREACH"), "src can reach dst directly"
    argv = push_argv(src_dir, rcv.target, pki)

    # wrong proxy password: the proxy answers 407, the push fails, nothing is written.
    # (With the agent's reconnect, a 407 is currently retried like a lost link for the whole
    # --retry-for window -- reported to the lead; bound it here so the test stays quick.)
    opt = reconnect_option()
    bad_argv = argv + [popt, f"http://mig:wrong@{SRC_PROXY[1]}:{pport}"]
    bad_argv += [opt, "5"] if opt == "--retry-for" else []
    bad = run_push(lab, src, bad_argv, timeout=120)
    assert bad.returncode != 0, bad.describe()
    assert "407" in plog.read_text(), plog.read_text()
    assert [n for n in os.listdir(rcv.root) if n != ".cvmigrate"] == []

    good = run_push(lab, src, argv + [popt, f"http://mig:s3cr3t-pw@{SRC_PROXY[1]}:{pport}"])
    assert good.returncode == 0, good.describe() + "\n--- proxy\n" + plog.read_text()
    assert_mirrored(src_dir, rcv.root, good)
    st = json.loads(stats.read_text())
    assert st["tunnels"] >= 1 and rcv.target in st["targets"], st
    assert st["bytes_up"] > 0.9 * nbytes, st          # the content went through the tunnel
    assert "s3cr3t-pw" not in plog.read_text()
    report(f"proxy-only via {popt}", tunnels=st["tunnels"], refused_auth=st["refused_auth"],
           bytes_up_mib=round(st["bytes_up"] / MiB, 1), push_s=round(good.seconds, 2),
           bad_creds_exit=bad.returncode, bad_creds_s=round(bad.seconds, 1),
           bad_creds_error=(bad.stderr.strip().splitlines() or [""])[-1][:200])


# ------------------------------------------------------------------ 5. unauthenticated client
def test_unauthenticated_client_refused(lab, small_tree, tmp_path):
    src_dir, _ = small_tree
    src, dst, addr, _dev = direct_topology(lab)
    pki = make_pki(tmp_path, addr)
    rcv = start_receiver(lab, dst, addr, tmp_path / "dst", tmp_path / "rw", pki,
                         "--state-dir", tmp_path / "state")
    p = run_push(lab, src, push_argv(src_dir, rcv.target, pki, token=False), timeout=60)
    assert p.returncode == 5, p.describe()                    # AuthError's exit code
    assert "UNAUTHENTICATED" in p.stderr or "token" in p.stderr.lower(), p.describe()
    assert os.listdir(rcv.root) == [], f"refused client changed the target: {os.listdir(rcv.root)}"
    time.sleep(0.2)
    assert "UNAUTHENTICATED" in rcv.output(), rcv.output()
    token = pki.token_file.read_text().strip()
    assert token not in p.stderr + p.stdout + rcv.output()
    report("unauthenticated client", exit=p.returncode, error=p.stderr.strip().splitlines()[-1][:200],
           receiver_log=[line for line in rcv.output().splitlines() if "UNAUTHENTICATED" in line][:1])


# ------------------------------------------------------------------ 6. IPv6 data path
def test_ipv6_data_path(lab, small_tree, tmp_path):
    src_dir, _ = small_tree
    src, dst, addr, dev = direct_topology(lab, v6=True)
    # no IPv4 between src and dst at all
    assert lab.can_connect(src, SRC_DST[1], 1) in ("ENETUNREACH", "EHOSTUNREACH")
    pki = make_pki(tmp_path, addr)
    rcv = start_receiver(lab, dst, addr, tmp_path / "dst", tmp_path / "rw", pki)
    before = lab.link_stats(src, dev)["tx_bytes"]
    p = run_push(lab, src, push_argv(src_dir, rcv.target, pki))
    assert p.returncode == 0, p.describe()
    assert_mirrored(src_dir, rcv.root, p)
    assert lab.link_stats(src, dev)["tx_bytes"] - before > 0.9 * small_tree[1]
    report("IPv6", target=rcv.target, push_s=round(p.seconds, 2))
