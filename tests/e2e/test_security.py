"""Security on a real gateway (issue 5): forged tokens → 4401 with an audit
line, malformed frames never crash a connection or the gateway
(property-based), oversized and deeply nested JSON, subject injection through
room ids, and audit lines for login failures."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import jwt
import nats
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from waiting import QUIET
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as sync_connect

from chat_auth.keys import SigningKey, from_pem

from .client import TIMEOUT, RequestFailed, Session, register_and_login
from .conftest import unique
from .hardening import audit_lines, make_stack, wait_for
from .stack import Stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(e2e_nats: str, e2e_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # Abuse → 1008 and the join/leave rate off here: the property test sends
    # hundreds of bad frames, each followed by a `leave` marker, on one socket
    # on purpose (test_limits and test_gateway_guards cover those rules).
    yield from make_stack(e2e_nats, e2e_db, tmp_path_factory.mktemp("security-logs"),
                          CHAT_GATEWAY_ABUSE_STRIKES="0", CHAT_GATEWAY_JOIN_RATE="10000",
                          CHAT_GATEWAY_JOIN_BURST="10000")


@pytest.fixture(scope="module")
async def user(stack: Stack) -> dict[str, Any]:
    return await register_and_login(stack.gateway(1).url, unique("sec"))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _seg(obj: dict[str, Any]) -> str:
    return _b64(json.dumps(obj, separators=(",", ":")).encode())


def _forged_tokens(stack: Stack, user: dict[str, Any]) -> dict[str, str]:
    key = SigningKey.of(from_pem((stack.log_dir / "signing-key.pem").read_bytes()))
    now = int(time.time())
    base = {"sub": user["user"]["id"], "name": user["user"]["name"], "iss": "chat-auth",
            "aud": "chat", "iat": now, "nbf": now, "exp": now + 600, "jti": "j"}

    def sign(k: SigningKey = key, kid: str | None = None, **over: Any) -> str:
        return jwt.encode({**base, **over}, k.private, algorithm="EdDSA",
                          headers={"kid": kid or k.kid})

    public = key.private.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)
    hs_head = _seg({"alg": "HS256", "typ": "JWT", "kid": key.kid})
    hs_body = _seg(base)
    hs_sig = _b64(hmac.new(public, f"{hs_head}.{hs_body}".encode(), hashlib.sha256).digest())
    good = sign()
    head, _, sig = good.split(".")
    other = SigningKey.of(Ed25519PrivateKey.generate())
    return {
        "valid": good,
        "alg none": f"{_seg({'alg': 'none', 'typ': 'JWT', 'kid': key.kid})}.{_seg(base)}.",
        "hs256 with the public key": f"{hs_head}.{hs_body}.{hs_sig}",
        "expired": sign(iat=now - 4000, nbf=now - 4000, exp=now - 120),
        "not yet valid": sign(nbf=now + 600),
        "wrong issuer": sign(iss="evil"),
        "wrong audience": sign(aud="other"),
        "unknown kid": sign(other, kid="k-unknown"),
        "tampered payload": f"{head}.{_seg({**base, 'sub': 'u_admin'})}.{sig}",
    }


async def test_forged_tokens_close_4401_with_an_audit_line(
        stack: Stack, user: dict[str, Any]) -> None:
    tokens = _forged_tokens(stack, user)
    ok = await Session.open(stack.ws_url(1), tokens.pop("valid"))  # the forger's baseline works
    await ok.close()
    for case, token in tokens.items():
        for url in (f"{stack.ws_url(1)}?token={token}", stack.ws_url(2)):
            async with connect(url) as ws:
                if "token=" not in url:
                    await ws.send(json.dumps({"type": "auth", "token": token}))
                with pytest.raises(ConnectionClosed):
                    while True:
                        frame = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
                        assert frame["type"] != "welcome", case
                assert ws.close_code == 4401, (case, ws.close_code, ws.close_reason)
    for i in (1, 2):
        wait_for(lambda i=i: len([a for a in audit_lines(stack.gateway(i).log_path)  # type: ignore[misc]
                                  if a["msg"] == "token rejected"]) >= len(tokens),
                 what="token rejection audit lines")


async def test_login_failure_is_audited(stack: Stack, user: dict[str, Any]) -> None:
    async with httpx.AsyncClient(base_url=stack.gateway(2).url, timeout=TIMEOUT) as http:
        r = await http.post("/v1/auth/login", json={"username": user["user"]["name"],
                                                     "password": "not the password"})
        assert r.status_code == 401
    wait_for(lambda: any(a["msg"] == "login failed" and a["username"] == user["user"]["name"]
                         and a["reason"] == "wrong password"
                         for a in audit_lines(stack.services["auth"].log_path)),
             what="login failure audit line")


# --- malformed frames, property-based ----------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(
        st.sampled_from(["type", "id", "room", "text", "since", "limit", "token", "state"])
        | st.text(max_size=8), kids, max_size=4),
    max_leaves=12)
_frame_types = st.sampled_from(["join", "leave", "send", "edit", "delete", "typing", "read",
                                "history", "presence", "auth", "ping", "fly", ""])
_typed = st.builds(lambda t, rest: {**rest, "type": t}, _frame_types,
                   st.dictionaries(st.sampled_from(["id", "room", "text", "since", "limit",
                                                    "msg_id", "state", "seq", "token"]),
                                   _json, max_size=4))
_frames = (st.tuples(st.just("json"), _json) | st.tuples(st.just("typed"), _typed)
           | st.tuples(st.just("text"), st.text(max_size=60))
           | st.tuples(st.just("bytes"), st.binary(max_size=60)))


@pytest.fixture(scope="module")
def raw_ws(stack: Stack, user: dict[str, Any]) -> Iterator[ClientConnection]:
    with sync_connect(f"{stack.ws_url(1)}?token={user['access_token']}", max_size=None) as ws:
        assert json.loads(ws.recv(timeout=TIMEOUT))["type"] == "welcome"
        yield ws


def _until_pong(ws: ClientConnection) -> list[dict[str, Any]]:
    ws.send(json.dumps({"type": "ping"}))
    seen = []
    while True:
        frame = json.loads(ws.recv(timeout=TIMEOUT))
        if frame["type"] == "pong":
            return seen
        seen.append(frame)


_marks = itertools.count()


def _answers(ws: ClientConnection) -> list[dict[str, Any]]:
    """Everything the server sent until it answers a marker request (frames are
    answered in order), so fuzzed ``ping`` frames cannot shift the pairing."""
    mark = f"mark{next(_marks)}"
    ws.send(json.dumps({"type": "leave", "id": mark, "room": "fuzz-marker"}))
    seen = []
    while True:
        frame = json.loads(ws.recv(timeout=TIMEOUT))
        if frame.get("id") == mark:
            assert frame["type"] == "ack", frame
            return seen
        seen.append(frame)


@settings(max_examples=250, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=_frames)
def test_random_frames_never_break_the_socket(raw_ws: ClientConnection,
                                              case: tuple[str, Any]) -> None:
    kind, value = case
    if kind == "bytes":
        raw_ws.send(bytes(value))
    elif kind == "text":
        raw_ws.send(str(value))
    else:
        raw_ws.send(json.dumps(value))
    answers = _answers(raw_ws)  # the socket is open and still answers
    assert all(a["type"] in ("error", "ack", "pong", "message") for a in answers), answers
    assert not any(a.get("code") == "internal" for a in answers), answers
    if kind == "bytes" or (kind == "json" and not isinstance(value, dict)):
        assert any(a.get("code") == "bad_request" for a in answers), (case, answers)


def test_gateway_survived_the_fuzzing(stack: Stack, raw_ws: ClientConnection) -> None:
    _answers(raw_ws)
    assert _until_pong(raw_ws) is not None  # and a normal ping still gets pong
    gw = stack.gateway(1)
    assert gw.proc is not None and gw.proc.poll() is None
    assert httpx.get(f"{gw.url}/healthz", timeout=5).status_code == 200


def test_deeply_nested_and_oversized_json(raw_ws: ClientConnection) -> None:
    for doc in ("[" * 8000 + "]" * 8000,
                '{"type":"join","id":"n1","room":' + "[" * 7000 + "]" * 7000 + "}",
                '{"id":' + '{"a":' * 2500 + "1" + "}" * 2500 + "}",
                "[" * 8000):
        assert len(doc.encode()) < 16384
        raw_ws.send(doc)
        answers = _answers(raw_ws)
        assert [a.get("code") for a in answers if a["type"] != "pong"] == ["bad_request"], answers


# --- subject injection --------------------------------------------------------

BAD_ROOMS = ["a.b", "chat.room.x", "*", ">", "a.*", "a.>", "a b", " a", "a\tb", "é", "room💬",
             "a/b", "", "x" * 65, "a\u0000b", "a\r\nPUB x 1"]


async def test_room_ids_cannot_inject_subject_tokens(stack: Stack, user: dict[str, Any]) -> None:
    nc = await nats.connect(stack.nats_url, **stack.nats_login())  # admin: sees every subject
    seen: list[str] = []

    async def record(msg: Any) -> None:
        seen.append(msg.subject)

    # Every subject a room id becomes a token of. (Not all of "chat.>": the
    # history consumer's deliver subject carries heartbeats at any time.)
    for subject in ("chat.room.>", "chat.live.>", "presence.>"):
        await nc.subscribe(subject, cb=record)
    await nc.flush()
    s = await Session.open(stack.ws_url(2), user["access_token"])
    try:
        for room in BAD_ROOMS:
            for type_, extra in (("join", {}), ("leave", {}), ("send", {"text": "hi"}),
                                 ("edit", {"msg_id": "m", "text": "x"}),
                                 ("delete", {"msg_id": "m"}), ("typing", {"state": "start"}),
                                 ("read", {"seq": 1}), ("history", {}), ("presence", {})):
                with pytest.raises(RequestFailed) as exc:
                    await s.request(type_, room=room, **extra)
                assert exc.value.code == "bad_request", (type_, room, exc.value.frame)
        async with httpx.AsyncClient(base_url=stack.gateway(1).url, timeout=TIMEOUT) as http:
            auth = {"Authorization": f"Bearer {user['access_token']}"}
            for room in BAD_ROOMS:
                if not room or "/" in room:
                    continue
                r = await http.get(f"/v1/rooms/{quote(room, safe='')}/messages", headers=auth)
                assert r.status_code == 400, (room, r.text)
                assert r.json()["error"]["code"] == "bad_request"
        await asyncio.sleep(QUIET)  # a negative check: nothing reaches NATS meanwhile
        await nc.flush()
        assert seen == [], seen
        assert s.close_code is None
    finally:
        await s.close()
        await nc.close()
