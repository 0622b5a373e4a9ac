"""chat_notify.signing: the webhook's HMAC-SHA256 signature over "<timestamp>.<body>"."""

from __future__ import annotations

import hashlib
import hmac

from chat_notify.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign, signature, verify

SECRET = "s3cret-key"
BODY = b'{"v":1,"type":"dm","text":"h\xc3\xa9"}'


def test_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    expected = hmac.new(SECRET.encode(), b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert signature(SECRET, 1700000000, BODY) == "sha256=" + expected
    assert signature(SECRET.encode(), 1700000000, BODY) == "sha256=" + expected


def test_sign_gives_both_headers_in_whole_seconds() -> None:
    headers = sign(SECRET, BODY, 1700000000.9)
    assert headers[TIMESTAMP_HEADER] == "1700000000"
    assert headers[SIGNATURE_HEADER] == signature(SECRET, 1700000000, BODY)


def test_verify_accepts_the_signed_and_refuses_tampering() -> None:
    h = sign(SECRET, BODY, 1000.0)
    ts, sig = h[TIMESTAMP_HEADER], h[SIGNATURE_HEADER]
    assert verify(SECRET, BODY, ts, sig, now=1000.0)
    assert verify(SECRET, BODY, ts, sig, now=1299.0)  # within the tolerance
    assert not verify(SECRET, BODY, ts, sig, now=1301.0)  # a replay, too late
    assert not verify(SECRET, BODY + b" ", ts, sig, now=1000.0)  # another body
    assert not verify("other", BODY, ts, sig, now=1000.0)  # another key
    assert not verify(SECRET, BODY, "1001", sig, now=1000.0)  # the timestamp is signed too
    assert not verify(SECRET, BODY, None, sig, now=1000.0)
    assert not verify(SECRET, BODY, ts, None, now=1000.0)
    assert not verify(SECRET, BODY, "-5", sig, now=1000.0)
    assert not verify(SECRET, BODY, ts, sig.replace("sha256=", "sha1="), now=1000.0)
