"""The transfer passes: one pass = the file level (unless --block-only), then each --block-disk.

Why a PassRunner protocol: a file-level pass runs either in this process
(:class:`LocalPass`, the agent's push API) or in the agent daemon on the
source server (``agent_client.RemotePass``, over gRPC, ``--agent``).  The
orchestration here -- a worker thread, progress samples for the display and
the checkpoint, ``cvmigrate bwlimit`` applied live, the deadline, retries of a
retryable failure -- is the same for both, so ``--agent`` changes where a pass
runs and nothing else.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from cvmigrate.common.errors import CvmError, StageTimeout
from cvmigrate.common.passes import PassCounters
from cvmigrate.common.rpc import RetryPolicy, call_with_retry, channel_options
from cvmigrate.common.sourcefacts import SourceFacts
from cvmigrate.controller.context import Context, Deadline
from cvmigrate.controller.progress import TransferProgress, human_bytes

if TYPE_CHECKING:
    from cvmigrate.agent.push import PushOptions, PushSession
    from cvmigrate.common.excludes import ExcludeRules
    from cvmigrate.common.passes import PushResult

logger = logging.getLogger(__name__)

#: The agent's own files on a source server (agent/install.py's layout, the one-file executable's caches).
AGENT_OWN_LINES: tuple[str, ...] = ("/etc/cvmigrate/", "/var/lib/cvmigrate/", "/usr/local/lib/cvmigrate/",
                                    "/root/.cache/cvmigrate/", "/var/tmp/cvmigrate-*/",  # noqa: S108 - patterns
                                    "/tmp/cvmigrate-*/")  # noqa: S108 - an exclude pattern, no file is opened


class PassRunner(Protocol):
    """One file-level pass, run in a worker thread by :func:`run_pass`; the other methods come from other threads."""

    def run(self) -> PushResult:
        """Transfer; the result, or raise (a CvmError says whether a retry can help)."""
        ...

    def cancel(self, reason: str = "") -> None:
        """Stop the pass soon; ``run`` then raises."""
        ...

    def counters(self) -> PassCounters:
        """The pass's progress so far."""
        ...

    def set_bandwidth(self, kbps: int | None) -> None:
        """Change the rate limit (KB/s on the wire; None lifts it) of the running pass."""
        ...


class LocalPass:
    """A pass in this process: the agent's push session, reading the source here."""

    def __init__(self, opts: PushOptions) -> None:
        from cvmigrate.agent.shards import ShardedPass, new_pass, plan_streams

        # one stream, or the shards of a parallel pass (same run/cancel/scanner/result/bucket)
        self.session: PushSession | ShardedPass = new_pass(opts, plan_streams(opts))

    def run(self) -> PushResult:
        return self.session.run()

    def cancel(self, reason: str = "the pass was cancelled") -> None:
        self.session.cancel(reason)

    def counters(self) -> PassCounters:
        return PassCounters.of(self.session.scanner.stats, self.session.result)

    def set_bandwidth(self, kbps: int | None) -> None:
        self.session.bucket.set_rate(kbps * 1024 if kbps else None)


def data_mounts(ctx: Context, facts: SourceFacts) -> tuple[bytes, ...]:
    """Relative mount points of the DataDisks that are separate filesystems on the source: the
    pass enters them (it never crosses a filesystem otherwise), and so does the verification."""
    return tuple(os.fsencode(d.mount_point.strip("/")) for d in ctx.user.data_disks
                 if d.mount_point.strip("/") and facts.filesystem("/" + d.mount_point.strip("/")) is not None)


def exclude_rules(ctx: Context) -> ExcludeRules:
    """What no pass copies: the tool's own files, --exclude-from files, the default excludes."""
    from cvmigrate.common.excludes import DEFAULT_EXCLUDE_LINES, ExcludeRules, escape_literal

    src = os.path.abspath(ctx.opts.source)
    # the tool's own files never migrate, wherever they sit under the source: the controller's
    # (user.json with the SecretKey, client.json, state, log, this migration's keys and tokens)
    # and the agent's (its installed executable, certificates, token and unpacked runtime)
    own = list(AGENT_OWN_LINES)
    pki_dir = ctx.facts.pki_dir
    for p in (*ctx.opts.own_paths, *([pki_dir] if pki_dir else [])):
        ap = os.path.abspath(p)
        if ap == src or not ap.startswith(src.rstrip("/") + "/"):
            continue
        rel = "/" + os.path.relpath(ap, src)
        own.append(escape_literal(rel, in_wildcard=True) + "*")
    rules = ExcludeRules.parse(own, origin="cvmigrate's own files")
    for path in ctx.opts.exclude_files:
        rules = rules + ExcludeRules.from_file(path)
    return rules + ExcludeRules.parse(DEFAULT_EXCLUDE_LINES, origin="default excludes")


