"""Workloads: the source trees (generated once, cached on tmpfs) and what each workload measures.

Sources live under ``CACHE/full`` or ``CACHE/quick`` (``CACHE`` defaults to
``/dev/shm/cvmigrate-bench``, a tmpfs). A tree is complete when its marker
``NAME.done`` (JSON: files, dirs, bytes) sits next to it; a tree without a
marker is deleted and generated again. Targets are emptied before every
fresh copy (``rm -rf``), so each tool writes into an empty tmpfs directory.

Nothing is dropped from the page cache: sources and targets are on tmpfs,
which *is* the page cache, so every run reads from memory and writes to
memory. That is deliberate -- it measures the tools, not the disk.
"""
from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.tools import Link, Measure, Tool, ToolError, empty_dir

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

DEFAULT_CACHE = Path("/dev/shm/cvmigrate-bench")


@dataclass
class Sizes:
    small_files: int            # workload 2
    small_dirs: int
    small_size: int
    large_size: int             # workload 3, per file (4 files)
    million_files: int          # workload 8
    million_dirs: int
    real_tree_quick: bool       # workload 1: a few stdlib packages instead of sys.prefix


FULL = Sizes(small_files=200_000, small_dirs=200, small_size=4 * KiB, large_size=1 * GiB,
             million_files=1_000_000, million_dirs=1000, real_tree_quick=False)
QUICK = Sizes(small_files=400, small_dirs=4, small_size=4 * KiB, large_size=2 * MiB,
              million_files=2000, million_dirs=10, real_tree_quick=True)


@dataclass
class TreeInfo:
    path: Path
    files: int
    dirs: int
    bytes: int
    note: str = ""

    @property
    def entries(self) -> int:
        return self.files + self.dirs


def scan_tree(root: Path, skip_state: bool = False) -> tuple[int, int, int]:
    """(non-directory entries, directories, bytes of regular files) below root."""
    files = dirs = total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        if skip_state and dirpath == str(root) and ".cvmigrate" in dirnames:
            dirnames.remove(".cvmigrate")
        dirs += len(dirnames)
        for n in filenames:
            st = os.lstat(os.path.join(dirpath, n))
            files += 1
            if (st.st_mode & 0o170000) == 0o100000:
                total += st.st_size
    return files, dirs, total


