"""chat_gateway.tokens.TokenVerifier against tokens issued by chat_auth (and forged ones)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from chat_auth.keys import SigningKey
from chat_auth.tokens import TokenIssuer
from chat_contract.claims import AccessClaims
from chat_contract.errors import ChatError, ErrorCode
from chat_gateway.tokens import TokenVerifier

ISS, AUD = "chat-auth", "chat"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(obj: dict[str, Any]) -> str:
    return b64(json.dumps(obj, separators=(",", ":")).encode())


class Jwks:
    """A fake auth service: serves the public keys of ``keys``, counts fetches."""

    def __init__(self, *keys: SigningKey) -> None:
        self.keys = list(keys)
        self.fetches = 0
        self.fail = False

    async def fetch(self) -> list[dict[str, Any]]:
        self.fetches += 1
        await asyncio.sleep(0)
        if self.fail:
            raise ChatError(ErrorCode.UNAVAILABLE, "no service answers svc.auth.jwks")
        return [k.public_jwk() for k in self.keys]


def new_key() -> SigningKey:
    return SigningKey.of(Ed25519PrivateKey.generate())


def claims_for(key: SigningKey, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {"sub": "u_1", "name": "alice", "iss": ISS, "aud": AUD,
                              "iat": now, "nbf": now, "exp": now + 900, "jti": "j1"}
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def sign(key: SigningKey, claims: dict[str, Any], kid: str | None = None) -> str:
    return jwt.encode(claims, key.private, algorithm="EdDSA", headers={"kid": kid or key.kid})


@pytest.fixture
def key() -> SigningKey:
    return new_key()


@pytest.fixture
async def verifier(key: SigningKey) -> TokenVerifier:
    v = TokenVerifier(ISS, AUD, Jwks(key).fetch)
    await v.start()
    return v


def rejected(v: TokenVerifier, token: str, reason: str) -> None:
    with pytest.raises(ChatError) as info:
        v.verify(token)
    assert info.value.code is ErrorCode.UNAUTHORIZED
    assert info.value.message == reason


async def test_accepts_a_token_issued_by_chat_auth(key: SigningKey,
                                                   verifier: TokenVerifier) -> None:
    token = TokenIssuer(key, ISS, AUD, 900).access_token("u_42", "bob")
    claims = verifier.verify(token)
    assert isinstance(claims, AccessClaims)
    assert (claims.sub, claims.name, claims.iss, claims.aud) == ("u_42", "bob", ISS, AUD)
    assert claims.exp - claims.iat == 900
    assert await verifier.verify_async(token) == claims
    assert verifier.kids == {key.kid}


async def test_expired(key: SigningKey, verifier: TokenVerifier) -> None:
    now = int(time.time())
    rejected(verifier, sign(key, claims_for(key, iat=now - 1000, nbf=now - 1000, exp=now - 60)),
             "token expired")
    # Within the 30 s leeway a just-expired token still passes (clock skew).
    verifier.verify(sign(key, claims_for(key, iat=now - 1000, nbf=now - 1000, exp=now - 10)))


async def test_not_yet_valid(key: SigningKey, verifier: TokenVerifier) -> None:
    now = int(time.time())
    rejected(verifier, sign(key, claims_for(key, nbf=now + 120)), "token not yet valid")
    rejected(verifier, sign(key, claims_for(key, iat=now + 120, nbf=None)),
             "token not yet valid")
    verifier.verify(sign(key, claims_for(key, iat=now + 10, nbf=now + 10)))


async def test_tampered_payload(key: SigningKey, verifier: TokenVerifier) -> None:
    header, _, signature = sign(key, claims_for(key)).split(".")
    forged = segment(claims_for(key, sub="u_admin"))
    rejected(verifier, f"{header}.{forged}.{signature}", "bad signature")


async def test_alg_none(key: SigningKey, verifier: TokenVerifier) -> None:
    body = segment(claims_for(key))
    for alg in ("none", "None", "NONE"):
        rejected(verifier, f"{segment({'alg': alg, 'kid': key.kid})}.{body}.",
                 "unsupported algorithm")
    rejected(verifier, f"{segment({'alg': 'none'})}.{body}.", "unsupported algorithm")


async def test_hs256_signed_with_the_public_key(key: SigningKey, verifier: TokenVerifier) -> None:
    public = key.private.public_key()
    secrets = [
        public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw),
        public.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo),
        json.dumps(key.public_jwk()).encode(),
    ]
    for secret in secrets:
        signing_input = f"{segment({'alg': 'HS256', 'kid': key.kid, 'typ': 'JWT'})}." \
                        f"{segment(claims_for(key))}"
        mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        rejected(verifier, f"{signing_input}.{b64(mac)}", "unsupported algorithm")


async def test_hmac_can_never_be_enabled(key: SigningKey) -> None:
    with pytest.raises(ValueError):
        TokenVerifier(ISS, AUD, Jwks(key).fetch, algorithms=["EdDSA", "HS256"])
    with pytest.raises(ValueError):
        TokenVerifier(ISS, AUD, Jwks(key).fetch, algorithms=[])


async def test_signed_by_another_key_under_our_kid(key: SigningKey,
                                                   verifier: TokenVerifier) -> None:
    other = new_key()
    rejected(verifier, sign(other, claims_for(other), kid=key.kid), "bad signature")


async def test_wrong_issuer_and_audience(key: SigningKey, verifier: TokenVerifier) -> None:
    rejected(verifier, sign(key, claims_for(key, iss="evil")), "wrong issuer")
    rejected(verifier, sign(key, claims_for(key, aud="other")), "wrong audience")
    rejected(verifier, sign(key, claims_for(key, aud=["other"])), "wrong audience")


@pytest.mark.parametrize("claim", ["sub", "name", "iss", "aud", "iat", "exp", "jti"])
async def test_missing_claims(key: SigningKey, verifier: TokenVerifier, claim: str) -> None:
    rejected(verifier, sign(key, claims_for(key, **{claim: None})), f"missing claim {claim}")


async def test_malformed(key: SigningKey, verifier: TokenVerifier) -> None:
    rejected(verifier, "", "malformed token")
    rejected(verifier, "not.a.jwt", "malformed token")
    rejected(verifier, "x" * 5000, "malformed token")
    rejected(verifier, sign(key, claims_for(key, sub=123)), "malformed claims")
    rejected(verifier, sign(key, claims_for(key, sub="")), "malformed claims")
    rejected(verifier, sign(key, claims_for(key, name=["a"])), "malformed claims")
    no_kid = jwt.encode(claims_for(key), key.private, algorithm="EdDSA")
    rejected(verifier, no_kid, "token has no kid")


async def test_unknown_kid_refreshes_once_then_fails(key: SigningKey) -> None:
    jwks = Jwks(key)
    verifier = TokenVerifier(ISS, AUD, jwks.fetch, refresh_interval=60)
    await verifier.start()
    stranger = new_key()
    token = sign(stranger, claims_for(stranger))
    with pytest.raises(ChatError, match="unknown signing key") as info:
        await verifier.verify_async(token)
    assert info.value.code is ErrorCode.UNAUTHORIZED
    assert jwks.fetches == 2  # start + one refresh
    # Rate-limited: more unknown kids within the interval fetch nothing.
    for _ in range(5):
        with pytest.raises(ChatError, match="unknown signing key"):
            await verifier.verify_async(token)
        rejected(verifier, token, "unknown signing key")
    await asyncio.sleep(0)
    assert jwks.fetches == 2


async def test_rotation_is_picked_up_on_unknown_kid(key: SigningKey) -> None:
    jwks = Jwks(key)
    verifier = TokenVerifier(ISS, AUD, jwks.fetch, refresh_interval=0)
    await verifier.start()
    rotated = new_key()
    jwks.keys = [rotated, key]
    claims = await verifier.verify_async(sign(rotated, claims_for(rotated, sub="u_9")))
    assert claims.sub == "u_9"
    assert verifier.kids == {key.kid, rotated.kid}
    # A key dropped from the JWKS is forgotten on the next refresh.
    jwks.keys = [rotated]
    newest = new_key()
    with pytest.raises(ChatError, match="unknown signing key"):
        await verifier.verify_async(sign(newest, claims_for(newest)))
    assert verifier.kids == {rotated.kid}
    rejected(verifier, sign(key, claims_for(key)), "unknown signing key")


async def test_sync_verify_refreshes_in_the_background(key: SigningKey) -> None:
    jwks = Jwks(key)
    verifier = TokenVerifier(ISS, AUD, jwks.fetch, refresh_interval=0)
    await verifier.start()
    rotated = new_key()
    jwks.keys.append(rotated)
    token = sign(rotated, claims_for(rotated))
    rejected(verifier, token, "unknown signing key")
    for _ in range(10):
        await asyncio.sleep(0)
    assert verifier.verify(token).sub == "u_1"


async def test_concurrent_unknown_kids_share_one_fetch(key: SigningKey) -> None:
    jwks = Jwks(key)
    verifier = TokenVerifier(ISS, AUD, jwks.fetch, refresh_interval=0)
    await verifier.start()
    rotated = new_key()
    jwks.keys.append(rotated)
    token = sign(rotated, claims_for(rotated))
    results = await asyncio.gather(*(verifier.verify_async(token) for _ in range(20)))
    assert {c.sub for c in results} == {"u_1"}
    assert jwks.fetches == 2


async def test_start_survives_an_unavailable_auth_service(key: SigningKey) -> None:
    jwks = Jwks(key)
    jwks.fail = True
    verifier = TokenVerifier(ISS, AUD, jwks.fetch, refresh_interval=0.05)
    await verifier.start()
    assert verifier.kids == frozenset()
    token = sign(key, claims_for(key))
    with pytest.raises(ChatError, match="unknown signing key"):
        await verifier.verify_async(token)
    jwks.fail = False
    # Waiting out the refresh rate limit is what is under test: the next
    # unknown kid after the interval fetches again.
    await asyncio.sleep(verifier.refresh_interval + 0.01)
    assert (await verifier.verify_async(token)).sub == "u_1"


async def test_jwks_keys_that_are_never_used(key: SigningKey) -> None:
    async def fetch() -> list[dict[str, Any]]:
        return [
            {"kty": "oct", "k": b64(b"s" * 32), "alg": "HS256", "kid": "hmac"},
            {**key.public_jwk(), "kid": "enc", "use": "enc"},
            {**key.public_jwk(), "kid": "rsa-claimed", "alg": "RS256"},
            {"kty": "OKP", "crv": "Ed25519", "x": "AAAA", "alg": "EdDSA", "kid": "broken"},
            {k: v for k, v in key.public_jwk().items() if k != "kid"},
            key.public_jwk(),
        ]

    verifier = TokenVerifier(ISS, AUD, fetch)
    await verifier.start()
    assert verifier.kids == {key.kid}
    hs = jwt.encode(claims_for(key), b"s" * 32, algorithm="HS256", headers={"kid": "hmac"})
    rejected(verifier, hs, "unsupported algorithm")


def test_sync_verify_outside_an_event_loop(key: SigningKey) -> None:
    verifier = TokenVerifier(ISS, AUD, Jwks(key).fetch)
    rejected(verifier, sign(key, claims_for(key)), "unknown signing key")


# --- the one-pass verifier against jwt.decode --------------------------------------


def pyjwt_verdict(v: TokenVerifier, token: str) -> str:
    """What the verifier answered when it called PyJWT (before issue 13): the
    reference the one-pass verifier must agree with."""
    from chat_contract.claims import REQUIRED_CLAIMS

    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError:
        return "malformed token"
    alg, kid = header.get("alg"), header.get("kid")
    if alg not in v.algorithms:
        return "unsupported algorithm"
    if not isinstance(kid, str):
        return "token has no kid"
    key = v._keys[kid]
    if key.algorithm_name != alg:
        return "algorithm does not match the key"
    try:
        payload = jwt.decode(token, key.key, algorithms=[alg], audience=v.audience,
                             issuer=v.issuer, leeway=v.leeway,
                             options={"require": list(REQUIRED_CLAIMS)})
    except jwt.ExpiredSignatureError:
        return "token expired"
    except jwt.ImmatureSignatureError:
        return "token not yet valid"
    except jwt.InvalidSignatureError:
        return "bad signature"
    except jwt.InvalidIssuerError:
        return "wrong issuer"
    except jwt.InvalidAudienceError:
        return "wrong audience"
    except jwt.MissingRequiredClaimError as exc:
        return f"missing claim {exc.claim}"
    except (jwt.exceptions.InvalidSubjectError, jwt.exceptions.InvalidJTIError):
        return "malformed claims"
    except jwt.InvalidTokenError:
        return "invalid token"
    try:
        claims = msgspec.convert(payload, AccessClaims)
    except msgspec.ValidationError:
        return "malformed claims"
    return "malformed claims" if not claims.sub else "ok"


def our_verdict(v: TokenVerifier, token: str) -> str:
    try:
        v.verify(token)
    except ChatError as exc:
        return exc.message
    return "ok"


def raw_token(key: SigningKey, header: dict[str, Any], claims: Any) -> str:
    """Signed by ``key`` whatever the header and claims say."""
    signing_input = f"{segment(header)}.{b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64(key.private.sign(signing_input.encode()))}"


async def test_one_pass_verifier_agrees_with_pyjwt(key: SigningKey,
                                                   verifier: TokenVerifier) -> None:
    now = int(time.time())
    good = claims_for(key, sid="s1")
    head = {"alg": "EdDSA", "kid": key.kid, "typ": "JWT"}
    claim_cases: list[Any] = [
        good, [1, 2], "text", 42,
        *({**good, c: None} for c in ("sub", "name", "iss", "aud", "iat", "exp", "jti")),
        *({**good, c: v} for c in ("sub", "name", "jti", "iss", "sid")
          for v in (7, "", ["x"], {"a": 1})),
        {**good, "aud": ["other", AUD]}, {**good, "aud": ["other"]}, {**good, "aud": ""},
        {**good, "aud": [AUD, 3]}, {**good, "aud": {"x": AUD}}, {**good, "aud": "other"},
        {**good, "iss": "other"},
        {**good, "exp": now - 31}, {**good, "exp": now - 29}, {**good, "exp": "soon"},
        {**good, "exp": str(now + 100)}, {**good, "exp": 1e400}, {**good, "exp": now + 0.5},
        {**good, "exp": True},
        {**good, "iat": now + 31}, {**good, "iat": now + 29}, {**good, "iat": "x"},
        {**good, "nbf": now + 31}, {**good, "nbf": now + 29}, {**good, "nbf": "x"},
        {**good, "nbf": None},
    ]
    tokens = [raw_token(key, head, c) for c in claim_cases]
    for h in ({**head, "kid": 5}, {**head, "crit": ["exp"]}, {"alg": "EdDSA"},
              {"alg": "ES256", "kid": key.kid}, {"alg": "HS256", "kid": key.kid}, [1],
              {**head, "extra": {"deep": [1, 2]}}):
        tokens.append(raw_token(key, h, good))  # type: ignore[arg-type]
    t = raw_token(key, head, good)
    h, p, s = t.split(".")
    other = raw_token(new_key(), head, good).split(".")[2]
    tokens += [f"{h}.{p}.{other}", f"{h}.{p}", f"{h}.{p}.{s}.{s}", f"{h}.{p}!.{s}",
               f"{h}.{p}.{s[:-1]}", f"{h}.{p[:-1]}.{s}", f"{h}x.{p}.{s}", f".{p}.{s}",
               f"{h}..{s}", f"{h}.{p}.", "", "...", "a.b.c", f"{h}.{p}.{s}=",
               f"{h}.{p}.{s[:-2]}" + "==" * 0]
    for token in tokens:
        assert our_verdict(verifier, token) == pyjwt_verdict(verifier, token), token
