"""chat_auth.tokens: what an access token and a refresh token look like."""

from __future__ import annotations

import base64
import time

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from chat_auth.keys import SigningKey
from chat_auth.tokens import TokenIssuer, new_family, new_refresh_token, refresh_token_hash


def _issuer(ttl: int = 900) -> TokenIssuer:
    return TokenIssuer(SigningKey.of(Ed25519PrivateKey.generate()), "chat-auth", "chat", ttl)


def test_access_token_header_and_claims() -> None:
    issuer = _issuer(ttl=600)
    token = issuer.access_token("u_1", "alice", now=1_700_000_000)
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "EdDSA", "kid": issuer.key.kid, "typ": "JWT"}
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims.keys() == {"sub", "name", "iss", "aud", "iat", "nbf", "exp", "jti"}
    assert (claims["sub"], claims["name"], claims["iss"], claims["aud"]) == (
        "u_1", "alice", "chat-auth", "chat")
    assert claims["iat"] == claims["nbf"] == 1_700_000_000
    assert claims["exp"] == 1_700_000_600


def test_access_token_verifies_with_the_public_key_only() -> None:
    issuer = _issuer()
    token = issuer.access_token("u_1", "alice")
    public = issuer.key.private.public_key()
    claims = jwt.decode(token, public, algorithms=["EdDSA"], audience="chat", issuer="chat-auth")
    assert abs(claims["iat"] - time.time()) < 5


def test_jti_is_unique() -> None:
    issuer = _issuer()
    jtis = {jwt.decode(issuer.access_token("u_1", "a"), options={"verify_signature": False})["jti"]
            for _ in range(50)}
    assert len(jtis) == 50


def test_refresh_tokens_are_random_and_only_their_hash_is_kept() -> None:
    token, digest = new_refresh_token()
    assert len(base64.urlsafe_b64decode(token + "=")) == 32
    assert digest == refresh_token_hash(token) and len(digest) == 32
    assert token.encode() not in digest
    assert new_refresh_token()[0] != token
    assert new_family() != new_family()
