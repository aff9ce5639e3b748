"""``cvmigrate agent install`` / ``agent uninstall``: the agent as a service on the source server.

Why: on a source server the agent must outlive the admin's SSH session and a
reboot, and it must run from the one-file executable (the server usually has
no suitable Python).  ``install`` puts the executable this command runs from
(``$CVMIGRATE_EXECUTABLE``, set by the launcher; or ``--executable``) in place,
copies this migration's certificates and token (the controller's
``<migration>-pki`` directory), writes a systemd unit -- or, where systemd
does not run, an init script registered with update-rc.d/chkconfig -- starts
it, waits for it to listen and prints what the controller needs.
``uninstall`` stops it and removes every file ``install`` wrote.

Files (all under ``--root``, default ``/``)::

    /usr/local/lib/cvmigrate/cvmigrate        the executable (0755)
    /etc/cvmigrate/agent/                     ca.pem agentd.pem agentd.key agent-token (0600; dir 0700)
    /var/lib/cvmigrate/agent/                 runtime/ (the unpacked interpreter), agent.port, agent.pid, agent.log
    /etc/systemd/system/cvmigrate-agent.service   or   /etc/init.d/cvmigrate-agent

``--root`` other than ``/`` only writes the files (tests, image builds): no
service manager is called and nothing is started.
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cvmigrate.common.durable import write_secret
from cvmigrate.common.errors import CheckFailed, ConfigError, UsageError

SERVICE = "cvmigrate-agent"
DEFAULT_LISTEN = "0.0.0.0:7843"
#: The agent daemon's own certificate and token (roles: common/auth.py); never the receiver's key or tokens.
SECRET_FILES = ("ca.pem", "agentd.pem", "agentd.key", "agent-token")


@dataclass(frozen=True)
class Layout:
    """Where ``install`` puts things below ``root``."""

    root: Path

    def _p(self, rel: str) -> Path:
        return self.root / rel.lstrip("/")

    exe_rel = "/usr/local/lib/cvmigrate/cvmigrate"
    conf_rel = "/etc/cvmigrate/agent"
    state_rel = "/var/lib/cvmigrate/agent"
    unit_rel = f"/etc/systemd/system/{SERVICE}.service"
    init_rel = f"/etc/init.d/{SERVICE}"

    @property
    def exe(self) -> Path: return self._p(self.exe_rel)
    @property
    def conf(self) -> Path: return self._p(self.conf_rel)
    @property
    def state(self) -> Path: return self._p(self.state_rel)
    @property
    def unit(self) -> Path: return self._p(self.unit_rel)
    @property
    def init(self) -> Path: return self._p(self.init_rel)
    @property
    def port_file(self) -> Path: return self.state / "agent.port"

    def uses_systemd(self) -> bool:
        """systemd is the running init (sd_booted(3): /run/systemd/system exists)."""
        return (self.root / "run/systemd/system").is_dir()


def _agent_argv(listen: str) -> list[str]:
    c, s = Layout.conf_rel, Layout.state_rel
    return [Layout.exe_rel, "--log-file", f"{s}/agent.log", "agent", "--listen", listen, "--port-file",
            f"{s}/agent.port", "--tls-ca", f"{c}/ca.pem", "--tls-cert", f"{c}/agentd.pem", "--tls-key",
            f"{c}/agentd.key", "--token-file", f"{c}/agent-token"]


def systemd_unit(listen: str) -> str:
    return f"""\
# Written by `cvmigrate agent install`; removed by `cvmigrate agent uninstall`.
[Unit]
Description=cvmigrate migration agent (driven by the migration controller over mutual TLS)
After=network-online.target
Wants=network-online.target

[Service]
Environment=CVMIGRATE_CACHE_DIR={Layout.state_rel}/runtime
ExecStartPre=/bin/rm -f {Layout.state_rel}/agent.port
ExecStart={shlex.join(_agent_argv(listen))}
Restart=on-failure
RestartSec=5

