"""The auth service against a real nats-server and PostgreSQL, called over NATS."""

from __future__ import annotations

import asyncio
import logging
import secrets
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import nats
import pytest
from nats.aio.client import Client as NATS
from waiting import scaled

from chat_auth.config import AuthSettings
from chat_auth.service import AuthService
from chat_auth.store import AuthStore
from chat_auth.tokens import new_refresh_token
from chat_contract import rpc
from chat_contract.bus import (
    Credentials,
    Empty,
    RefreshRequest,
    RegisterReply,
    TokenPair,
    UsersReply,
    UsersRequest,
)
from chat_contract.errors import ChatError, ErrorCode
from chat_gateway.tokens import TokenVerifier
from chat_kit.bus import request
from chat_kit.runtime import Runtime
from chat_kit.settings import CommonSettings

pytestmark = pytest.mark.integration

TIMEOUT = scaled(10.0)
PASSWORD = "correct horse battery"


def settings_for(nats_url: str, db_url: str, key_file: Path | None = None,
                 reuse_grace: float = 5.0) -> AuthSettings:
    common = CommonSettings(nats_url=nats_url, log_level="INFO", log_format="json",
                            request_timeout=TIMEOUT, stream_replicas=1, host="127.0.0.1")
    return AuthSettings(port=0, database_url=db_url, signing_key_pem="",
                        signing_key_file=key_file, dev_key=True, issuer="chat-auth",
                        audience="chat", access_ttl=900, refresh_ttl=3600,
                        reuse_grace=reuse_grace, common=common)


class Replica:
    """One running auth Component with its own NATS connection."""

    def __init__(self, nc: NATS, rt: Runtime, service: AuthService) -> None:
        self.nc, self.rt, self.service = nc, rt, service
        self.stopped = False

    @classmethod
    async def start(cls, settings: AuthSettings) -> Replica:
        nc = await nats.connect(settings.common.nats_url)
        rt = Runtime("auth-test", settings.common, nc)
        service = AuthService(settings)
        await service.start(rt)
        return cls(nc, rt, service)

    async def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            await self.service.stop()
            await self.nc.drain()


Start = Callable[..., Awaitable[Replica]]


@pytest.fixture
async def start_replica(nats_url: str, db_url: str, tmp_path: Path
                        ) -> AsyncIterator[Start]:
    replicas: list[Replica] = []
    # Replicas share one key, as in production (a generated dev key file).
    key_file = tmp_path / "keys" / "signing.pem"

    async def start(**overrides: Any) -> Replica:
        settings = replace(settings_for(nats_url, db_url, key_file), **overrides)
        replica = await Replica.start(settings)
        replicas.append(replica)
        return replica

    yield start
    for replica in reversed(replicas):
        await replica.stop()


@pytest.fixture
async def auth(start_replica: Start) -> Replica:
    return await start_replica()


@pytest.fixture
async def client(nats_url: str) -> AsyncIterator[NATS]:
    nc = await nats.connect(nats_url)
    yield nc
    await nc.drain()


async def register(nc: NATS, username: str, password: str = PASSWORD) -> RegisterReply:
    return await request(nc, rpc.AUTH_REGISTER,
                         Credentials(username=username, password=password, remote="10.0.0.1"),
                         TIMEOUT)


async def login(nc: NATS, username: str, password: str = PASSWORD) -> TokenPair:
    return await request(nc, rpc.AUTH_LOGIN,
                         Credentials(username=username, password=password, remote="10.0.0.1"),
                         TIMEOUT)


async def refresh(nc: NATS, token: str) -> TokenPair:
    return await request(nc, rpc.AUTH_REFRESH, RefreshRequest(refresh_token=token), TIMEOUT)


async def logout(nc: NATS, token: str) -> Empty:
    return await request(nc, rpc.AUTH_LOGOUT, RefreshRequest(refresh_token=token), TIMEOUT)


async def users(nc: NATS, req: UsersRequest) -> UsersReply:
    return await request(nc, rpc.AUTH_USERS, req, TIMEOUT)


async def fails(code: ErrorCode, request: Awaitable[object]) -> ChatError:
    with pytest.raises(ChatError) as info:
        await request
    assert info.value.code is code, info.value
    return info.value


