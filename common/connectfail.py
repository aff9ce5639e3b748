"""Why a gRPC connection to a peer failed, in one sentence with the fix.

Why this exists: gRPC reports every failed connection as UNAVAILABLE with a
C-core text ("failed to connect to all addresses; last error: UNKNOWN:
ipv4:...: Tls handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: ...").
Reported as "cannot reach the receiver", a refused certificate sends people
chasing firewalls.  :func:`connect_failure` reads that text once, for the push
(file and block) and the controller's channels alike, and names the cause:
DNS, refused, unreachable, timed out, or TLS -- and for TLS, which side
refused and whether the CA, the host name or the client certificate is the
problem.  TLS failures are :class:`TlsError` (exit 5, never retried: waiting
does not fix a certificate).
"""
from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass

from cvmigrate.common.errors import AuthError, CvmError, TransportError

#: How this side secures its channel; decides what a closed-at-once connection means.
PLAINTEXT, TLS, MUTUAL_TLS = "plaintext", "tls", "mtls"


class TlsError(AuthError):
    """The TLS handshake failed: a certificate, a CA or a host name does not match."""


def _has(text: str, *needles: str) -> bool:
    low = text.lower()
    return any(n.lower() in low for n in needles)


#: What a probe found out about a peer that closed a connection at once.
PROBE_OK, PROBE_CLIENT_CERT_REFUSED, PROBE_NOT_TLS, PROBE_SPEAKS_TLS, PROBE_CLOSED = (
    "ok", "client-cert-refused", "not-tls", "speaks-tls", "closed")
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


@dataclass(frozen=True)
class TlsProbe:
    """A second look, with Python's ssl, at a peer gRPC only reported as "Socket closed".

    Why: a receiver refusing our client certificate, a TLS receiver hit by a
    plaintext client and a relay that drops the connection all read
    "Socket closed" in gRPC; one handshake of our own tells them apart.  The
    server's certificate is not verified here (that failure has its own text).
    """

    cert: str | None = None
    key: str | None = None
    #: the name this side verifies the peer's certificate against (--tls-server-name), for messages
    server_name: str | None = None
    timeout: float = 5.0

    def __call__(self, address: str, tls: bool) -> str:
        try:
            import ssl
        except ImportError:
            # The one-file executable carries no OpenSSL (gRPC brings its own TLS): no second look.
            return PROBE_CLOSED
        host, _, port = address.rpartition(":")
        try:
            sock = socket.create_connection((host.strip("[]"), int(port)), timeout=self.timeout)
        except (OSError, ValueError):
            return PROBE_CLOSED
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(["h2"])
        if tls and self.cert and self.key:
            try:
                ctx.load_cert_chain(self.cert, self.key)
            except (OSError, ssl.SSLError):
                sock.close()
                return PROBE_CLOSED
        try:
            with ctx.wrap_socket(sock, server_hostname=None) as conn:
                if not tls:
                    return PROBE_SPEAKS_TLS
                conn.sendall(_H2_PREFACE)
                try:
                    data = conn.recv(9)
                except ssl.SSLError:
                    return PROBE_CLIENT_CERT_REFUSED      # an alert after the handshake: our certificate
                except (ConnectionError, OSError):
                    return PROBE_CLIENT_CERT_REFUSED
                return PROBE_OK if data else PROBE_CLIENT_CERT_REFUSED
        except ssl.SSLError as exc:
            return PROBE_NOT_TLS if "WRONG_VERSION" in str(exc) or "RECORD" in str(exc).upper() else PROBE_CLOSED
        except OSError:
            return PROBE_NOT_TLS if not tls else PROBE_CLOSED


