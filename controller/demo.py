"""`cvmigrate demo`: the main job on the embedded default, no cloud account needed.

It generates a sample source (or takes --source), starts a real receiver on a
temporary target over loopback gRPC, pushes, and verifies the target against
the source with our own comparison.
"""
from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
from pathlib import Path

from cvmigrate.common.errors import CvmError

logger = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", help="migrate this directory instead of a generated sample tree")
    p.add_argument("--workdir", help="where to put the sample tree and the target (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the sample and target afterwards")


def run(args: argparse.Namespace) -> int:
    from cvmigrate.agent.push import PushOptions, PushSession, check_complete
    from cvmigrate.agent.verify import compare_trees
    from cvmigrate.controller.sample_tree import build_sample_tree
    from cvmigrate.receiver.server import create_server
    from cvmigrate.receiver.session import ReceiverConfig

    work = Path(args.workdir or tempfile.mkdtemp(prefix="cvmigrate-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        source = Path(args.source) if args.source else build_sample_tree(work / "source")
        target = work / "target"
        target.mkdir(exist_ok=True)
        print(f"source: {source}\ntarget: {target}")
        handle = create_server(ReceiverConfig(root=str(target)), "127.0.0.1:0")
        try:
            address = f"127.0.0.1:{handle.port}"
            print(f"receiver listening on {address} (loopback, plaintext: demo only)")
            result = PushSession(PushOptions(source=str(source), address=address)).run()
        finally:
            handle.stop(grace=2)
        mb = result.bytes_total / 1e6
        print(f"transfer: {result.files} files, {result.dirs} dirs, {result.symlinks} symlinks, "
              f"{result.hardlinks} hard links, {mb:.1f} MB of content, {result.bytes_sent / 1e6:.1f} MB sent "
              f"in {result.seconds:.2f} s")
        check_complete(result)
        report = compare_trees(str(source), str(target))
        if not report.ok:
            raise CvmError("verification failed: " + "; ".join(report.differences[:5]))
        print(f"verified: {report.entries} entries match, {report.files_hashed} files "
              f"({report.bytes_hashed / 1e6:.1f} MB) hashed on both sides")
        print("demo migration complete")
        return 0
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
