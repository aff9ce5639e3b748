"""The transport-security flags of every command that opens a gRPC channel or serves one.

Why here, in the CLI package: they are command-line wiring (argparse), used by the commands' parsers
(``push``, ``receive``, ``agent``, ``migrate``); the checks of what they say, and the credentials built
from them, are :class:`cvmigrate.common.tls.TransportSecurity`'s.  This module imports only ``common``,
so the agent's and the receiver's command lines may use it (docs/design.md, import direction).
"""
from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from cvmigrate.common.tls import CONTROL_TOKEN_ENV, ROLE_SERVER, ROLES, SERVER_NAME, TOKEN_ENV, TransportSecurity


def security_from_args(args: argparse.Namespace, role: str,
                       env: Mapping[str, str] | None = None) -> TransportSecurity:
    """The security the flags of :func:`add_security_arguments` ask for, validated (UsageError naming
    the fix; a warning for --insecure).  ``env`` stands in for the environment (tokens)."""
    return TransportSecurity.from_options(
        role, ca=getattr(args, "tls_ca", None), cert=getattr(args, "tls_cert", None),
        key=getattr(args, "tls_key", None), server_name=getattr(args, "tls_server_name", None),
        insecure=bool(getattr(args, "insecure", False)), token_file=getattr(args, "token_file", None),
        control_token_file=getattr(args, "control_token_file", None), env=env)


class _RefuseTokenFlag(argparse.Action):
    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        parser.error(f"there is no --token flag (the command line is visible to every local user in ps): put "
                     f"the token in a mode-0600 file and pass --token-file FILE, or set ${TOKEN_ENV}")


def add_security_arguments(parser: argparse.ArgumentParser, role: str) -> None:
    """Add --tls-ca/--tls-cert/--tls-key/--token-file/--insecure (and --tls-server-name for clients)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, not {role!r}")
    # An exact --token makes argparse refuse it loudly instead of silently taking
    # "--token SECRET" as an abbreviation of --token-file (and echoing the
    # secret as a file name in the error).
    g0 = parser.add_argument_group()
    g0.add_argument("--token", nargs="?", action=_RefuseTokenFlag, help=argparse.SUPPRESS)
    g = parser.add_argument_group(
        "transport security",
        f"TLS is the default. The token comes from --token-file or ${TOKEN_ENV} (there is no --token flag: "
        "the command line is visible to every local user). Key and token files must be mode 0600.")
    if role == ROLE_SERVER:
        g.add_argument("--tls-cert", metavar="FILE", help="this server's certificate (PEM)")
        g.add_argument("--tls-key", metavar="FILE", help="this server's private key (PEM, mode 0600)")
        g.add_argument("--tls-ca", metavar="FILE",
                       help="require client certificates signed by this CA (mutual TLS)")
        g.add_argument("--token-file", metavar="FILE",
                       help=f"require this bearer token from clients (or set ${TOKEN_ENV}); with "
                            "--control-token-file it may only transfer data")
        g.add_argument("--control-token-file", metavar="FILE",
                       help=f"the controller's token (or set ${CONTROL_TOKEN_ENV}): only it may run the fix-ups "
                            "and finalize; give it so the agent's token cannot")
        g.add_argument("--insecure", action="store_true",
                       help="serve plaintext gRPC (trusted test networks only; prints a warning)")
    else:
        g.add_argument("--tls-ca", metavar="FILE", help="the CA that signed the server's certificate (PEM)")
        g.add_argument("--tls-cert", metavar="FILE", help="client certificate for mutual TLS (PEM)")
        g.add_argument("--tls-key", metavar="FILE", help="the client certificate's private key (PEM, mode 0600)")
        g.add_argument("--tls-server-name", metavar="NAME",
                       help="verify the server's certificate against NAME instead of the dialled host "
                            f"(e.g. {SERVER_NAME} when connecting through an address the certificate "
                            "does not list)")
        g.add_argument("--token-file", metavar="FILE",
                       help=f"send this bearer token (or set ${TOKEN_ENV})")
        g.add_argument("--control-token-file", metavar="FILE",
                       help=f"the control-plane token for fix-ups and finalize (or set ${CONTROL_TOKEN_ENV}); "
                            "controller only, never given to the agent")
        g.add_argument("--insecure", action="store_true",
                       help="send plaintext gRPC (trusted test networks only; prints a warning)")