def connect_failure(code: str, details: str, *, peer: str, address: str, transport: str,
                    start_hint: str = "", probe: Callable[[str, bool], str] | None = None) -> CvmError | None:
    """The error for a connection to ``peer`` at ``address`` that never carried a message; None if not one.

    ``code`` is the gRPC status code name; ``transport`` is PLAINTEXT, TLS or MUTUAL_TLS (this side's
    setting); ``start_hint`` says how to start the peer (e.g. "`cvmigrate receive --listen ...`");
    ``probe`` (a :class:`TlsProbe`) tells a refused certificate from a dropped connection.
    """
    if code not in ("UNAVAILABLE", "UNKNOWN", "DEADLINE_EXCEEDED"):
        return None
    where = f"the {peer} at {address}"
    host = address.rsplit(":", 1)[0].strip("[]")
    port = address.rsplit(":", 1)[-1]
    if _has(details, "dns resolution failed", "name or service not known", "could not resolve",
            "domain name not found", "no address associated", "temporary failure in name resolution"):
        return TransportError(f"cannot reach {where}: DNS lookup of {host!r} failed; check the host name "
                              "(or use the IP address) and /etc/resolv.conf")
    if _has(details, "hostname verification", "host name verification", "hostname mismatch",
            "does not match", "subject alternative name"):
        checked = getattr(probe, "server_name", None) or host
        origin = "--tls-server-name" if getattr(probe, "server_name", None) else "the address dialled"
        return TlsError(f"TLS: this side refused {where}: its certificate does not list {checked!r} ({origin}; "
                        "host name mismatch); connect by a name or IP the certificate lists, or pass "
                        "--tls-server-name cvmigrate-receiver (every `cvmigrate pki init` certificate lists it)")
    if _has(details, "certificate_verify_failed", "unable to get local issuer", "self signed certificate",
            "certificate verify failed", "unknown ca", "certificate has expired"):
        expired = _has(details, "expired")
        what = "has expired" if expired else "is not signed by the CA this side trusts (--tls-ca)"
        return TlsError(f"TLS: this side refused {where}: its certificate {what}; "
                        + ("mint new certificates (`cvmigrate pki init`)" if expired else
                           "pass the ca.pem from the same directory as the server.pem the peer uses"))
    if _has(details, "wrong_version_number", "wrong version number", "http_request", "packet_length_too_long",
            "record_layer_failure", "first record does not look like a tls handshake"):
        return TlsError(f"TLS: {where} does not speak TLS (it was started with --insecure?); start it with "
                        "--tls-cert/--tls-key, or connect with --insecure on a trusted network")
    closed = _has(details, "socket closed", "connection reset", "end of stream", "broken pipe", "unexpected eof",
                  "eof occurred")
    if not closed and _has(details, "handshake failed", "ssl_error", "tsi_protocol_failure"):
        return TlsError(f"TLS handshake with {where} failed: {_short(details)}; check that both sides use "
                        "certificates from the same `cvmigrate pki init` directory")
    if _has(details, "connection refused"):
        return TransportError(f"cannot reach {where}: connection refused (nothing listens on port {port}); "
                              f"start {start_hint or 'it'} there, or fix the address")
    if _has(details, "network is unreachable", "no route to host", "host is unreachable"):
        return TransportError(f"cannot reach {where}: no route to {host}; check the address and the network "
                              "path (VPN, routes)")
    if code == "DEADLINE_EXCEEDED" or _has(details, "timed out", "timeout", "deadline"):
        return TransportError(f"cannot reach {where}: no answer (timed out); a firewall or security group "
                              f"probably drops traffic to port {port}")
    if closed:
        found = probe(address, transport != PLAINTEXT) if probe is not None else None
        if transport == PLAINTEXT and found == PROBE_SPEAKS_TLS:
            return TlsError(f"{where} closed the connection at once: it requires TLS and this side sends "
                            "plaintext (--insecure); pass --tls-ca (and --tls-cert/--tls-key) instead")
        if transport == MUTUAL_TLS and found == PROBE_CLIENT_CERT_REFUSED:
            return TlsError(f"TLS: {where} refused this side's client certificate (not signed by the CA it "
                            "trusts with its --tls-ca); use agent.pem/agent.key from the same `cvmigrate pki init` "
                            "directory as its server.pem")
        if transport == TLS and found == PROBE_CLIENT_CERT_REFUSED:
            return TlsError(f"TLS: {where} closed the handshake: it requires a client certificate; pass "
                            "--tls-cert/--tls-key (agent.pem/agent.key from `cvmigrate pki init`)")
        return TransportError(f"{where} closed the connection before answering ({_short(details)}); check that "
                              f"{start_hint or 'it'} runs there and that no proxy or firewall cuts the connection")
    return None


def _short(details: str) -> str:
    text = details.split("last error:", 1)[-1].strip()
    return text[:160]
