"""`cvmigrate push --block SOURCE --target-device TARGET`: one block-level pass of one disk or image.

The push CLI (agent/cli.py) dispatches here when --block is given; the
arguments below are added to the same parser.
"""
from __future__ import annotations

import argparse
import logging
import os

from cvmigrate.common import compression
from cvmigrate.common.errors import UsageError
from cvmigrate.common.netaddr import parse_hostport
from cvmigrate.security_flags import security_from_args

logger = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The block-mode options (--block and --target-device themselves are added by agent/cli.py)."""
    g = p.add_argument_group("block-level migration (with --block)")
    g.add_argument("--used-only", action="store_true",
                   help="read only blocks the ext4/XFS filesystem uses (free blocks become zeros on the target); "
                        "falls back to a full read when the layout is not understood or the source is live")
    g.add_argument("--freeze", action="store_true",
                   help="fsfreeze the source's mounted filesystem for this pass (for a short final pass)")
    g.add_argument("--freeze-timeout", type=float, default=600.0, metavar="SECONDS",
                   help="thaw after this long even if the pass has not finished (default 600)")
    g.add_argument("--snapshot", action="store_true",
                   help="the source is a snapshot (consistent even if its origin is in use)")


def run(args: argparse.Namespace) -> int:
    from cvmigrate.agent.blockpush import BlockPush, BlockPushOptions
    from cvmigrate.agent.cli import print_summary
    from cvmigrate.common.rpc import channel_options

    if not getattr(args, "target_device", None):
        raise UsageError("--block needs --target-device DEVICE_OR_IMAGE: the receiver's device to write "
                         "(one of its --block-target devices)")
    security = security_from_args(args, "client")
    opts = BlockPushOptions(source=os.path.abspath(args.block), address=str(parse_hostport(args.to, "--to")),
                            target_device=args.target_device, transport=security.transport,
                            probe=security.probe(),
                            used_only=getattr(args, "used_only", False), freeze=getattr(args, "freeze", False),
                            freeze_timeout=getattr(args, "freeze_timeout", 600.0),
                            snapshot=getattr(args, "snapshot", False),
                            compress_level=(compression.DEFAULT_LEVEL if args.compress_level is None
                                            else args.compress_level), workers=max(1, args.workers),
                            channel_factory=security.channel_factory(channel_options()),
                            metadata=security.metadata())
    r = BlockPush(opts).run()
    print_summary(args.json, r.as_json(),
                  f"block pass of {r.source} -> {r.target_device}: {r.blocks_total} blocks, {r.blocks_zero} zero, "
                  f"{r.blocks_unchanged} unchanged, {r.blocks_sent} sent ({r.bytes_on_wire} bytes on the wire) "
                  f"in {r.seconds:.1f}s; source {r.consistency}")
    return 0
