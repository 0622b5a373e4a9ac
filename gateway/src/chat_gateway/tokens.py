"""Local verification of access tokens with the auth service's public keys.

The gateway never holds a signing key (docs/protocol.md §2). It fetches the JWKS
once at start and again when a token names a ``kid`` it does not know (a key
rotation), at most once per ``refresh_interval`` so that a flood of tokens
with made-up ``kid`` values cannot turn into a flood of JWKS requests.

Only asymmetric algorithms are accepted, each pinned to the key that claims
it: ``none`` and HMAC can never verify, whatever the token's header says.

A token that verifies is still refused when its session (``sid``) or user was
revoked (``revoked``: :meth:`.revocation.Revocations.refusal`): logout,
password change, refresh-token reuse, a disabled account.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import jwt
import msgspec

from chat_contract.claims import REQUIRED_CLAIMS, SIGNING_ALGORITHM, AccessClaims
from chat_contract.errors import ChatError, ErrorCode
from chat_kit.logs import event

log = logging.getLogger("chat_gateway.tokens")

FetchJwks = Callable[[], Awaitable[list[dict[str, Any]]]]
# Why a verified token is revoked, or None (revocation.Revocations.refusal).
Revoked = Callable[[AccessClaims], str | None]

# Asymmetric only; RS256/ES256 are allowed by the protocol but must be opted into.
SUPPORTED_ALGORITHMS = frozenset({"EdDSA", "ES256", "RS256"})
# Our tokens are ~400 bytes; anything this long is garbage, refuse before parsing.
MAX_TOKEN_LENGTH = 4096


_SEGMENT = re.compile(r"[A-Za-z0-9_-]*")
_json = msgspec.json.Decoder()


# The last character of a canonical segment whose length is 2 or 3 (mod 4):
# its bits beyond the data are zero (PyJWT refuses other spellings too).
_LAST = {2: frozenset("AQgw"), 3: frozenset("AEIMQUYcgkosw048")}


def _segment(text: str) -> bytes | None:
    """A canonical, unpadded base64url segment's bytes (None: not one)."""
    rem = len(text) % 4
    if rem == 1 or not _SEGMENT.fullmatch(text) or (rem and text[-1] not in _LAST[rem]):
        return None
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _object(raw: bytes) -> dict[str, Any] | None:
    """A segment's JSON object (None: not one)."""
    try:
        value = _json.decode(raw)
    except msgspec.DecodeError:
        return None
    return value if isinstance(value, dict) else None


def _integer(value: Any) -> int | None:
    """``int(value)`` as PyJWT takes a time claim (None where it refuses it)."""
    try:
        return int(value)
    except (ValueError, TypeError, OverflowError):
        return None


def _unauthorized(reason: str) -> ChatError:
    return ChatError(ErrorCode.UNAUTHORIZED, reason)


class _UnknownKidError(Exception):
    """The token's ``kid`` is not in our key set (yet); a JWKS refresh may help."""


UNKNOWN_KID = "unknown signing key"