[Install]
WantedBy=multi-user.target
"""


def init_script(listen: str) -> str:
    s = Layout.state_rel
    return f"""\
#!/bin/sh
# Written by `cvmigrate agent install`; removed by `cvmigrate agent uninstall`.
### BEGIN INIT INFO
# Provides:          {SERVICE}
# Required-Start:    $network $remote_fs
# Required-Stop:     $network $remote_fs
# Default-Start:     2 3 4 5
# Default-Stop:      0 1 6
# Short-Description: cvmigrate migration agent
### END INIT INFO
# chkconfig: 2345 90 10
# description: cvmigrate migration agent
PIDFILE={s}/agent.pid
export CVMIGRATE_CACHE_DIR={s}/runtime

running() {{ [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }}

case "$1" in
  start)
    running && exit 0
    rm -f {s}/agent.port
    setsid {shlex.join(_agent_argv(listen))} </dev/null >>{s}/agent.out 2>&1 &
    echo $! >"$PIDFILE"
    ;;
  stop)
    if running; then
      pid=$(cat "$PIDFILE"); kill "$pid"
      i=0; while kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
      kill -9 "$pid" 2>/dev/null
    fi
    rm -f "$PIDFILE" {s}/agent.port
    ;;
  restart) "$0" stop; "$0" start ;;
  status) if running; then echo "{SERVICE} is running"; else echo "{SERVICE} is stopped"; exit 3; fi ;;
  *) echo "usage: $0 start|stop|restart|status" >&2; exit 2 ;;
esac
"""


def _mkdirs(path: Path, created: list[Path], mode: int = 0o755) -> None:
    """``mkdir -p`` that records each directory it creates (uninstall removes exactly those)."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir(mode=mode)
        created.append(d)


def _run(argv: list[str], what: str) -> None:
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        raise CheckFailed(f"{what} failed ({' '.join(argv)} exited {r.returncode}: "
                          f"{(r.stderr or r.stdout).strip()[-400:]})")


def _executable(given: str | None) -> Path:
    src = given or os.environ.get("CVMIGRATE_EXECUTABLE")
    if not src:
        raise UsageError("agent install copies the one-file executable it runs from; run it as "
                         "./cvmigrate-linux-<arch> agent install ..., or pass --executable FILE")
    p = Path(src)
    if not p.is_file():
        raise UsageError(f"--executable {src}: no such file")
    return p


def install(args: argparse.Namespace) -> int:
    lay = Layout(Path(args.root))
    if not args.pki_dir:
        raise UsageError("agent install needs --pki-dir DIR: this migration's ca.pem, agentd.pem, agentd.key and "
                         "agent-token (the <migration>-pki directory beside the controller's state file)")
    pki = Path(args.pki_dir)
    missing = [n for n in SECRET_FILES if not (pki / n).is_file()]
    if missing:
        raise UsageError(f"--pki-dir {pki} lacks {', '.join(missing)}; copy the controller's <migration>-pki "
                         "directory (ca.pem agentd.pem agentd.key agent-token)")
    listen = args.listen or DEFAULT_LISTEN
    exe = _executable(args.executable)
    live = lay.root == Path("/")

    created: list[Path] = []
    old = os.umask(0o022)
    try:
        for d in (lay.conf, lay.state, lay.exe.parent, lay.unit.parent if lay.uses_systemd() else lay.init.parent):
            _mkdirs(d, created)
        for d in (lay.conf, lay.state):
            d.chmod(0o700)
        (lay.state / "created-dirs").write_text("".join(f"{d.relative_to(lay.root)}\n" for d in created))
        for n in SECRET_FILES:
            write_secret(lay.conf / n, (pki / n).read_bytes())
        if exe.resolve() != lay.exe.resolve():
            shutil.copyfile(exe, lay.exe.with_suffix(".tmp"))
            lay.exe.with_suffix(".tmp").chmod(0o755)
            os.replace(lay.exe.with_suffix(".tmp"), lay.exe)
    finally:
        os.umask(old)

    if lay.uses_systemd():
        kind = "systemd unit " + Layout.unit_rel
        lay.unit.write_text(systemd_unit(listen))
        lay.unit.chmod(0o644)
        if live:
            _run(["systemctl", "daemon-reload"], "reloading systemd")
            _run(["systemctl", "enable", "--now", f"{SERVICE}.service"], f"starting {SERVICE}")
    else:
        kind = "init script " + Layout.init_rel
        lay.init.write_text(init_script(listen))
        lay.init.chmod(0o755)
        if live:
            if shutil.which("update-rc.d"):
                _run(["update-rc.d", SERVICE, "defaults"], "registering the init script")
            elif shutil.which("chkconfig"):
                _run(["chkconfig", "--add", SERVICE], "registering the init script")
            _run([str(lay.init), "start"], f"starting {SERVICE}")

    print(f"cvmigrate agent installed: {lay.exe} ({kind})")
    if not live or args.no_start:
        print(f"not started (--root {lay.root}): start it with the service manager of that system")
        return 0
    port = _wait_port(lay, 30.0)
    host = listen.rsplit(":", 1)[0]
    print(f"agent listening on {host}:{port} with this migration's certificates and token")
    print(f"on the admin box: cvmigrate migrate ... --agent <this server's address>:{port}")
    return 0