class _Sampler:
    """Progress samples of one pass: the rates over a moving window, the ETA from the current rate."""

    def __init__(self, pass_no: int, kind: str, estimate: int | None, prev_files: int | None) -> None:
        from cvmigrate.controller.progress import RateWindow

        self.pass_no, self.kind, self.estimate, self.prev_files = pass_no, kind, estimate, prev_files
        self.t0 = time.monotonic()
        self.read, self.wire, self.files = RateWindow(), RateWindow(), RateWindow()

    def __call__(self, runner: PassRunner) -> TransferProgress:
        c = runner.counters()
        now = time.monotonic()
        done = c.files_transferred + c.files_skipped
        p = TransferProgress(pass_no=self.pass_no, kind=self.kind, files_scanned=c.files_scanned, files_done=done,
                             bytes_scanned=c.bytes_scanned, bytes_read=c.bytes_read, bytes_sent=c.bytes_sent,
                             elapsed=now - self.t0)
        p.rate, p.wire_rate = self.read.add(now, c.bytes_read), self.wire.add(now, c.bytes_sent)
        files_rate = self.files.add(now, done)
        if self.kind == "full" and self.estimate and p.rate > 0:
            p.eta = max(0.0, self.estimate - c.bytes_read) / p.rate
        elif self.prev_files and files_rate > 0:
            p.eta = max(0.0, self.prev_files - done) / files_rate
        return p


def run_pass(ctx: Context, kind: str, dl: Deadline, *, checksum: bool = False) -> dict[str, Any]:
    """One transfer pass: file level (unless --block-only), then each --block-disk block by block."""
    if ctx.opts.file_level:
        result = _file_pass(ctx, kind, dl, checksum=checksum)
    else:
        result = {"files": 0, "dirs": 0, "bytes_total": 0, "bytes_sent": 0, "deleted": 0, "seconds": 0.0}
    if ctx.opts.block_disks:
        result["block"] = [_block_pass(ctx, src, dst, kind) for src, dst in ctx.opts.block_disks]
        result["bytes_sent"] += sum(b["bytes_on_wire"] for b in result["block"])
    return result


def _block_pass(ctx: Context, source: str, target: str, kind: str) -> dict[str, Any]:
    """One block-level pass of a disk (the receiver hashes or journals the target: only changes travel)."""
    from cvmigrate.agent.blockpush import BlockPush, BlockPushOptions

    sec = ctx.data_security()
    opts = BlockPushOptions(source=source, address=ctx.receiver_address(), target_device=target,
                            migration_id=ctx.migration_id, workers=ctx.opts.workers,
                            channel_factory=sec.channel_factory(channel_options(ctx.data_proxy())),
                            metadata=sec.metadata())
    r = BlockPush(opts).run()
    summary = (f"block pass ({kind}) {source} -> {target}: {r.blocks_total} blocks, {r.blocks_zero} zero, "
               f"{r.blocks_unchanged} unchanged, {r.blocks_sent} sent ({human_bytes(r.bytes_on_wire)} on the wire), "
               f"source {r.consistency}")
    logger.info("%s", summary)
    for w in r.warnings:
        logger.warning("%s: %s", source, w)
    return r.as_json()


def pass_runner(ctx: Context, opts: PushOptions) -> PassRunner:
    """The pass ``opts`` describes: in this process, or with ``--agent`` in the agent daemon there."""
    if ctx.opts.agent:
        from cvmigrate.controller.agent_client import remote_pass

        return remote_pass(ctx, opts)
    return LocalPass(opts)


