"""The gateway's copy of the revocation denylist (chat_gateway.revocation):
what it refuses, which sockets it closes, and the NATS roles around it."""

from __future__ import annotations

import time
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from chat_auth.keys import SigningKey
from chat_auth.tokens import TokenIssuer
from chat_contract.claims import AccessClaims
from chat_contract.errors import ChatError, ErrorCode
from chat_devstack.nats_auth import REVOKED_BUCKET, ROLES
from chat_gateway.revocation import REVOKED, Denied, Revocations
from chat_gateway.tokens import TokenVerifier

ISS, AUD = "chat-auth", "chat"


def claims(sub: str = "u_1", sid: str | None = "s1", iat: int = 1000) -> AccessClaims:
    return AccessClaims(sub=sub, name="alice", iss=ISS, aud=AUD, iat=iat, exp=iat + 900,
                        jti="j", sid=sid)


def revocations(*entries: tuple[str, bytes | None, bool]) -> Revocations:
    r = Revocations(js=None)  # type: ignore[arg-type]  # no watch in these tests
    for key, value, deleted in entries:
        r.denied.apply(key, value, deleted)
    return r


def test_a_revoked_session_is_refused_and_only_it() -> None:
    r = revocations(("sid.s1", b"1000.5", False))
    assert r.refusal(claims(sid="s1")) == REVOKED
    assert r.refusal(claims(sid="s2")) is None
    assert r.socket_revoked("s1", "u_1") and not r.socket_revoked("s2", "u_1")


def test_a_user_entry_voids_tokens_issued_before_it() -> None:
    r = revocations(("user.u_1", b"1000", False))
    assert r.refusal(claims(iat=999)) == REVOKED
    assert r.refusal(claims(iat=999, sid=None)) == REVOKED
    assert r.refusal(claims(iat=1000)) is None  # issued at or after: a new login
    assert r.refusal(claims(sub="u_2", iat=1)) is None
    # Sockets: sessions are listed one by one; the user entry is for tokens without one.
    assert r.socket_revoked(None, "u_1") and not r.socket_revoked("s9", "u_1")


def test_entries_that_age_out_are_forgotten_and_junk_is_ignored() -> None:
    d = Denied()
    assert d.apply("sid.s1", b"1", False) == ("sid", "s1")
    assert d.apply("user.u_1", b"5", False) == ("user", "u_1")
    assert d.apply("sid.s1", None, True) is None and "s1" not in d.sids
    assert d.apply("user.u_1", None, True) is None and not d.users
    assert d.apply("user.u_2", b"not a number", False) is None and not d.users
    assert d.apply("other.x", b"1", False) is None and d.apply("sid", b"1", False) is None


async def test_the_verifier_refuses_a_revoked_session() -> None:
    key = SigningKey.of(Ed25519PrivateKey.generate())
    r = revocations()
    jwks: list[dict[str, Any]] = key.jwks()

    async def fetch() -> list[dict[str, Any]]:
        return jwks

    verifier = TokenVerifier(ISS, AUD, fetch, revoked=r.refusal)
    await verifier.start()
    issuer = TokenIssuer(key, ISS, AUD, 900)
    token = issuer.access_token("u_1", "alice", sid="s1")
    assert verifier.verify(token).sid == "s1"
    r.denied.apply("sid.s1", str(time.time()).encode(), False)
    with pytest.raises(ChatError) as info:
        verifier.verify(token)
    assert (info.value.code, info.value.message) == (ErrorCode.UNAUTHORIZED, REVOKED)
    assert verifier.verify(issuer.access_token("u_1", "alice", sid="s2")).sid == "s2"


def test_only_admin_and_the_server_api_may_disable_and_only_auth_writes_the_denylist() -> None:
    gateway, auth = ROLES["gateway"], ROLES["auth"]
    assert "svc.auth.password" in gateway.publish
    # The gateway asks it for the server API only (a key with the users scope).
    assert "svc.auth.disable" in gateway.publish
    assert not any(s.startswith("svc.auth.disable") for r in ROLES.values()
                   if r.name not in ("admin", "gateway") for s in r.publish)
    # The integrator's backend reaches it through the gateway, never directly.
    assert ROLES["server"].publish == ("svc.server.*",)
    assert f"$KV.{REVOKED_BUCKET}.>" in auth.publish
    assert not any(s.startswith("$KV.") for s in gateway.publish if REVOKED_BUCKET in s)
    assert f"$JS.API.CONSUMER.CREATE.KV_{REVOKED_BUCKET}.>" in gateway.publish