class TokenVerifier:
    """Verifies access tokens; ``verify`` is synchronous and never does I/O."""

    def __init__(self, issuer: str, audience: str, fetch_jwks: FetchJwks, *,
                 leeway: float = 30.0, refresh_interval: float = 10.0,
                 algorithms: Iterable[str] = (SIGNING_ALGORITHM,),
                 revoked: Revoked | None = None) -> None:
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway
        self.refresh_interval = refresh_interval
        self.algorithms = frozenset(algorithms)
        if not self.algorithms or not self.algorithms <= SUPPORTED_ALGORITHMS:
            raise ValueError(f"algorithms must be a non-empty subset of {SUPPORTED_ALGORITHMS}")
        self._fetch = fetch_jwks
        self._revoked = revoked
        self._keys: dict[str, jwt.PyJWK] = {}
        self._last_refresh = -float("inf")
        self._refreshing: asyncio.Task[bool] | None = None

    @property
    def kids(self) -> frozenset[str]:
        return frozenset(self._keys)

    async def start(self) -> None:
        """Load the keys. A failure is logged, not raised: the gateway may start
        before the auth service; the first token with an unknown kid retries."""
        await self.refresh(force=True)
        # The start-up fetch does not count against the rate limit: a rotation
        # right after start must still be picked up at once.
        self._last_refresh = -float("inf")

    async def refresh(self, *, force: bool = False) -> bool:
        """Fetch the JWKS unless one was fetched within ``refresh_interval``.

        Concurrent callers share one fetch. Returns True if keys were loaded.
        """
        task = self._refreshing
        if task is None:
            if not force and self._too_soon():
                return False
            task = self._start_refresh()
        # shield: one caller giving up must not cancel the fetch the others wait for.
        return await asyncio.shield(task)

    def verify(self, token: str) -> AccessClaims:
        """The token's claims, or :class:`ChatError` ``unauthorized`` with a short reason.

        An unknown ``kid`` is ``unauthorized`` too, and starts a background
        JWKS refresh (rate-limited); use :meth:`verify_async` to wait for it.
        """
        try:
            return self._verify(token)
        except _UnknownKidError:
            if self._refreshing is None and not self._too_soon():
                with contextlib.suppress(RuntimeError):  # no running loop: nothing to do
                    self._start_refresh()
            raise _unauthorized(UNKNOWN_KID) from None

    async def verify_async(self, token: str) -> AccessClaims:
        """Like :meth:`verify`, but on an unknown ``kid`` refresh the keys once and retry."""
        try:
            return self._verify(token)
        except _UnknownKidError:
            # Retry even if this refresh was rate-limited: a recent one by
            # another caller may have brought the key.
            await self.refresh()
        try:
            return self._verify(token)
        except _UnknownKidError:
            raise _unauthorized(UNKNOWN_KID) from None

    def _verify(self, token: str) -> AccessClaims:
        """One pass over the token (issue 13: PyJWT parsed it twice and checked
        the base64 alphabet a character at a time in Python, ~half of a
        connect's verify). The same checks as ``jwt.decode`` with our options
        (tests/unit/test_gateway_tokens.py compares the two), a little
        stricter: segments must be unpadded base64url (RFC 7515), and a
        header naming ``crit`` or ``b64`` is refused (we support neither)."""
        if len(token) > MAX_TOKEN_LENGTH:
            raise _unauthorized("malformed token")
        parts = token.split(".")
        if len(parts) != 3:
            raise _unauthorized("malformed token")
        head, body, sig = parts
        raw_header, raw_payload, signature = _segment(head), _segment(body), _segment(sig)
        if raw_header is None or raw_payload is None or signature is None:
            raise _unauthorized("malformed token")
        header = _object(raw_header)
        if (header is None or "crit" in header or "b64" in header
                or ("kid" in header and not isinstance(header["kid"], str))):
            raise _unauthorized("malformed token")
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in self.algorithms:
            raise _unauthorized("unsupported algorithm")
        if not isinstance(kid, str):
            raise _unauthorized("token has no kid")
        key = self._keys.get(kid)
        if key is None:
            raise _UnknownKidError()
        if key.algorithm_name != alg:
            raise _unauthorized("algorithm does not match the key")
        if not key.Algorithm.verify(f"{head}.{body}".encode(), key.key, signature):
            raise _unauthorized("bad signature")
        payload = _object(raw_payload)
        if payload is None:
            raise _unauthorized("invalid token")
        self._check_claims(payload)
        try:
            claims = msgspec.convert(payload, AccessClaims)
        except msgspec.ValidationError:
            raise _unauthorized("malformed claims") from None
        if not claims.sub:
            raise _unauthorized("malformed claims")
        if self._revoked is not None:
            reason = self._revoked(claims)
            if reason is not None:
                raise _unauthorized(reason)
        return claims

    def _check_claims(self, payload: dict[str, Any]) -> None:
        """``jwt.decode``'s claim checks, in its order, with our options."""
        for claim in REQUIRED_CLAIMS:
            if payload.get(claim) is None:
                raise _unauthorized(f"missing claim {claim}")
        now = time.time()
        leeway = self.leeway
        iat = _integer(payload["iat"])
        if iat is None:
            raise _unauthorized("invalid token")
        if iat > now + leeway:
            raise _unauthorized("token not yet valid")
        if "nbf" in payload:
            nbf = _integer(payload["nbf"])
            if nbf is None:
                raise _unauthorized("invalid token")
            if nbf > now + leeway:
                raise _unauthorized("token not yet valid")
        exp = _integer(payload["exp"])
        if exp is None:
            raise _unauthorized("invalid token")
        if exp <= now - leeway:
            raise _unauthorized("token expired")
        if payload["iss"] != self.issuer:
            raise _unauthorized("wrong issuer")
        aud = payload["aud"]
        if not aud:
            raise _unauthorized("missing claim aud")
        audiences = [aud] if isinstance(aud, str) else aud
        if (not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences)
                or self.audience not in audiences):
            raise _unauthorized("wrong audience")
        if not isinstance(payload["sub"], str) or not isinstance(payload["jti"], str):
            raise _unauthorized("malformed claims")

    def _too_soon(self) -> bool:
        # Without any key we are useless: retry sooner (the auth service may
        # just have come up after us).
        interval = self.refresh_interval if self._keys else min(1.0, self.refresh_interval)
        return time.monotonic() - self._last_refresh < interval

    def _start_refresh(self) -> asyncio.Task[bool]:
        """Start a fetch on the running loop (RuntimeError without one)."""
        task = asyncio.get_running_loop().create_task(self._do_refresh())
        self._refreshing = task  # also keeps the task referenced while it runs
        task.add_done_callback(self._refresh_done)
        return task

    def _refresh_done(self, task: asyncio.Task[bool]) -> None:
        if self._refreshing is task:
            self._refreshing = None

    async def _do_refresh(self) -> bool:
        self._last_refresh = time.monotonic()
        try:
            jwks = await self._fetch()
        except Exception as exc:  # any transport failure: keep the keys we have
            event(log, "jwks fetch failed", logging.WARNING, error=repr(exc))
            return False
        keys = self._parse(jwks)
        if not keys:
            event(log, "jwks has no usable key; keeping the previous set", logging.WARNING)
            return False
        if keys.keys() != self._keys.keys():
            event(log, "jwks loaded", kids=sorted(keys))
        self._keys = keys
        return True

    def _parse(self, jwks: list[dict[str, Any]]) -> dict[str, jwt.PyJWK]:
        keys: dict[str, jwt.PyJWK] = {}
        for jwk in jwks:
            kid, alg = jwk.get("kid"), jwk.get("alg")
            # Symmetric ("oct") keys and keys without kid/alg are never usable here.
            if (not isinstance(kid, str) or alg not in self.algorithms
                    or jwk.get("kty") == "oct" or jwk.get("use", "sig") != "sig"):
                continue
            try:
                keys[kid] = jwt.PyJWK(jwk, algorithm=alg)
            except (jwt.PyJWTError, ValueError, TypeError) as exc:
                event(log, "jwks key skipped", logging.WARNING, kid=kid, error=str(exc))
        return keys
