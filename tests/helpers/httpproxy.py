"""A minimal HTTP CONNECT proxy with Basic proxy authentication (tests only).

Enough of RFC 9110 section 9.3.6 for gRPC's HTTP proxy support
(``grpc_proxy=http://user:pass@host:port``): the client sends

    CONNECT target:port HTTP/1.1
    Host: target:port
    Proxy-Authorization: Basic base64(user:pass)

and gets ``200 Connection established`` followed by a raw byte tunnel, or
``407 Proxy Authentication Required`` (with ``Proxy-Authenticate: Basic``)
for missing or wrong credentials, ``405`` for any other method, ``502`` when
the target cannot be reached, ``400`` for a malformed request.

Every decision is logged as one line on stderr (``CONNECT <target> 200`` /
``407`` ...) and counted; ``--stats-file`` receives the counters as JSON when
a tunnel closes. The password never appears in the log.

In-process: ``HttpConnectProxy(("127.0.0.1", 0), auth=("u", "p")).start()``.
As a process (e.g. inside a network namespace)::

    python -m tests.helpers.httpproxy --listen 10.231.3.2:0 --port-file F \
        --auth-file creds   # a file holding "user:pass"
"""

from __future__ import annotations

import argparse
import base64
import hmac
import json
import os
import signal
import socket
import sys
import threading
from pathlib import Path

MAX_HEAD = 16 * 1024
BUF = 256 * 1024


