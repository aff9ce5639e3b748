"""A fleet whose servers are reached through `cvmigrate agent` daemons, and the agents' and receivers' /metrics.

Real processes throughout: one agent daemon and one receiver per server
(each with that server's certificates, token and ``--metrics-listen
127.0.0.1:0``), the fleet runner and its `migrate` children; the emulator
lives in the test.  After the fleet completes, each agent's and receiver's
Prometheus counters must account for the passes that ran through them.
"""
from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from cvmigrate.agent.verify import compare_trees
from cvmigrate.common.excludes import DEFAULT_EXCLUDE_LINES, ExcludeRules
from tests.helpers.fleet import Fleet, wait_for
from tests.helpers.metrics import metrics_line, scrape
from tests.helpers.procs import child_env, start_receiver


def _port_file(path: Path) -> Callable[[], str]:
    """A check for wait_for: the port file's content once written."""
    return lambda: path.read_text().strip() if path.exists() else ""


def test_fleet_through_agent_daemons_with_their_metrics(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path, [("a1", 1), ("a2", 1)], files=80)
    procs: list[subprocess.Popen[str]] = []
    receivers = []
    try:
        ports: dict[str, dict[str, int]] = {}
        for s in fleet.servers:
            name, tls = s["name"], s["tls"]
            pki_dir = Path(tls["ca"]).parent
            server_tls = ["--tls-ca", tls["ca"], "--tls-cert", str(pki_dir / "server.pem"), "--tls-key",
                          str(pki_dir / "server.key"), "--token-file", tls["token_file"]]
            rp = start_receiver(fleet.targets[name], *server_tls, "--metrics-listen", "127.0.0.1:0", insecure=False,
                                work_dir=tmp_path / f"{name}-recv")
            receivers.append(rp)
            s["receiver"] = rp.address
            log = open(tmp_path / f"{name}-agent.log", "w")  # noqa: SIM115 - the agent keeps it
            agent = subprocess.Popen([sys.executable, "-m", "cvmigrate", "agent", "--listen", "127.0.0.1:0",
                                      "--port-file", str(tmp_path / f"{name}-agent.port"), "--metrics-listen",
                                      "127.0.0.1:0", *server_tls], stdout=log, stderr=subprocess.STDOUT,
                                     env=child_env(), text=True)
            procs.append(agent)
            port_file, agent_log = tmp_path / f"{name}-agent.port", tmp_path / f"{name}-agent.log"
            aport = int(wait_for("the agent's port", _port_file(port_file), 30))
            s["agent"] = f"127.0.0.1:{aport}"
            ports[name] = {
                "agent": int(wait_for("agent metrics", metrics_line(agent_log.read_text), 30)[1]),
                "receiver": int(wait_for("receiver metrics", metrics_line(rp.output), 30)[1]),
            }
            assert scrape(ports[name]["receiver"])["cvmigrate_receiver_open_sessions"] == 0
        fleet.write_plan(concurrency=2)
        proc = fleet.cvmigrate("fleet", "run", str(fleet.plan), timeout=180)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        rules = ExcludeRules.parse(["/tmp/*", *DEFAULT_EXCLUDE_LINES], origin="test")
        for s in fleet.servers:
            name = s["name"]
            assert compare_trees(str(fleet.sources[name]), str(fleet.targets[name]), rules).ok
            out = (fleet.dir / "servers" / name / "log").read_text()
            assert "agent" in out
            a, r = scrape(ports[name]["agent"]), scrape(ports[name]["receiver"])
            # the full pass and the final pass both ran on this server's agent, into this server's receiver
            assert a["cvmigrate_agent_passes_total"] == 2 and a["cvmigrate_agent_open_sessions"] == 0
            assert a["cvmigrate_agent_files_total"] >= 80 and a["cvmigrate_agent_bytes_sent_total"] > 0
            assert r["cvmigrate_receiver_passes_total"] == 2 and r["cvmigrate_receiver_open_sessions"] == 0
            assert r["cvmigrate_receiver_files_total"] >= 80
            assert r["cvmigrate_receiver_chunks_verified_total"] > 0
            assert r["cvmigrate_receiver_bytes_received_total"] >= a["cvmigrate_agent_bytes_sent_total"] * 0.5
            assert r["cvmigrate_receiver_retries_total"] == 1   # the final pass resumed against the journal
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        for rp in receivers:
            rp.stop()
        fleet.close()
