"""The plumbing both senders (file and block) share around one gRPC request stream.

Why one place: reader threads, a compression pool and the gRPC request
iterator meet at a bounded send queue; tearing that down without a thread
hanging on a full queue, and surfacing a reader's failure to ``run()``, must
work the same for file and block transfers.
"""
from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from cvmigrate.common.errors import CvmError, SourceError, TransportError
from cvmigrate.common.flowcontrol import InflightWindow

logger = logging.getLogger(__name__)


class Stop(Exception):
    """Internal: the pass is being torn down; a pipeline thread just returns."""


class StreamPipeline:
    """Send queue, compression pool, in-flight window and failure hand-off of one pass."""

    def __init__(self, *, queue_size: int, workers: int, pool_name: str, window: int = 64 << 20) -> None:
        self._sendq: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix=pool_name)
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._window = InflightWindow(window)
        self._failed: BaseException | None = None

    def _wake(self) -> None:
        """Subclasses release their own waiters here (called on shutdown)."""

    def _shutdown(self) -> None:
        self._stop.set()
        self._window.close()
        self._wake()
        with self._cv:
            self._cv.notify_all()
        self._end_stream()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _end_stream(self) -> None:
        """Ask the request iterator to finish (never blocks: a full queue is being drained)."""
        try:
            self._sendq.put_nowait(None)
        except queue.Full:
            pass

    def _check_stream_end(self, call: Any, finished: bool, address: str) -> None:
        """After the reply loop has ended: a failure on our side cancels the call and is raised; a
        stream the receiver closed before the pass finished is a TransportError (a re-run resumes)."""
        if self._failed:
            call.cancel()
            raise self._failed
        if not finished:
            raise TransportError(f"receiver at {address} closed the stream before the pass finished; run the "
                                 "same command again to resume")

    def _guard(self, fn: Callable[[], None], what: str) -> Callable[[], None]:
        """Wrap a pipeline thread: a failure becomes ``_failed`` (a CvmError) and ends the stream."""
        def wrapped() -> None:
            try:
                fn()
            except Stop:
                pass
            except BaseException as exc:  # surfaced by run()
                if not self._stop.is_set():
                    logger.debug("%s failed", what, exc_info=True)
                    self._failed = exc if isinstance(exc, CvmError) else SourceError(f"{type(exc).__name__}: {exc}")
                    self._end_stream()
        return wrapped

    def _put(self, item: Any) -> None:
        """Queue a message (or a Future of one) for the stream; raises Stop once the pass is torn down."""
        while True:
            if self._stop.is_set():
                raise Stop()
            try:
                self._sendq.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def _queued(self, what: str) -> Iterator[Any]:
        """The queued items in order, Futures resolved; ends at the end-of-stream marker or a failure."""
        while True:
            item = self._sendq.get()
            if item is None:
                return
            if isinstance(item, Future):
                try:
                    item = item.result()
                except BaseException as exc:  # noqa: BLE001 - a failed or cancelled (CancelledError) job: tear down
                    if not self._failed:
                        self._failed = SourceError(f"{what} failed: {exc}")
                    return
            yield item
