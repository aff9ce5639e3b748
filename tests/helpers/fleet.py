"""A fleet on this machine for end-to-end tests: emulated CVMs, real receivers, sample sources, a plan file.

The emulator and the receivers run in the test process (they outlive every
runner the test kills; the emulator's call log is the witness); the runner
and its migrations are real `cvmigrate` processes.  Children of a SIGKILLed
runner keep running by design, so :meth:`Fleet.kill_leftovers` ends every
migration whose run.lock is still held when a test ends.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from cvmigrate.common.tls import TransportSecurity, new_token
from cvmigrate.controller import fleet_state as fs
from cvmigrate.controller.emulator import (
    DEFAULT_REGION,
    DEFAULT_SECRET_ID,
    DEFAULT_SECRET_KEY,
    EmulatorHandle,
    default_config,
    default_instance,
    start_emulator,
)
from cvmigrate.controller.pki import mint_migration_pki
from cvmigrate.controller.sample_tree import build_sample_tree
from cvmigrate.receiver.server import create_server
from cvmigrate.receiver.session import ReceiverConfig
from tests.helpers.procs import child_env

OS_RELEASE = 'ID=ubuntu\nID_LIKE=debian\nVERSION_ID="22.04"\n'


def wait_for(what: str, check: Callable[[], Any], timeout: float, interval: float = 0.2,
             detail: Callable[[], Any] | None = None) -> Any:
    """Poll ``check`` until it returns something true; on timeout say what was awaited (and ``detail()``)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}"
                                 + (f": {detail()}" if detail else ""))
        time.sleep(interval)


class Fleet:
    def __init__(self, tmp: Path, names_waves: list[tuple[str, int]], *, files: int = 200,
                 enter_delay: float = 0.5) -> None:
        self.tmp = tmp
        config = default_config(rescue_delay=enter_delay)
        self.ids = {name: f"ins-e2e{i:05d}" for i, (name, _) in enumerate(names_waves)}
        config["instances"] = [{**default_instance(), "InstanceId": iid} for iid in self.ids.values()]
        self.emu: EmulatorHandle = start_emulator(config)
        self.receivers: list[Any] = []
        self.servers: list[dict[str, Any]] = []
        self.sources: dict[str, Path] = {}
        self.targets: dict[str, Path] = {}
        for i, (name, wave) in enumerate(names_waves):
            base = tmp / name
            src = build_sample_tree(base / "src", files=files, seed=i + 11)
            (src / "etc" / "os-release").write_text(OS_RELEASE)
            dst = base / "dst"
            dst.mkdir()
            pki = mint_migration_pki(base / "pki", hosts=["127.0.0.1"], migration_id=name)
            token = new_token()
            token_file = base / "pki" / "token"
            fd = os.open(token_file, os.O_WRONLY | os.O_CREAT, 0o600)
            os.write(fd, token.encode())
            os.close(fd)
            sec = TransportSecurity.from_pki(pki, "server", token)
            handle = create_server(ReceiverConfig(root=str(dst)), "127.0.0.1:0", credentials=sec.server_credentials(),
                                   interceptors=sec.interceptors())
            self.receivers.append(handle)
            self.sources[name], self.targets[name] = src, dst
            self.servers.append({
                "name": name, "wave": wave, "source": str(src), "instance_id": self.ids[name],
                "region": DEFAULT_REGION, "receiver": f"127.0.0.1:{handle.port}", "excludes": ["/tmp/*"],
                "tls": {"ca": pki.ca_cert, "cert": pki.client_cert, "key": pki.client_key,
                        "token_file": str(token_file)}})
        self.plan = tmp / "fleet.yaml"
        self.dir = tmp / "fleet-state"
        self.env = child_env({"E2E_SECRET_ID": DEFAULT_SECRET_ID, "E2E_SECRET_KEY": DEFAULT_SECRET_KEY})

    def write_plan(self, **top: Any) -> Path:
        doc = {"state_dir": str(self.dir), "api_endpoint": self.emu.endpoint, "pass_interval": 0.5,
               "poll_interval": 0.1, "credentials": {"env": {"secret_id": "E2E_SECRET_ID",
                                                             "secret_key": "E2E_SECRET_KEY"}},
               **top, "servers": self.servers}
        self.plan.write_text(yaml.safe_dump(doc, sort_keys=False))
        return self.plan

    def cvmigrate(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "cvmigrate", *args], cwd=self.tmp, env=self.env, text=True,
                              capture_output=True, timeout=timeout)

    def start_runner(self, *args: str, log: str = "runner.out") -> subprocess.Popen[str]:
        out = open(self.tmp / log, "w")  # noqa: SIM115 - the runner keeps it
        return subprocess.Popen([sys.executable, "-m", "cvmigrate", "fleet", "run", str(self.plan), *args],
                                cwd=self.tmp, env=self.env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, text=True)

    def record(self, name: str) -> dict[str, Any]:
        return fs.read_json(fs.server_dir(self.dir, name) / "runner.json", {}) or {}

    def view(self, name: str) -> dict[str, Any]:
        return fs.server_view(self.dir, {"name": name})

    def ok_calls(self, action: str, instance_id: str | None = None) -> int:
        return sum(1 for c in self.emu.calls(action) if c.error is None
                   and (instance_id is None or c.instance_id == instance_id))

    def kill_leftovers(self) -> None:
        for s in self.servers:
            sdir = fs.server_dir(self.dir, s["name"])
            pid = self.record(s["name"]).get("pid")
            if pid and fs.lock_held(sdir / "run.lock"):
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def close(self) -> None:
        self.kill_leftovers()
        for h in self.receivers:
            h.stop(grace=1)
        self.emu.stop()
