"""The emulator's HTTP server: Tencent Cloud API 3.0 wire protocol in front of the emulated world.

Why a real HTTP server: the point of the emulator is that the real SDK talks
to it unchanged through an endpoint override, so everything between the SDK
and the cloud is exercised -- headers, TC3-HMAC-SHA256 signatures, JSON
bodies, error shapes, RequestIds.  Each request is checked like Tencent Cloud
checks it (Authorization format, timestamp within five minutes, known
SecretId, signature), then fault rules are applied, then the action runs under
the state lock.  Every request, refused or not, lands in the call log, and the
state is saved after it.  Errors answer HTTP 200 with
``{"Response": {"Error": {"Code", "Message"}, "RequestId"}}`` as the real API does.

``start_emulator(config)`` runs the server in a background thread and returns
an ``EmulatorHandle`` (endpoint, call log, fault injection, stop); it binds
port 0 unless told otherwise.
"""
from __future__ import annotations

import json
import logging
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from cvmigrate.controller.emulator import actions_cvm, actions_msp, signature
from cvmigrate.controller.emulator.api import ApiError, Handler, RequestContext
from cvmigrate.controller.emulator.faults import FaultRule
from cvmigrate.controller.emulator.state import Call, EmulatorState

logger = logging.getLogger(__name__)

#: service -> (API version, actions)
SERVICES: dict[str, tuple[str, dict[str, Handler]]] = {
    "cvm": ("2017-03-12", actions_cvm.ACTIONS),
    "msp": ("2018-03-19", actions_msp.ACTIONS),
}
_MAX_BODY = 1 << 20


