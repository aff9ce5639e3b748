"""TLS by default and the per-migration token, against a real receiver.

A real gRPC server (``create_server`` on 127.0.0.1:0) with this migration's
certificates and the token interceptor, and a real ``PushSession``:
- mutual TLS + token: the push lands and the target matches the source;
- no token -> UNAUTHENTICATED, wrong token -> PERMISSION_DENIED;
- a client certificate from another CA, no client certificate, a client that
  does not trust the server, a plaintext client: the handshake fails;
and in every refused case the target root stays exactly as it was -- not even
``.cvmigrate`` appears.  Neither the token nor private-key PEM text shows up
in the captured log records or on stderr/stdout (grpc's C core logs there).
"""
from __future__ import annotations

import argparse
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cvmigrate.agent.push import PushOptions, PushSession
from cvmigrate.common.auth import TokenAuthInterceptor
from cvmigrate.common.errors import AuthError, ConfigError, PermissionDenied, TransportError, UsageError
from cvmigrate.common.rpc import channel_options
from cvmigrate.common.tls import (
    SERVER_NAME,
    TOKEN_ENV,
    PkiPaths,
    TransportSecurity,
    load_text_secret,
    new_token,
)
from cvmigrate.controller.demo import start_target_receiver
from cvmigrate.controller.pki import mint_migration_pki
from cvmigrate.proto import transfer_pb2 as pb
from cvmigrate.proto import transfer_pb2_grpc as pb_grpc
from cvmigrate.receiver.server import create_server
from cvmigrate.receiver.session import ReceiverConfig
from cvmigrate.security_flags import add_security_arguments, security_from_args
from tests.helpers.wire import serving_secured

pytestmark = pytest.mark.timeout(60)

FILES = {
    "etc/hostname": b"source-host\n",
    "etc/shadow": b"root:$6$secret-hash:19000:0:99999:7:::\n",
    "var/lib/data.bin": os.urandom(300_000),
    "empty": b"",
}


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> PkiPaths:
    return mint_migration_pki(tmp_path_factory.mktemp("pki"), hosts=["127.0.0.1", "receiver.internal"],
                              migration_id="mig-test-1")


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory) -> PkiPaths:
    """Another migration's certificates: same shape, different CA."""
    return mint_migration_pki(tmp_path_factory.mktemp("pki-other"), hosts=["127.0.0.1"], migration_id="mig-other")


@pytest.fixture(scope="module")
def token() -> str:
    return new_token()


@pytest.fixture
def source(tmp_path) -> Path:
    src = tmp_path / "src"
    for rel, data in FILES.items():
        p = src / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return src


@pytest.fixture
def receiver(tmp_path: Path, pki: PkiPaths, token: str) -> Iterator[tuple[str, Path]]:
    """A receiver with mutual TLS and the token; yields (address, root)."""
    yield from serving_secured(tmp_path / "dst", pki, token)


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog


def client(pki: PkiPaths, *, token: str | None, cert_from: PkiPaths | None = None,
           trust: PkiPaths | None = None) -> TransportSecurity:
    cert_from = cert_from or pki
    return TransportSecurity(role="client", ca=(trust or pki).ca_cert, cert=cert_from.client_cert,
                             key=cert_from.client_key, token=token)


def push(source: Path, address: str, sec: TransportSecurity | None, *, metadata=None):
    factory = (sec.channel_factory(channel_options()) if sec is not None
               else lambda a: grpc.insecure_channel(a, options=channel_options()))
    md = sec.metadata() if metadata is None and sec is not None else (metadata or ())
    return PushSession(PushOptions(source=str(source), address=address, channel_factory=factory,
                                   metadata=md, migration_id="mig-test-1")).run()


def tree(root: Path) -> dict[str, bytes]:
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            out[str(p.relative_to(root))] = p.read_bytes()
    return out


def assert_untouched(root: Path) -> None:
    assert os.listdir(root) == [], f"a refused client changed the target: {sorted(os.listdir(root))}"


