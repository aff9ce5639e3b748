"""`cvmigrate console --fleet DIR`: the fleet's web console and its /metrics (starlette + uvicorn).

Why it reads the fleet directory and nothing else: the console can run
inside `fleet run --console` or on its own, and survives a runner crash;
actions become the same requests and cut-over files the CLI uses
(controller/fleet_state.py), which the runner applies within a second.

Security, because a console that can cut over or clean a server is a remote
control for production: it binds 127.0.0.1 unless told otherwise; the
printed URL carries a one-time login token, exchanged on first use for a
session cookie (HttpOnly, SameSite=Strict) and then dropped from the URL;
every API call needs that session, and every action (POST) also needs the
session's CSRF token in the ``X-CSRF-Token`` header and an ``Origin`` equal
to the console's own.  /metrics is read-only and needs no session, so a
Prometheus scraper can read it (bind accordingly).  The page is one HTML
file with inline CSS and JS: nothing is loaded from the internet.
"""
from __future__ import annotations

import argparse
import asyncio
import hmac
import ipaddress
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from typing import Any

from cvmigrate.common.errors import ConfigError, UsageError
from cvmigrate.controller import fleet_state as fs

logger = logging.getLogger(__name__)

SESSION_COOKIE = "cvm_console"
CSRF_HEADER = "x-csrf-token"
#: Seconds between two server-sent events.
EVENT_INTERVAL = 1.0

_MISSING_DEPS = ("the console needs starlette, uvicorn and prometheus-client: pip install 'cvmigrate[console]'")


# ============================================================================ metrics
class FleetCollector:
    """Prometheus metrics read from the fleet directory at scrape time (no state of its own)."""

    def __init__(self, fleet_dir: Path) -> None:
        self.fleet_dir = fleet_dir

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        view = fs.fleet_view(self.fleet_dir)
        labels = ["server", "wave"]
        fams: dict[str, Any] = {
            "stage": GaugeMetricFamily("cvmigrate_migration_stage", "current stage (1 prepare, 2 transfer, "
                                       "3 finish; 0 not started)", labels=labels),
            "phase": GaugeMetricFamily("cvmigrate_migration_phase", "1 for the migration's phase in the fleet",
                                       labels=labels + ["phase"]),
            "progress": GaugeMetricFamily("cvmigrate_migration_progress_ratio", "share of sub-tasks done (0..1)",
                                          labels=labels),
            "bytes_sent": CounterMetricFamily("cvmigrate_migration_sent_bytes", "bytes on the wire, all passes",
                                              labels=labels),
            "bytes_read": CounterMetricFamily("cvmigrate_migration_read_bytes", "content bytes read and sent, all "
                                              "passes", labels=labels),
            "files": CounterMetricFamily("cvmigrate_migration_files_transferred", "files transferred, all passes",
                                         labels=labels),
            "passes": CounterMetricFamily("cvmigrate_migration_passes", "completed transfer passes", labels=labels),
            "pass_seconds": GaugeMetricFamily("cvmigrate_migration_last_pass_seconds", "duration of the last "
                                              "completed pass", labels=labels),
            "errors": CounterMetricFamily("cvmigrate_migration_errors", "failed passes plus per-file errors",
                                          labels=labels),
            "bwlimit": GaugeMetricFamily("cvmigrate_migration_bwlimit_kbps", "bandwidth limit in KB/s (0 "
                                         "unlimited)", labels=labels),
            "rate": GaugeMetricFamily("cvmigrate_migration_rate_bytes_per_second", "bytes on the wire per second "
                                      "in the running pass", labels=labels),
        }
        for s in view["servers"]:
            lv = [s["name"], str(s["wave"])]
            fams["stage"].add_metric(lv, s["stage"])
            for phase in fs.PHASES:
                fams["phase"].add_metric(lv + [phase], 1.0 if s["phase"] == phase else 0.0)
            fams["progress"].add_metric(lv, s["progress"] / 100.0)
            fams["bytes_sent"].add_metric(lv, s["bytes_sent"])
            fams["bytes_read"].add_metric(lv, s["bytes_read"])
            fams["files"].add_metric(lv, s["files"])
            fams["passes"].add_metric(lv, s["passes"])
            fams["pass_seconds"].add_metric(lv, s["pass_seconds"])
            fams["errors"].add_metric(lv, s["errors"])
            fams["bwlimit"].add_metric(lv, s["bwlimit_kbps"] or 0)
            fams["rate"].add_metric(lv, s["rate"])
        up = GaugeMetricFamily("cvmigrate_fleet_runner_up", "1 while a fleet runner drives this fleet")
        up.add_metric([], 1.0 if view["runner_alive"] else 0.0)
        yield from fams.values()
        yield up


