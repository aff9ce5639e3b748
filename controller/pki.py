"""``cvmigrate pki init DIR --host HOST``: certificates and a token for standalone ``receive``/``push``.

Why: outside a controller-driven migration (which mints its own per-migration
material), ``push`` and ``receive`` need a CA, a server certificate listing
the receiver's addresses, a client certificate and tokens -- and hand-made
openssl CAs are where people go wrong (no SAN, CA:TRUE missing, the wrong
extended key usage).  This mints exactly what the two commands check, with
every file mode 0600 and the CA key not kept (so nobody can later issue a
certificate this CA vouches for) unless ``--keep-ca-key``, and prints the two
command lines that use them.

Roles (common.auth): the push side gets the data-plane material only -- the
agent's client certificate (``agent.pem``) and the data token (``token``);
the receiver is also given a separate ``control-token`` so that the push
side's credentials can transfer data but never run the fix-ups or finalize.
The controller's certificate (``client.pem``, control plane) is kept for
``cvmigrate migrate --receiver ...`` with these files; the agent daemon's is
not needed and is removed.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import ipaddress
import logging
import os
import re
import shlex
import time
from collections.abc import Sequence
from typing import Any

from cvmigrate.common.durable import write_file
from cvmigrate.common.errors import ConfigError, UsageError
from cvmigrate.common.netaddr import format_hostport, parse_hostport
from cvmigrate.common.tls import AGENT_SERVER_NAME, LOCAL_HOSTS, SERVER_NAME, PkiPaths

logger = logging.getLogger(__name__)

DEFAULT_PORT = 7070
DEFAULT_DAYS = 30
TOKEN_NAME = "token"  # noqa: S105 - a file name, not a secret
CONTROL_TOKEN_NAME = "control-token"  # noqa: S105 - a file name


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="pki_command", metavar="ACTION", required=True)
    init = sub.add_parser("init", help="mint a CA, a server and a client certificate, and tokens into DIR",
                          description="Mint a CA, a server certificate for the receiver's addresses, a client "
                                      "certificate and a token (all files 0600) and print the matching "
                                      "`cvmigrate receive` and `cvmigrate push` command lines.")
    init.add_argument("directory", metavar="DIR", help="where to write the files (created 0700 if missing)")
    init.add_argument("--host", action="append", required=True, metavar="HOST",
                      help="a name or IP address the receiver is reached by (repeatable); the certificate also "
                           "lists localhost and cvmigrate-receiver")
    init.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"the receiver's port (default {DEFAULT_PORT})")
    init.add_argument("--days", type=int, default=DEFAULT_DAYS,
                      help=f"certificate validity in days (default {DEFAULT_DAYS})")
    init.add_argument("--keep-ca-key", action="store_true",
                      help="also keep the CA's private key (ca.key) to mint more certificates later; by default "
                           "it is discarded")
    init.add_argument("--force", action="store_true", help="replace certificates already in DIR")


def run(args: argparse.Namespace) -> int:
    from cvmigrate.common.durable import write_secret
    from cvmigrate.common.tls import new_token

    if not 1 <= args.port <= 65535:
        raise UsageError(f"--port {args.port} is out of range 1..65535")
    hosts = []
    for h in args.host:
        hp = parse_hostport(h, "--host", default_port=args.port)
        hosts.append(hp.host)
    directory = os.path.abspath(args.directory)
    paths = mint_migration_pki(directory, hosts=hosts, migration_id=time.strftime("standalone-%Y%m%d-%H%M%S"),
                               days=args.days, overwrite=args.force, keep_ca_key=args.keep_ca_key)
    token = os.path.join(directory, TOKEN_NAME)
    control = os.path.join(directory, CONTROL_TOKEN_NAME)
    for f in (token, control):
        if os.path.lexists(f) and not args.force:
            raise UsageError(f"{f} already exists; pass --force to replace it")
    write_secret(token, (new_token() + "\n").encode())
    write_secret(control, (new_token() + "\n").encode())
    for f in (paths.agentd_cert, paths.agentd_key):
        if f and os.path.exists(f):
            os.unlink(f)   # the agent daemon's server certificate: not part of a standalone push/receive
    kept_files = [paths.ca_cert, paths.server_cert, paths.server_key, paths.agent_cert, paths.agent_key,
                  paths.client_cert, paths.client_key, token, control]
    if args.keep_ca_key:
        kept_files.append(os.path.join(directory, "ca.key"))
    for f in kept_files:
        os.chmod(f, 0o600)
    q = shlex.quote
    any_address = "::" if ":" in hosts[0] else "0.0.0.0"  # noqa: S104 - the receiver serves the migration network
    receive = ["cvmigrate", "receive", "--root", "/mnt/cvmigrate", "--listen", format_hostport(any_address, args.port),
               "--tls-cert", paths.server_cert,
               "--tls-key", paths.server_key, "--tls-ca", paths.ca_cert, "--token-file", token,
               "--control-token-file", control]
    push = ["cvmigrate", "push", "/", "--to", format_hostport(hosts[0], args.port), "--tls-ca", paths.ca_cert,
            "--tls-cert", paths.agent_cert, "--tls-key", paths.agent_key, "--token-file", token]
    kept = "ca.key kept (guard it)" if args.keep_ca_key else "the CA key was not kept"
    print(f"minted in {directory}: ca.pem, server.pem, server.key, agent.pem, agent.key (the push side's client "
          f"certificate, data plane), client.pem, client.key (a controller's, control plane), token, control-token "
          f"(mode 0600; {kept}; valid {args.days} days; server names: {', '.join(hosts)}, localhost, "
          "cvmigrate-receiver)")
    print("on the target, with ca.pem, server.pem, server.key, token and control-token copied there:")
    print("  " + " ".join(q(a) for a in receive))
    print("on the source, with ca.pem, agent.pem, agent.key and token copied there (never control-token):")
    print("  " + " ".join(q(a) for a in push))
    print("or let a controller drive the migration to that receiver: cvmigrate migrate --receiver "
          f"{q(format_hostport(hosts[0], args.port))} --tls-ca {q(paths.ca_cert)} --tls-cert {q(paths.client_cert)} "
          f"--tls-key {q(paths.client_key)} --token-file {q(token)} --control-token-file {q(control)}")
    return 0


# --------------------------------------------------------------------- minting (the controller only)
_MIGRATION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
_DNS_NAME = re.compile(r"(?=.{1,253}\Z)(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)"
                       r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?\Z")


def mint_migration_pki(out_dir: str | os.PathLike[str], *, hosts: Sequence[str], migration_id: str,
                       days: int = DEFAULT_DAYS, overwrite: bool = False,
                       keep_ca_key: bool = False) -> PkiPaths:
    """Mint a per-migration CA, a server and a client certificate into ``out_dir``.

    Keys are EC P-256, signatures ECDSA-SHA256.  Not Ed25519: grpcio 1.85's
    BoringSSL does not offer it by default (the handshake fails with
    NO_COMMON_SIGNATURE_ALGORITHMS; checked).  The server
    certificate lists ``hosts`` (names or IP addresses, no ports) plus
    localhost/127.0.0.1/::1 and ``SERVER_NAME``; the client certificate is for
    client authentication only.  The CA key is discarded.  Existing files are
    refused unless ``overwrite`` (a running receiver keeps using the old ones).
    """
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ConfigError("minting certificates needs the 'cryptography' package: "
                          "pip install 'cvmigrate[controller]'") from exc

    if not _MIGRATION_ID.match(migration_id or ""):
        raise ConfigError(f"migration id {migration_id!r} is not usable in a certificate: use 1-64 letters, "
                          "digits, '.', '_' or '-'")
    if days < 1:
        raise ConfigError(f"certificate validity must be at least 1 day, not {days}")
    sans = _subject_alt_names(hosts, x509)

    paths = PkiPaths.in_dir(out_dir)
    os.makedirs(paths.directory, mode=0o700, exist_ok=True)
    if not overwrite:
        present = [p for p in paths.files() if os.path.lexists(p)]
        if present:
            raise ConfigError(f"certificates already exist in {paths.directory} ({os.path.basename(present[0])}); "
                              "reuse them (PkiPaths.in_dir) or pass overwrite=True to mint new ones")

    now = _dt.datetime.now(_dt.UTC)
    not_before = now - _dt.timedelta(minutes=5)        # tolerate small clock skew between hosts
    not_after = now + _dt.timedelta(days=days)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cvmigrate"),
                          x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, f"migration {migration_id}"),
                          x509.NameAttribute(NameOID.COMMON_NAME, cn[:64])])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = name(f"cvmigrate CA {migration_id}")
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (x509.CertificateBuilder()
               .subject_name(ca_name).issuer_name(ca_name)
               .public_key(ca_key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(not_before).not_valid_after(not_after)
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                            key_encipherment=False, data_encipherment=False, key_agreement=False,
                                            key_cert_sign=True, crl_sign=True, encipher_only=False,
                                            decipher_only=False), critical=True)
               .add_extension(ca_ski, critical=False)
               .sign(ca_key, hashes.SHA256()))

    def leaf(cn: str, usage: Any, alt_names: list[Any] | None, signer: Any) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder()
                   .subject_name(name(cn)).issuer_name(ca_name)
                   .public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(not_before).not_valid_after(not_after)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                                key_encipherment=False, data_encipherment=False,
                                                key_agreement=False, key_cert_sign=False, crl_sign=False,
                                                encipher_only=False, decipher_only=False), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                                  critical=False))
        if alt_names:
            builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        cert = builder.sign(signer, hashes.SHA256())
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return cert.public_bytes(serialization.Encoding.PEM), key_pem

    server_pem, server_key = leaf(f"cvmigrate receiver {migration_id}", ExtendedKeyUsageOID.SERVER_AUTH, sans, ca_key)
    # One client certificate per role: the receiver refuses control methods to the agent's (common.auth)
    client_pem, client_key = leaf(f"cvmigrate controller {migration_id}", ExtendedKeyUsageOID.CLIENT_AUTH, None,
                                  ca_key)
    agent_pem, agent_key = leaf(f"cvmigrate agent {migration_id}", ExtendedKeyUsageOID.CLIENT_AUTH, None, ca_key)
    # only its own name: the source server holds this key, so it must not be valid for the receiver's names
    agentd_sans = _subject_alt_names([AGENT_SERVER_NAME], x509, extra=())
    agentd_pem, agentd_key = leaf(f"cvmigrate agent daemon {migration_id}", ExtendedKeyUsageOID.SERVER_AUTH,
                                  agentd_sans, ca_key)
    if keep_ca_key:
        write_file(os.path.join(paths.directory, "ca.key"),
                   ca_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()), 0o600)
    del ca_key

    # Keys first: a crash part-way leaves no certificate without its key.
    write_file(paths.server_key, server_key, 0o600)
    write_file(paths.client_key, client_key, 0o600)
    write_file(paths.agent_key, agent_key, 0o600)
    write_file(paths.agentd_key, agentd_key, 0o600)
    write_file(paths.server_cert, server_pem, 0o644)
    write_file(paths.client_cert, client_pem, 0o644)
    write_file(paths.agent_cert, agent_pem, 0o644)
    write_file(paths.agentd_cert, agentd_pem, 0o644)
    write_file(paths.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    logger.info("minted TLS certificates for migration %s in %s (server names: %s; valid %d days)",
                migration_id, paths.directory, ", ".join(_san_text(s) for s in sans), days)
    return paths


def _subject_alt_names(hosts: Sequence[str], x509: Any, *, extra: Sequence[str] = (*LOCAL_HOSTS, SERVER_NAME)
                       ) -> list[Any]:
    out: list[Any] = []
    seen: set[str] = set()
    for raw in [*hosts, *extra]:
        host = str(raw).strip()
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]                       # "[::1]" as written in URLs
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            ip = None
        if ip is not None:
            key = f"ip:{ip}"
            value: Any = x509.IPAddress(ip)
        else:
            if ":" in host or not _DNS_NAME.match(host):
                raise ConfigError(f"{raw!r} is not a host name or IP address for the server certificate "
                                  "(give the address without a port, e.g. 10.0.0.5 or receiver.example.com)")
            key = f"dns:{host.lower().rstrip('.')}"
            value = x509.DNSName(host.lower().rstrip("."))
        if key not in seen:
            seen.add(key)
            out.append(value)
    return out


def _san_text(san: Any) -> str:
    return str(san.value)