def _file_pass(ctx: Context, kind: str, dl: Deadline, *, checksum: bool = False) -> dict[str, Any]:
    """One agent -> receiver file-level pass, retried on retryable failures (a lost link) within the deadline.

    The agent runs in this process, or with ``--agent`` in the daemon there (same display and checkpoints);
    a retry resumes: the receiver's journal keeps what landed.
    """
    from cvmigrate.agent.push import check_complete

    previous = ctx.facts.completed_passes()
    plan = _PassPlan(kind=kind, checksum=checksum, mounts=data_mounts(ctx, ctx.source_facts()),
                     prev_files=previous[-1].files if previous else None,
                     estimate=previous[-1].bytes_total if previous else ctx.facts.source_used_bytes)

    def retry_note(exc: BaseException, pause: float) -> None:
        logger.warning("%s pass failed (%s); the receiver keeps what landed, retrying in %.0f s", kind, exc, pause)

    policy = RetryPolicy(max_attempts=5, base_delay=2.0, max_delay=30.0, max_total=dl.remaining())
    n, result, prog = call_with_retry(lambda _attempt: _attempt_file_pass(ctx, plan, dl), policy=policy,
                                      retryable=_worth_retrying, describe=f"the {kind} pass", on_retry=retry_note)
    check_complete(result)
    summary = (f"pass {n} ({kind}): {result.files} files ({result.files_transferred} sent, "
               f"{result.files_skipped} unchanged), {human_bytes(result.bytes_total)} of content, "
               f"{human_bytes(result.bytes_sent)} on the wire, {result.deleted} deleted, {result.seconds:.1f}s"
               + (f", {result.streams} streams" if result.streams > 1 else "")
               + (f" ({result.placement_retries} reconnected to reach a free receiver worker)"
                  if result.placement_retries else ""))
    ctx.display.transfer_done(prog, summary)
    logger.info("%s", summary)
    as_json: dict[str, Any] = result.as_json()
    return as_json


@dataclass(frozen=True)
class _PassPlan:
    """What stays the same across the attempts of one pass."""

    kind: str
    checksum: bool
    mounts: tuple[bytes, ...]
    prev_files: int | None
    estimate: int | None


def _worth_retrying(exc: BaseException) -> bool:
    """A retryable failure of the pass (a lost link, a busy receiver); never the stage's own time limit."""
    return isinstance(exc, CvmError) and exc.retryable and not isinstance(exc, StageTimeout)


def _attempt_file_pass(ctx: Context, plan: _PassPlan, dl: Deadline) -> tuple[int, PushResult, TransferProgress]:
    """One attempt: a checkpointed pass (number, result or error) run in a worker thread, sampled here."""
    from cvmigrate.agent.push import PushOptions

    kind = plan.kind
    sec = ctx.data_security()
    opts = PushOptions(source=os.path.abspath(ctx.opts.source), address=ctx.receiver_address(),
                       rules=exclude_rules(ctx), delete=True, checksum=plan.checksum, include_mounts=plan.mounts,
                       migration_id=ctx.migration_id, workers=ctx.opts.workers, streams=ctx.opts.streams,
                       channel_factory=sec.channel_factory(channel_options(ctx.data_proxy())),
                       metadata=sec.metadata(), bwlimit_kbps=bwlimit(ctx))
    n = ctx.ckpt.begin_pass(kind)
    runner = pass_runner(ctx, opts)
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["result"] = runner.run()
        except BaseException as exc:  # noqa: BLE001 - handed to the sampling thread, which raises it
            box["error"] = exc

    sample = _Sampler(n, kind, plan.estimate, plan.prev_files)
    worker = threading.Thread(target=work, name=f"cvm-pass-{n}", daemon=True)
    worker.start()
    last_saved = last_limit_check = 0.0
    limit = opts.bwlimit_kbps
    while worker.is_alive():
        worker.join(0.1)
        if time.monotonic() - last_limit_check > 1.0:
            last_limit_check = time.monotonic()
            limit = apply_bwlimit_change(ctx, runner, limit)
        prog = sample(runner)
        ctx.display.transfer(prog)
        if time.monotonic() - last_saved > 2.0:
            ctx.ckpt.set_facts(transfer_progress=prog.as_json())
            last_saved = time.monotonic()
        if dl.expired():
            runner.cancel(f"the {kind} pass ran out of time")
            raise dl.timeout_error(f"the {kind} pass")
    prog = sample(runner)
    err = box.get("error")
    if err is not None:
        ctx.ckpt.end_pass(n, {"error": str(err)})
        raise err
    result: PushResult = box["result"]
    ctx.ckpt.end_pass(n, result.as_json())
    ctx.ckpt.set_facts(transfer_progress=prog.as_json())
    return n, result, prog


def bwlimit(ctx: Context) -> int | None:
    """`cvmigrate bwlimit` (kept in the checkpoint) wins over client.json's Client.Rsync.BandwidthLimit."""
    override = ctx.facts.bwlimit_override
    if override is None:
        return ctx.client.rsync.bandwidth_limit_kbps
    return override or None


def apply_bwlimit_change(ctx: Context, runner: PassRunner, current: int | None) -> int | None:
    """Apply a limit changed by `cvmigrate bwlimit` to the running pass (local or on the agent daemon)."""
    wanted = bwlimit(ctx)
    if wanted == current:
        return current
    runner.set_bandwidth(wanted)
    logger.info("bandwidth limit changed to %s", f"{wanted} KB/s" if wanted else "unlimited")
    return wanted
