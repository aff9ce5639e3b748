"""Resume after faults, end to end: SIGKILL the agent, SIGKILL the receiver, cut the link.

Real processes and real files. ``cvmigrate receive`` runs on 127.0.0.1:0; the
agent (``cvmigrate push``) talks to it through ``tests.helpers.tcpproxy.TcpProxy``,
which counts the bytes it forwards client -> server and can cut the link.

Each case:
1. starts a fresh receiver on an empty target and a push of the shared source
   tree (~2000 small files, three 96 MiB random files, a few medium ones);
2. at a seeded moment (when the proxy has forwarded a seeded fraction, 0.25 to
   0.95, of a fresh copy's wire bytes, plus a seeded 0-20 ms) SIGKILLs the
   agent, SIGKILLs the receiver, or cuts the link;
3. checks that no file is torn: every regular file at its final name in the
   target has exactly the source's content; partial data lives only in
   ``.cvm-<16hex>.tmp`` files;
4. re-runs the push (against a restarted receiver on a new port after a
   receiver kill) to completion and checks: exit 0, ``resumed`` true, the
   rsync oracle finds nothing to change, and the bytes re-sent stay within
   one in-flight window.

Bytes re-sent are measured on the wire, the most honest count available:

    resent = W(killed run) + W(resume run) - W(fresh copy)

where W is the proxy's client -> server byte count (content, protobuf and
HTTP/2 framing, entry lists: everything). The bound is
``max(64 MiB, 2 % of total content) + SLACK``; SLACK covers the second run's
entry list and framing, which a fresh copy pays once.

The numbers of every case are printed in the terminal summary (see
tests/e2e/conftest.py). Default run: 2 agent kills, 2 receiver kills (one re-run by hand against the
restarted receiver's new address, one where the agent reconnects by itself),
2 cuts (agent reconnecting by itself; agent with ``--retry-for 0`` failing
clearly, then re-run).
``-m slow``: 20 more seeded kills, agent and receiver alternating, and one
migration killed repeatedly.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers.oracle import rsync_itemize
from tests.helpers.procs import TEST_TOKEN, ReceiverProc, child_env, parse_summary, run_push, start_receiver
from tests.helpers.tcpproxy import TcpProxy

xxhash = pytest.importorskip("xxhash")

pytestmark = [
    pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync (the oracle) is missing"),
    pytest.mark.timeout(300),
]

KiB = 1 << 10
MiB = 1 << 20

#: Plain bytes the agent may keep un-committed (Welcome.max_inflight_bytes).
WINDOW = 64 * MiB
#: Extra wire bytes a resume may cost over a fresh copy without re-sending content:
#: the whole entry list again (~0.25 MiB for this tree), HTTP/2 and protobuf framing.
SLACK = 4 * MiB
#: Never kill before this many wire bytes: past one window the receiver must
#: have committed at least once, so the journal holds something to resume from.
MIN_KILL_WIRE = WINDOW + 16 * MiB

SMALL_FILES = 2000
BIG_FILES = 3
BIG_SIZE = 96 * MiB
NO_DEFAULT_EXCLUDES = "--no-default-excludes"
#: Every push here is a parallel pass of 3 streams (more than this machine's cores, so two share a receiver
#: worker): a kill or cut loses several streams at once, and the bound below must still hold -- the streams
#: share one in-flight window.  (Single streams are covered by the protocol and integration tests.)
STREAMS = "--streams=3"
TMP_RE = re.compile(r"^\.cvm-[0-9a-f]{16}\.tmp$")

AGENT_EXIT_TIMEOUT = 60.0
CUT_SECONDS = 3.0
IDLE_TIMEOUT = 30.0


# ---------------------------------------------------------------- the source tree
@dataclass
class SourceTree:
    root: Path
    files: dict[str, tuple[int, bytes]]   # rel path -> (size, xxh3-128 digest)
    total: int                            # content bytes

    @property
    def bound(self) -> int:
        return max(WINDOW, self.total * 2 // 100)


def _digest(path: Path | str) -> bytes:
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while True:
            b = f.read(4 * MiB)
            if not b:
                return h.digest()
            h.update(b)


def build_source(root: Path, seed: int = 20240611) -> SourceTree:
    """~2000 small files in 40 directories, 3 x 96 MiB, 4 medium; random (incompressible)."""
    rng = random.Random(seed)
    root.mkdir(parents=True)
    files: dict[str, tuple[int, bytes]] = {}

    def put(rel: str, data: bytes) -> None:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        files[rel] = (len(data), xxhash.xxh3_128_digest(data))

    for i in range(SMALL_FILES):
        # some empty files, mostly up to 16 KiB, a few up to 300 KiB (more than one chunk's worth
        # of small files per segment)
        r = rng.random()
        size = 0 if r < 0.02 else rng.randint(1, 16 * KiB) if r < 0.95 else rng.randint(16 * KiB, 300 * KiB)
        put(f"small/d{i % 40:02d}/s{i:04d}.bin", rng.randbytes(size))
    for i, size in enumerate((3 * MiB + 12345, 5 * MiB, 7 * MiB - 1, 1 * MiB + 1)):
        put(f"medium/m{i}.bin", rng.randbytes(size))
    for i in range(BIG_FILES):
        p = root / f"big/b{i}.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        h = xxhash.xxh3_128()
        with open(p, "wb") as f:
            for _ in range(BIG_SIZE // MiB):
                block = rng.randbytes(MiB)
                h.update(block)
                f.write(block)
        files[f"big/b{i}.bin"] = (BIG_SIZE, h.digest())
    # fixed times: a re-run must not see "changed" metadata
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for n in filenames + dirnames:
            os.utime(os.path.join(dirpath, n), ns=(1_600_000_000_000_000_000, 1_600_000_000_123_456_789))
    os.sync()  # no dirty source pages left for the receiver's syncfs to flush during the measurements
    return SourceTree(root, files, sum(s for s, _ in files.values()))


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> SourceTree:
    return build_source(tmp_path_factory.mktemp("fault-src") / "src")


# ---------------------------------------------------------------- processes
class Push:
    """A ``cvmigrate push`` running in the background (so it can be killed)."""

    def __init__(self, src: Path, address: str, work: Path, name: str, *extra: str) -> None:
        work.mkdir(parents=True, exist_ok=True)
        self.out_path = work / f"{name}.stdout"
        self.err_path = work / f"{name}.stderr"
        self.argv = [sys.executable, "-m", "cvmigrate", "push", os.fspath(src), "--to", address,
                     NO_DEFAULT_EXCLUDES, STREAMS, *extra, "--insecure", "--json"]
        self._out = open(self.out_path, "wb")  # noqa: SIM115 - the child writes it; closed by _close()
        self._err = open(self.err_path, "wb")  # noqa: SIM115 - the child writes it; closed by _close()
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=self._out, stderr=self._err,
                                     env=child_env({"CVMIGRATE_TOKEN": TEST_TOKEN}))

    def poll(self) -> int | None:
        return self.proc.poll()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.wait(10)

    def wait(self, timeout: float) -> int:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            self._close()
            raise AssertionError(f"push did not exit within {timeout:.0f}s:\n{self.describe()}") from None
        self._close()
        return rc

    def _close(self) -> None:
        for f in (self._out, self._err):
            if not f.closed:
                f.close()

    @property
    def stdout(self) -> str:
        return self.out_path.read_bytes().decode("utf-8", "backslashreplace")

    @property
    def stderr(self) -> str:
        return self.err_path.read_bytes().decode("utf-8", "backslashreplace")

    def describe(self) -> str:
        return (f"$ {' '.join(self.argv)}\nexit {self.proc.returncode}\n--- stdout\n{self.stdout[-3000:]}\n"
                f"--- stderr\n{self.stderr[-6000:]}")


def wait_idle(rp: ReceiverProc, timeout: float = IDLE_TIMEOUT) -> None:
    """Wait until the receiver has closed the dead session (Ping says not busy)."""
    import grpc

    from cvmigrate.proto import transfer_pb2 as pb
    from cvmigrate.proto import transfer_pb2_grpc as pb_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(f"127.0.0.1:{rp.port}") as ch:
        stub = pb_grpc.ReceiverStub(ch)
        while True:
            try:
                if not stub.Ping(pb.PingRequest(), timeout=2).busy:
                    return
            except grpc.RpcError as exc:
                last = exc
            else:
                last = "busy"
            if time.monotonic() > deadline:
                raise AssertionError(f"receiver still busy {timeout:.0f}s after its agent went away ({last}): "
                                     f"the dead session was never released\n{rp.output()[-4000:]}")
            time.sleep(0.05)


def wait_quiet(proxy: TcpProxy, timeout: float = 10.0) -> None:
    """Wait until the proxy has no live connection (its counts are final)."""
    deadline = time.monotonic() + timeout
    while proxy.live_connections and time.monotonic() < deadline:
        time.sleep(0.02)


# ---------------------------------------------------------------- checks
def torn_files(src: SourceTree, dst: Path) -> tuple[list[str], int, int]:
    """Problems with files at their final names in dst, how many partial temp files exist,
    and how many content bytes are already in place at final names."""
    problems: list[str] = []
    tmps = 0
    done = 0
    for dirpath, dirnames, filenames in os.walk(dst):
        rel_dir = os.path.relpath(dirpath, dst)
        if rel_dir == ".":
            rel_dir = ""
            if ".cvmigrate" in dirnames:
                dirnames.remove(".cvmigrate")
        for n in filenames:
            rel = f"{rel_dir}/{n}" if rel_dir else n
            p = Path(dirpath) / n
            if TMP_RE.match(n):
                tmps += 1
                continue
            if not p.is_file() or p.is_symlink():
                problems.append(f"{rel}: not a regular file")
                continue
            want = src.files.get(rel)
            if want is None:
                problems.append(f"{rel}: at a final name but not in the source")
                continue
            size = p.stat().st_size
            if size != want[0]:
                problems.append(f"{rel}: torn: {size} bytes, source has {want[0]}")
            elif _digest(p) != want[1]:
                problems.append(f"{rel}: torn: content differs from the source")
            else:
                done += size
    return problems, tmps, done


def journal_counts(dst: Path) -> str:
    db = dst / ".cvmigrate" / "journal.db"
    if not db.exists():
        return "no journal"
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            e = con.execute("SELECT count(*) FROM entries").fetchone()[0]
            p = con.execute("SELECT count(*) FROM partial").fetchone()[0]
        finally:
            con.close()
        return f"{e} entries, {p} partial"
    except sqlite3.Error as exc:
        return f"unreadable: {exc}"


# ---------------------------------------------------------------- the fresh copy (baseline)
@dataclass
class Fresh:
    wire: int          # proxy client -> server bytes
    seconds: float     # push wall time, process start to exit
    summary: dict


@pytest.fixture(scope="module")
def fresh(source, tmp_path_factory) -> Fresh:
    """One uninterrupted copy through the proxy: the wire bytes and time a full pass costs."""
    work = tmp_path_factory.mktemp("fault-fresh")
    dst = work / "dst"
    with start_receiver(dst, work_dir=work / "recv") as rp, TcpProxy(rp.port) as proxy:
        t0 = time.monotonic()
        res = run_push(source.root, proxy.address, NO_DEFAULT_EXCLUDES, STREAMS, timeout=300)
        seconds = time.monotonic() - t0
        assert res.returncode == 0, f"fresh copy failed:\n{res.describe()}\n{rp.output()[-4000:]}"
        wait_quiet(proxy)
        wire = proxy.c2s
    s = res.summary
    assert s and s["bytes_total"] == source.total, s
    assert s["resumed"] is False, s
    diff = rsync_itemize(source.root, dst)
    assert diff == [], "fresh copy differs from the source:\n" + "\n".join(diff[:50])
    assert wire >= source.total, (wire, source.total)
    shutil.rmtree(dst)
    return Fresh(wire=wire, seconds=seconds, summary=s)


# ---------------------------------------------------------------- one fault case
@dataclass
class Outcome:
    seed: int
    kind: str
    trigger: str
    killed_at_wire: int
    wire1: int
    wire2: int
    resent: int
    bound: int
    tmps_after_kill: int
    journal_after_kill: str
    summary2: dict = field(default_factory=dict)
    first_exit: int | None = None

    def line(self) -> str:
        s = self.summary2
        return (f"seed={self.seed:<4} {self.kind:<18} trigger={self.trigger:<9} "
                f"killed@{self.killed_at_wire / MiB:7.1f} MiB  W1={self.wire1 / MiB:7.1f}  "
                f"W2={self.wire2 / MiB:7.1f}  resent={self.resent / MiB:6.2f} MiB "
                f"(bound {self.bound / MiB:.0f}+{SLACK // MiB} MiB)  "
                f"run2: sent={s.get('bytes_sent', 0) / MiB:.1f} MiB reused={s.get('bytes_reused', 0) / MiB:.1f} MiB "
                f"skipped={s.get('files_skipped')} tmp-after-kill={self.tmps_after_kill} "
                f"journal=[{self.journal_after_kill}] exit1={self.first_exit}")


def _wait_trigger(push: Push, proxy: TcpProxy, rng: random.Random, fresh: Fresh) -> str:
    """Block until the proxy has forwarded a seeded fraction of a fresh copy's wire bytes.

    Wire bytes, not time: the moment is then the same on a fast and on a slow
    machine, and a seed reproduces it (up to a few hundred KiB of polling and
    jitter).
    """
    frac = rng.uniform(0.25, 0.95)
    target = max(MIN_KILL_WIRE, int(frac * fresh.wire))
    jitter = rng.uniform(0, 0.02)
    while proxy.c2s < target:
        if push.poll() is not None:
            break
        time.sleep(0.002)
    time.sleep(jitter)   # and a little jitter: any instruction may be the last
    if push.poll() is not None:
        raise AssertionError(f"the push ended before the fault could be injected (at {frac:.2f} of a fresh "
                             f"copy's wire bytes, {proxy.c2s} of {target}):\n{push.describe()}")
    return f"wire {frac:.2f}"


#: Fault kinds. "receiver" and "cut-noretry" run the interrupted agent with ``--retry-for 0``
#: (it must fail clearly and be re-run by hand, against the new address after a receiver
#: crash); "receiver-reconnect" and "cut" leave the agent's own reconnect-and-resume on: it
#: must finish by itself once the receiver is back (behind the same proxy address).
KINDS = ("agent", "receiver", "receiver-reconnect", "cut", "cut-noretry")
NO_RETRY = ("--retry-for", "0")


def _assert_clear_failure(push: Push) -> None:
    """The agent lost its receiver: one clear error line saying what to do, no traceback."""
    err = push.stderr
    assert push.proc.returncode not in (0, None), push.describe()
    assert "Traceback" not in err, push.describe()
    assert re.search(r"cvmigrate push: error: .*receiver", err), push.describe()
    assert "again" in err or "check that" in err, (
        "the error should say what to do (re-run / check the receiver):\n" + push.describe())


def run_fault_case(seed: int, kind: str, source: SourceTree, fresh: Fresh, work: Path,
                   record=None) -> Outcome:
    """Start a push into an empty target, inject the fault, verify, resume, verify."""
    assert kind in KINDS, kind
    rng = random.Random(seed)
    dst = work / "dst"
    receivers: list[ReceiverProc] = []
    proxies: list[TcpProxy] = []
    try:
        rp = start_receiver(dst, work_dir=work / "recv1")
        receivers.append(rp)
        proxy = TcpProxy(rp.port)
        proxies.append(proxy)

        # -- the run that is interrupted
        extra = NO_RETRY if kind in ("receiver", "cut-noretry") else ()
        push = Push(source.root, proxy.address, work, "push1", *extra)
        try:
            trigger = _wait_trigger(push, proxy, rng, fresh)
            killed_at = proxy.c2s
            if kind == "agent":
                push.kill()
                first_exit = push.proc.returncode
                assert first_exit == -signal.SIGKILL, push.describe()
                wait_idle(rp)
                problems, tmps, _ = torn_files(source, dst)     # quiet now: the receiver is idle
                jc = journal_counts(dst)
            elif kind in ("receiver", "receiver-reconnect"):
                rp.kill()
                problems, tmps, _ = torn_files(source, dst)     # quiet now: the receiver is dead
                jc = journal_counts(dst)
                rp = start_receiver(dst, work_dir=work / "recv2")   # same root, new port
                receivers.append(rp)
                if kind == "receiver":
                    first_exit = push.wait(AGENT_EXIT_TIMEOUT)
                    _assert_clear_failure(push)
                    proxy = TcpProxy(rp.port)               # the re-run goes to a new address
                    proxies.append(proxy)
                else:
                    proxy.set_upstream(rp.port)             # the agent's address now leads to the new receiver
                    first_exit = push.wait(AGENT_EXIT_TIMEOUT)
                    assert first_exit == 0, ("the agent did not reconnect to the restarted receiver and finish "
                                             f"by itself:\n{push.describe()}\n{rp.output()[-3000:]}")
            else:  # cut, cut-noretry
                proxy.cut(hold_for=CUT_SECONDS, mode="refuse")
                # the receiver may still be finishing what it received: this checks that renames are
                # atomic at any instant, not only when everything is quiet
                problems, tmps, _ = torn_files(source, dst)
                jc = "-"   # the receiver is still live and may be committing
                first_exit = push.wait(AGENT_EXIT_TIMEOUT)
                if kind == "cut-noretry" or first_exit != 0:
                    _assert_clear_failure(push)
        finally:
            if push.poll() is None:
                push.kill()
        assert not problems, (f"seed {seed} ({kind} fault at {killed_at} wire bytes): files at their final "
                              "names differ from the source:\n" + "\n".join(problems[:30]))
        if first_exit == 0:
            s1 = parse_summary(push.stdout) or {}
            assert s1.get("resumed") is True, f"reconnected run must report resumed=true: {s1}"

        wait_quiet(proxy)
        wire1 = sum(p.c2s for p in proxies)

        if kind.startswith("cut") and first_exit != 0:
            # while the link is down a re-run fails fast and clearly, and changes nothing
            proxy.cut(hold_for=None, mode="refuse")
            before = proxy.c2s
            down = run_push(source.root, proxy.address, NO_DEFAULT_EXCLUDES, STREAMS, *NO_RETRY, timeout=60)
            assert down.returncode != 0, f"push succeeded through a cut link:\n{down.describe()}"
            assert re.search(r"cvmigrate push: error: .*receiver", down.stderr), down.describe()
            assert "Traceback" not in down.stderr, down.describe()
            assert proxy.c2s == before
            proxy.resume()
        wait_idle(rp)

        # -- resume (or, after the agent finished by itself, re-run: nothing left to send)
        base = proxy.c2s
        res = run_push(source.root, proxy.address, NO_DEFAULT_EXCLUDES, STREAMS, timeout=300)
        assert res.returncode == 0, (f"seed {seed}: resume after {kind} fault failed:\n{res.describe()}\n"
                                     f"--- receiver log\n{rp.output()[-4000:]}")
        wait_quiet(proxy)
        wire2 = proxy.c2s - base
        s = res.summary or {}
        out = Outcome(seed=seed, kind=kind, trigger=trigger, killed_at_wire=killed_at, wire1=wire1, wire2=wire2,
                      resent=wire1 + wire2 - fresh.wire, bound=source.bound, tmps_after_kill=tmps,
                      journal_after_kill=jc, summary2=s, first_exit=first_exit)
        if record is not None:
            record("resume_fault", out.line())
        print(out.line())

        assert s.get("resumed") is True, f"seed {seed}: resume run did not report resumed=true ({jc}): {s}"
        assert s.get("changed_during_copy") == 0 and not s.get("errors"), s
        assert s.get("bytes_total") == source.total, s
        diff = rsync_itemize(source.root, dst)
        assert diff == [], f"seed {seed}: target differs from the source after resume:\n" + "\n".join(diff[:50])
        assert out.resent <= out.bound + SLACK, (
            f"seed {seed}: {kind} fault re-sent {out.resent} bytes ({out.resent / MiB:.1f} MiB), more than "
            f"one in-flight window: bound {out.bound} + slack {SLACK}\n{out.line()}")
        return out
    finally:
        for p in proxies:
            p.close()
        for r in receivers:
            r.stop()


# ---------------------------------------------------------------- tests
# Seeds chosen so the default run kills inside a big file (1: 0.34, 11: 0.57, 21: 0.37) and
# among the ~2000 small files that come last in scan order (2: 0.92, 15: 0.93, 22: 0.92). The
# slow loop below covers many more moments.
@pytest.mark.parametrize("seed", [1, 2])
def test_agent_sigkill_resumes(seed, source, fresh, tmp_path, record_property):
    run_fault_case(seed, "agent", source, fresh, tmp_path, record_property)


@pytest.mark.parametrize("seed", [15])
def test_receiver_sigkill_then_rerun_against_new_address(seed, source, fresh, tmp_path, record_property):
    run_fault_case(seed, "receiver", source, fresh, tmp_path, record_property)


@pytest.mark.parametrize("seed", [11])
def test_receiver_sigkill_agent_reconnects(seed, source, fresh, tmp_path, record_property):
    run_fault_case(seed, "receiver-reconnect", source, fresh, tmp_path, record_property)


@pytest.mark.parametrize(("seed", "kind"), [(21, "cut"), (22, "cut-noretry")])
def test_connection_cut_resumes(seed, kind, source, fresh, tmp_path, record_property):
    run_fault_case(seed, kind, source, fresh, tmp_path, record_property)


@pytest.mark.slow
@pytest.mark.parametrize("seed", list(range(100, 120)))
def test_seeded_kill_loop(seed, source, fresh, tmp_path, record_property):
    """20 seeded kills, agent and receiver alternating (receiver kills alternate re-run / reconnect)."""
    kind = "agent" if seed % 2 == 0 else ("receiver" if seed % 4 == 1 else "receiver-reconnect")
    run_fault_case(seed, kind, source, fresh, tmp_path, record_property)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [200])
def test_repeated_kills_one_migration(seed, source, fresh, tmp_path, record_property):
    """One migration killed again and again (agent and receiver alternating) until it completes.

    Each resume starts from the state the previous crash left (temp files of
    temp files, journals of journals). Every kill may cost at most one window.
    """
    rng = random.Random(seed)
    dst = tmp_path / "dst"
    receivers: list[ReceiverProc] = []
    proxies: list[TcpProxy] = []
    wires: list[int] = []
    kills: list[str] = []
    max_kills = 6
    done = 0
    try:
        rp = start_receiver(dst, work_dir=tmp_path / "recv0")
        receivers.append(rp)
        for rnd in range(max_kills + 1):
            proxy = TcpProxy(rp.port)
            proxies.append(proxy)
            # re-run by hand each time (the receiver comes back on a new port)
            push = Push(source.root, proxy.address, tmp_path, f"push{rnd}", *NO_RETRY)
            remaining = max(8 * MiB, fresh.wire - done)   # rough: ignores committed parts of temp files
            target = int(rng.uniform(0.2, 0.7) * remaining) if rnd < max_kills else None
            kind = "agent" if rnd % 2 == 0 else "receiver"
            while target is not None and proxy.c2s < target and push.poll() is None:
                time.sleep(0.002)
            if target is not None and push.poll() is None:
                time.sleep(rng.uniform(0, 0.02))
                if kind == "agent":
                    push.kill()
                else:
                    rp.kill()
                    push.wait(AGENT_EXIT_TIMEOUT)
                    rp = start_receiver(dst, work_dir=tmp_path / f"recv{rnd + 1}")
                    receivers.append(rp)
                kills.append(f"{kind}@{proxy.c2s / MiB:.0f}MiB")
                wait_quiet(proxy)
                wires.append(proxy.c2s)
                wait_idle(rp)
                problems, _, done = torn_files(source, dst)
                assert not problems, (f"seed {seed}, after kill {len(kills)} ({kinds_str(kills)}): torn files:\n"
                                      + "\n".join(problems[:30]))
                continue
            rc = push.wait(300)
            assert rc == 0, f"seed {seed}: round {rnd} failed after kills {kinds_str(kills)}:\n{push.describe()}"
            wait_quiet(proxy)
            wires.append(proxy.c2s)
            s = parse_summary(push.stdout) or {}
            break
        resent = sum(wires) - fresh.wire
        bound = len(kills) * source.bound + len(wires) * SLACK
        line = (f"seed={seed:<4} chain    {len(kills)} kills [{kinds_str(kills)}]  wires="
                f"{'+'.join(f'{w / MiB:.0f}' for w in wires)} MiB  resent={resent / MiB:.2f} MiB "
                f"(bound {len(kills)}x{source.bound // MiB}+{len(wires)}x{SLACK // MiB} MiB)  "
                f"last run: resumed={s.get('resumed')} sent={s.get('bytes_sent', 0) / MiB:.1f} MiB")
        record_property("resume_fault", line)
        print(line)
        if kills:
            assert s.get("resumed") is True, s
        assert s.get("changed_during_copy") == 0 and not s.get("errors"), s
        diff = rsync_itemize(source.root, dst)
        assert diff == [], f"seed {seed}: target differs from the source:\n" + "\n".join(diff[:50])
        assert resent <= bound, line
    finally:
        for p in proxies:
            p.close()
        for r in receivers:
            r.stop()


def kinds_str(kills: list[str]) -> str:
    return ", ".join(kills)
