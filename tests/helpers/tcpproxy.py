"""A small threaded TCP proxy for fault tests: count bytes, cut connections.

``TcpProxy(upstream_port)`` listens on 127.0.0.1:0 (never a fixed port) and
forwards every accepted connection to ``127.0.0.1:upstream_port``, two pump
threads per connection. It counts the bytes it has *forwarded* in each
direction (``c2s``: client -> server, i.e. what actually reached the
receiver's socket; ``s2c``: the answers), over all its connections.

Faults:

* ``cut(hold_for=N, mode="refuse")`` aborts every live connection (both
  sockets of each are shut down at once, with ``SO_LINGER`` 0 so the final
  close resets rather than lingers: both peers see the connection die at the
  same moment, nothing buffered in the proxy is delivered), then for ``N``
  seconds (``None``: until ``resume()``) either refuses new connections
  (``"refuse"``: accepted and reset immediately) or holds them (``"hold"``:
  accepted and left unanswered, then connected upstream when the cut ends);
* ``resume()`` ends a cut early; held connections are then served.
* ``set_upstream(port)`` points new connections at another port (a restarted
  receiver).

Use it as a context manager, or call ``close()``: every socket and thread it
started is gone afterwards.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from dataclasses import dataclass, field

from tests.helpers.closing import Closing

BUF = 256 * 1024


def _abort(sock: socket.socket) -> None:
    """Shut a socket down now (waking any thread blocked on it); its close will reset (SO_LINGER 0)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


@dataclass
class _Conn:
    client: socket.socket
    server: socket.socket | None = None
    c2s: int = 0
    s2c: int = 0
    opened: float = field(default_factory=time.monotonic)
    closed: bool = False
    pumps_left: int = 2
    threads: list[threading.Thread] = field(default_factory=list)


