"""Transport security for every gRPC channel: TLS by default, a token on top.

Why: migration traffic is a whole server's disk -- password hashes, keys,
databases -- crossing networks we do not own, and the receiver writes
anything it is told into a target root.  So:

- every channel (agent -> receiver, controller -> agent, controller ->
  receiver) is TLS unless the operator says ``--insecure``, which is the only
  way to get plaintext and always logs a warning;
- the controller mints a small CA per migration (``controller.pki.mint_migration_pki``): one
  server certificate and one client certificate, both signed by it, so mutual
  TLS trusts exactly this migration's peers and nothing else.  The CA's private
  key is never written anywhere: after minting, nobody can issue another
  certificate this CA vouches for;
- a per-migration bearer token (``new_token``) is checked by
  ``cvmigrate.common.auth.TokenAuthInterceptor`` before any handler runs;
- standalone ``receive``/``push`` take the same material from files
  (``--tls-ca/--tls-cert/--tls-key``, ``--token-file``) or the token from
  ``CVMIGRATE_TOKEN`` -- never from a ``--token`` flag, because argv is visible
  to every user in ``ps``.

Secrets (tokens, private keys) are never logged, never part of a repr, never
part of an error message.  Private-key and token files must not be readable
by group or others (like ssh and PostgreSQL, we refuse and name the fix).

``cryptography`` is a controller-only dependency: minting lives in
``controller/pki.py``, so the agent and the receiver (which just *load*
PEM files through grpc) never need it.
"""
from __future__ import annotations

import logging
import os
import re
import secrets
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from cvmigrate.common.errors import ConfigError, UsageError

logger = logging.getLogger(__name__)

#: Environment variable that may carry the bearer token (instead of --token-file).
TOKEN_ENV = "CVMIGRATE_TOKEN"  # noqa: S105 - the variable's name, not a secret
#: Environment variable that may carry the control-plane token (instead of --control-token-file).
CONTROL_TOKEN_ENV = "CVMIGRATE_CONTROL_TOKEN"  # noqa: S105 - the variable's name, not a secret
#: DNS name the agent daemon's minted server certificate carries (the controller verifies it).
AGENT_SERVER_NAME = "cvmigrate-agent"
#: DNS name every minted server certificate carries besides the given hosts.  A
#: client that reaches a server through an address the certificate does not
#: list (NAT, proxy, an IP learned after minting) verifies against this name
#: (``server_name=``), which is safe because the per-migration CA signs
#: nothing but this migration's certificates.
SERVER_NAME = "cvmigrate-receiver"
#: Hosts every server certificate lists, so local tests and tunnels work.
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
MIN_TOKEN_LENGTH = 16

ROLE_SERVER = "server"
ROLE_CLIENT = "client"
ROLES = (ROLE_SERVER, ROLE_CLIENT)

# Header values must be visible ASCII (gRPC metadata); a space would break "Bearer <token>".
_TOKEN_CHARS = re.compile(r"[\x21-\x7e]+\Z")


# --------------------------------------------------------------------- files of one migration
@dataclass(frozen=True)
class PkiPaths:
    """Where one migration's certificates live.  Keys are mode 0600."""

    directory: str
    ca_cert: str
    server_cert: str
    server_key: str
    client_cert: str               # the controller's (control plane)
    client_key: str
    agent_cert: str = ""           # the agent's client certificate (data plane only)
    agent_key: str = ""
    agentd_cert: str = ""          # the agent daemon's server certificate (never the receiver's)
    agentd_key: str = ""
    server_name: str = SERVER_NAME

    @classmethod
    def in_dir(cls, directory: str | os.PathLike[str]) -> PkiPaths:
        d = os.path.abspath(directory)
        j = os.path.join
        return cls(directory=d, ca_cert=j(d, "ca.pem"),
                   server_cert=j(d, "server.pem"), server_key=j(d, "server.key"),
                   client_cert=j(d, "client.pem"), client_key=j(d, "client.key"),
                   agent_cert=j(d, "agent.pem"), agent_key=j(d, "agent.key"),
                   agentd_cert=j(d, "agentd.pem"), agentd_key=j(d, "agentd.key"))

    def files(self) -> tuple[str, ...]:
        return tuple(p for p in (self.ca_cert, self.server_cert, self.server_key, self.client_cert, self.client_key,
                                 self.agent_cert, self.agent_key, self.agentd_cert, self.agentd_key) if p)

    def exists(self) -> bool:
        """True when every file is there (a resumed migration reuses them)."""
        return all(os.path.isfile(p) for p in self.files())


