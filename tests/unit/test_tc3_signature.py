"""TC3-HMAC-SHA256 signer/verifier: the documentation's worked example and the SDK's own signer agree with ours."""
from __future__ import annotations

import hashlib
import json
from types import SimpleNamespace

import pytest

from cvmigrate.controller.emulator import signature

# Tencent Cloud "Signature v3" worked example (DescribeInstances, POST, JSON).
DOC_ID = "AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE"
DOC_KEY = "Gu5t9xGARNpq86cd98joQYCN3EXAMPLE"
DOC_TS = 1551113065
DOC_CT = "application/json; charset=utf-8"
DOC_HOST = "cvm.tencentcloudapi.com"
DOC_PAYLOAD = b'{"Limit": 1, "Filters": [{"Values": ["\\u672a\\u547d\\u540d"], "Name": "instance-name"}]}'
DOC_SIGNATURE = "72e494ea809ad7a8c8f7a4507b9bddcbaa8e581f516e8da2f66e2c5a96525168"


def test_documented_example_step_by_step() -> None:
    assert hashlib.sha256(DOC_PAYLOAD).hexdigest() == "35e9c5b0e3ae67532d3c9f17ead6c90222632e5b1ff7f6e89887f1398934f064"
    date = signature.utc_date(DOC_TS)
    assert date == "2019-02-25"  # 00:44 on the 26th in UTC+8 is still the 25th in UTC
    canonical = signature.canonical_request("POST", "/", "", {"content-type": DOC_CT, "host": DOC_HOST},
                                            ("content-type", "host"), DOC_PAYLOAD)
    to_sign = signature.string_to_sign(DOC_TS, date, "cvm", canonical)
    assert to_sign.splitlines()[-1] == "5ffe6a04c0664d6b969fab9a13bdab201d63ee709638e2749d62a09ca18d7031"
    assert signature.signature(DOC_KEY, date, "cvm", to_sign) == DOC_SIGNATURE


def test_sign_request_builds_the_documented_authorization() -> None:
    headers = signature.sign_request(secret_id=DOC_ID, secret_key=DOC_KEY, service="cvm", host=DOC_HOST,
                                     action="DescribeInstances", version="2017-03-12", timestamp=DOC_TS,
                                     payload=DOC_PAYLOAD, region="ap-guangzhou", content_type=DOC_CT)
    assert headers["Authorization"] == (
        f"TC3-HMAC-SHA256 Credential={DOC_ID}/2019-02-25/cvm/tc3_request, "
        f"SignedHeaders=content-type;host, Signature={DOC_SIGNATURE}")
    assert headers["X-TC-Timestamp"] == str(DOC_TS)


def _verify(headers: dict[str, str], payload: bytes, key: str = DOC_KEY) -> bool:
    auth = signature.parse_authorization(headers["Authorization"])
    assert auth is not None
    lower = {k.lower(): v for k, v in headers.items()}
    return signature.verify(auth, secret_key=key, method="POST", uri="/", query="", headers=lower,
                            payload=payload, timestamp=int(headers["X-TC-Timestamp"]))


@pytest.mark.parametrize("mutate, ok", [
    (lambda h, p: (h, p), True),
    (lambda h, p: (h, p + b" "), False),                                   # body changed
    (lambda h, p: ({**h, "Host": "cvm.evil.example"}, p), False),          # host changed
    (lambda h, p: ({**h, "Content-Type": "application/json"}, p), False),  # content type changed
    (lambda h, p: ({**h, "X-TC-Timestamp": str(DOC_TS + 1)}, p), False),   # timestamp changed
])
def test_verify_detects_tampering(mutate, ok) -> None:
    headers = signature.sign_request(secret_id=DOC_ID, secret_key=DOC_KEY, service="cvm", host=DOC_HOST,
                                     action="DescribeInstances", version="2017-03-12", timestamp=DOC_TS,
                                     payload=DOC_PAYLOAD, content_type=DOC_CT)
    h, p = mutate(headers, DOC_PAYLOAD)
    assert _verify(h, p) is ok


def test_verify_refuses_a_wrong_key() -> None:
    headers = signature.sign_request(secret_id=DOC_ID, secret_key=DOC_KEY, service="cvm", host=DOC_HOST,
                                     action="DescribeInstances", version="2017-03-12", timestamp=DOC_TS,
                                     payload=DOC_PAYLOAD)
    assert _verify(headers, DOC_PAYLOAD)
    assert not _verify(headers, DOC_PAYLOAD, key=DOC_KEY + "x")


@pytest.mark.parametrize("value", [
    "",
    "Bearer abc",
    "TC3-HMAC-SHA256 Credential=AKID/2019-02-25/cvm/tc3_request, SignedHeaders=content-type;host",
    "TC3-HMAC-SHA256 Credential=AKID/2019-02-25/cvm/other, SignedHeaders=content-type;host, Signature=" + "0" * 64,
    "TC3-HMAC-SHA256 Credential=AKID/2019-2-25/cvm/tc3_request, SignedHeaders=content-type;host, Signature=" + "0" * 64,
])
def test_parse_authorization_rejects_malformed(value: str) -> None:
    assert signature.parse_authorization(value) is None


def test_parse_authorization_fields() -> None:
    auth = signature.parse_authorization(
        f"TC3-HMAC-SHA256 Credential={DOC_ID}/2019-02-25/msp/tc3_request, SignedHeaders=content-type;host, "
        f"Signature={DOC_SIGNATURE}")
    assert auth == signature.Authorization(DOC_ID, "2019-02-25", "msp", ("content-type", "host"), DOC_SIGNATURE)


def test_matches_the_sdk_signer(monkeypatch: pytest.MonkeyPatch) -> None:
    """The installed SDK signs a request; our signer produces the same Authorization for it."""
    from tencentcloud.common import abstract_client
    from tencentcloud.common.credential import Credential
    from tencentcloud.common.http.request import RequestInternal
    from tencentcloud.common.profile.client_profile import ClientProfile
    from tencentcloud.common.profile.http_profile import HttpProfile
    from tencentcloud.cvm.v20170312 import cvm_client

    ts = DOC_TS + 86400 * 1000 + 12345
    # Only the SDK module's view of the clock: nothing else in the process is affected.
    monkeypatch.setattr(abstract_client, "time", SimpleNamespace(time=lambda: ts))
    client = cvm_client.CvmClient(Credential(DOC_ID, DOC_KEY), "ap-shanghai",
                                  ClientProfile(httpProfile=HttpProfile(protocol="http", endpoint="127.0.0.1:8080")))
    params = {"InstanceIds": ["ins-abcdefgh"], "Password": "Pa55word!"}
    req = RequestInternal("127.0.0.1:8080", "POST", "/")
    client._build_req_with_tc3_signature("EnterRescueMode", params, req)
    ours = signature.sign_request(secret_id=DOC_ID, secret_key=DOC_KEY, service="cvm", host="127.0.0.1:8080",
                                  action="EnterRescueMode", version="2017-03-12", timestamp=ts,
                                  payload=json.dumps(params).encode(), region="ap-shanghai")
    assert req.header["Authorization"] == ours["Authorization"]
    assert req.header["X-TC-Timestamp"] == ours["X-TC-Timestamp"]
    assert _verify({**req.header}, req.data.encode(), key=DOC_KEY)