def verifier_for(nc: NATS) -> TokenVerifier:
    async def fetch() -> list[dict[str, Any]]:
        return (await request(nc, rpc.AUTH_JWKS, Empty(), TIMEOUT)).keys

    return TokenVerifier("chat-auth", "chat", fetch)


async def test_register(auth: Replica, client: NATS) -> None:
    reply = await register(client, "Alice.W-1")
    assert reply.user.name == "Alice.W-1"
    assert reply.user.id.startswith("u_") and len(reply.user.id) > 10
    other = await register(client, "bob")
    assert other.user.id != reply.user.id
    assert auth.rt.is_ready()


async def test_duplicate_name_in_other_case_conflicts(auth: Replica, client: NATS) -> None:
    await register(client, "alice")
    for name in ("alice", "ALICE", "Alice"):
        err = await fails(ErrorCode.CONFLICT, register(client, name))
        assert err.message == "username is taken"


async def test_users_lookup_by_id_and_name(auth: Replica, client: NATS) -> None:
    alice = (await register(client, "Alice")).user
    bob = (await register(client, "bob")).user
    reply = await users(client, UsersRequest(ids=[bob.id, "u_nobody"], names=["ALICE", "carol"]))
    assert reply.users == [bob, alice]  # ids first, names case-insensitively, unknown absent
    empty = await users(client, UsersRequest(ids=["' OR 1=1 --"]))
    assert empty.users == []
    await fails(ErrorCode.BAD_REQUEST, users(client, UsersRequest(ids=["x"] * 101)))


async def test_users_by_name_prefix(auth: Replica, client: NATS) -> None:
    """Name completion: case-insensitive, in name order, bounded; `_` is a
    letter of a name, not a LIKE pattern."""
    stem = "pfx" + secrets.token_hex(3)
    made = [await register(client, f"{stem}_{n}") for n in ("b", "A", "c")]
    other = await register(client, f"{stem}x_d")  # `_` must not match the x
    reply = await users(client, UsersRequest(prefix=f"{stem.upper()}_"))
    assert [u.name for u in reply.users] == [f"{stem}_A", f"{stem}_b", f"{stem}_c"]
    assert other.user.name not in [u.name for u in reply.users]
    two = await users(client, UsersRequest(prefix=stem, limit=2))
    assert [u.name for u in two.users] == [f"{stem}_A", f"{stem}_b"]
    assert len(made) == 3
    await fails(ErrorCode.BAD_REQUEST, users(client, UsersRequest(prefix=stem, limit=21)))
    await fails(ErrorCode.BAD_REQUEST, users(client, UsersRequest(prefix="a b")))


@pytest.mark.parametrize("username", ["ab", "a" * 33, "has space", "emoji😀", "a/b", "", "é" * 5])
async def test_bad_username(auth: Replica, client: NATS, username: str) -> None:
    await fails(ErrorCode.BAD_REQUEST, register(client, username))


@pytest.mark.parametrize("password", ["", "7chars!", "x" * 257])
async def test_bad_password(auth: Replica, client: NATS, password: str) -> None:
    await fails(ErrorCode.BAD_REQUEST, register(client, "carol", password))


async def test_limits_are_inclusive(auth: Replica, client: NATS) -> None:
    """The shortest and longest name and password are accepted: the user is
    created with that name and can log in with that password."""
    verifier = verifier_for(client)
    await verifier.start()
    for name, password in (("abc", "x" * 8), ("a" * 32, "y" * 256)):
        user = (await register(client, name, password)).user
        assert user.name == name and user.id.startswith("u_")
        pair = await login(client, name, password)
        claims = verifier.verify(pair.access_token)
        assert (claims.sub, claims.name) == (user.id, name)
        found = await users(client, UsersRequest(names=[name]))
        assert found.users == [user]


async def test_garbled_payload_is_bad_request(auth: Replica, client: NATS) -> None:
    msg = await client.request(rpc.AUTH_LOGIN.subject, b"{not json", timeout=TIMEOUT)
    assert msg.headers is not None
    assert msg.headers["Nats-Service-Error-Code"] == "bad_request"


