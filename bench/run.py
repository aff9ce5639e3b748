"""``python -m bench.run [--quick] [--workloads 1,2,3] [--runs N] [--json OUT]``

Runs the workloads against cvmigrate, rsync (daemon on 127.0.0.1) and the
tar|zstd pipe ceiling, and prints one table: workload x tool, medians of
``--runs`` runs, with the ratio against rsync measured in the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.tools import Cvmigrate, Rsync, TarPipe, Tool, cleanup_netns
from bench.workloads import DEFAULT_CACHE, FULL, QUICK, WORKLOADS, Cache, Context, Row, run_workload

DEFAULT_WORKLOADS = "1,2,3,4,5,6,7,8"

#: the issue's targets for cvmigrate: (metric, limit)
GOALS: dict[int, list[tuple[str, float]]] = {
    1: [("wall", 1.0)], 2: [("wall", 1.0)], 3: [("wall", 1.0)],
    4: [("bytes", 1.0), ("wall", 1.0)], 5: [("wall", 1.0)],
    6: [("resume", 0.55)], 7: [("wall", 1 / 1.5)], 8: [("rss", 200.0)],
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, div in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return f"{int(n)}"


def _f(x: float | None, nd: int = 2) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def ratios(row: Row, rows: list[Row]) -> tuple[float | None, float | None]:
    """(wall ratio, bytes ratio) against the rsync row of the same workload."""
    if row.ratio_override is not None:
        return row.ratio_override, None
    base = next((r for r in rows if r.workload == row.workload and r.tool == "rsync" and r.runs), None)
    if base is None or not row.runs:
        return None, None
    w, bw = row.median("wall"), base.median("wall")
    wall = w / bw if w and bw else None
    lo, blo = row.median("lo"), base.median("lo")
    if lo is not None and blo:
        return wall, lo / blo
    wi, bwi = row.median("wire"), base.median("wire")
    return wall, (wi / bwi if wi is not None and bwi else None)


def goal(row: Row, rows: list[Row]) -> str:
    if row.tool != "cvmigrate" or not row.runs:
        return ""
    n = int(row.workload.split()[0])
    wall, byt = ratios(row, rows)
    out = []
    for metric, limit in GOALS.get(n, []):
        if metric in ("wall", "resume"):
            v = wall
        elif metric == "bytes":
            v = byt
        else:
            v = max(row.median("rss_send") or 0, row.median("rss_recv") or 0)
        if v is None:
            out.append(f"{metric}?")
        else:
            out.append(f"{metric}<={limit:.3g}:{'ok' if v <= limit else 'MISS'}")
    return " ".join(out)


HEADER = ["workload", "tool", "runs", "wall s", "MB/s", "files/s", "CPU s snd/rcv", "RSS MB snd/rcv",
          "RSS MB all snd/rcv", "wire B", "lo B", "ratio wall", "ratio bytes", "goal"]


def table(rows: list[Row]) -> str:
    lines = []
    body = []
    for r in rows:
        if r.not_run or not r.runs:
            body.append([r.workload, r.tool, "0", r.not_run or "not run"] + [""] * (len(HEADER) - 4))
            continue
        wall = r.median("wall")
        wr, br = ratios(r, rows)
        rl = f"{wr:.2f}" if wr is not None else "-"
        if r.ratio_label and wr is not None:
            rl += f" ({r.ratio_label})"
        body.append([
            r.workload, r.tool, str(len(r.runs)), _f(wall),
            _f(r.bytes / wall / 1e6 if wall else None, 1),
            _f(r.files / wall if wall else None, 0),
            f"{_f(r.median('cpu_send'))}/{_f(r.median('cpu_recv'))}",
            f"{_f(r.median('rss_send'), 0)}/{_f(r.median('rss_recv'), 0)}",
            f"{_f(r.median('rss_send_total'), 0)}/{_f(r.median('rss_recv_total'), 0)}",
            _fmt_bytes(r.median("wire")), _fmt_bytes(r.median("lo")),
            rl, _f(br), goal(r, rows),
        ])
    widths = [max(len(h), *(len(b[i]) for b in body if not (b[3].startswith("not run") and i == 3)))
              for i, h in enumerate(HEADER)] if body else [len(h) for h in HEADER]
    sep = "-+-".join("-" * w for w in widths)
    lines.append(" | ".join(h.ljust(w) for h, w in zip(HEADER, widths, strict=True)))
    lines.append(sep)
    for b in body:
        if b[3].startswith("not run"):
            lines.append(" | ".join([b[0].ljust(widths[0]), b[1].ljust(widths[1]), b[2].ljust(widths[2]), b[3]]))
        else:
            lines.append(" | ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)))
    notes: list[str] = []
    for wl in dict.fromkeys(r.workload for r in rows):
        group = [r for r in rows if r.workload == wl and r.note]
        if group and len({r.note for r in group}) == 1 and len(group) == sum(r.workload == wl for r in rows):
            notes.append(f"  [{wl}] {group[0].note}")
        else:
            notes.extend(f"  [{wl} / {r.tool}] {r.note}" for r in group)
    if notes:
        lines.append("")
        lines.append("notes:")
        lines.extend(notes)
    return "\n".join(lines)


def environment() -> dict[str, str]:
    def out(argv: list[str]) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True).stdout.splitlines()[0]
        except (OSError, IndexError):
            return "?"
    return {
        "host": platform.node(), "kernel": platform.release(), "cpus": str(os.cpu_count()),
        "python": sys.version.split()[0], "rsync": out(["rsync", "--version"]),
        "zstd": out(["zstd", "--version"]), "tar": out(["tar", "--version"]),
    }


def _sigterm(*_: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="1 run and tiny sizes (a smoke test, not a benchmark)")
    p.add_argument("--workloads", default=DEFAULT_WORKLOADS, help=f"comma list (default {DEFAULT_WORKLOADS})")
    p.add_argument("--runs", type=int, default=None, help="runs per workload x tool, median reported (default 3)")
    p.add_argument("--tools", default="cvmigrate,rsync,tar", help="comma list of cvmigrate, rsync, tar")
    p.add_argument("--json", metavar="OUT", help="also write every run's figures here")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE,
                   help=f"tmpfs directory for sources (cached) and targets (default {DEFAULT_CACHE})")
    p.add_argument("--source-dir", type=Path, default=None,
                   help="keep the generated sources here instead of under --cache-dir (e.g. a disk "
                   "directory when tmpfs is short: sources are then read through the page cache)")
    p.add_argument("--no-netns", action="store_true", help="do not isolate transfers in network namespaces "
                   "(the lo byte counter is then not reported)")
    args = p.parse_args(argv)
    runs = args.runs or (1 if args.quick else 3)
    wanted = [int(x) for x in args.workloads.split(",") if x.strip()]
    bad = [w for w in wanted if w not in WORKLOADS]
    if bad:
        p.error(f"unknown workload(s) {bad}; known: {sorted(WORKLOADS)}")
    for exe in ("rsync", "zstd", "tar"):
        if shutil.which(exe) is None:
            p.error(f"{exe} is not installed")
    if os.geteuid() != 0:
        p.error("run as root (the rsync daemon runs with uid=root, network namespaces need root)")

    tool_names = set(args.tools.split(","))
    tools: list[Tool] = [t for t in (Cvmigrate(), Rsync(), TarPipe())
                         if {"cvmigrate": "cvmigrate", "rsync": "rsync", "tar+zstd": "tar"}[t.name] in tool_names]
    sizes = QUICK if args.quick else FULL
    base = args.cache_dir / ("quick" if args.quick else "full")
    fstype = subprocess.run(["stat", "-f", "-c", "%T", str(args.cache_dir.parent if not args.cache_dir.exists()
                                                          else args.cache_dir)],
                            capture_output=True, text=True).stdout.strip()
    if fstype != "tmpfs":
        log(f"warning: {args.cache_dir} is on {fstype or '?'}, not tmpfs: disk noise will show")
    src_base = (args.source_dir / ("quick" if args.quick else "full")) if args.source_dir else base
    cache = Cache(src_base / "sources", sizes, log)
    signal.signal(signal.SIGTERM, _sigterm)
    ctx = Context(cache=cache, target=base / "target", work=base / "work", runs=runs,
                  netns=not args.no_netns, log=log)
    ctx.work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    env = environment()
    load0 = os.getloadavg()
    interrupted = False
    with cleanup_netns():
        try:
            for n in wanted:
                log(f"workload {WORKLOADS[n]} ... (load average {os.getloadavg()[0]:.1f})")
                ctx.rows.extend(run_workload(ctx, n, tools))
                if args.json:    # partial results survive a kill
                    write_json(Path(args.json), args, runs, time.monotonic() - t0, env, base, ctx.rows)
        except KeyboardInterrupt:
            interrupted = True
            log("interrupted: printing what was measured")
    elapsed = time.monotonic() - t0
    load1 = os.getloadavg()

    print(f"cvmigrate benchmark ({'quick' if args.quick else 'full'}), median of {runs} run(s), "
          f"{elapsed:.0f}s total; {env['cpus']} CPUs, kernel {env['kernel']}, {env['rsync']}"
          + (" [INTERRUPTED: partial]" if interrupted else ""))
    print(f"1-min load average at start {load0[0]:.1f}, at end {load1[0]:.1f} "
          f"(anything well above 0 on this machine means other work shared the CPUs)")
    print(f"targets on {fstype} under {base}, sources under {src_base / 'sources'}; "
          f"page cache not dropped (tmpfs is the page cache; sources are read warm)")
    print("MB/s = source content bytes / wall; files/s = entries / wall; wire = tool's own count "
          "(cvmigrate bytes_sent, rsync 'Total bytes sent', tar pipe compressed bytes); "
          "lo = loopback bytes both directions incl. TCP/IP headers; ratios vs rsync in the same run")
    print("RSS = peak of a side's largest process (wait4); RSS all = peak of the sum over a side's processes "
          "(receiver workers, rsync's forks; sampled every 0.1 s, shared pages counted per process)")
    print()
    print(table(ctx.rows))
    sys.stdout.flush()
    if args.json:
        write_json(Path(args.json), args, runs, elapsed, env, base, ctx.rows)
    return 130 if interrupted else 0


def write_json(path: Path, args: argparse.Namespace, runs: int, elapsed: float, env: dict[str, str],
               base: Path, rows: list[Row]) -> None:
    doc = {"quick": args.quick, "runs": runs, "elapsed_s": elapsed, "environment": env,
           "cache": str(base), "table": table(rows), "rows": [r.as_json() for r in rows]}
    for r, d in zip(rows, doc["rows"], strict=True):
        wr, br = ratios(r, rows)
        d["ratio_wall"], d["ratio_bytes"], d["goal"] = wr, br, goal(r, rows)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=str))
    tmp.replace(path)


if __name__ == "__main__":
    sys.exit(main())
