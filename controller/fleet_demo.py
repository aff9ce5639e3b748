"""`cvmigrate fleet demo --servers N`: a whole fleet on this machine, no cloud account needed.

It is `fleet run` on a plan it writes, with nothing faked above the wire:
the Tencent Cloud API emulator runs in this process with one emulated CVM
per server (the real SDK talks to it with real signatures), each server gets
its own generated source tree, target directory and receiver (a real gRPC
receiver with that server's own minted certificates and token, as its
rescue system would run it), and each migration is a real `cvmigrate
migrate` child process driven by the fleet runner, with the console up.
The plan it wrote stays in the work directory as an example to copy.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

#: Seconds each emulated instance spends entering / leaving rescue mode.
DEMO_STATE_DELAY = 1.0
#: The demo's credentials reach the migrations through these variables (as a plan's {env: ...} reference).
DEMO_ENV_ID, DEMO_ENV_KEY = "CVMIGRATE_DEMO_SECRET_ID", "CVMIGRATE_DEMO_SECRET_KEY"


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--servers", type=int, default=3, metavar="N", help="how many sample servers (default 3)")
    p.add_argument("--console", default="127.0.0.1:0", metavar="HOST:PORT",
                   help="where the console listens (default 127.0.0.1:0: a free port)")
    p.add_argument("--port-file", default=None, metavar="FILE", help="write the console's port to FILE")
    p.add_argument("--keep-serving", action="store_true", help="keep the console up after the fleet finished")
    p.add_argument("--workdir", default=None, metavar="DIR",
                   help="where the sample trees, targets, plan and fleet state go (default: a temp dir, removed)")
    p.add_argument("--cutover", choices=("auto", "manual"), default="auto",
                   help="auto (default): each server cuts over after its final pass; manual: incremental passes "
                        "until you press 'cut over now' in the console")
    p.add_argument("--waves", type=int, default=1, metavar="W", help="spread the servers over W waves (default 1)")
    p.add_argument("--bandwidth-kbps", type=int, default=0, metavar="KBPS",
                   help="total bandwidth for the fleet, split across running migrations (default unlimited)")
    p.add_argument("--files", type=int, default=400, metavar="N", help="files per sample tree (default 400)")


def _plan_yaml(servers: list[dict[str, Any]], *, endpoint: str, cutover: str, waves: int, bandwidth: int,
               concurrency: int) -> str:
    import yaml

    doc = {
        "state_dir": "fleet-state",
        "concurrency": concurrency,
        "bandwidth_kbps": bandwidth,
        "api_endpoint": endpoint,
        "pass_interval": 1.0,
        "poll_interval": 0.2,
        "credentials": {"env": {"secret_id": DEMO_ENV_ID, "secret_key": DEMO_ENV_KEY}},
        "waves": [{"wave": w, "cutover": cutover, "start": "after-cutover"} for w in range(1, waves + 1)],
        "servers": servers,
    }
    text: str = yaml.safe_dump(doc, sort_keys=False)      # PyYAML is untyped; a str without a stream
    return "# written by `cvmigrate fleet demo`: a fleet plan (see README, 'Many servers: a fleet')\n" + text


def run_demo(args: argparse.Namespace) -> int:
    from cvmigrate.common.durable import write_secret
    from cvmigrate.common.errors import UsageError
    from cvmigrate.common.tls import TransportSecurity, new_token
    from cvmigrate.controller.demo import _OS_RELEASE
    from cvmigrate.controller.emulator import (
        DEFAULT_REGION,
        DEFAULT_SECRET_ID,
        DEFAULT_SECRET_KEY,
        default_config,
        default_instance,
        start_emulator,
    )
    from cvmigrate.controller.fleet import drive
    from cvmigrate.controller.fleet_plan import load_plan
    from cvmigrate.controller.pki import mint_migration_pki
    from cvmigrate.controller.sample_tree import build_sample_tree
    from cvmigrate.receiver.server import create_server
    from cvmigrate.receiver.session import ReceiverConfig

    if not 1 <= args.servers <= 100:
        raise UsageError("--servers must be 1..100")
    if not 1 <= args.waves <= args.servers:
        raise UsageError("--waves must be 1..--servers")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="cvmigrate-fleet-demo-")).absolute()
    work.mkdir(parents=True, exist_ok=True)
    if not getattr(args, "log_file", None):
        # the table and the console are the display; the demo's own log (emulator, receivers) goes to a file
        from cvmigrate.common import logsetup
        from cvmigrate.controller.migrate import _quiet_stderr_for_live_display

        logsetup.configure(getattr(args, "log_level", 2), work / "fleet-demo.log", debug=getattr(args, "debug", False))
        _quiet_stderr_for_live_display()
    receivers: list[Any] = []
    emulator = None
    try:
        config = default_config(rescue_delay=DEMO_STATE_DELAY)
        ids = [f"ins-fleet{i:03d}" for i in range(1, args.servers + 1)]
        config["instances"] = [{**default_instance(), "InstanceId": iid, "InstanceName": f"demo-{i + 1}"}
                               for i, iid in enumerate(ids)]
        emulator = start_emulator(config)
        os.environ[DEMO_ENV_ID], os.environ[DEMO_ENV_KEY] = DEFAULT_SECRET_ID, DEFAULT_SECRET_KEY
        servers = []
        for i, iid in enumerate(ids):
            name = f"demo-{i + 1}"
            base = work / name
            source = base / "source"
            if not source.exists():
                build_sample_tree(source, files=args.files, seed=i + 1)
                (source / "etc" / "os-release").write_text(_OS_RELEASE)
                (source / "etc" / "hostname").write_text(f"{name}\n")
            target = base / "target"
            target.mkdir(exist_ok=True)
            pki = mint_migration_pki(base / "pki", hosts=["127.0.0.1"], migration_id=name, overwrite=True)
            token_file = base / "pki" / "token"
            token = new_token()
            write_secret(token_file, token)
            sec = TransportSecurity.from_pki(pki, "server", token)
            handle = create_server(ReceiverConfig(root=str(target)), "127.0.0.1:0",
                                   credentials=sec.server_credentials(), interceptors=sec.interceptors())
            receivers.append(handle)
            servers.append({
                "name": name, "wave": 1 + i * args.waves // args.servers, "source": str(source),
                "instance_id": iid, "region": DEFAULT_REGION, "receiver": f"127.0.0.1:{handle.port}",
                "target_root": str(target), "excludes": ["/tmp/*"],  # noqa: S108 - a pattern
                "tls": {"ca": pki.ca_cert, "cert": pki.client_cert, "key": pki.client_key,
                        "token_file": str(token_file)},
            })
        plan_path = work / "fleet.yaml"
        plan_path.write_text(_plan_yaml(servers, endpoint=emulator.endpoint, cutover=args.cutover, waves=args.waves,
                                        bandwidth=args.bandwidth_kbps, concurrency=args.servers))
        plan = load_plan(plan_path)
        print(f"fleet demo: {args.servers} servers, emulator at {emulator.endpoint}, plan {plan_path}", flush=True)
        rc = drive(plan, console=args.console, port_file=args.port_file, wait_on_failure=args.keep_serving,
                   keep_serving=args.keep_serving)
        calls = [c for c in emulator.calls() if c.error is None]
        for iid in ids:
            mine = [c.action for c in calls if c.instance_id == iid]
            print(f"  {iid}: EnterRescueMode x{mine.count('EnterRescueMode')}, ExitRescueMode "
                  f"x{mine.count('ExitRescueMode')}, target {(emulator.instance(iid) or {}).get('InstanceState')}")
        if rc == 0:
            print(f"fleet demo complete: {args.servers} migrations", flush=True)
        return rc
    finally:
        for h in receivers:
            h.stop(grace=1)
        if emulator is not None:
            emulator.stop()
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