# ============================================================================ the app
class ConsoleAuth:
    """The one-time login token and the sessions it was exchanged for (in memory: a restart logs everyone out)."""

    def __init__(self) -> None:
        self.login_token: str | None = secrets.token_urlsafe(24)
        self.sessions: dict[str, str] = {}   # session id -> CSRF token
        self._lock = threading.Lock()

    def exchange(self, token: str) -> str | None:
        with self._lock:
            if self.login_token is None or not hmac.compare_digest(token.encode(), self.login_token.encode()):
                return None
            self.login_token = None   # one-time
            sid = secrets.token_urlsafe(32)
            self.sessions[sid] = secrets.token_urlsafe(32)
            return sid

    def csrf(self, sid: str | None) -> str | None:
        return self.sessions.get(sid or "")


def create_app(fleet_dir: str | os.PathLike[str], auth: ConsoleAuth | None = None) -> Any:
    """The ASGI app: page, JSON API, server-sent events, actions, /metrics."""
    try:
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.exposition import CONTENT_TYPE_LATEST
        from starlette.applications import Starlette
        from starlette.concurrency import run_in_threadpool
        from starlette.requests import Request
        from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
        from starlette.routing import Route
    except ImportError:
        raise ConfigError(_MISSING_DEPS) from None

    fleet = Path(fleet_dir).absolute()
    auth = auth or ConsoleAuth()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(fleet))
    page = resources.files("cvmigrate.controller").joinpath("console.html").read_text(encoding="utf-8")

    def session(request: Request) -> tuple[str | None, str | None]:
        sid = request.cookies.get(SESSION_COOKIE)
        return sid, auth.csrf(sid)

    def refused(status: int, message: str) -> JSONResponse:
        return JSONResponse({"ok": False, "error": message}, status_code=status)

    def known_server(name: str) -> dict[str, Any] | None:
        plan = fs.read_json(fleet / "plan.json", {}) or {}
        return next((s for s in plan.get("servers", []) if s["name"] == name), None)

    async def index(request: Request) -> Response:
        token = request.query_params.get("token")
        if token and session(request)[1] is not None:
            return RedirectResponse("/", status_code=303)  # already logged in (a reload of the printed URL)
        if token:
            sid = auth.exchange(token)
            if sid is None:
                return HTMLResponse(_message_page("This login link was already used or is wrong. Restart "
                                                  "`cvmigrate console` (or the fleet runner) for a new one."), 403)
            resp = RedirectResponse("/", status_code=303)
            resp.set_cookie(SESSION_COOKIE, sid, httponly=True, samesite="strict", path="/")
            return resp
        _, csrf = session(request)
        if csrf is None:
            return HTMLResponse(_message_page("Not logged in: open the URL that `cvmigrate console` printed "
                                              "(console: http://...?token=...)."), 401)
        return HTMLResponse(page.replace("{{CSRF}}", csrf), headers={"Cache-Control": "no-store"})

    async def api_fleet(request: Request) -> Response:
        if session(request)[1] is None:
            return refused(401, "not logged in")
        return JSONResponse(await run_in_threadpool(fs.fleet_view, fleet))

    async def api_server(request: Request) -> Response:
        if session(request)[1] is None:
            return refused(401, "not logged in")
        entry = known_server(request.path_params["name"])
        if entry is None:
            return refused(404, "no such server")
        return JSONResponse(await run_in_threadpool(fs.server_view, fleet, entry, detail=True))

    async def events(request: Request) -> Response:
        if session(request)[1] is None:
            return refused(401, "not logged in")

        async def stream() -> AsyncIterator[str]:
            yield "retry: 2000\n\n"
            while not await request.is_disconnected():
                view = await run_in_threadpool(fs.fleet_view, fleet)
                yield f"event: fleet\ndata: {json.dumps(view)}\n\n"
                await asyncio.sleep(EVENT_INTERVAL)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def action(request: Request) -> Response:
        sid, csrf = session(request)
        if csrf is None:
            return refused(401, "not logged in")
        origin = request.headers.get("origin")
        expected = f"{request.url.scheme}://{request.headers.get('host', '')}"
        if origin != expected:
            return refused(403, f"cross-site request refused (Origin {origin or 'missing'})")
        given = request.headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(given.encode(), csrf.encode()):
            return refused(403, "missing or wrong CSRF token")
        name, verb = request.path_params["name"], request.path_params["action"]
        if known_server(name) is None:
            return refused(404, "no such server")
        if verb not in fs.ACTIONS:
            return refused(404, f"unknown action {verb}")
        try:
            body = await request.json() if await request.body() else {}
        except ValueError:
            return refused(400, "the body is not JSON")
        if verb == "cutover":
            await run_in_threadpool(fs.request_cutover, fleet, name)
            message = "cut-over requested: the final pass follows the running one"
        elif verb == "bwlimit":
            kbps = body.get("kbps") if isinstance(body, dict) else None
            if isinstance(kbps, bool) or not isinstance(kbps, int) or kbps < 0:
                return refused(400, "kbps must be 0 (unlimited) or a positive whole number of KB/s")
            await run_in_threadpool(fs.post_request, fleet, name, "bwlimit", kbps=kbps)
            message = f"bandwidth limit {kbps} KB/s requested" if kbps else "bandwidth limit lifted"
        else:
            await run_in_threadpool(fs.post_request, fleet, name, verb)
            message = f"{verb} requested"
        if verb != "cutover" and not fs.runner_alive(fleet):
            message += " (no fleet runner is running: it applies when `cvmigrate fleet run` starts)"
        logger.info("console: %s %s", verb, name)
        return JSONResponse({"ok": True, "message": message})

    async def metrics(request: Request) -> Response:
        data = await run_in_threadpool(generate_latest, registry)
        return Response(data, media_type=CONTENT_TYPE_LATEST)

    routes = [
        Route("/", index),
        Route("/api/fleet", api_fleet),
        Route("/api/servers/{name}", api_server),
        Route("/api/servers/{name}/{action}", action, methods=["POST"]),
        Route("/events", events),
        Route("/metrics", metrics),
    ]
    return Starlette(routes=routes)