def _wait_port(lay: Layout, seconds: float) -> int:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            text = lay.port_file.read_text().strip()
            if text:
                return int(text)
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    log = lay.state / "agent.log"
    tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
    raise CheckFailed(f"the agent did not start listening within {seconds:.0f}s; see {log}:\n{tail}")


def uninstall(args: argparse.Namespace) -> int:
    lay = Layout(Path(args.root))
    live = lay.root == Path("/")
    try:
        created = [lay.root / line for line in (lay.state / "created-dirs").read_text().splitlines() if line]
    except OSError:
        created = []
    if lay.unit.exists():
        if live:
            subprocess.run(["systemctl", "disable", "--now", f"{SERVICE}.service"], capture_output=True)
        lay.unit.unlink()
        if live:
            subprocess.run(["systemctl", "daemon-reload"], capture_output=True)
    if lay.init.exists():
        if live:
            subprocess.run([str(lay.init), "stop"], capture_output=True)
            if shutil.which("update-rc.d"):
                subprocess.run(["update-rc.d", "-f", SERVICE, "remove"], capture_output=True)
            elif shutil.which("chkconfig"):
                subprocess.run(["chkconfig", "--del", SERVICE], capture_output=True)
        lay.init.unlink()
    for d in (lay.conf, lay.state, lay.exe.parent):
        shutil.rmtree(d, ignore_errors=True)
    # the directories install created, deepest first, when nothing else lives there now
    for d in sorted(created, key=lambda p: len(p.parts), reverse=True):
        try:
            d.rmdir()
        except OSError:
            pass
    print("cvmigrate agent uninstalled: service stopped and removed, certificates and executable deleted")
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("agent install / uninstall (on the source server, from the one-file executable)")
    g.add_argument("--pki-dir", metavar="DIR",
                   help="install: this migration's ca.pem, agentd.pem, agentd.key and agent-token (the controller's "
                        "<migration>-pki directory)")
    g.add_argument("--root", default="/", metavar="DIR",
                   help="install into this root instead of / (only writes files; nothing is started)")
    g.add_argument("--executable", metavar="FILE",
                   help="install: the one-file executable to install (default: the one running)")
    g.add_argument("--no-start", action="store_true", help="install: write the files, do not start the service")


def run(args: argparse.Namespace) -> int:
    if args.action == "install":
        return install(args)
    if args.action == "uninstall":
        return uninstall(args)
    raise ConfigError(f"unknown agent action {args.action!r}")


__all__ = ["Layout", "add_arguments", "init_script", "install", "run", "systemd_unit", "uninstall"]
