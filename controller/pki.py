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
import os
import shlex
import time

from cvmigrate.common.errors import UsageError
from cvmigrate.common.netaddr import format_hostport, parse_hostport

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
    from cvmigrate.common.tls import mint_migration_pki, new_token, write_secret_file

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
    write_secret_file(token, (new_token() + "\n").encode())
    write_secret_file(control, (new_token() + "\n").encode())
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