def unflatten(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Turn form parameters like ``InstanceIds.0=ins-x&Filters.0.Name=zone`` into nested JSON."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        parts = key.split(".")
        node: Any = root
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            nxt: Any = value if last else ({} if not parts[i + 1].isdigit() else [])
            if isinstance(node, list):
                idx = int(part)
                while len(node) <= idx:
                    node.append(None)
                if node[idx] is None or last:
                    node[idx] = nxt
                node = node[idx]
            else:
                if part not in node or last:
                    node[part] = nxt
                node = node[part]
    return root


class _Refused(Exception):
    """Internal: the request is refused before any action runs."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(code)
        self.code, self.message = code, message


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], state: EmulatorState) -> None:
        self.state = state
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _RequestHandler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hung up mid-answer is routine here (timeouts, dropped connections); never print to stderr.
        logger.debug("emulator: connection from %s ended with an error", client_address, exc_info=True)


class _RequestHandler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, keep-alive clients wait ~40 ms per call.
    disable_nagle_algorithm = True
    server_version = "cvmigrate-tencentcloud-emulator"

    def log_message(self, format: str, *args: Any) -> None:  # stdlib signature
        logger.debug("http: " + format, *args)

    def do_GET(self) -> None:  # stdlib naming
        self._handle()

    def do_POST(self) -> None:  # stdlib naming
        self._handle()

    # -- one request ----------------------------------------------------------
    def _handle(self) -> None:
        state = self.server.state
        request_id = str(uuid.uuid4())
        headers = {k.lower(): v for k, v in self.headers.items()}
        split = urlsplit(self.path)
        info: dict[str, Any] = {"action": headers.get("x-tc-action", ""), "region": headers.get("x-tc-region", ""),
                                "service": "", "secret_id": None, "params": {}}
        body = b""
        drop = False
        error: str | None = None
        try:
            try:
                length = int(headers.get("content-length") or 0)
            except ValueError:
                raise _Refused("InvalidParameter", "The Content-Length header is not a number.") from None
            if length > _MAX_BODY:
                raise _Refused("InvalidParameter", "The request body is too large.")
            body = self.rfile.read(length) if length else b""
            if self.command == "GET" and not info["action"]:
                # A plain GET (no API action): the cloud layer reads the Date header to measure clock skew.
                self._reply(200, {"Response": {"RequestId": request_id}})
                return
            outcome = self._process(state, headers, body, split, request_id, info)
            if outcome is None:
                drop = True
                error = f"(disconnect-{info['dropped']})"
                payload: dict[str, Any] = {}
            else:
                outcome["RequestId"] = request_id
                payload = {"Response": outcome}
        except _Refused as exc:
            error = exc.code
            payload = {"Response": {"Error": {"Code": exc.code, "Message": exc.message}, "RequestId": request_id}}
        except Exception:  # the emulator answers like the cloud: InternalError, and logs the bug
            logger.exception("emulator: %s failed", info["action"])
            error = "InternalError"
            payload = {"Response": {"Error": {"Code": "InternalError", "Message": "emulator bug; see its log"},
                                    "RequestId": request_id}}
        if not info["params"]:  # a refused request: still name its instance in the call log
            try:
                info["params"] = self._params(headers, body, split.query)
            except _Refused:
                pass
        # Log (and save) before answering: a client that has its answer finds its call in the log.
        self._log_call(state, info, error, request_id)
        if drop:
            self._drop()
        else:
            self._reply(200, payload)

    def _process(self, state: EmulatorState, headers: dict[str, str], body: bytes, split: Any, request_id: str,
                 info: dict[str, Any]) -> dict[str, Any] | None:
        """Authenticate, apply faults, run the action; the Response body, or None to drop the connection."""
        action, region = info["action"], info["region"]
        auth = signature.parse_authorization(headers.get("authorization", ""))
        if auth is None:
            raise _Refused("AuthFailure.InvalidAuthorization",
                           "The `Authorization` header is missing or not a valid TC3-HMAC-SHA256 authorization.")
        info["secret_id"], info["service"] = auth.secret_id, auth.service
        service = auth.service
        try:
            timestamp = int(headers.get("x-tc-timestamp", ""))
        except ValueError:
            raise _Refused("MissingParameter", "The request is missing a valid `X-TC-Timestamp` header.") from None
        now = int(time.time())
        if abs(now - timestamp) > signature.MAX_SKEW_SECONDS:
            raise _Refused("AuthFailure.SignatureExpire",
                           f"Signature expired. Timestamp {timestamp} differs from the server time {now} by more than "
                           f"{signature.MAX_SKEW_SECONDS} seconds; check the local clock.")
        secret_key = state.secret_key_for(auth.secret_id)
        if secret_key is None:
            raise _Refused("AuthFailure.SecretIdNotFound",
                           "The SecretId is not found, please ensure that your SecretId is correct.")
        if auth.date != signature.utc_date(timestamp):
            raise _Refused("AuthFailure.SignatureFailure",
                           "The credential scope date does not match the UTC date of X-TC-Timestamp.")
        if not signature.verify(auth, secret_key=secret_key, method=self.command, uri=split.path or "/",
                                query=split.query if self.command == "GET" else "", headers=headers,
                                payload=body, timestamp=timestamp):
            raise _Refused("AuthFailure.SignatureFailure",
                           "The provided credentials could not be validated. Please check your signature is correct.")
        if service not in SERVICES:
            raise _Refused("InvalidAction",
                           f"The service `{service}` is not emulated; emulated: {', '.join(SERVICES)}.")
        version, actions = SERVICES[service]
        if headers.get("x-tc-version") != version:
            raise _Refused("NoSuchVersion", f"The API version `{headers.get('x-tc-version')}` of {service} "
                                            f"does not exist; use {version}.")
        if action not in actions:
            raise _Refused("InvalidAction", f"The action `{action}` of {service} is not found or not emulated.")
        if service == "cvm" and not region:
            raise _Refused("MissingParameter", "The request is missing a required parameter `Region`.")
        params = info["params"] = self._params(headers, body, split.query)
        fault = state.faults.decide(action)
        if fault and fault.delay:
            time.sleep(fault.delay)
        if fault and fault.disconnect == "before":
            info["dropped"] = "before"
            return None
        if fault and fault.error:
            raise _Refused(fault.error, fault.message)
        ctx = RequestContext(region=region, request_id=request_id)
        with state.lock:
            try:
                response = actions[action](state, ctx, params)
            except ApiError as exc:
                raise _Refused(exc.code, exc.api_message) from None
        if isinstance(response.get("TaskId"), str):
            info["task_id"] = response["TaskId"]
        if fault and fault.disconnect == "after":
            info["dropped"] = "after"
            return None
        return response

    def _params(self, headers: dict[str, str], body: bytes, query: str) -> dict[str, Any]:
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        try:
            if self.command == "GET":
                return unflatten(parse_qsl(query, keep_blank_values=True))
            if ctype == "application/json":
                data = json.loads(body.decode("utf-8") or "{}")
                if not isinstance(data, dict):
                    raise ValueError("not an object")
                return data
            if ctype == "application/x-www-form-urlencoded":
                return unflatten(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
        except (ValueError, UnicodeDecodeError) as exc:
            raise _Refused("InvalidParameter", f"The request body could not be parsed: {exc}.") from None
        raise _Refused("InvalidParameter", f"The Content-Type `{ctype}` is not supported; use application/json.")

    @staticmethod
    def _log_call(state: EmulatorState, info: dict[str, Any], error: str | None, request_id: str) -> None:
        action, service, region, params = info["action"], info["service"], info["region"], info["params"]
        if not (action or service):
            return
        instance_id = params.get("InstanceId")
        if instance_id is None and isinstance(params.get("InstanceIds"), list) and params["InstanceIds"]:
            instance_id = params["InstanceIds"][0]
        task_id = params.get("TaskId") or info.get("task_id")
        call = state.record(action=action, service=service, region=region,
                            instance_id=instance_id if isinstance(instance_id, str) else None,
                            task_id=task_id if isinstance(task_id, str) else None,
                            secret_id=info["secret_id"], error=error, request_id=request_id)
        # Never the parameters themselves: EnterRescueMode carries a password.
        logger.debug("call #%d %s.%s instance=%s task=%s -> %s request_id=%s",
                     call.seq, service or "?", action, call.instance_id, call.task_id, error or "OK", request_id)
        try:
            state.save()
        except OSError:
            logger.exception("emulator: saving the state file failed")

    def _reply(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        # Exactly "application/json": the SDK only parses errors for this content type.
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _drop(self) -> None:
        """Lose the response: close the connection without answering."""
        self.close_connection = True
        try:
            self.connection.shutdown(2)
        except OSError:
            pass


class EmulatorHandle:
    """A running emulator: its endpoint, state, call log and fault controls."""

    def __init__(self, server: _Server, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self.state = server.state
        host, port = server.server_address[:2]
        self.host, self.port = str(host), int(port)

    @property
    def endpoint(self) -> str:
        """Base URL for the SDK's endpoint override, e.g. ``http://127.0.0.1:40123``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def calls(self, action: str | None = None) -> list[Call]:
        """The call log (oldest first), optionally only one action's calls."""
        return [c for c in self.state.calls() if action is None or c.action == action]

    def inject(self, action: str = "*", *, error: str | None = None, message: str | None = None,
               count: int | None = None, probability: float = 1.0, delay: float = 0.0,
               disconnect: str | None = None, seed: int | None = None) -> None:
        """Add a fault rule; see ``FaultRule``."""
        self.state.faults.add(FaultRule(action=action, error=error, message=message, count=count,
                                        probability=probability, delay=delay, disconnect=disconnect, seed=seed))

    def clear_faults(self) -> None:
        self.state.faults.clear()

    def instance(self, instance_id: str) -> dict[str, Any] | None:
        """The emulated instance (its current state advanced), or None."""
        return self.state.instance(instance_id)

    def instance_state(self, instance_id: str) -> str | None:
        """The emulated instance's InstanceState (advanced to now), or None when there is no such instance."""
        inst = self.state.instance(instance_id)
        return None if inst is None else inst["InstanceState"]

    def set_instance_state(self, instance_id: str, instance_state: str) -> None:
        self.state.set_state(instance_id, instance_state)

    def add_instance(self, instance: dict[str, Any]) -> None:
        self.state.put_instance(instance)

    def tasks(self) -> dict[str, dict[str, Any]]:
        with self.state.lock:
            copy: dict[str, dict[str, Any]] = json.loads(json.dumps(self.state.tasks))   # a deep copy
        return copy

    def stop(self) -> None:
        """Stop serving, close the socket, save the state."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        self.state.save()

    def __enter__(self) -> EmulatorHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def create_server(config: dict[str, Any] | None = None, *, host: str = "127.0.0.1", port: int = 0,
                  state_file: str | Path | None = None) -> _Server:
    """Bind the emulator (port 0: any free port) without serving yet."""
    return _Server((host, port), EmulatorState(config, state_file=state_file))


def start_emulator(config: dict[str, Any] | None = None, *, host: str = "127.0.0.1", port: int = 0,
                   state_file: str | Path | None = None) -> EmulatorHandle:
    """Start the emulator in a background thread; ``config`` defaults to ``default_config()``."""
    server = create_server(config, host=host, port=port, state_file=state_file)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                              name=f"tc-emulator:{server.server_address[1]}", daemon=True)
    thread.start()
    handle = EmulatorHandle(server, thread)
    logger.info("Tencent Cloud API emulator listening on %s", handle.endpoint)
    return handle