class TcpProxy(Closing):
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self._lock = threading.Lock()
        self._conns: list[_Conn] = []
        self._held: list[socket.socket] = []
        self._closed_c2s = 0          # bytes of connections already finished
        self._closed_s2c = 0
        self._down_until: float | None = None   # cut in effect while now < this (inf = until resume)
        self._mode = "refuse"
        self._closing = False
        self.connections_accepted = 0
        self.connections_refused = 0
        self.cuts = 0
        self._lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._lsock.bind(("127.0.0.1", 0))
        self._lsock.listen(64)
        self.port: int = self._lsock.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept_loop, name=f"tcpproxy-{self.port}", daemon=True)
        self._acceptor.start()

    # ------------------------------------------------------------ public
    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def c2s(self) -> int:
        """Bytes forwarded client -> server so far, over all connections."""
        with self._lock:
            return self._closed_c2s + sum(c.c2s for c in self._conns)

    @property
    def s2c(self) -> int:
        """Bytes forwarded server -> client so far, over all connections."""
        with self._lock:
            return self._closed_s2c + sum(c.s2c for c in self._conns)

    @property
    def live_connections(self) -> int:
        with self._lock:
            return sum(1 for c in self._conns if not c.closed)

    def set_upstream(self, port: int, host: str = "127.0.0.1") -> None:
        self.upstream = (host, port)

    def is_cut(self) -> bool:
        with self._lock:
            return self._is_down()

    def cut(self, hold_for: float | None = None, mode: str = "refuse") -> None:
        """Abort every live connection; refuse or hold new ones for ``hold_for`` seconds."""
        if mode not in ("refuse", "hold"):
            raise ValueError(f"mode must be 'refuse' or 'hold', not {mode!r}")
        with self._lock:
            self._mode = mode
            self._down_until = float("inf") if hold_for is None else time.monotonic() + hold_for
            conns = [c for c in self._conns if not c.closed]
            self.cuts += 1
        for c in conns:
            self._kill_conn(c)
        if hold_for is not None:
            t = threading.Timer(hold_for, self._timer_resume, args=(self._down_until,))
            t.daemon = True
            t.start()

    def resume(self) -> None:
        """End the cut: serve new (and held) connections again."""
        with self._lock:
            self._down_until = None
            held, self._held = self._held, []
        for s in held:
            self._serve(s)

    def close(self) -> None:
        with self._lock:
            self._closing = True
            conns = list(self._conns)
            held, self._held = self._held, []
        try:
            self._lsock.shutdown(socket.SHUT_RDWR)   # wakes the blocked accept() (close alone does not)
        except OSError:
            pass
        try:
            self._lsock.close()
        except OSError:
            pass
        for s in held:
            _abort(s)
            s.close()
        for c in conns:
            self._kill_conn(c)
        for c in conns:
            for t in c.threads:
                t.join(timeout=5)
        self._acceptor.join(timeout=5)

    def __repr__(self) -> str:
        return f"TcpProxy(:{self.port} -> {self.upstream[0]}:{self.upstream[1]}, c2s={self.c2s}, s2c={self.s2c})"

    # ------------------------------------------------------------ internals
    def _is_down(self) -> bool:
        return self._down_until is not None and time.monotonic() < self._down_until

    def _timer_resume(self, until: float) -> None:
        with self._lock:
            if self._down_until != until:   # a newer cut or a resume() happened meanwhile
                return
        self.resume()

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self._lsock.accept()
            except OSError:
                return
            with self._lock:
                if self._closing:
                    _abort(client)
                    client.close()
                    return
                down, mode = self._is_down(), self._mode
                if down and mode == "hold":
                    self._held.append(client)
                    continue
                if down:
                    self.connections_refused += 1
            if down:
                _abort(client)
                client.close()
                continue
            self._serve(client)

    def _serve(self, client: socket.socket) -> None:
        try:
            server = socket.create_connection(self.upstream, timeout=10)
            server.settimeout(None)
        except OSError:
            _abort(client)
            client.close()
            with self._lock:
                self.connections_refused += 1
            return
        for s in (client, server):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = _Conn(client=client, server=server)
        with self._lock:
            if self._closing:
                for s in (client, server):
                    _abort(s)
                    s.close()
                return
            self._conns.append(conn)
            self.connections_accepted += 1
        conn.threads = [
            threading.Thread(target=self._pump, args=(conn, client, server, "c2s"), daemon=True,
                             name=f"tcpproxy-{self.port}-c2s"),
            threading.Thread(target=self._pump, args=(conn, server, client, "s2c"), daemon=True,
                             name=f"tcpproxy-{self.port}-s2c"),
        ]
        for t in conn.threads:
            t.start()

    def _pump(self, conn: _Conn, src: socket.socket, dst: socket.socket, direction: str) -> None:
        buf = bytearray(BUF)
        view = memoryview(buf)
        try:
            while True:
                n = src.recv_into(buf)
                if n == 0:
                    break
                dst.sendall(view[:n])
                # counted once delivered to the peer's socket: "forwarded", not merely read
                with self._lock:
                    if direction == "c2s":
                        conn.c2s += n
                    else:
                        conn.s2c += n
        except OSError:
            pass
        # one side ended or failed: the connection is over for both peers (gRPC needs no TCP half-close)
        self._kill_conn(conn, graceful=True)

    def _kill_conn(self, conn: _Conn, graceful: bool = False) -> None:
        with self._lock:
            first = not conn.closed
            conn.closed = True
        socks = [conn.client] + ([conn.server] if conn.server is not None else [])
        if first:
            for s in socks:
                if graceful:
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                else:
                    _abort(s)
        # the last pump to leave closes the descriptors and folds the counts into the totals
        if threading.current_thread() in conn.threads:
            with self._lock:
                conn.pumps_left -= 1
                last = conn.pumps_left == 0
                if last and conn in self._conns:
                    self._conns.remove(conn)
                    self._closed_c2s += conn.c2s
                    self._closed_s2c += conn.s2c
            if last:
                for s in socks:
                    try:
                        s.close()
                    except OSError:
                        pass


__all__ = ["TcpProxy"]
