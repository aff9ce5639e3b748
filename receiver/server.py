"""The receiver's gRPC service: a thin servicer over receiver.session.Session.

Why thin: all decisions live in Session; the servicer only enforces one
session at a time, maps every CvmError to its gRPC status in one place, and
makes sure nothing is left half-open when a stream ends.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import grpc

from cvmigrate import __version__
from cvmigrate.common import metrics
from cvmigrate.common.errors import Busy, CvmError, Misplaced, ProtocolError
from cvmigrate.common.model import PROTOCOL_VERSION
from cvmigrate.common.rpc import MAX_MESSAGE, abort, server_options, start_server
from cvmigrate.common.shards import MAX_STREAMS, usable_cores
from cvmigrate.proto import transfer_pb2 as pb
from cvmigrate.proto import transfer_pb2_grpc as pb_grpc
from cvmigrate.receiver.fsops import TargetTree, oserror_to_cvm
from cvmigrate.receiver.journal import Journal
from cvmigrate.receiver.session import ReceiverConfig, Session
from cvmigrate.receiver.shards import BlockGate, PassGate, ShardSession, clear_shard_dir

logger = logging.getLogger(__name__)


class ReceiverService(pb_grpc.ReceiverServicer):
    def __init__(self, cfg: ReceiverConfig, gate: PassGate | None = None, max_streams: int = MAX_STREAMS) -> None:
        self.cfg = cfg
        #: one pass at a time, across worker processes (receiver/shards.py)
        self.gate = gate or PassGate()
        self.max_streams = max_streams
        root = os.path.abspath(cfg.root)
        if not os.path.isdir(root):
            raise CvmError(f"target root {root!r} is not a directory; create it or mount the target disk there")
        self.state_dir = os.path.abspath(cfg.state_dir) if cfg.state_dir else os.path.join(root, ".cvmigrate")

    def Ping(self, request: pb.PingRequest, context: grpc.ServicerContext) -> pb.PingResponse:
        return pb.PingResponse(receiver_version=__version__, protocol_versions=[PROTOCOL_VERSION],
                               busy=self.gate.busy(), cores=usable_cores(), max_streams=self.max_streams)

    @contextlib.contextmanager
    def _holding(self, what: str, context: grpc.ServicerContext) -> Iterator[None]:
        """Hold the receiver for a non-transfer operation; while a pass runs, end the call
        FAILED_PRECONDITION (the caller runs it after the transfer)."""
        try:
            held = self.gate.hold(what)
        except Busy as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        try:
            yield
        finally:
            self.gate.leave(held)

    def RunFixups(self, request: pb.FixupsRequest, context: grpc.ServicerContext) -> pb.FixupsResponse:
        with self._holding("fix-ups", context):
            try:
                from cvmigrate.receiver.fixups_service import fixups_for_root

                report, reason = fixups_for_root(self.cfg.root, request.source_filesystems_json,
                                                 chroot_tools=request.chroot_tools, skip=list(request.skip),
                                                 facts_json=request.source_facts_json,
                                                 keep_static_ip=request.keep_static_ip)
            except CvmError as exc:
                abort(context, exc)
        if report is None:
            return pb.FixupsResponse(ok=True, skipped=True, summary=reason)
        return pb.FixupsResponse(ok=report.ok, summary=report.summary(), diffs=report.diffs(),
                                 report_json=json.dumps(report.as_json()))

    def Finalize(self, request: pb.FinalizeRequest, context: grpc.ServicerContext) -> pb.FinalizeResponse:
        """Remove the journal and our temporary files (stage 3, before ExitRescueMode)."""
        with self._holding("finalize", context):
            try:
                from cvmigrate.receiver.finalize import finalize

                done = finalize(self.cfg.root, self.state_dir)
            except CvmError as exc:
                abort(context, exc)
            except OSError as exc:
                abort(context, oserror_to_cvm(exc, "finalizing", b""))
        return pb.FinalizeResponse(temporary_files_removed=done.temporary_files_removed,
                                   state_removed=done.state_removed)

    def Transfer(self, request_iterator: Iterator[pb.AgentMessage],
                 context: grpc.ServicerContext) -> Iterator[pb.ReceiverMessage]:
        session: Session | None = None
        ticket = None
        metrics.add("open_sessions")
        try:
            first = next(request_iterator, None)
            if first is None or first.WhichOneof("body") != "hello":
                raise ProtocolError("the first message of a Transfer must be Hello")
            h = first.hello
            if h.shard_count > self.max_streams:
                raise ProtocolError(f"a pass of {h.shard_count} streams; this receiver admits {self.max_streams}")
            ticket = self.gate.admit(h.pass_id, h.shard, h.shard_count,
                                     os.path.exists(os.path.join(self.state_dir, "journal.db")),
                                     placement=h.placement_attempt)
            tree = TargetTree(self.cfg.root)
            try:
                with self.gate.locked():   # the streams of a pass may all create the journal at once
                    tree.make_state_dir(self.state_dir)
                    journal = Journal(self.state_dir)
                    journal.db.execute("PRAGMA busy_timeout=60000")   # other streams' group commits
                tree.protect(self.state_dir)
            except BaseException:
                tree.close()
                raise
            if ticket.count > 1:
                logger.info("stream %d of %d of pass %s admitted in worker %d", ticket.shard, ticket.count,
                            h.pass_id[:12], os.getpid())
                shard_dir = os.path.join(self.state_dir, "shards")
                if ticket.first:
                    clear_shard_dir(shard_dir)
                session = ShardSession(self.cfg, tree, journal, gate=self.gate, ticket=ticket,
                                       state_dir=self.state_dir)
            else:
                session = Session(self.cfg, tree, journal)
            welcome = session.hello(h)
            welcome[0].welcome.cores = usable_cores()
            yield from welcome
            # a pass resumes against what an earlier pass journaled: once per pass (a later stream of a
            # sharded pass finds the journal its first stream just made)
            resumed = session.journal.existed if ticket.count == 1 else ticket.first and ticket.resumed
            metrics.add("retries", 1 if resumed else 0)
            for msg in request_iterator:
                kind = msg.WhichOneof("body")
                if kind == "entries":
                    out = session.entries(msg.entries)
                elif kind == "packed_entries":
                    out = session.packed_entries(msg.packed_entries)
                elif kind == "data":
                    out = session.data(msg.data)
                    metrics.add("bytes_received", msg.ByteSize())
                    metrics.add("chunks_verified", len(msg.data.segments))
                elif kind == "done":
                    out = session.done()
                else:
                    raise ProtocolError(f"unexpected {kind or 'empty'} message after Hello")
                yield from out
                if session.finished:
                    logger.info("session %s finished: %d committed, %d deleted, %d bytes written, %d reused",
                                session.session_id, session.committed, session.deleted, session.bytes_written,
                                session.bytes_reused)
                    metrics.add("files", session.committed)
                    metrics.add("bytes_written", session.bytes_written)
                    return
        except Misplaced as exc:   # expected, and retried at once by the agent: not worth a warning
            logger.info("placement: %s", exc)
            abort(context, exc)
        except CvmError as exc:
            abort(context, exc, log="transfer refused")
        except (ValueError, OverflowError) as exc:
            # a malformed field that got as far as a system call: the peer's fault, said as such
            abort(context, ProtocolError(f"malformed message: {exc}"), log="transfer refused")
        except OSError as exc:
            abort(context, oserror_to_cvm(exc, "writing", getattr(exc, "filename", b"") or b""),
                  log="transfer failed")
        finally:
            if session is not None:
                session.close()
                session.tree.close()
                session.journal.close()
            metrics.add("open_sessions", -1)
            if ticket is not None:   # refused streams (Busy, Misplaced) are no transfer
                metrics.add("streams")
                if session is None or not session.finished or session.last_of_pass:
                    metrics.add("passes")   # a pass of N streams: once, by its last stream (or any that failed)
            if ticket is not None:
                self.gate.leave(ticket)


@dataclass
class ServerHandle:
    server: grpc.Server
    port: int
    service: ReceiverService

    def stop(self, grace: float | None = 5.0) -> None:
        self.server.stop(grace).wait()


def create_server(cfg: ReceiverConfig, address: str, credentials: grpc.ServerCredentials | None = None,
                  interceptors: tuple[grpc.ServerInterceptor, ...] = (), block_targets: tuple[str, ...] = (), *,
                  gate: PassGate | None = None, block_gate: PassGate | None = None,
                  reuse_port: bool = False) -> ServerHandle:
    """Bind (port 0 = any free port) and start; returns the handle with the bound port.

    ``block_targets``: the only devices or image files the block service may write (--block-target).
    ``gate``/``block_gate``/``reuse_port``: one of several worker processes on one port (receiver/workers.py):
    admission is shared with the others.
    """
    from cvmigrate.receiver.blockserver import add_to_server as add_block_service

    service = ReceiverService(cfg, gate)
    if block_gate is not None:
        interceptors = (*interceptors, BlockGate(block_gate))
    options = [o for o in server_options(MAX_MESSAGE, max_concurrent_streams=4) if o[0] != "grpc.so_reuseport"]
    # SO_REUSEPORT only for worker processes sharing the port their supervisor holds (receiver/workers.py)
    options.append(("grpc.so_reuseport", 1 if reuse_port else 0))

    def add_services(server: grpc.Server) -> None:
        pb_grpc.add_ReceiverServicer_to_server(service, server)
        add_block_service(server, os.path.join(service.state_dir, "block"), tuple(block_targets))

    server, port = start_server(address, add_services, credentials=credentials, interceptors=interceptors,
                                options=options, max_workers=8 + MAX_STREAMS,
                                max_concurrent_rpcs=16 + MAX_STREAMS)
    return ServerHandle(server, port, service)