def assert_no_secrets(logs, capfd, *secrets: str) -> None:
    out, err = capfd.readouterr()
    texts = [r.getMessage() for r in logs.records] + [logs.text, out, err]
    for secret in secrets:
        for text in texts:
            assert secret not in text, "a secret leaked into the log"


def key_pem_bodies(*pkis: PkiPaths) -> list[str]:
    """The base64 body lines of every private key (any of them in a log = leak)."""
    bodies = []
    for p in pkis:
        for key in (p.server_key, p.client_key):
            lines = Path(key).read_text().splitlines()
            bodies += [ln for ln in lines if ln and not ln.startswith("-----")]
    return bodies


# ------------------------------------------------------------------ the happy path
def test_mutual_tls_and_token_push_lands(source, receiver, pki, token, logs, capfd):
    address, root = receiver
    result = push(source, address, client(pki, token=token))
    assert result.files == len(FILES)
    got = {k: v for k, v in tree(root).items() if not k.startswith(".cvmigrate")}
    assert got == FILES
    assert_no_secrets(logs, capfd, token, *key_pem_bodies(pki))


def test_server_name_override_for_unlisted_address(source, tmp_path, pki, token):
    """Dialled as "localhost" (listed) and with the fixed SERVER_NAME override (for NAT / unknown IPs)."""
    root = tmp_path / "dst2"
    root.mkdir()
    handle = start_target_receiver(root, pki, token)
    try:
        c = TransportSecurity.from_pki(pki, "client", token)
        assert c.server_name == SERVER_NAME
        push(source, f"127.0.0.1:{handle.port}", c)
        assert tree(root)["etc/hostname"] == FILES["etc/hostname"]
    finally:
        handle.stop(grace=1)


# ------------------------------------------------------------------ token refusals
def test_no_token_is_unauthenticated_and_target_untouched(source, receiver, pki, token, logs, capfd):
    address, root = receiver
    with pytest.raises(AuthError) as ei:
        push(source, address, client(pki, token=None))
    assert type(ei.value) is AuthError          # UNAUTHENTICATED, not PERMISSION_DENIED
    assert_untouched(root)
    refusals = [r.getMessage() for r in logs.records if r.name == "cvmigrate.common.auth"]
    assert any("UNAUTHENTICATED" in m and "127.0.0.1" in m for m in refusals), refusals
    assert_no_secrets(logs, capfd, token, *key_pem_bodies(pki))


def test_wrong_token_is_permission_denied_and_target_untouched(source, receiver, pki, token, logs, capfd):
    address, root = receiver
    wrong = new_token()
    with pytest.raises(PermissionDenied) as ei:
        push(source, address, client(pki, token=wrong))
    assert wrong not in str(ei.value) and token not in str(ei.value)
    assert_untouched(root)
    assert_no_secrets(logs, capfd, token, wrong, *key_pem_bodies(pki))


@pytest.mark.parametrize("md,code", [
    ((), grpc.StatusCode.UNAUTHENTICATED),
    ((("authorization", "Basic dXNlcjpwYXNz"),), grpc.StatusCode.UNAUTHENTICATED),
    ((("authorization", "Bearer"),), grpc.StatusCode.UNAUTHENTICATED),
    ((("authorization", "Bearer not-the-token-but-long-enough"),), grpc.StatusCode.PERMISSION_DENIED),
    ((("authorization", "bearer  not-the-token-but-long-enough "),), grpc.StatusCode.PERMISSION_DENIED),
    ((("authorization", "Bearer a"), ("authorization", "Bearer b")), grpc.StatusCode.UNAUTHENTICATED),
])
def test_raw_status_codes(receiver, pki, token, md, code):
    """The wire-level codes, and Ping stays open (documented in common/auth.py)."""
    address, root = receiver
    with client(pki, token=None).channel(address, channel_options()) as ch:
        stub = pb_grpc.ReceiverStub(ch)
        assert stub.Ping(pb.PingRequest(), timeout=10).protocol_versions
        with pytest.raises(grpc.RpcError) as ei:
            for _ in stub.Transfer(iter([pb.AgentMessage()]), metadata=md or None, timeout=10):
                pass
        assert ei.value.code() == code
        assert token not in (ei.value.details() or "")
    assert_untouched(root)


