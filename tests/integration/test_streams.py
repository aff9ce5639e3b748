"""Parallel passes (``--streams N``): the sharding rule's promises, admission per pass, shard lies.

A real receiver on 127.0.0.1:0 (in this process: its streams run as threads,
sharing the pass gate and the journal exactly as worker processes do) and the
real agent; rsync is the oracle for the target's content.
"""
from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import grpc
import pytest

from cvmigrate.agent.push import PushOptions, push
from cvmigrate.agent.shards import ShardedPass, plan_streams
from cvmigrate.common.errors import IntegrityError
from cvmigrate.common.excludes import ExcludeRules
from cvmigrate.common.model import PROTOCOL_VERSION
from cvmigrate.common.rpc import channel_options
from cvmigrate.common.shards import parent_of, shard_of_dir
from cvmigrate.proto import transfer_pb2 as pb
from cvmigrate.proto import transfer_pb2_grpc as pb_grpc
from cvmigrate.receiver.session import MAX_INFLIGHT
from tests.helpers.oracle import assert_identical
from tests.helpers.wire import Outcome, transfer_outcome

needs_rsync = pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync (the oracle) is missing")


def build_tree(root: Path) -> None:
    """Many directories (so every shard gets work), hard links across directories and shards, deep nesting,
    files in the root, an empty directory, old directory times."""
    for d in range(24):
        sub = root / f"d{d:02}" / "inner" / f"deep{d % 3}"
        sub.mkdir(parents=True)
        for f in range(6):
            (sub / f"f{f}.txt").write_bytes(os.urandom(200 + 37 * f))
        (root / f"d{d:02}" / "top.bin").write_bytes(os.urandom(3000))
    (root / "empty" / "dir").mkdir(parents=True)
    (root / "rootfile").write_bytes(b"root file\n")
    big = root / "d03" / "big.bin"
    big.write_bytes(os.urandom(3 << 20))
    for i, where in enumerate(["d05/inner", "d11", "d17/inner/deep2", ""]):
        os.link(big, root / where / f"big-link{i}")
    os.link(root / "rootfile", root / "d20" / "rootfile-link")
    os.symlink("../rootfile", root / "d01" / "sym")
    for dirpath, dirnames, _ in os.walk(root):
        for name in dirnames:
            os.utime(Path(dirpath) / name, ns=(1_500_000_000_000_000_000, 1_500_000_000_000_000_000))
    os.utime(root, ns=(1_400_000_000_000_000_000, 1_400_000_000_000_000_000))


def opts_for(src: Path, address: str, streams: int, **kw: object) -> PushOptions:
    return PushOptions(source=str(src), address=address, streams=streams, **kw)  # type: ignore[arg-type]


@needs_rsync
@pytest.mark.parametrize("streams", [2, 5])
def test_sharded_pass_mirrors_exactly_and_resumes_with_another_count(receiver, tmp_path, streams):
    address, root = receiver
    src = tmp_path / "src"
    src.mkdir()
    build_tree(src)
    # the target holds what the source no longer has (deleted by the shard owning the directory), and an
    # excluded path that must survive; and a file where the source has a directory
    (root / "d07").mkdir()
    (root / "d07" / "stale.txt").write_bytes(b"old")
    (root / "d09").write_bytes(b"a file where a directory belongs")
    (root / "keep.me").write_bytes(b"excluded: protected")
    rules = ExcludeRules.parse(["/keep.me"], origin="test")
    r = push(opts_for(src, address, streams, rules=rules))
    assert r.streams == streams and not r.errors, r.errors
    assert r.deleted == 1 and r.hardlinks == 5
    assert (root / "keep.me").read_bytes() == b"excluded: protected"
    assert_identical(src, root, ["/.cvmigrate/", "/keep.me"])
    links = {os.stat(root / p).st_ino for p in ("d03/big.bin", "d05/inner/big-link0", "d11/big-link1",
                                               "d17/inner/deep2/big-link2", "big-link3")}
    assert len(links) == 1
    # the journal is one, keyed by path: any other stream count finds everything in place
    for again in (1, 3):
        r2 = push(opts_for(src, address, again, rules=rules))
        assert r2.streams == again and r2.files_transferred == 0 and r2.bytes_sent == 0, r2
    # a change, with a count that puts most paths on another stream than before
    (src / "d04" / "inner" / "deep1" / "f2.txt").write_bytes(b"changed")
    shutil.rmtree(src / "d13")
    r3 = push(opts_for(src, address, 4, rules=rules))
    assert r3.files_transferred == 1 and r3.deleted >= 1
    assert_identical(src, root, ["/.cvmigrate/", "/keep.me"])
    assert not os.listdir(root / ".cvmigrate" / "shards")   # the pass's directory lists are gone


def test_default_streams_follow_both_sides_cores(receiver, tmp_path):
    address, _ = receiver
    n = plan_streams(opts_for(tmp_path, address, 0))
    assert 1 <= n <= min(8, len(os.sched_getaffinity(0)))
    assert plan_streams(opts_for(tmp_path, address, 6)) == 6
    assert plan_streams(opts_for(tmp_path, address, 50)) == 8
    assert plan_streams(opts_for(tmp_path, "127.0.0.1:1", 0)) == 1   # nobody to ask: one stream


# ---------------------------------------------------------------- admission and lies


def hello(pass_id: str = "", shard: int = 0, count: int = 0) -> pb.AgentMessage:
    return pb.AgentMessage(hello=pb.Hello(protocol_version=PROTOCOL_VERSION, options=pb.Options(delete=True),
                                          pass_id=pass_id, shard=shard, shard_count=count))