async def test_login_issues_a_token_the_gateway_verifies(auth: Replica, client: NATS) -> None:
    user = (await register(client, "alice")).user
    pair = await login(client, "ALICE")  # usernames are case-insensitive
    assert (pair.token_type, pair.expires_in) == ("Bearer", 900)
    verifier = verifier_for(client)
    await verifier.start()
    claims = verifier.verify(pair.access_token)
    assert (claims.sub, claims.name, claims.iss, claims.aud) == (user.id, "alice", "chat-auth",
                                                                 "chat")
    assert claims.exp - claims.iat == 900


async def test_jwks(auth: Replica, client: NATS) -> None:
    keys = (await request(client, rpc.AUTH_JWKS, Empty(), TIMEOUT)).keys
    assert len(keys) == 1
    assert keys[0].keys() == {"kty", "crv", "x", "use", "alg", "kid"}
    assert (keys[0]["kty"], keys[0]["crv"], keys[0]["alg"], keys[0]["use"]) == (
        "OKP", "Ed25519", "EdDSA", "sig")


async def test_wrong_credentials_look_the_same(auth: Replica, client: NATS,
                                               caplog: pytest.LogCaptureFixture) -> None:
    await register(client, "alice")
    caplog.set_level(logging.WARNING, logger="chat_auth")
    guess = "Tr0ub4dor&3"
    wrong = await fails(ErrorCode.UNAUTHORIZED, login(client, "alice", guess))
    unknown = await fails(ErrorCode.UNAUTHORIZED, login(client, "nobody", guess))
    too_long = await fails(ErrorCode.UNAUTHORIZED, login(client, "alice", PASSWORD + "x" * 300))
    assert wrong.message == unknown.message == too_long.message == "invalid username or password"
    # Audited with username and remote, never with the password.
    audits = [(r.getMessage(), getattr(r, "fields", {})) for r in caplog.records]
    assert [(msg, f["audit"], f["username"], f["remote"]) for msg, f in audits[:2]] == [
        ("login failed", True, "alice", "10.0.0.1"), ("login failed", True, "nobody", "10.0.0.1")]
    assert guess not in repr(audits) and PASSWORD not in repr(audits)


async def test_refresh_rotates(auth: Replica, client: NATS) -> None:
    await register(client, "alice")
    first = await login(client, "alice")
    second = await refresh(client, first.refresh_token)
    assert second.refresh_token != first.refresh_token
    assert second.access_token != first.access_token
    verifier = verifier_for(client)
    await verifier.start()
    assert verifier.verify(second.access_token).name == "alice"
    err = await fails(ErrorCode.UNAUTHORIZED, refresh(client, first.refresh_token))
    assert err.message == "invalid or expired refresh token"
    # Within the grace period the replay is taken for a race: the new token lives on.
    third = await refresh(client, second.refresh_token)
    assert verifier.verify(third.access_token).name == "alice"
    await fails(ErrorCode.UNAUTHORIZED, refresh(client, "made-up"))
    fourth = await refresh(client, third.refresh_token)
    assert fourth.refresh_token not in (first.refresh_token, second.refresh_token,
                                        third.refresh_token)


async def test_reuse_after_grace_ends_every_session(start_replica: Start, client: NATS,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    await start_replica(reuse_grace=0.0)
    await register(client, "alice")
    stolen = await login(client, "alice")
    other_session = await login(client, "alice")
    legit = await refresh(client, stolen.refresh_token)
    caplog.set_level(logging.WARNING, logger="chat_auth")
    await fails(ErrorCode.UNAUTHORIZED, refresh(client, stolen.refresh_token))
    assert "refresh token reuse: all sessions revoked" in caplog.messages
    assert stolen.refresh_token not in caplog.text and legit.refresh_token not in caplog.text
    await fails(ErrorCode.UNAUTHORIZED, refresh(client, legit.refresh_token))
    # A copy exists somewhere: every session of the user ends (docs/protocol.md §2).
    await fails(ErrorCode.UNAUTHORIZED, refresh(client, other_session.refresh_token))
    assert (await login(client, "alice")).refresh_token


async def test_expired_refresh_token(auth: Replica, client: NATS, db_url: str) -> None:
    await register(client, "alice")
    pair = await login(client, "alice")
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute("UPDATE auth.refresh_tokens SET expires_at = now() - interval '1 s'")
    finally:
        await conn.close()
    await fails(ErrorCode.UNAUTHORIZED, refresh(client, pair.refresh_token))
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=1)
    try:
        store = AuthStore(pool)
        assert await store.delete_expired(3600) == 0  # kept a while for reuse audits
        assert await store.delete_expired(0) == 1
    finally:
        await pool.close()


