"""Addresses, first connections and TLS failures of standalone push/receive, through the `cvmigrate` command.

Certificates come from `cvmigrate pki init` (the path an operator takes); the
receiver is a real `cvmigrate receive` process on port 0.  Every failure is
checked for its exact exit status and a single stderr line that names the
cause: the address, DNS, refused, or for TLS which side refused and why.
"""
from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.cliproc import cli, closed_port, one_line


def pki(tmp_path: Path, name: str, *hosts: str) -> Path:
    d = tmp_path / name
    rc, out, err, _ = cli("pki", "init", str(d), *(a for h in hosts for a in ("--host", h)), cwd=tmp_path)
    assert rc == 0 and err == "", err
    return d


def tls_args(d: Path, client_from: Path | None = None) -> list[str]:
    c = client_from or d
    return ["--tls-ca", str(d / "ca.pem"), "--tls-cert", str(c / "agent.pem"), "--tls-key", str(c / "agent.key"),
            "--token-file", str(d / "token")]


@pytest.fixture
def tls_receiver(tmp_path: Path) -> Iterator[tuple[int, Path, Path]]:
    """A `cvmigrate receive` with certificates from `pki init`; yields (port, pki dir, target root)."""
    d = pki(tmp_path, "pkiA", "127.0.0.1")
    root = tmp_path / "dst"
    root.mkdir()
    port_file = tmp_path / "port"
    proc = subprocess.Popen([sys.executable, "-m", "cvmigrate", "receive", "--root", str(root), "--listen",
                             "127.0.0.1:0", "--port-file", str(port_file), "--tls-cert", str(d / "server.pem"),
                             "--tls-key", str(d / "server.key"), "--tls-ca", str(d / "ca.pem"),
                             "--token-file", str(d / "token"), "--control-token-file", str(d / "control-token")],
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            assert proc.poll() is None and time.monotonic() < deadline, "receiver did not start"
            time.sleep(0.05)
        yield int(port_file.read_text()), d, root
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def src(tmp_path: Path) -> Path:
    s = tmp_path / "src"
    s.mkdir()
    (s / "hello.txt").write_text("hello\n")
    return s


def test_pki_init_writes_private_files_and_prints_both_commands(tmp_path: Path) -> None:
    rc, out, err, _ = cli("pki", "init", "p", "--host", "10.0.0.5", "--host", "[2001:db8::5]", cwd=tmp_path)
    assert rc == 0 and err == ""
    files = sorted(os.listdir(tmp_path / "p"))
    assert files == ["agent.key", "agent.pem", "ca.pem", "client.key", "client.pem", "control-token", "server.key",
                     "server.pem", "token"]
    assert all(stat.S_IMODE((tmp_path / "p" / f).stat().st_mode) == 0o600 for f in files)
    lines = out.splitlines()
    assert any(line.strip().startswith("cvmigrate receive ") and "--tls-cert" in line for line in lines)
    assert any(line.strip().startswith("cvmigrate push / --to 10.0.0.5:7070 ") and "agent.pem" in line
               and "control-token" not in line for line in lines)
    rc, out, _, _ = cli("pki", "init", "k", "--host", "h.example", "--keep-ca-key", cwd=tmp_path)
    assert rc == 0 and stat.S_IMODE((tmp_path / "k" / "ca.key").stat().st_mode) == 0o600


def test_usage_errors_are_one_line(tmp_path: Path) -> None:
    rc, _, err, _ = cli("push", "src", "--to", "h:1", "--bogus", cwd=tmp_path)
    assert rc == 2 and "unrecognized arguments: --bogus" in one_line(err)


def test_pki_init_refuses_to_overwrite(tmp_path: Path) -> None:
    pki(tmp_path, "p", "127.0.0.1")
    rc, _, err, _ = cli("pki", "init", "p", "--host", "127.0.0.1", cwd=tmp_path)
    assert rc == 2 and "already exist" in one_line(err)


@pytest.mark.parametrize("argv, needle", [
    (["push", "src", "--to", "127.0.0.1:99999"], "port 99999 is out of range 1..65535"),
    (["push", "src", "--to", "127.0.0.1:0"], "port 0 is out of range 1..65535"),
    (["push", "src", "--to", "127.0.0.1:"], "port '' is not a number"),
    (["push", "src", "--to", "::1:7070"], "must be in brackets"),
    (["push", "src", "--to", "[10.0.0.1]:7070"], "is not an IPv6 address"),
    (["push", "src", "--to", "bad_host!:7070"], "neither an IP address nor a host name"),
    (["receive", "--root", "src", "--listen", "127.0.0.1:99999"], "port 99999 is out of range 0..65535"),
    (["agent", "--listen", "0.0.0.0:70000"], "port 70000 is out of range"),
    (["emulator", "--listen", "fe80::1:80"], "must be in brackets"),
    (["migrate", "--receiver", "10.0.0.5:65536", "--user-json", "u.json"], "port 65536 is out of range"),
])
def test_bad_addresses_are_usage_errors(tmp_path: Path, src: Path, argv: list[str], needle: str) -> None:
    (tmp_path / "u.json").write_text(json.dumps({"Region": "ap-guangzhou", "InstanceId": "ins-abcdefgh",
                                                 "SecretId": "AKIDx", "SecretKey": "y"}))
    extra = ["--insecure"] if argv[0] in ("push", "receive", "agent") else []
    rc, _, err, _ = cli(*argv, *extra, cwd=tmp_path)
    line = one_line(err)
    assert rc == 2 and needle in line, line


def test_nothing_listening_fails_fast_not_after_retry_for(tmp_path: Path, src: Path) -> None:
    d = pki(tmp_path, "p", "127.0.0.1")
    rc, out, err, took = cli("push", "src", "--to", f"127.0.0.1:{closed_port()}", *tls_args(d),
                             "--retry-for", "600", "--json", cwd=tmp_path)
    line = one_line(err)
    assert rc == 10 and "connection refused" in line and "cvmigrate receive" in line
    assert took < 15, f"took {took:.1f} s: the first connection must not be retried"
    report = json.loads(out)
    assert report["exit_code"] == 10 and "connection refused" in report["error"]


def test_unresolvable_receiver_is_named_as_dns(tmp_path: Path, src: Path) -> None:
    d = pki(tmp_path, "p", "127.0.0.1")
    rc, _, err, took = cli("push", "src", "--to", "cvmigrate-no-such-host.invalid:7070", *tls_args(d),
                           cwd=tmp_path)
    line = one_line(err)
    assert rc == 10 and "DNS lookup of 'cvmigrate-no-such-host.invalid' failed" in line and took < 30


def test_push_with_pki_init_material_succeeds(tmp_path: Path, src: Path, tls_receiver) -> None:
    port, d, root = tls_receiver
    rc, out, err, _ = cli("push", "src", "--to", f"127.0.0.1:{port}", *tls_args(d), "--json", cwd=tmp_path)
    assert rc == 0, err
    assert json.loads(out)["files"] == 1 and (root / "hello.txt").read_text() == "hello\n"


def test_wrong_ca_is_named(tmp_path: Path, src: Path, tls_receiver) -> None:
    port, d, _ = tls_receiver
    other = pki(tmp_path, "pkiB", "127.0.0.1")
    rc, _, err, took = cli("push", "src", "--to", f"127.0.0.1:{port}", *tls_args(other), cwd=tmp_path)
    line = one_line(err)
    assert rc == 5 and line.startswith("cvmigrate push: error: TLS: this side refused the receiver")
    assert "not signed by the CA" in line and "cannot reach" not in line and took < 15


def test_refused_client_certificate_is_named(tmp_path: Path, src: Path, tls_receiver) -> None:
    port, d, _ = tls_receiver
    other = pki(tmp_path, "pkiB", "127.0.0.1")
    rc, _, err, _ = cli("push", "src", "--to", f"127.0.0.1:{port}", *tls_args(d, client_from=other), cwd=tmp_path)
    line = one_line(err)
    assert rc == 5 and "refused this side's client certificate" in line


def test_host_name_mismatch_is_named(tmp_path: Path, src: Path, tls_receiver) -> None:
    port, d, _ = tls_receiver
    rc, _, err, _ = cli("push", "src", "--to", f"127.0.0.1:{port}", "--tls-server-name", "wrong.example",
                        *tls_args(d), cwd=tmp_path)
    line = one_line(err)
    assert rc == 5 and "host name mismatch" in line and "'wrong.example' (--tls-server-name" in line


def test_plaintext_client_against_tls_receiver_is_named(tmp_path: Path, src: Path, tls_receiver) -> None:
    port, d, _ = tls_receiver
    rc, _, err, _ = cli("push", "src", "--to", f"127.0.0.1:{port}", "--insecure", cwd=tmp_path)
    lines = err.strip().splitlines()
    assert rc == 5 and "Traceback" not in err
    assert len(lines) == 2 and "WITHOUT encryption" in lines[0]   # the --insecure warning, then the one error
    assert "requires TLS" in lines[1]


def test_tls_client_against_plaintext_receiver_is_named(tmp_path: Path, src: Path) -> None:
    d = pki(tmp_path, "p", "127.0.0.1")
    with socket.socket() as s:   # a plaintext HTTP/2-less listener: answers garbage to a TLS hello
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = subprocess.Popen([sys.executable, "-m", "cvmigrate", "push", "src", "--to", f"127.0.0.1:{port}",
                                 *tls_args(d)], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        s.settimeout(0.2)
        while proc.poll() is None:   # every connection (the Ping that sizes the pass, then the pass itself)
            try:
                conn, _ = s.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(5)
                conn.recv(1024)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        _, err = proc.communicate(timeout=60)
    line = one_line(err)
    assert proc.returncode == 5 and "does not speak TLS" in line


def test_a_listener_that_drops_the_connection_is_not_blamed_on_tls(tmp_path: Path, src: Path) -> None:
    """gRPC says "Socket closed" for a refused client certificate and for a cut link alike; the probe tells."""
    import threading

    d = pki(tmp_path, "p", "127.0.0.1")
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    port = s.getsockname()[1]
    stop = threading.Event()

    def drop() -> None:
        s.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = s.accept()
            except OSError:
                continue
            conn.close()

    t = threading.Thread(target=drop, daemon=True)
    t.start()
    try:
        rc, _, err, took = cli("push", "src", "--to", f"127.0.0.1:{port}", *tls_args(d), cwd=tmp_path)
    finally:
        stop.set()
        t.join(5)
        s.close()
    line = one_line(err)
    assert rc == 10 and "closed the connection before answering" in line and "TLS" not in line.split(":")[1]
    assert took < 30


def test_push_on_a_terminal_shows_a_live_progress_line(tmp_path: Path, tls_receiver) -> None:
    """stderr a terminal: rich draws the progress line while the pass runs; the summary follows on stdout."""
    import pty

    port, d, root = tls_receiver
    big = tmp_path / "big"
    big.mkdir()
    (big / "data.bin").write_bytes(os.urandom(6 * 1024 * 1024))
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "cvmigrate", "push", str(big), "--to", f"127.0.0.1:{port}",
                             *tls_args(d), "--bwlimit", "3000", "--compress-level", "0"],
                            stdin=slave, stdout=slave, stderr=slave, cwd=tmp_path, env={**os.environ, "TERM": "xterm"})
    os.close(slave)
    out = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    rc = proc.wait(timeout=30)
    os.close(master)
    text = out.decode(errors="replace")
    assert rc == 0, text
    assert f"push -> 127.0.0.1:{port}: 1 files" in text and "MiB sent" in text, text
    assert "pushed 1 files" in text
    assert (root / "data.bin").stat().st_size == 6 * 1024 * 1024
