"""The webhook signature (README "Webhook"), without I/O.

Each attempt is signed anew with the current Unix time::

    X-Chat-Timestamp: <unix seconds>
    X-Chat-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<raw body>")>

Signing the timestamp with the body lets a receiver refuse replays: it
recomputes the HMAC over the raw bytes it received, compares in constant
time, and refuses timestamps older than a few minutes (:func:`verify`, what a
receiver does, used by the tests).
"""

from __future__ import annotations

import hashlib
import hmac

TIMESTAMP_HEADER = "X-Chat-Timestamp"
SIGNATURE_HEADER = "X-Chat-Signature"
SCHEME = "sha256="
# What a receiver should accept: a signature at most this old (or early).
DEFAULT_TOLERANCE = 300


def signature(secret: str | bytes, timestamp: int, body: bytes) -> str:
    """``sha256=<hex>`` of the signed string ``"<timestamp>.<body>"``."""
    key = secret.encode() if isinstance(secret, str) else secret
    mac = hmac.new(key, str(timestamp).encode() + b"." + body, hashlib.sha256)
    return SCHEME + mac.hexdigest()


def sign(secret: str | bytes, body: bytes, now: float) -> dict[str, str]:
    """The two headers of one attempt sent at ``now`` (Unix time)."""
    timestamp = int(now)
    return {TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: signature(secret, timestamp, body)}


def verify(secret: str | bytes, body: bytes, timestamp: str | None, sig: str | None,
           now: float, tolerance: float = DEFAULT_TOLERANCE) -> bool:
    """A receiver's check: the signature matches and the timestamp is recent."""
    if not timestamp or not sig or not timestamp.isdigit():
        return False
    if abs(now - int(timestamp)) > tolerance:
        return False
    return hmac.compare_digest(signature(secret, int(timestamp), body), sig)