def test_every_method_can_require_the_token(tmp_path, pki, token):
    root = tmp_path / "dst3"
    root.mkdir()
    sec = TransportSecurity.from_pki(pki, "server", token)
    handle = create_server(ReceiverConfig(root=str(root)), "127.0.0.1:0", credentials=sec.server_credentials(),
                           interceptors=(TokenAuthInterceptor(token, open_methods=()),))
    try:
        c = client(pki, token=token)
        with c.channel(f"127.0.0.1:{handle.port}") as ch:
            stub = pb_grpc.ReceiverStub(ch)
            with pytest.raises(grpc.RpcError) as ei:
                stub.Ping(pb.PingRequest(), timeout=10)
            assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert stub.Ping(pb.PingRequest(), metadata=c.metadata(), timeout=10).protocol_versions
    finally:
        handle.stop(grace=1)
    assert token not in repr(TokenAuthInterceptor(token))


def test_interceptor_check_odd_values(token):
    """Values grpc itself would not let a client send still get a clean verdict, never an exception."""
    check = TokenAuthInterceptor(token)._check
    assert check([("authorization", b"Bearer \xff\xfe")])[0] == grpc.StatusCode.PERMISSION_DENIED
    assert check([("authorization", "Bearer ü")])[0] == grpc.StatusCode.PERMISSION_DENIED
    assert check([("Authorization", f"Bearer {token}")]) == "control"  # one token: every role
    assert check([("x-other", "1")])[0] == grpc.StatusCode.UNAUTHENTICATED


# ------------------------------------------------------------------ handshake refusals
@pytest.mark.parametrize("case", ["cert-from-other-ca", "no-client-cert", "client-distrusts-server", "plaintext"])
def test_handshake_refusals_leave_target_untouched(source, receiver, pki, other_pki, token, case, logs, capfd):
    address, root = receiver
    if case == "cert-from-other-ca":
        sec = client(pki, token=token, cert_from=other_pki)
    elif case == "no-client-cert":
        sec = TransportSecurity(role="client", ca=pki.ca_cert, token=token)
    elif case == "client-distrusts-server":
        sec = client(pki, token=token, trust=other_pki)
    else:
        sec = TransportSecurity(role="client", insecure=True, token=token)
    from cvmigrate.common.connectfail import TlsError

    # a certificate this side distrusts is named as TLS; the others close the connection (gRPC: "Socket closed")
    with pytest.raises(TlsError if case == "client-distrusts-server" else TransportError):
        push(source, address, sec)
    assert_untouched(root)
    assert_no_secrets(logs, capfd, token, *key_pem_bodies(pki, other_pki))


