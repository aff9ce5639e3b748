"""Stage 2: the transfer -- the full pass, then incremental passes until the cut-over (--cutover).

How one pass runs (here or on the agent daemon, retried, time-limited) is
controller/passes.py; these sub-tasks decide how many passes and which is the
final one.
"""
from __future__ import annotations

from typing import Any

from cvmigrate.controller.context import Context, Deadline
from cvmigrate.controller.cutover import CutoverSignal, key_available
from cvmigrate.controller.passes import run_pass
from cvmigrate.controller.progress import human_bytes


def full_pass(ctx: Context, dl: Deadline) -> dict[str, Any]:
    """The first complete copy; a re-run resumes from the receiver's journal (nothing landed is sent again)."""
    result = run_pass(ctx, "full", dl)
    ctx.note(f"{result['files']} files, {human_bytes(result['bytes_total'])}")
    return {"full_pass": result}




def incremental_passes(ctx: Context, dl: Deadline) -> dict[str, Any]:
    """Passes after the full one, per --cutover: now (none), after-pass (one final pass), manual (until told)."""
    mode = ctx.opts.cutover
    checksum = ctx.client.rsync.checksum
    if mode == "now":
        ctx.note("none (--cutover now)")
        return {"incremental_passes": 0}
    if mode == "after-pass":
        result = run_pass(ctx, "final", dl, checksum=checksum)
        ctx.note(f"final pass{' with content checksums' if checksum else ''}: "
                   f"{human_bytes(result['bytes_sent'])} sent, {result['deleted']} deleted")
        return {"incremental_passes": 1, "final_pass": result}
    signal_ = CutoverSignal(ctx.opts.cutover_file, key=ctx.opts.cutover_key)
    ctx.display.message(f"incremental passes until cut-over: stop the applications, then create {ctx.opts.cutover_file}"
                        + (" or press Enter" if ctx.opts.cutover_key and key_available() else "")
                        + "; one final pass follows")
    count = 0
    while True:
        signalled = signal_.is_set()
        result = run_pass(ctx, "final" if signalled else "incremental", dl, checksum=checksum and signalled)
        count += 1
        if signalled:
            break
        signal_.wait(min(ctx.opts.pass_interval, dl.remaining()))
    ctx.note(f"{count} passes; cut-over after pass {count}")
    return {"incremental_passes": count, "final_pass": result}