class Cache:
    def __init__(self, root: Path, sizes: Sizes, log: Callable[[str], None]) -> None:
        self.root = root
        self.sizes = sizes
        self.log = log
        root.mkdir(parents=True, exist_ok=True)

    def _tree(self, name: str, build: Callable[[Path], str]) -> TreeInfo:
        path = self.root / name
        marker = self.root / f"{name}.done"
        if marker.exists() and path.is_dir():
            d = json.loads(marker.read_text())
            return TreeInfo(path, d["files"], d["dirs"], d["bytes"], d.get("note", ""))
        marker.unlink(missing_ok=True)
        if path.exists():
            subprocess.run(["rm", "-rf", str(path)], check=True)
        self.log(f"generating {path} ...")
        note = build(path) or ""
        files, dirs, total = scan_tree(path)
        marker.write_text(json.dumps({"files": files, "dirs": dirs, "bytes": total, "note": note}))
        self.log(f"  {path}: {files} files, {dirs} dirs, {total / MiB:.1f} MiB")
        return TreeInfo(path, files, dirs, total, note)

    # (1) the Python installation
    def real_tree(self) -> TreeInfo:
        def build(path: Path) -> str:
            if self.sizes.real_tree_quick:
                stdlib = Path(sysconfig.get_paths()["stdlib"])
                path.mkdir()
                for sub in ("json", "email", "logging"):
                    subprocess.run(["cp", "-a", str(stdlib / sub), str(path / sub)], check=True)
                return f"copy of {stdlib}/{{json,email,logging}}"
            subprocess.run(["cp", "-a", sys.prefix, str(path)], check=True)
            return f"copy of sys.prefix {sys.prefix}"
        return self._tree("w1-python", build)

    # (4) 1 % of the files of (1) changed
    def real_tree_changed(self, base: TreeInfo) -> TreeInfo:
        def build(path: Path) -> str:
            subprocess.run(["cp", "-a", str(base.path), str(path)], check=True)
            regular = []
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames.sort()
                for n in sorted(filenames):
                    p = os.path.join(dirpath, n)
                    if os.path.isfile(p) and not os.path.islink(p):
                        regular.append(p)
            rng = random.Random(4)
            chosen = rng.sample(regular, max(1, len(regular) // 100))
            changed_bytes = 0
            for i, p in enumerate(chosen):
                size = os.path.getsize(p)
                if i % 2 == 0 and size >= 256:
                    # same size, 100 bytes overwritten in the middle
                    with open(p, "r+b") as f:
                        f.seek(size // 2 - 50)
                        f.write(rng.randbytes(100))
                    changed_bytes += 100
                else:
                    with open(p, "ab") as f:
                        f.write(b"# appended by the cvmigrate benchmark\n" * 27)
                    changed_bytes += 38 * 27
            return (f"{len(chosen)} of {len(regular)} regular files changed "
                    f"(half: 100 B overwritten in place, half: 1 KiB appended), {changed_bytes} B changed")
        return self._tree("w4-python-changed", build)

    # (2) many small files
    def small_files(self) -> TreeInfo:
        s = self.sizes

        def build(path: Path) -> str:
            rng = random.Random(2)
            text = _text_block(rng, 1 * MiB)
            binary = _binary_block(1 * MiB)
            per_dir = s.small_files // s.small_dirs
            n = 0
            for d in range(s.small_dirs):
                dp = path / f"d{d:04d}"
                dp.mkdir(parents=True)
                for i in range(per_dir):
                    kind = n % 4
                    if kind == 0:
                        data = rng.randbytes(s.small_size)
                    elif kind == 1:
                        o = rng.randrange(len(text) - s.small_size)
                        data = text[o:o + s.small_size]
                    elif kind == 2:
                        o = rng.randrange(len(binary) - s.small_size)
                        data = binary[o:o + s.small_size]
                    else:
                        data = bytes(s.small_size - 64) + rng.randbytes(64)
                    with open(dp / f"f{i:05d}", "wb") as f:
                        f.write(data)
                    n += 1
            return f"{n} x {s.small_size} B: 1/4 random, 1/4 text, 1/4 binary, 1/4 mostly zeros"
        return self._tree("w2-small", build)

    # (3) large files of mixed compressibility
    def large_files(self) -> TreeInfo:
        size = self.sizes.large_size

        def build(path: Path) -> str:
            path.mkdir()
            rng = random.Random(3)
            block = min(16 * MiB, size)
            text = _text_block(rng, block)
            binary = _binary_block(block)
            letters = bytes(range(ord("a"), ord("z") + 1))
            with open(path / "text.txt", "wb") as ft, open(path / "binary.bin", "wb") as fb:
                for _ in range(size // block):
                    # a fresh letter substitution per block: same compressibility,
                    # no two blocks alike (no cross-block dedup for anybody)
                    perm = bytes(rng.sample(letters, len(letters)))
                    ft.write(text.translate(bytes.maketrans(letters, perm)))
                    fb.write(binary.translate(bytes(rng.sample(range(256), 256))))
            with open(path / "random.bin", "wb") as f:
                for _ in range(size // block):
                    f.write(os.urandom(block))
            with open(path / "zeros.bin", "wb") as f:
                z = bytes(block)
                for _ in range(size // block):
                    f.write(z)
            return f"4 x {size // MiB} MiB: text, binaries (real ELF bytes, byte-permuted per 16 MiB), random, zeros"
        return self._tree("w3-large", build)

    # (8) a million empty files
    def million(self) -> TreeInfo:
        s = self.sizes

        def build(path: Path) -> str:
            per_dir = s.million_files // s.million_dirs
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
            for d in range(s.million_dirs):
                dp = path / f"d{d:04d}"
                dp.mkdir(parents=True)
                base = str(dp) + "/f"
                for i in range(per_dir):
                    os.close(os.open(f"{base}{i:05d}", flags, 0o644))
            return f"{s.million_files} empty files in {s.million_dirs} dirs"
        return self._tree("w8-million", build)


def _text_block(rng: random.Random, size: int) -> bytes:
    """English-like text: Zipf-weighted pseudo-words, lines of ~10 words."""
    vocab = ["".join(rng.choice("etaoinshrdlcumwfgypbvkjxqz"[:10 + k % 16]) for _ in range(2 + k % 9))
             for k in range(4000)]
    weights = [1.0 / (k + 1) for k in range(len(vocab))]
    out = bytearray()
    while len(out) < size:
        words = rng.choices(vocab, weights, k=20000)
        lines = [" ".join(words[i:i + 10]) for i in range(0, len(words), 10)]
        out += ("\n".join(lines) + "\n").encode()
    return bytes(out[:size])


def _binary_block(size: int) -> bytes:
    """Real machine code: bytes of installed shared libraries and programs."""
    out = bytearray()
    for d in ("/usr/lib/x86_64-linux-gnu", "/usr/bin", "/usr/lib"):
        if not os.path.isdir(d):
            continue
        for n in sorted(os.listdir(d)):
            p = os.path.join(d, n)
            if os.path.isfile(p) and not os.path.islink(p):
                try:
                    with open(p, "rb") as f:
                        out += f.read(size - len(out))
                except OSError:
                    continue
                if len(out) >= size:
                    return bytes(out)
    out += bytes(size - len(out))
    return bytes(out)


# --------------------------------------------------------------------------- workloads
@dataclass
class Row:
    """The measured runs of one workload x tool."""
    workload: str
    tool: str
    runs: list[Measure] = field(default_factory=list)
    files: int = 0
    bytes: int = 0
    note: str = ""
    not_run: str = ""
    ratio_override: float | None = None    # workload 6: resume / fresh copy of the same tool
    ratio_label: str = ""

    def median(self, attr: str) -> float | None:
        vals = [getattr(m, attr) for m in self.runs if getattr(m, attr) is not None]
        return statistics.median(vals) if vals else None

    def as_json(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "runs"}
        d["runs"] = [m.as_json() for m in self.runs]
        for a in ("wall", "cpu_send", "cpu_recv", "rss_send", "rss_recv", "rss_send_total", "rss_recv_total",
                  "wire", "lo"):
            d[f"median_{a}"] = self.median(a)
        return d


@dataclass
class Context:
    cache: Cache
    target: Path
    work: Path
    runs: int
    netns: bool
    log: Callable[[str], None]
    rows: list[Row] = field(default_factory=list)

    def find(self, workload: str, tool: str) -> Row | None:
        return next((r for r in self.rows if r.workload == workload and r.tool == tool and r.runs), None)


def check_copy(src: TreeInfo, dst: Path) -> str:
    """Cheap sanity check (counts and bytes); '' when they match."""
    files, dirs, total = scan_tree(dst, skip_state=True)
    if (files, dirs, total) != (src.files, src.dirs, src.bytes):
        return (f"TARGET MISMATCH: {files} files/{dirs} dirs/{total} B vs source "
                f"{src.files}/{src.dirs}/{src.bytes}")
    return ""


def warm(path: Path) -> None:
    """Read a source tree once (metadata and data) so a timed run does not pay for a cold
    page cache that the previous tool already warmed. A no-op cost on tmpfs; it matters
    when --source-dir is a disk directory."""
    buf = bytearray(1 << 20)
    for dirpath, _dirnames, filenames in os.walk(path):
        for n in filenames:
            p = os.path.join(dirpath, n)
            try:
                st = os.lstat(p)
                if (st.st_mode & 0o170000) == 0o100000 and st.st_size:
                    with open(p, "rb", buffering=0) as f:
                        while f.readinto(buf):
                            pass
            except OSError:
                pass


def failed(ctx: Context, row: Row, i: int, exc: Exception) -> None:
    """A failed run is reported (note + log), not fatal to the suite."""
    msg = str(exc)
    ctx.log(f"  {row.workload} {row.tool} run {i + 1} FAILED: {msg}")
    err = next((ln for ln in msg.splitlines() if "error:" in ln), msg.splitlines()[0] if msg else "?")
    row.note = ((row.note + "; ") if row.note else "") + f"run {i + 1} FAILED: {err.strip()[:300]}"


def check_run(ctx: Context, row: Row, m: Measure, tree: TreeInfo) -> None:
    """Compare the target with ``tree``; a difference marks the run bad and becomes the row's note."""
    bad = check_copy(tree, ctx.target)
    if bad:
        m.ok = False
        row.note = bad


def record(ctx: Context, row: Row, i: int, m: Measure, tree: TreeInfo, said: str = "") -> None:
    """A finished run: checked against ``tree``, added to ``row``, one log line (``said``: what to say of it)."""
    check_run(ctx, row, m, tree)
    row.runs.append(m)
    ctx.log(f"  {row.workload} {row.tool} run {i + 1}: {said or f'{m.wall:.2f}s'}")


def fresh_copy(ctx: Context, tool: Tool, src: TreeInfo, name: str, runs: int | None = None,
               link: Link | None = None) -> Row:
    row = Row(name, tool.name, files=src.files + src.dirs, bytes=src.bytes)
    for i in range(runs or ctx.runs):
        empty_dir(ctx.target)
        warm(src.path)
        try:
            m = tool.transfer(src.path, ctx.target, ctx.work / f"{name}-{tool.name}-{i}", netns=ctx.netns,
                              link=link)
        except (ToolError, RuntimeError) as exc:
            failed(ctx, row, i, exc)
            continue
        record(ctx, row, i, m, src)
    return row


def second_pass(ctx: Context, tool: Tool, first: TreeInfo, second: TreeInfo, name: str) -> Row:
    """Copy ``first`` (untimed), then time a pass of ``second`` over it with the same tool."""
    row = Row(name, tool.name, files=second.files + second.dirs, bytes=second.bytes)
    for i in range(ctx.runs):
        empty_dir(ctx.target)
        try:
            tool.transfer(first.path, ctx.target, ctx.work / f"{name}-{tool.name}-{i}-prime", netns=ctx.netns)
            warm(second.path)
            m = tool.transfer(second.path, ctx.target, ctx.work / f"{name}-{tool.name}-{i}", netns=ctx.netns)
        except ToolError as exc:
            failed(ctx, row, i, exc)
            continue
        record(ctx, row, i, m, second)
    return row


def resume(ctx: Context, tool: Tool, src: TreeInfo, name: str, fresh: Row | None) -> Row:
    """(6): SIGKILL the client once 50 % of the bytes landed, then run it again."""
    if fresh is None:
        fresh = fresh_copy(ctx, tool, src, f"{name}-fresh", runs=1)
    fresh_wall = fresh.median("wall") or 0.0
    fresh_lo = fresh.median("lo")
    row = Row(name, tool.name, files=src.files + src.dirs, bytes=src.bytes)
    if not fresh_wall:
        row.not_run = "not run: no successful fresh copy to time the kill against"
        return row
    finished_early = 0
    for i in range(ctx.runs):
        empty_dir(ctx.target)
        warm(src.path)
        try:
            # kill once half the source's bytes have landed (temp files included); the
            # time limit (2x the fresh copy) is only a fallback for a stuck watch
            k = tool.transfer(src.path, ctx.target, ctx.work / f"{name}-{tool.name}-{i}-killed",
                              netns=ctx.netns, kill_at_bytes=src.bytes // 2, kill_after=2.0 * fresh_wall)
            warm(src.path)
            m = tool.transfer(src.path, ctx.target, ctx.work / f"{name}-{tool.name}-{i}", netns=ctx.netns)
        except ToolError as exc:
            failed(ctx, row, i, exc)
            continue
        if "killed_after_s" not in k.extra:
            finished_early += 1
        m.extra["killed_run"] = k.as_json()
        if k.lo is not None and m.lo is not None and fresh_lo is not None:
            m.extra["lo_resent"] = k.lo + m.lo - fresh_lo
        record(ctx, row, i, m, src, f"killed at {k.wall:.2f}s ({(k.extra.get('landed_at_kill') or 0) / MiB:.0f} "
               f"MiB on target), resumed in {m.wall:.2f}s")
    resent = [m.extra["lo_resent"] for m in row.runs if "lo_resent" in m.extra]
    landed = [m.extra["killed_run"]["extra"].get("landed_at_kill") or 0 for m in row.runs]
    wall = row.median("wall")
    row.ratio_override = wall / fresh_wall if wall and fresh_wall else None
    row.ratio_label = "resume/fresh"
    killed_at = [m.extra["killed_run"]["extra"].get("killed_after_s") or 0 for m in row.runs]
    parts = [f"fresh copy {fresh_wall:.2f}s"]
    if landed:
        parts.append(f"SIGKILLed after {statistics.median(killed_at):.1f}s with "
                     f"{statistics.median(landed) / MiB:.0f} of {src.bytes / MiB:.0f} MiB on target")
    if resent:
        parts.append(f"re-sent (lo bytes: killed+resumed-fresh) {statistics.median(resent) / MiB:.1f} MiB")
    if row.note:
        parts.append(row.note)
    row.note = "; ".join(parts)
    if finished_early:
        row.note += f"; {finished_early} run(s) finished before the kill"
    return row


#: workload 7's link (the issue's target table)
SLOW_LINK = Link(rate_mbit=100.0, delay_ms=10.0, loss=0.005)


def one_stream(ctx: Context, tools: list[Tool], src: TreeInfo, name: str, default: Row) -> Row:
    """The real tree again with ``push --streams 1``: its wall against the default's (several streams, receiver
    worker processes) is the parallel gain by itself (ratio > 1: the default is that much faster)."""
    from bench.tools import Cvmigrate

    base = next(t for t in tools if isinstance(t, Cvmigrate))
    row = fresh_copy(ctx, Cvmigrate(base.python, base.push_args, streams=1), src, name)
    wall, default_wall = row.median("wall"), default.median("wall")
    row.ratio_override = wall / default_wall if wall and default_wall else None
    row.ratio_label = "1 stream/default"
    streams = sorted({str(m.extra.get("streams", "?")) for m in default.runs})
    row.note = _before(f"default ran {'/'.join(streams)} stream(s)", row.note)
    return row

WORKLOADS: dict[int, str] = {
    1: "1 python tree",
    2: "2 small files",
    3: "3 large files",
    4: "4 resync 1%",
    5: "5 no-change",
    6: "6 resume@50%",
    7: "7 slow link",
    8: "8 1M files",
}


def run_workload(ctx: Context, n: int, tools: list[Tool]) -> list[Row]:
    name = WORKLOADS[n]
    c = ctx.cache
    rows: list[Row] = []
    incremental = [t for t in tools if t.incremental]   # tools that can run a second pass over a copy
    if n in (1, 2, 3):
        src = {1: c.real_tree, 2: c.small_files, 3: c.large_files}[n]()
        for t in tools:
            r = fresh_copy(ctx, t, src, name)
            r.note = _before(src.note if n != 2 else "", r.note)
            rows.append(r)
        default = next((r for r in rows if r.tool == "cvmigrate" and r.runs), None)
        if n == 1 and default is not None:
            rows.append(one_stream(ctx, tools, src, name, default))
    elif n in (4, 5):
        base = c.real_tree()
        second = c.real_tree_changed(base) if n == 4 else base
        for t in incremental:
            r = second_pass(ctx, t, base, second, name)
            if n == 4 and not r.note:
                r.note = second.note
            rows.append(r)
    elif n == 6:
        src = c.large_files()
        for t in incremental:
            rows.append(resume(ctx, t, src, name, ctx.find(WORKLOADS[3], t.name)))
    elif n == 7:
        # the slow link: 100 Mbit/s each way, 20 ms RTT, 0.5 % loss per packet and
        # direction, through the user-space TUN relay (this kernel has no netem)
        from bench.tools import Rsync
        link = SLOW_LINK
        slow_tools: list[Tool] = [t for t in tools if t.name == "cvmigrate"]
        if any(t.name == "rsync" for t in tools):
            slow_tools.append(Rsync(extra_flags=("-z", "--zc=zstd")))
        for label, src in (("7 slow python", c.real_tree()), ("7 slow large", c.large_files())):
            for t in slow_tools:
                r = fresh_copy(ctx, t, src, label, runs=1, link=link)
                extra = "rsync with -z --zc=zstd; " if t.name == "rsync" else ""
                relay = [m.extra["relay"] for m in r.runs if "relay" in m.extra]
                drops = ""
                if relay:
                    lost = sum(d.get("lost_random", 0) for d in relay[0].values() if isinstance(d, dict))
                    late = max((d.get("late_max_ms", 0) for d in relay[0].values() if isinstance(d, dict)),
                               default=0)
                    drops = f"; relay dropped {lost} packets at random, worst lateness {late:.1f} ms"
                r.note = _before(f"{extra}{link.describe()}; 1 run{drops}", r.note)
                rows.append(r)
    elif n == 8:
        src = c.million()
        for t in incremental:
            r = fresh_copy(ctx, t, src, name, runs=1)
            r.note = _before("1 run (memory workload)", r.note)
            rows.append(r)
    return rows


def _before(first: str, note: str) -> str:
    """A row's note with ``first`` in front (what every row of the workload says, then what this one adds)."""
    return f"{first}; {note}" if note else first
