"""What the admin sees while a migration runs: stage, sub-task, files, bytes, rate, ETA.

Why two renderings behind one interface: on a terminal a live table (rich)
is the readable thing; in a pipe, a CI log or ``nohup`` a live table is
garbage, so the same events become plain timestamped lines, with transfer
progress at most every few seconds.  The stage runner only calls the
:class:`Display` methods; it never prints.  The log file gets its own lines
through ``logging`` either way.
"""
from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Any

from cvmigrate.common.units import human_bytes as human_bytes  # re-exported: the controller's modules import it here

STAGE_TITLES = {
    1: "Stage 1/3 prepare: the target enters rescue mode",
    2: "Stage 2/3 transfer: the target is in rescue mode, data is copied",
    3: "Stage 3/3 finish: the target leaves rescue mode",
}


@dataclass
class TransferProgress:
    """One sample of a running pass."""

    pass_no: int
    kind: str                 # full / incremental / final
    files_scanned: int = 0
    files_done: int = 0       # transferred + unchanged (skipped)
    bytes_scanned: int = 0    # content bytes of the files scanned so far
    bytes_read: int = 0       # content bytes read and sent (before compression)
    bytes_sent: int = 0       # bytes on the wire (after compression)
    rate: float = 0.0         # content bytes read per second over the last RateWindow.seconds
    wire_rate: float = 0.0    # bytes on the wire per second over the same window (what --bwlimit limits)
    eta: float | None = None  # seconds, from the current rate, when an estimate of the total exists
    elapsed: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {k: (round(v, 2) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


class RateWindow:
    """The current rate of a growing counter: the change over the last ``seconds`` of samples.

    Why not total / elapsed: a pass that ran fast over the LAN cache and then
    crawls over a throttled link would show the early speed for hours, and an
    ETA computed from it would be wrong by the same factor.  Samples older than
    the window are dropped; until the window holds two samples ``rate`` is 0.
    """

    def __init__(self, seconds: float = 5.0) -> None:
        self.seconds = seconds
        self._samples: list[tuple[float, float]] = []

    def add(self, now: float, total: float) -> float:
        """Record the counter's value at ``now`` (monotonic seconds); returns the current rate."""
        self._samples.append((now, total))
        cutoff = now - self.seconds
        while len(self._samples) > 2 and self._samples[1][0] <= cutoff:
            self._samples.pop(0)
        return self.rate

    @property
    def rate(self) -> float:
        if len(self._samples) < 2:
            return 0.0
        (t0, v0), (t1, v1) = self._samples[0], self._samples[-1]
        return max(0.0, (v1 - v0) / (t1 - t0)) if t1 > t0 else 0.0



def human_seconds(s: float | None) -> str:
    if s is None:
        return "?"
    s = int(max(0, s))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def describe_progress(p: TransferProgress) -> str:
    return (f"pass {p.pass_no} ({p.kind}): {p.files_done}/{p.files_scanned} files, "
            f"{human_bytes(p.bytes_read)} read of {human_bytes(p.bytes_scanned)} scanned, "
            f"{human_bytes(p.bytes_sent)} sent, {human_bytes(p.rate)}/s (wire {human_bytes(p.wire_rate)}/s), "
            f"ETA {human_seconds(p.eta)}")


class Display:
    """The events the stage runner reports.  This base class shows nothing (tests, ``--quiet``)."""

    rich = False

    def stage(self, number: int) -> None: ...
    def subtask_started(self, name: str, stage: int, timeout: float) -> None: ...
    def subtask_finished(self, name: str, seconds: float, note: str = "") -> None: ...
    def subtask_skipped(self, name: str, note: str = "") -> None: ...
    def subtask_failed(self, name: str, error: str) -> None: ...
    def transfer(self, progress: TransferProgress) -> None: ...
    def transfer_done(self, progress: TransferProgress, summary: str) -> None: ...
    def message(self, text: str) -> None: ...
    def close(self) -> None: ...


class PlainDisplay(Display):
    """Plain lines for pipes and log collectors."""

    def __init__(self, stream: IO[str] | None = None, *, interval: float = 5.0) -> None:
        self.stream = stream or sys.stdout
        self.interval = interval
        self._last = 0.0

    def _line(self, text: str) -> None:
        self.stream.write(f"{time.strftime('%H:%M:%S')} {text}\n")
        self.stream.flush()

    def stage(self, number: int) -> None:
        self._line(STAGE_TITLES.get(number, f"Stage {number}"))

    def subtask_started(self, name: str, stage: int, timeout: float) -> None:
        self._line(f"  {name}: started (limit {human_seconds(timeout)})")

    def subtask_finished(self, name: str, seconds: float, note: str = "") -> None:
        self._line(f"  {name}: done in {seconds:.1f}s" + (f" -- {note}" if note else ""))

    def subtask_skipped(self, name: str, note: str = "") -> None:
        self._line(f"  {name}: already done" + (f" -- {note}" if note else ""))

    def subtask_failed(self, name: str, error: str) -> None:
        self._line(f"  {name}: FAILED: {error}")

    def transfer(self, progress: TransferProgress) -> None:
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._line("    " + describe_progress(progress))

    def transfer_done(self, progress: TransferProgress, summary: str) -> None:
        self._last = 0.0
        self._line("    " + summary)

    def message(self, text: str) -> None:
        for line in text.splitlines() or [""]:
            self._line(line)


@dataclass
class _Row:
    name: str
    stage: int
    status: str = "running"
    note: str = ""
    started: float = field(default_factory=time.monotonic)
    seconds: float | None = None


class RichDisplay(Display):
    """A live table on a terminal (rich): one row per sub-task, a transfer line under it."""

    rich = True

    def __init__(self, stream: IO[str] | None = None) -> None:
        from rich.console import Console
        from rich.live import Live

        self.console = Console(file=stream or sys.stdout)
        self._rows: list[_Row] = []
        self._progress: TransferProgress | None = None
        self._stage = 0
        self._lock = threading.Lock()
        self.live = Live(self._render(), console=self.console, refresh_per_second=4, transient=False,
                         redirect_stdout=False, redirect_stderr=False)
        self.live.start()

    def _render(self) -> Any:
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        icons = {"running": ("▶", "yellow"), "done": ("✔", "green"), "skipped": ("·", "dim"),
                 "failed": ("✘", "red")}
        parts: list[Any] = []
        table = None
        current = None
        for row in self._rows:
            if row.stage != current or table is None:
                current = row.stage
                parts.append(Text(STAGE_TITLES.get(row.stage, f"Stage {row.stage}"), style="bold"))
                table = Table(box=None, show_header=False, pad_edge=False, expand=False)
                table.add_column(width=2)
                table.add_column(min_width=20, no_wrap=True)
                table.add_column(justify="right", min_width=7, no_wrap=True)
                table.add_column(no_wrap=True, overflow="ellipsis")
                parts.append(table)
            icon, style = icons.get(row.status, ("?", ""))
            secs = row.seconds if row.seconds is not None else time.monotonic() - row.started
            table.add_row(Text(icon, style=style), row.name,
                          "" if row.status == "skipped" else f"{secs:.1f}s", Text(row.note, style="dim"))
        if self._progress is not None:
            parts.append(Text("   " + describe_progress(self._progress), style="cyan"))
        return Group(*parts)

    def _update(self) -> None:
        self.live.update(self._render())

    def _row(self, name: str) -> _Row | None:
        return next((r for r in reversed(self._rows) if r.name == name), None)

    def stage(self, number: int) -> None:
        self._stage = number

    def subtask_started(self, name: str, stage: int, timeout: float) -> None:
        with self._lock:
            self._rows.append(_Row(name, stage, note=f"limit {human_seconds(timeout)}"))
            self._update()

    def subtask_finished(self, name: str, seconds: float, note: str = "") -> None:
        with self._lock:
            row = self._row(name)
            if row:
                row.status, row.seconds, row.note = "done", seconds, note
            self._progress = None
            self._update()

    def subtask_skipped(self, name: str, note: str = "") -> None:
        with self._lock:
            self._rows.append(_Row(name, self._stage, status="skipped", note=note or "already done"))
            self._update()

    def subtask_failed(self, name: str, error: str) -> None:
        with self._lock:
            row = self._row(name)
            if row:
                row.status, row.note = "failed", error[:200]
                row.seconds = time.monotonic() - row.started
            self._update()

    def transfer(self, progress: TransferProgress) -> None:
        with self._lock:
            self._progress = progress
            self._update()

    def transfer_done(self, progress: TransferProgress, summary: str) -> None:
        with self._lock:
            self._progress = None
            self._update()
            self.console.print("   " + summary, highlight=False)

    def message(self, text: str) -> None:
        with self._lock:
            self.console.print(text, highlight=False)

    def close(self) -> None:
        with self._lock:
            self._update()
            self.live.stop()


def make_display(stream: IO[str] | None = None, *, force: str | None = None) -> Display:
    """Rich on a terminal, plain lines otherwise; ``force`` = "rich" / "plain" / "none"."""
    stream = stream or sys.stdout
    kind = force or ("rich" if getattr(stream, "isatty", lambda: False)() else "plain")
    if kind == "none":
        return Display()
    if kind == "rich":
        try:
            return RichDisplay(stream)
        except ImportError:  # the controller extra is missing: plain lines still work
            kind = "plain"
    return PlainDisplay(stream)
