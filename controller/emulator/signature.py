"""TC3-HMAC-SHA256: the request signature of Tencent Cloud API 3.0, both sides.

Why here and pure: the emulator must refuse exactly what Tencent Cloud refuses
(a wrong key, a foreign SecretId, a clock more than five minutes off), so it
verifies signatures byte for byte as the service does.  The same functions sign
requests for tests that need a request the SDK would never send (a skewed
timestamp).  Nothing here does I/O or logging, and no function ever returns or
formats a secret key.

The algorithm (Tencent Cloud "Signature v3"):

    CanonicalRequest = Method \\n URI \\n Query \\n "content-type:<ct>\\nhost:<host>\\n" \\n
                       "content-type;host" \\n hex(sha256(payload))
    StringToSign     = "TC3-HMAC-SHA256" \\n Timestamp \\n Date/service/tc3_request \\n
                       hex(sha256(CanonicalRequest))
    kDate = HMAC("TC3" + SecretKey, Date); kService = HMAC(kDate, service);
    kSigning = HMAC(kService, "tc3_request"); Signature = hex(HMAC(kSigning, StringToSign))

Date is the UTC date of the timestamp.
"""
from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import UTC, datetime

ALGORITHM = "TC3-HMAC-SHA256"
#: Tencent Cloud refuses a request whose timestamp is further than this from its clock.
MAX_SKEW_SECONDS = 300

_AUTH_RE = re.compile(
    r"^TC3-HMAC-SHA256\s+Credential=(?P<secret_id>[^/,\s]+)/(?P<date>\d{4}-\d{2}-\d{2})/(?P<service>[a-z0-9]+)/tc3_request,\s*"
    r"SignedHeaders=(?P<signed>[a-z0-9;\-]+),\s*Signature=(?P<signature>[0-9a-f]{64})\s*$"
)


@dataclass(frozen=True)
class Authorization:
    """The parsed ``Authorization`` header of a TC3 request."""

    secret_id: str
    date: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str


def utc_date(timestamp: int) -> str:
    """The credential-scope date (UTC, ``YYYY-MM-DD``) of a UNIX timestamp."""
    return datetime.fromtimestamp(int(timestamp), tz=UTC).strftime("%Y-%m-%d")


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode("utf-8"), hashlib.sha256).digest()


def canonical_request(
    method: str,
    uri: str,
    query: str,
    headers: dict[str, str],
    signed_headers: tuple[str, ...],
    payload: bytes,
) -> str:
    """Build the CanonicalRequest; ``headers`` are keyed by lower-case name."""
    # The documentation: names and values lower-cased and stripped, in the
    # order of SignedHeaders (which the signer sorts).
    canonical_headers = "".join(f"{name}:{headers.get(name, '').strip().lower()}\n" for name in signed_headers)
    return "\n".join([
        method.upper(),
        uri or "/",
        query,
        canonical_headers,
        ";".join(signed_headers),
        _sha256_hex(payload),
    ])


def string_to_sign(timestamp: int, date: str, service: str, canonical: str) -> str:
    """Build the StringToSign from the CanonicalRequest."""
    scope = f"{date}/{service}/tc3_request"
    return "\n".join([ALGORITHM, str(int(timestamp)), scope, _sha256_hex(canonical.encode("utf-8"))])


def signature(secret_key: str, date: str, service: str, to_sign: str) -> str:
    """The hex HMAC-SHA256 signature of ``to_sign`` with the derived signing key."""
    k_date = _hmac(("TC3" + secret_key).encode("utf-8"), date)
    k_service = _hmac(k_date, service)
    k_signing = _hmac(k_service, "tc3_request")
    return hmac.new(k_signing, to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


def authorization_header(secret_id: str, date: str, service: str, signed_headers: tuple[str, ...], sig: str) -> str:
    return (f"{ALGORITHM} Credential={secret_id}/{date}/{service}/tc3_request, "
            f"SignedHeaders={';'.join(signed_headers)}, Signature={sig}")


def parse_authorization(value: str) -> Authorization | None:
    """Parse an ``Authorization`` header; None if it is not a TC3 header."""
    m = _AUTH_RE.match(value or "")
    if not m:
        return None
    return Authorization(
        secret_id=m["secret_id"],
        date=m["date"],
        service=m["service"],
        signed_headers=tuple(m["signed"].split(";")),
        signature=m["signature"],
    )


def sign_request(
    *,
    secret_id: str,
    secret_key: str,
    service: str,
    host: str,
    action: str,
    version: str,
    timestamp: int,
    payload: bytes,
    region: str | None = None,
    content_type: str = "application/json",
    method: str = "POST",
    query: str = "",
) -> dict[str, str]:
    """Return the HTTP headers of a TC3-signed request (as the SDK builds them)."""
    date = utc_date(timestamp)
    signed = ("content-type", "host")
    canonical = canonical_request(method, "/", query, {"content-type": content_type, "host": host}, signed, payload)
    sig = signature(secret_key, date, service, string_to_sign(timestamp, date, service, canonical))
    headers = {
        "Authorization": authorization_header(secret_id, date, service, signed, sig),
        "Content-Type": content_type,
        "Host": host,
        "X-TC-Action": action,
        "X-TC-Version": version,
        "X-TC-Timestamp": str(int(timestamp)),
    }
    if region:
        headers["X-TC-Region"] = region
    return headers


def verify(
    auth: Authorization,
    *,
    secret_key: str,
    method: str,
    uri: str,
    query: str,
    headers: dict[str, str],
    payload: bytes,
    timestamp: int,
) -> bool:
    """Recompute the signature of a received request and compare in constant time."""
    if "content-type" not in auth.signed_headers or "host" not in auth.signed_headers:
        return False
    canonical = canonical_request(method, uri, query, headers, auth.signed_headers, payload)
    to_sign = string_to_sign(timestamp, auth.date, auth.service, canonical)
    expected = signature(secret_key, auth.date, auth.service, to_sign)
    return hmac.compare_digest(expected, auth.signature)
