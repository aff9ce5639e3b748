"""The block plane's gRPC servicer: one block session at a time, next to the file service.

The session's work is in receiver/blocksession.py; this module runs it on a
stream: a thread hashes the target, a thread applies the agent's messages, and
the handler yields what both produce, mapping every CvmError to its status.
"""
from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from cvmigrate.common.errors import Busy, CvmError, ProtocolError, TargetError
from cvmigrate.common.rpc import abort
from cvmigrate.proto import block_pb2 as bpb
from cvmigrate.proto import block_pb2_grpc as bpb_grpc
from cvmigrate.receiver.blockjournal import BlockJournal
from cvmigrate.receiver.blocksession import BlockSession

logger = logging.getLogger(__name__)

_END = object()


class BlockReceiverService(bpb_grpc.BlockReceiverServicer):
    """Thin servicer: one block session at a time; every CvmError mapped to its status here."""

    def __init__(self, state_dir: str, targets: list[str] | tuple[str, ...] = ()) -> None:
        self.state_dir = state_dir
        self.targets = list(targets)
        self._busy = threading.Lock()

    def BlockTransfer(self, request_iterator: Iterator[bpb.BlockAgentMessage],
                      context: grpc.ServicerContext) -> Iterator[bpb.BlockReceiverMessage]:
        if not self._busy.acquire(blocking=False):
            abort(context, Busy("the receiver is busy with another block session; one device at a time"))
        stop = threading.Event()
        out: queue.Queue[Any] = queue.Queue(maxsize=256)
        session: BlockSession | None = None
        journal: BlockJournal | None = None
        threads: list[threading.Thread] = []

        def put(item: Any) -> None:
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.2)
                    return
                except queue.Full:
                    continue

        def guarded(fn: Callable[[BlockSession], None], session: BlockSession) -> Callable[[], None]:
            def run() -> None:
                try:
                    fn(session)
                except BaseException as exc:  # noqa: BLE001 - handed to the response loop, which maps it
                    if not stop.is_set():
                        put(exc)
            return run

        def hasher(session: BlockSession) -> None:
            for msg in session.hash_target(stop):
                put(msg)

        def reader(session: BlockSession) -> None:
            for msg in request_iterator:
                kind = msg.WhichOneof("body")
                if kind == "data":
                    msgs = session.data(msg.data)
                elif kind == "done":
                    threads[0].join()
                    msgs = session.done(msg.done)
                else:
                    raise ProtocolError(f"unexpected {kind or 'empty'} message after BlockHello")
                for m in msgs:
                    put(m)
                if session.finished:
                    put(_END)
                    return
            if not stop.is_set():
                put(ProtocolError("the agent closed the stream before BlockDone"))

        context.add_callback(stop.set)
        try:
            journal = BlockJournal(self.state_dir)
            session = BlockSession(journal, self.targets)
            first = next(request_iterator, None)
            if first is None or first.WhichOneof("body") != "hello":
                raise ProtocolError("the first message of a BlockTransfer must be BlockHello")
            yield session.hello(first.hello)
            threads = [threading.Thread(target=guarded(hasher, session), name="cvm-block-hash", daemon=True),
                       threading.Thread(target=guarded(reader, session), name="cvm-block-recv", daemon=True)]
            for th in threads:
                th.start()
            while True:
                try:
                    item = out.get(timeout=0.5)
                except queue.Empty:
                    if stop.is_set():
                        return
                    continue
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        except CvmError as exc:
            abort(context, exc, log="block transfer refused")
        except OSError as exc:
            abort(context, TargetError(f"block transfer failed on the receiver: {exc}"), log="block transfer failed")
        finally:
            stop.set()
            for th in threads:
                th.join(timeout=30)
            if session is not None:
                session.close()
            if journal is not None:
                journal.close()
            self._busy.release()


def add_to_server(server: grpc.Server, state_dir: str, targets: list[str] | tuple[str, ...]) -> BlockReceiverService:
    """Register the block service next to the file service (create_server calls this)."""
    service = BlockReceiverService(state_dir, targets)
    bpb_grpc.add_BlockReceiverServicer_to_server(service, server)
    return service