# --------------------------------------------------------------------- secrets
def new_token() -> str:
    """A fresh per-migration bearer token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def _read_private(path: str | os.PathLike[str], what: str) -> bytes:
    """Read a file that holds a secret; refuse it when group or others may read or write it."""
    p = os.fspath(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} {p!r}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)       # the file we opened, not whatever the name points at later
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"the {what} {p!r} is not a regular file")
        if st.st_mode & 0o077:
            raise ConfigError(f"the {what} {p!r} is accessible by group or others (mode "
                              f"{stat.S_IMODE(st.st_mode):04o}); run `chmod 600 {p}` and try again")
        chunks = []
        while True:
            b = os.read(fd, 1 << 16)
            if not b:
                break
            chunks.append(b)
            if sum(map(len, chunks)) > 1 << 20:
                raise ConfigError(f"the {what} {p!r} is larger than 1 MiB; is it the right file?")
        return b"".join(chunks)
    finally:
        os.close(fd)


def load_text_secret(path: str | os.PathLike[str], what: str = "secret file") -> str:
    """Read a token-like secret: mode must be 0600 or stricter; surrounding whitespace is stripped."""
    raw = _read_private(path, what)
    try:
        text = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise ConfigError(f"the {what} {os.fspath(path)!r} is not ASCII text") from None
    if not text:
        raise ConfigError(f"the {what} {os.fspath(path)!r} is empty")
    return text


def check_token(token: str, origin: str) -> str:
    """Validate a token's shape (never echoing it); returns it stripped."""
    token = token.strip()
    if len(token) < MIN_TOKEN_LENGTH or not _TOKEN_CHARS.match(token):
        raise ConfigError(f"the token from {origin} must be at least {MIN_TOKEN_LENGTH} visible ASCII characters "
                          "without spaces; make one with `python3 -c 'import secrets; "
                          "print(secrets.token_urlsafe(32))'`")
    return token


def _read_pem(path: str, what: str, marker: bytes, *, private: bool = False) -> bytes:
    data = _read_private(path, what) if private else _read_public(path, what)
    if b"-----BEGIN " not in data or marker not in data:
        raise ConfigError(f"the {what} {path!r} does not look like a PEM {marker.decode()}; "
                          "check the order of --tls-cert and --tls-key")
    return data


def _read_public(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read((1 << 20) + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} {path!r}: {exc.strerror}") from None
    return data


# --------------------------------------------------------------------- grpc credentials
def server_credentials(cert: bytes, key: bytes, client_ca: bytes | None = None) -> grpc.ServerCredentials:
    """TLS server credentials; with ``client_ca`` every client must present a certificate it signed."""
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca,
                                       require_client_auth=client_ca is not None)


def channel_credentials(ca: bytes | None, cert: bytes | None = None, key: bytes | None = None
                        ) -> grpc.ChannelCredentials:
    """TLS channel credentials trusting ``ca`` (None = the system store), optionally with a client certificate."""
    if (cert is None) != (key is None):
        raise ConfigError("a client certificate needs its private key and vice versa")
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


# --------------------------------------------------------------------- the CLI's choice
@dataclass(frozen=True)
class MigrationTokens:
    """A migration's bearer tokens, one per role (see common.auth): never logged, never in a repr.

    ``data``: agent -> receiver transfers (the agent holds it).  ``control``:
    controller -> receiver (fix-ups, finalize; only the controller and the
    receiver hold it).  ``agent``: controller -> agent daemon (the agent
    daemon checks it; it opens nothing on the receiver).
    """

    data: str = field(repr=False)
    control: str = field(repr=False)
    agent: str = field(repr=False)