class HttpConnectProxy:
    def __init__(self, listen: tuple[str, int], *, auth: tuple[str, str] | None = None,
                 connect_timeout: float = 10.0, stats_file: str | None = None) -> None:
        family = socket.AF_INET6 if ":" in listen[0] else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(listen)
        self.sock.listen(64)
        self.port: int = self.sock.getsockname()[1]
        self._expected = None
        if auth is not None:
            self._expected = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        self.connect_timeout = connect_timeout
        self.stats_file = stats_file
        self.lock = threading.Lock()
        self.counts = {"requests": 0, "tunnels": 0, "open_tunnels": 0, "refused_auth": 0,
                       "refused_other": 0, "bytes_up": 0, "bytes_down": 0}
        self.targets: list[str] = []      # every CONNECT target tunnelled, in order
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ lifecycle
    def start(self) -> HttpConnectProxy:
        self._thread = threading.Thread(target=self.serve_forever, name="httpproxy", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, peer = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            threading.Thread(target=self._handle, args=(conn, peer), daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        try:
            self.sock.close()
        except OSError:
            pass
        if self._thread:
            self._thread.join(timeout=2)

    def __enter__(self) -> HttpConnectProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------ one client
    def _log(self, text: str) -> None:
        sys.stderr.write(f"httpproxy: {text}\n")
        sys.stderr.flush()

    def _count(self, **inc: int) -> None:
        with self.lock:
            for k, v in inc.items():
                self.counts[k] += v
            snapshot = json.dumps({**self.counts, "targets": self.targets})
        if self.stats_file:
            tmp = f"{self.stats_file}.tmp.{threading.get_ident()}"
            with open(tmp, "w") as f:
                f.write(snapshot)
            os.replace(tmp, self.stats_file)

    def _reply(self, conn: socket.socket, status: str, headers: tuple[str, ...] = ()) -> None:
        head = f"HTTP/1.1 {status}\r\n" + "".join(h + "\r\n" for h in headers)
        if not status.startswith("200"):
            head += "Content-Length: 0\r\nConnection: close\r\n"
        conn.sendall((head + "\r\n").encode())

    def _handle(self, conn: socket.socket, peer) -> None:
        upstream = None
        try:
            conn.settimeout(15)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                data += chunk
                if len(data) > MAX_HEAD:
                    self._count(requests=1, refused_other=1)
                    self._reply(conn, "431 Request Header Fields Too Large")
                    return
            head, rest = data.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            parts = lines[0].split()
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    k, v = line.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
            if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                self._count(requests=1, refused_other=1)
                self._log(f"{peer[0]} malformed request line -> 400")
                self._reply(conn, "400 Bad Request")
                return
            method, target = parts[0], parts[1]
            if method != "CONNECT":
                self._count(requests=1, refused_other=1)
                self._log(f"{peer[0]} {method} {target} -> 405")
                self._reply(conn, "405 Method Not Allowed", ("Allow: CONNECT",))
                return
            if self._expected is not None:
                got = headers.get("proxy-authorization", "")
                scheme, _, cred = got.partition(" ")
                if scheme.lower() != "basic" or not hmac.compare_digest(cred.strip(), self._expected):
                    self._count(requests=1, refused_auth=1)
                    self._log(f"{peer[0]} CONNECT {target} -> 407 "
                              f"({'no credentials' if not got else 'wrong credentials'})")
                    self._reply(conn, "407 Proxy Authentication Required",
                                ('Proxy-Authenticate: Basic realm="cvmigrate-test"',))
                    return
            host, _, port = target.rpartition(":")
            host = host.strip("[]")
            try:
                upstream = socket.create_connection((host, int(port)), timeout=self.connect_timeout)
            except (OSError, ValueError) as e:
                self._count(requests=1, refused_other=1)
                self._log(f"{peer[0]} CONNECT {target} -> 502 ({e})")
                self._reply(conn, "502 Bad Gateway")
                return
            with self.lock:
                self.targets.append(target)      # before the count, so the file written next names it
            self._count(requests=1, tunnels=1, open_tunnels=1)
            self._log(f"{peer[0]} CONNECT {target} -> 200")
            self._reply(conn, "200 Connection established")
            conn.settimeout(None)
            upstream.settimeout(None)
            if rest:
                upstream.sendall(rest)
                self._count(bytes_up=len(rest))
            t = threading.Thread(target=self._pipe, args=(upstream, conn, "bytes_down"), daemon=True)
            t.start()
            self._pipe(conn, upstream, "bytes_up")
            t.join()
            self._count(open_tunnels=-1)
            self._log(f"{peer[0]} CONNECT {target} closed")
        except OSError as e:
            self._log(f"{peer[0]} error: {e}")
        finally:
            for s in (conn, upstream):
                if s is not None:
                    try:
                        s.close()
                    except OSError:
                        pass

    def _pipe(self, a: socket.socket, b: socket.socket, counter: str) -> None:
        """Copy a -> b until EOF or error; half-close b afterwards."""
        n = 0
        try:
            while True:
                chunk = a.recv(BUF)
                if not chunk:
                    break
                b.sendall(chunk)
                n += len(chunk)
                if n >= 1 << 20:
                    self._count(**{counter: n})
                    n = 0
        except OSError:
            pass
        finally:
            if n:
                self._count(**{counter: n})
            try:
                b.shutdown(socket.SHUT_WR)
            except OSError:
                pass


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="minimal HTTP CONNECT proxy with Basic auth (tests only)")
    p.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT ([v6]:port), port 0 = any")
    p.add_argument("--port-file", help="write the bound port here once listening")
    p.add_argument("--auth-file", help="file holding 'user:pass'; without it, no authentication")
    p.add_argument("--stats-file", help="JSON counters, rewritten as they change")
    args = p.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    auth = None
    if args.auth_file:
        user, _, pw = Path(args.auth_file).read_text().strip().partition(":")
        auth = (user, pw)
    proxy = HttpConnectProxy((host.strip("[]"), int(port)), auth=auth, stats_file=args.stats_file)
    signal.signal(signal.SIGTERM, lambda *_: proxy._stop.set())
    if args.port_file:
        tmp = f"{args.port_file}.tmp"
        Path(tmp).write_text(f"{proxy.port}\n")
        os.replace(tmp, args.port_file)
    proxy._log(f"listening on {args.listen.rpartition(':')[0]}:{proxy.port}"
               f" ({'Basic auth' if auth else 'no auth'})")
    try:
        proxy.serve_forever()
    except KeyboardInterrupt:
        pass
    proxy.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