# ------------------------------------------------------------------ minting
def test_minted_files_modes_and_names(pki):
    from cryptography import x509

    for key in (pki.server_key, pki.client_key):
        assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(pki.directory).st_mode) & 0o077 == 0
    assert not [n for n in os.listdir(pki.directory) if n.endswith(".tmp") or "ca" in n and "key" in n]
    cert = x509.load_pem_x509_certificate(Path(pki.server_cert).read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = set(san.get_values_for_type(x509.DNSName))
    ips = {str(i) for i in san.get_values_for_type(x509.IPAddress)}
    assert {"localhost", "receiver.internal", SERVER_NAME} <= names
    assert {"127.0.0.1", "::1"} <= ips
    with pytest.raises(ConfigError, match="already exist"):
        mint_migration_pki(pki.directory, hosts=[], migration_id="mig-test-1")
    with pytest.raises(ConfigError, match="without a port"):
        mint_migration_pki(Path(pki.directory).parent / "x", hosts=["10.0.0.5:50051"], migration_id="m")


# ------------------------------------------------------------------ CLI choices
def _args(role: str, *argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_security_arguments(p, role)
    return p.parse_args(list(argv))


@pytest.fixture
def token_file(tmp_path, token) -> Path:
    p = tmp_path / "token"
    p.write_text(token + "\n")
    p.chmod(0o600)
    return p


def test_from_args_valid_combinations(pki, token, token_file, logs):
    srv = security_from_args(_args("server", "--tls-cert", pki.server_cert, "--tls-key", pki.server_key,
                                            "--tls-ca", pki.ca_cert, "--token-file", str(token_file)), "server",
                                      env={})
    assert srv.token == token and srv.ca and srv.server_credentials() is not None
    assert len(srv.interceptors()) == 1
    assert token not in repr(srv) and token not in srv.describe()
    cli = security_from_args(_args("client", "--tls-ca", pki.ca_cert, "--tls-cert", pki.client_cert,
                                            "--tls-key", pki.client_key), "client", env={TOKEN_ENV: token})
    assert cli.metadata() == (("authorization", f"Bearer {token}"),)
    insecure = security_from_args(_args("client", "--insecure"), "client", env={})
    assert insecure.insecure and insecure.metadata() == ()
    assert any("WITHOUT encryption" in r.getMessage() for r in logs.records)


@pytest.mark.parametrize("role,argv,match", [
    ("server", [], "--tls-cert FILE --tls-key FILE"),
    ("server", ["--tls-cert", "{server_cert}"], "go together"),
    ("server", ["--tls-cert", "{server_cert}", "--tls-key", "{server_key}"], "no client authentication"),
    ("server", ["--insecure", "--tls-cert", "{server_cert}"], "cannot be combined"),
    ("client", [], "--tls-ca FILE"),
    ("client", ["--tls-ca", "{ca_cert}", "--tls-key", "{client_key}"], "go together"),
])
def test_from_args_refuses_bad_combinations(pki, role, argv, match):
    argv = [a.format(**pki.__dict__) for a in argv]
    with pytest.raises(UsageError, match=match):
        security_from_args(_args(role, *argv), role, env={})


def test_secret_files_must_be_private(pki, tmp_path, token_file, token):
    token_file.chmod(0o644)
    with pytest.raises(ConfigError, match=r"chmod 600") as ei:
        load_text_secret(token_file)
    assert token not in str(ei.value)
    loose_key = tmp_path / "loose.key"
    loose_key.write_bytes(Path(pki.client_key).read_bytes())
    loose_key.chmod(0o640)
    with pytest.raises(ConfigError, match=r"chmod 600"):
        security_from_args(_args("client", "--tls-ca", pki.ca_cert, "--tls-cert", pki.client_cert,
                                          "--tls-key", str(loose_key)), "client", env={})
    with pytest.raises(ConfigError, match="at least 16"):
        security_from_args(_args("client", "--tls-ca", pki.ca_cert), "client", env={TOKEN_ENV: "short"})
    swapped = tmp_path / "cert-as-key.pem"
    swapped.write_bytes(Path(pki.client_cert).read_bytes())
    swapped.chmod(0o600)
    with pytest.raises(ConfigError, match="PEM PRIVATE KEY"):
        security_from_args(_args("client", "--tls-ca", pki.ca_cert, "--tls-cert", pki.client_cert,
                                          "--tls-key", str(swapped)), "client", env={})


@pytest.mark.parametrize("argv", [["--token", "s3cret-s3cret-s3cret"], ["--token=s3cret-s3cret-s3cret"]])
def test_no_plain_token_flag(argv, capsys):
    """--token is refused, not taken as an abbreviation of --token-file, and the value is not echoed."""
    p = argparse.ArgumentParser()
    add_security_arguments(p, "client")
    with pytest.raises(SystemExit):
        p.parse_args(argv)
    err = capsys.readouterr().err
    assert "--token-file" in err and "s3cret" not in err