class HeldStream:
    """A Transfer stream kept open after its Welcome (until ``close``)."""

    def __init__(self, address: str, first: pb.AgentMessage, *more: pb.AgentMessage) -> None:
        self.release = threading.Event()
        self.channel = grpc.insecure_channel(address, options=channel_options())

        def requests():
            yield first
            yield from more
            self.release.wait(20)

        self.call = pb_grpc.ReceiverStub(self.channel).Transfer(requests(), timeout=30)
        self.first = next(self.call)

    def close(self) -> None:
        self.release.set()
        self.call.cancel()
        self.channel.close()


def outcome(address: str, *messages: pb.AgentMessage) -> Outcome:
    return transfer_outcome(address, messages)


def test_streams_of_one_pass_are_admitted_together_and_another_agent_is_refused(receiver):
    address, _ = receiver
    a = HeldStream(address, hello("pass-a", 0, 3))
    b = HeldStream(address, hello("pass-a", 2, 3))
    try:
        assert a.first.WhichOneof("body") == "welcome" and b.first.WhichOneof("body") == "welcome"
        assert a.first.welcome.cores >= 1
        # one window in flight for the whole pass: each stream gets its share
        assert a.first.welcome.max_inflight_bytes == MAX_INFLIGHT // 3
        for other in (hello("pass-b", 1, 3), hello()):   # another pass, an older single-stream agent
            _, code, details = outcome(address, other)
            assert code == grpc.StatusCode.ABORTED and "busy" in details
        _, code, details = outcome(address, hello("pass-a", 2, 3))    # the same shard twice
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "already open" in details
        _, code, details = outcome(address, hello("pass-a", 1, 4))    # another count: another pass
        assert code == grpc.StatusCode.ABORTED
        with grpc.insecure_channel(address) as ch:
            pong = pb_grpc.ReceiverStub(ch).Ping(pb.PingRequest(), timeout=5)
            assert pong.busy and pong.cores >= 1 and pong.max_streams >= 1
    finally:
        a.close()
        b.close()
    deadline = time.monotonic() + 10
    while True:   # the receiver frees the pass once its streams are gone
        _, code, _ = outcome(address, hello("pass-c", 0, 2), pb.AgentMessage(done=pb.Done()))
        if code != grpc.StatusCode.ABORTED or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert code == grpc.StatusCode.OK


@pytest.mark.parametrize("first", [hello("p", 3, 3), hello("p", 0, 9), hello("", 1, 2), hello("p", 1, 1)])
def test_impossible_shard_numbers_are_refused(receiver, first):
    address, root = receiver
    _, code, details = outcome(address, first)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert os.listdir(root) in ([], [".cvmigrate"])


def test_entries_on_a_shard_they_do_not_belong_to_are_refused(receiver):
    """A lying agent cannot make two streams (two worker processes) work in one directory."""
    address, root = receiver
    n = 4
    names = [f"x{i}".encode() for i in range(40)]
    wrong = next(p for p in (b"a/" + x for x in names) if shard_of_dir(parent_of(p), n) != 1)
    dir_elsewhere = next(x for x in names if shard_of_dir(x, n) != 1)
    for batch, what in [
        (pb.EntryBatch(entries=[pb.Entry(id=1, path=wrong, kind=pb.REGULAR, mode=0o644)]), "does not belong"),
        (pb.EntryBatch(completed_dirs=[dir_elsewhere]), "does not belong"),
        (pb.EntryBatch(present=[b"../../etc/passwd"]), "'..'"),
        (pb.EntryBatch(present=[b"a/" + dir_elsewhere]), "does not belong"),
    ]:
        _, code, details = outcome(address, hello(f"lie-{what}-{len(batch.present)}", 1, n),
                                   pb.AgentMessage(entries=batch))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (batch, details)
        assert what in details
    assert os.listdir(root) in ([], [".cvmigrate"])


def test_a_child_whose_parent_never_comes_fails_after_the_wait(receiver, monkeypatch):
    from cvmigrate.receiver import shards

    monkeypatch.setattr(shards, "PARENT_WAIT", 0.5)
    address, root = receiver
    orphan = next(p for p in (f"nodir{i}/f".encode() for i in range(50)) if shard_of_dir(parent_of(p), 2) == 1)
    _, code, details = outcome(address, hello("orphan", 1, 2),
                               pb.AgentMessage(entries=pb.EntryBatch(
                                   entries=[pb.Entry(id=1, path=orphan, kind=pb.REGULAR, mode=0o644)])))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "never sent" in details
    assert os.listdir(root) in ([], [".cvmigrate"])


def test_a_failing_stream_ends_the_attempt_and_push_resumes(receiver, tmp_path):
    """One stream's data is corrupted beyond retry: that stream fails, the others are stopped, and the error
    named is the real one (not the cancellations it caused)."""
    address, root = receiver
    src = tmp_path / "src"
    src.mkdir()
    build_tree(src)

    def corrupt(e, offset, buf):
        if e.path == b"d06/top.bin":
            buf[0] ^= 0xFF

    sp = ShardedPass(opts_for(src, address, 3), 3, fault=corrupt)
    with pytest.raises(IntegrityError, match="d06/top.bin failed verification"):
        sp.run()
    r2 = push(opts_for(src, address, 2))
    assert not r2.errors and r2.files_transferred >= 1