async def test_logout_revokes_and_is_idempotent(auth: Replica, client: NATS) -> None:
    await register(client, "alice")
    pair = await login(client, "alice")
    assert await logout(client, pair.refresh_token) == Empty()
    await fails(ErrorCode.UNAUTHORIZED, refresh(client, pair.refresh_token))
    assert await logout(client, pair.refresh_token) == Empty()
    assert await logout(client, "never-issued") == Empty()
    # A rotated session is ended whole, whichever of its tokens is presented.
    first = await login(client, "alice")
    second = await refresh(client, first.refresh_token)
    await logout(client, first.refresh_token)
    await fails(ErrorCode.UNAUTHORIZED, refresh(client, second.refresh_token))


async def test_concurrent_double_refresh_has_exactly_one_winner(
        start_replica: Start, client: NATS) -> None:
    # Two replicas on their own connections, so the requests really race.
    await start_replica()
    await start_replica()
    await register(client, "alice")
    for _ in range(5):
        pair = await login(client, "alice")
        results = await asyncio.gather(*(refresh(client, pair.refresh_token) for _ in range(8)),
                                       return_exceptions=True)
        winners = [r for r in results if isinstance(r, TokenPair)]
        losers = [r for r in results if isinstance(r, ChatError)]
        assert len(winners) == 1 and len(losers) == 7, results
        assert {e.code for e in losers} == {ErrorCode.UNAUTHORIZED}
        lives_on = await refresh(client, winners[0].refresh_token)  # the winner's session
        assert lives_on.refresh_token != winners[0].refresh_token


async def test_store_rotation_is_atomic(auth: Replica, client: NATS, db_url: str) -> None:
    user = (await register(client, "alice")).user
    pool = await asyncpg.create_pool(db_url, min_size=10, max_size=10)
    try:
        store = AuthStore(pool)
        for _ in range(5):
            token, token_hash = new_refresh_token()
            await store.add_refresh(token_hash, user.id, "fam", 60)
            results = await asyncio.gather(
                *(store.rotate_refresh(token_hash, new_refresh_token()[1], 60)
                  for _ in range(10)))
            assert [r for r in results if r is not None] == [(user.id, "alice", "fam")]
        assert await pool.fetchval("SELECT count(*) FROM auth.refresh_tokens") == 10
    finally:
        await pool.close()


async def test_key_file_and_restart(start_replica: Start, client: NATS, tmp_path: Path) -> None:
    first = await start_replica()
    key_file = tmp_path / "keys" / "signing.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    await register(client, "alice")
    pair = await login(client, "alice")
    await first.stop()
    await fails(ErrorCode.UNAVAILABLE, login(client, "alice"))
    # A restarted replica uses the same key: old tokens still verify, sessions survive.
    await start_replica()
    verifier = verifier_for(client)
    await verifier.start()
    assert verifier.verify(pair.access_token).name == "alice"
    renewed = await refresh(client, pair.refresh_token)
    assert verifier.verify(renewed.access_token).name == "alice"


async def test_micro_service_discovery(auth: Replica, client: NATS) -> None:
    msg = await client.request("$SRV.INFO.auth", b"", timeout=TIMEOUT)
    info = msgspec.json.decode(msg.data)
    assert info["name"] == "auth"
    assert {(e["name"], e["subject"]) for e in info["endpoints"]} == {
        (r.name, r.subject) for r in (rpc.AUTH_REGISTER, rpc.AUTH_LOGIN, rpc.AUTH_REFRESH,
                                      rpc.AUTH_LOGOUT, rpc.AUTH_JWKS, rpc.AUTH_USERS,
                                      rpc.AUTH_PASSWORD, rpc.AUTH_DISABLE)}