@dataclass(frozen=True)
class TransportSecurity:
    """How one process secures its gRPC channels: the CLI's --tls-*/--token-file/--insecure, validated.

    ``role`` is ``"server"`` (receive; the agent's control service) or
    ``"client"`` (push; the controller).  The token is excluded from repr and
    comparisons so it cannot leak through a log line or a traceback.
    """

    role: str
    insecure: bool = False
    ca: str | None = None          # server: CA of client certs (mutual TLS); client: CA of the server's cert
    cert: str | None = None
    key: str | None = None
    server_name: str | None = None  # client only: name to verify instead of the dialled host
    token: str | None = field(default=None, repr=False, compare=False)
    #: server: the token of the control role (None: ``token`` may call everything);
    #: client: what control calls (RunFixups, Finalize) send instead of ``token``.
    control_token: str | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, not {self.role!r}")

    # ---------------------------------------------------------------- building
    @classmethod
    def from_options(cls, role: str, *, ca: str | None = None, cert: str | None = None, key: str | None = None,
                     server_name: str | None = None, insecure: bool = False, token_file: str | None = None,
                     control_token_file: str | None = None,
                     env: Mapping[str, str] | None = None) -> TransportSecurity:
        """Validate the combination of the security options (the CLI's --tls-*/--token-file/--insecure,
        :mod:`cvmigrate.security_flags`); raise UsageError naming the fix.  Logs a warning for --insecure."""
        env = os.environ if env is None else env
        if role != ROLE_CLIENT:
            server_name = None
        token = _token_from(token_file, env)
        control = _token_from(control_token_file, env, CONTROL_TOKEN_ENV, "--control-token-file")
        if control is not None and control == token:
            raise UsageError("the control token must differ from the data token: the agent holds the data token, "
                             "and with it it could run the fix-ups; make a second one with `python3 -c 'import "
                             "secrets; print(secrets.token_urlsafe(32))'`")
        if role == ROLE_SERVER and control is not None and token is None:
            raise UsageError("--control-token-file needs --token-file (or $CVMIGRATE_TOKEN) for the data plane too")

        if insecure:
            given = [f for f, v in (("--tls-ca", ca), ("--tls-cert", cert), ("--tls-key", key),
                                    ("--tls-server-name", server_name)) if v]
            if given:
                raise UsageError(f"--insecure cannot be combined with {', '.join(given)}: drop --insecure to use "
                                 "TLS, or drop the TLS options to send plaintext")
            if role == ROLE_SERVER and token is None:
                raise UsageError("--insecure still requires a token: give --token-file FILE (mode 0600) or set "
                                 f"{TOKEN_ENV}; without one anyone who can reach the port could write the target")
            sec = cls(role=role, insecure=True, token=token, control_token=control)
            sec.warn_if_insecure()
            return sec

        if (cert is None) != (key is None):
            raise UsageError("--tls-cert and --tls-key go together: give both (the certificate and its private "
                             "key) or neither")
        if role == ROLE_SERVER:
            if cert is None:
                raise UsageError("TLS needs this server's certificate: give --tls-cert FILE --tls-key FILE "
                                 "(e.g. from the migration's certificate directory), or --insecure to serve "
                                 "plaintext on a trusted network")
            if ca is None and token is None:
                raise UsageError("no client authentication configured: give --token-file FILE (or set "
                                 f"{TOKEN_ENV}) and/or --tls-ca FILE to require client certificates; "
                                 "otherwise anyone who can reach the port could write the target")
        else:
            if ca is None:
                raise UsageError("TLS needs the CA that signed the receiver's certificate: give --tls-ca FILE, "
                                 "or --insecure to send plaintext on a trusted network")
        sec = cls(role=role, insecure=False, ca=_abs(ca), cert=_abs(cert), key=_abs(key),
                  server_name=server_name, token=token, control_token=control)
        sec.check_files()
        if role == ROLE_CLIENT and token is None and cert is None:
            logger.info("no token and no client certificate given: the receiver will refuse the transfer unless "
                        "it requires neither")
        return sec

    def probe(self) -> Any:
        """A TlsProbe with this side's client certificate: names the cause of a connection closed at once."""
        from cvmigrate.common.connectfail import TlsProbe

        return TlsProbe(cert=self.cert, key=self.key, server_name=self.server_name)

    @property
    def transport(self) -> str:
        """plaintext, tls or mtls (a client certificate is presented): how a failed handshake is explained."""
        return "plaintext" if self.insecure else ("mtls" if self.cert else "tls")

    @classmethod
    def from_pki(cls, pki: PkiPaths, role: str, token: str | MigrationTokens | None) -> TransportSecurity:
        """The controller's choice: mutual TLS with this migration's certificates, plus the token(s).

        ``role`` "server": the receiver; "client": the controller (its own certificate).  With
        :class:`MigrationTokens` the receiver separates the roles and the controller sends the
        control token on control calls; with one token string that token may call everything.
        """
        data, control = (token.data, token.control) if isinstance(token, MigrationTokens) else (token, None)
        if role == ROLE_SERVER:
            return cls(role=role, ca=pki.ca_cert, cert=pki.server_cert, key=pki.server_key, token=data,
                       control_token=control)
        return cls(role=role, ca=pki.ca_cert, cert=pki.client_cert, key=pki.client_key,
                   server_name=pki.server_name, token=data, control_token=control)

    @classmethod
    def agent_data(cls, pki: PkiPaths, tokens: MigrationTokens) -> TransportSecurity:
        """What the agent gets to reach the receiver: its own certificate and the data token -- nothing more."""
        return cls(role=ROLE_CLIENT, ca=pki.ca_cert, cert=pki.agent_cert, key=pki.agent_key,
                   server_name=pki.server_name, token=tokens.data)

    @classmethod
    def agent_daemon(cls, pki: PkiPaths, tokens: MigrationTokens) -> TransportSecurity:
        """The agent daemon's server side (`cvmigrate agent --tls-cert agentd.pem ... --token-file agent-token`)."""
        return cls(role=ROLE_SERVER, ca=pki.ca_cert, cert=pki.agentd_cert, key=pki.agentd_key, token=tokens.agent)

    @classmethod
    def to_agent(cls, pki: PkiPaths, tokens: MigrationTokens) -> TransportSecurity:
        """The controller's side of the control channel to the agent daemon."""
        return cls(role=ROLE_CLIENT, ca=pki.ca_cert, cert=pki.client_cert, key=pki.client_key,
                   server_name=AGENT_SERVER_NAME, token=tokens.agent)

    def check_files(self) -> None:
        """Read every configured file once, so a wrong path or mode fails before anything listens or dials."""
        self._load()

    def _load(self) -> tuple[bytes | None, bytes | None, bytes | None]:
        ca = _read_pem(self.ca, "CA certificate (--tls-ca)", b"CERTIFICATE") if self.ca else None
        cert = _read_pem(self.cert, "certificate (--tls-cert)", b"CERTIFICATE") if self.cert else None
        key = (_read_pem(self.key, "private key (--tls-key)", b"PRIVATE KEY", private=True)
               if self.key else None)
        return ca, cert, key

    # ---------------------------------------------------------------- using
    def warn_if_insecure(self) -> None:
        if not self.insecure:
            return
        what = "serving" if self.role == ROLE_SERVER else "sending"
        logger.warning("%s WITHOUT encryption (--insecure): anyone on the network path can read and alter the "
                       "data%s", what, "; the token travels in clear text" if self.token else
                       " and nothing authenticates the peer")

    def describe(self) -> str:
        """A log-safe summary (no secrets)."""
        if self.insecure:
            mode = "plaintext (--insecure)"
        elif self.role == ROLE_SERVER:
            mode = "mutual TLS" if self.ca else "TLS"
        else:
            mode = "mutual TLS" if self.cert else "TLS"
        roles = ", data and control roles separated" if self.control_token else ""
        token = "required" if self.role == ROLE_SERVER and self.token else "sent" if self.token else "none"
        return f"{mode}, token {token}{roles}"

    def server_credentials(self) -> grpc.ServerCredentials | None:
        """Credentials for ``create_server``; None means plaintext (--insecure)."""
        if self.role != ROLE_SERVER:
            raise ValueError("server_credentials() needs role='server'")
        if self.insecure:
            return None
        ca, cert, key = self._load()
        assert cert is not None and key is not None
        return server_credentials(cert, key, client_ca=ca)

    def interceptors(self) -> tuple[grpc.ServerInterceptor, ...]:
        """Server interceptors enforcing the token (empty without one)."""
        if not self.token:
            return ()
        from cvmigrate.common.auth import TokenAuthInterceptor
        return (TokenAuthInterceptor(self.token, control_token=self.control_token),)

    def channel(self, address: str, options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
        """A channel to ``address``: TLS (with the client certificate if any) unless --insecure."""
        opts = list(options)
        if self.insecure:
            return grpc.insecure_channel(address, options=opts)
        ca, cert, key = self._load()
        if self.server_name:
            opts.append(("grpc.ssl_target_name_override", self.server_name))
        return grpc.secure_channel(address, channel_credentials(ca, cert, key), options=opts)

    def channel_factory(self, options: Sequence[tuple[str, Any]] = ()) -> Callable[[str], grpc.Channel]:
        """For ``PushOptions.channel_factory``."""
        opts = tuple(options)
        return lambda address: self.channel(address, opts)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Call metadata carrying the (data-plane) token, for ``PushOptions.metadata``."""
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def control_metadata(self) -> tuple[tuple[str, str], ...]:
        """Call metadata for control calls (RunFixups, Finalize): the control token when there is one."""
        token = self.control_token or self.token
        return (("authorization", f"Bearer {token}"),) if token else ()


def _abs(path: str | None) -> str | None:
    return os.path.abspath(path) if path else None


def _token_from(token_file: str | None, env: Mapping[str, str], var: str = TOKEN_ENV,
                flag: str = "--token-file") -> str | None:
    if token_file:
        return check_token(load_text_secret(token_file, f"token file ({flag})"), flag)
    value = env.get(var)
    if value:
        return check_token(value, f"${var}")
    return None