def _message_page(text: str) -> str:
    from html import escape

    return (f"<!doctype html><html><head><meta charset='utf-8'><title>cvmigrate console</title></head>"
            f"<body style='font-family:sans-serif;margin:3em'><h1>cvmigrate console</h1><p>{escape(text)}</p>"
            "</body></html>")


# ============================================================================ serving
class ConsoleServer:
    """uvicorn serving the console from a thread, on a socket bound here (port 0 works)."""

    def __init__(self, listen: str, fleet_dir: Path, *, port_file: str | None = None) -> None:
        try:
            import uvicorn
        except ImportError:
            raise ConfigError(_MISSING_DEPS) from None
        from cvmigrate.controller.emulator.cli import parse_listen

        host, port = parse_listen(listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((host, port))
        except OSError as exc:
            self.sock.close()
            raise UsageError(f"--listen {listen}: cannot bind: {exc.strerror}; pick another address or port") from None
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.auth = ConsoleAuth()
        app = create_app(fleet_dir, self.auth)
        config = uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=2,
                                access_log=False)
        self.server = uvicorn.Server(config)
        shown = host
        try:
            if ipaddress.ip_address(host).is_unspecified:
                shown = "127.0.0.1" if family == socket.AF_INET else "::1"
        except ValueError:
            pass
        shown = f"[{shown}]" if ":" in shown else shown
        self.base_url = f"http://{shown}:{self.port}"
        self.login_url = f"{self.base_url}/?token={self.auth.login_token}"
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, name="cvm-console",
                                       daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and self.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if port_file:
            from cvmigrate.common.durable import write_file
            write_file(port_file, f"{self.port}\n")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(timeout=5)
        self.sock.close()


def start_console(listen: str, fleet_dir: Path, *, port_file: str | None = None) -> ConsoleServer:
    return ConsoleServer(listen, Path(fleet_dir), port_file=port_file)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--listen", default="127.0.0.1:8080", metavar="HOST:PORT",
                   help="where to serve (default 127.0.0.1:8080; port 0 picks a free port). Anything but loopback "
                        "exposes the console to that network: put it behind TLS")
    p.add_argument("--fleet", required=True, metavar="DIR_OR_PLAN", help="the fleet directory (or its plan file)")
    p.add_argument("--port-file", default=None, metavar="FILE", help="write the bound port to FILE")


def run(args: argparse.Namespace) -> int:
    from cvmigrate.controller.fleet import fleet_dir_of

    fleet = fleet_dir_of(args.fleet)
    fs.fleet_view(fleet)  # fails with the fix when it is not a fleet directory
    server = start_console(args.listen, fleet, port_file=args.port_file)
    print(f"console: {server.login_url}", flush=True)
    stop = threading.Event()
    import signal

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        while not stop.is_set() and server.thread.is_alive():
            stop.wait(0.5)
    finally:
        server.stop()
    return 0
