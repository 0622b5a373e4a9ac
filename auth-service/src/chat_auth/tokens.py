"""Access tokens (EdDSA JWTs) and refresh tokens (opaque, single use).

Refresh tokens are 32 random bytes, base64url; the database keeps only their
SHA-256, so a leaked table cannot be replayed. A plain hash (no salt, no
slow KDF) is enough because the input is 256 bits of randomness, and it lets
us look the token up by its hash. Every login starts a *family*; each refresh
spends one token of the family and issues its successor (rotation, see
:mod:`.store` and :mod:`.handlers` for what reuse does). The family's id is
the login session's id: every access token of the login carries it as
``sid``, which is what logout revokes (:mod:`.denylist`).
"""

from __future__ import annotations

import hashlib
import secrets
import time

import jwt

from chat_contract.claims import SIGNING_ALGORITHM

from .keys import SigningKey


class TokenIssuer:
    def __init__(self, key: SigningKey, issuer: str, audience: str, access_ttl: int) -> None:
        self.key = key
        self.issuer = issuer
        self.audience = audience
        self.access_ttl = access_ttl

    def access_token(self, user_id: str, name: str, now: int | None = None, *,
                     sid: str | None = None) -> str:
        """A signed access token; ``sid`` is the login session (its refresh-token family)."""
        iat = int(time.time()) if now is None else now
        claims: dict[str, object] = {
            "sub": user_id,
            "name": name,
            "iss": self.issuer,
            "aud": self.audience,
            "iat": iat,
            "nbf": iat,
            "exp": iat + self.access_ttl,
            "jti": secrets.token_urlsafe(16),
        }
        if sid is not None:
            claims["sid"] = sid
        return jwt.encode(claims, self.key.private, algorithm=SIGNING_ALGORITHM,
                          headers={"kid": self.key.kid})


def new_refresh_token() -> tuple[str, bytes]:
    """A fresh refresh token and the hash to store for it."""
    token = secrets.token_urlsafe(32)
    return token, refresh_token_hash(token)


def refresh_token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def new_family() -> str:
    return secrets.token_urlsafe(12)
