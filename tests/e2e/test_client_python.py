"""chat_client (clients/python) against a real stack: reconnect after a gateway
is drained or killed with nothing lost or doubled, gap fetch, refresh on
4401 and before expiry, typed acks and errors."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from waiting import eventually, scaled

from chat_client import Backoff, ChatClient, ChatRequestError
from chat_contract.acks import JoinAck, SendAck
from chat_contract.errors import ErrorCode
from chat_contract.events import Message

from .client import TIMEOUT
from .conftest import unique
from .hardening import make_stack
from .stack import Stack

pytestmark = pytest.mark.e2e

TTL = 6  # seconds an access token lives on this module's stack


@pytest.fixture(scope="module")
def stack(e2e_nats: str, e2e_db: str, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Stack]:
    yield from make_stack(e2e_nats, e2e_db, tmp_path_factory.mktemp("client-logs"),
                          CHAT_AUTH_ACCESS_TTL=str(TTL))


def http(stack: Stack, i: int = 1) -> str:
    return stack.gateway(i).url


async def user(stack: Stack, *, gateways: tuple[int, ...] = (1,), **kw: Any) -> ChatClient:
    name = unique("py")
    client = ChatClient(http(stack), ws_url=[stack.ws_url(i) for i in gateways],
                        request_timeout=TIMEOUT, backoff=Backoff(base=0.1, cap=1.0), **kw)
    await client.register(name, "correct horse battery")
    await client.login(name, "correct horse battery")
    await client.connect()
    return client


async def texts(client: ChatClient, room: str, n: int) -> list[Message]:
    got: list[Message] = []
    while len(got) < n:
        event = await client.next_event(Message, timeout=scaled(20.0))
        assert isinstance(event, Message)
        if event.room == room:
            got.append(event)
    return got


async def test_typed_acks_and_errors(stack: Stack) -> None:
    alice = await user(stack)
    room = unique("typed")
    joined = await alice.request("join", room=room)
    assert isinstance(joined, JoinAck) and joined.room == room
    sent = await alice.request("send", room=room, text="hello", client_msg_id="c1")
    assert isinstance(sent, SendAck) and sent.seq > joined.last_seq
    with pytest.raises(ChatRequestError) as refused:
        await alice.request("send", room=unique("nope"), text="x")
    assert refused.value.code is ErrorCode.FORBIDDEN
    with pytest.raises(ChatRequestError) as bad:
        await alice.request("history", room=room, limit=0)
    assert bad.value.code is ErrorCode.BAD_REQUEST
    with pytest.raises(ChatRequestError) as rest:
        await alice.login("no_such_user_here", "wrong password")
    assert rest.value.code is ErrorCode.UNAUTHORIZED
    (message,) = await texts(alice, room, 1)
    assert message.msg_id == sent.msg_id and message.text == "hello"
    await alice.close()


@pytest.mark.parametrize("how", ["drain", "kill"])
async def test_reconnect_after_gateway_loss_loses_and_doubles_nothing(
        stack: Stack, how: str) -> None:
    room = unique(how)
    alice = await user(stack, gateways=(1, 2))  # on gw-1, reconnects to gw-2
    bob = await user(stack, gateways=(2,))
    await alice.request("join", room=room)
    await bob.request("join", room=room)
    n = 30
    try:
        for i in range(n):
            if i == 10:
                if how == "drain":
                    await stack.astop("gateway-1")  # SIGTERM: 1012
                else:
                    await stack.akill("gateway-1")  # no close frame: 1006
            await bob.request("send", room=room, text=f"m{i}", client_msg_id=f"{room}-{i}")
            await asyncio.sleep(0.05)
        got = await texts(alice, room, n)
        assert [m.text for m in got] == [f"m{i}" for i in range(n)]
        assert len({m.msg_id for m in got}) == n
        assert alice.reconnects >= 1 and alice.welcome is not None
        assert alice.welcome.node == "gw-2"
    finally:
        await alice.close()
        await bob.close()
        await stack.astart("gateway-1")


async def test_gap_fetched_from_history(stack: Stack) -> None:
    room = unique("gap")
    alice, bob = await user(stack), await user(stack)
    await alice.request("join", room=room)
    await bob.request("join", room=room)
    # Lose one frame on its way to alice (as a broken relay would): the next
    # event's prev_seq is above the last seq she holds.
    put = alice._inbox.put_nowait

    def lossy(item: tuple[str, Any]) -> None:
        if item[0] == "frame" and item[1][0].get("text") == "lost":
            return
        put(item)

    alice._inbox.put_nowait = lossy  # type: ignore[method-assign]
    for text in ("one", "lost", "three"):
        await bob.request("send", room=room, text=text)
    got = await texts(alice, room, 3)
    assert [m.text for m in got] == ["one", "lost", "three"]
    assert [g.room for g in alice.gaps_fetched] == [room]
    await alice.close()
    await bob.close()


async def test_4401_refreshes_and_reconnects(stack: Stack) -> None:
    """With no refresh before expiry, the token expires: 4401, refresh, reconnect, rejoin."""
    room = unique("expiry")
    alice = await user(stack, refresh_margin=-3600.0)
    bob = await user(stack)
    first = alice.tokens
    await alice.request("join", room=room)
    await bob.request("join", room=room)
    await eventually(lambda: alice.reconnects >= 1, TTL + 10.0, "a reconnect after 4401")
    assert alice.tokens is not first
    await bob.request("send", room=room, text="after expiry")
    (got,) = await texts(alice, room, 1)
    assert got.text == "after expiry"
    await alice.close()
    await bob.close()


async def test_refresh_before_expiry_keeps_the_socket(stack: Stack) -> None:
    alice = await user(stack, refresh_margin=3.0)
    socket = alice.ws
    first = alice.tokens
    await asyncio.sleep(TTL + 2.0)
    assert alice.tokens is not first and alice.ws is socket and alice.reconnects == 0
    assert alice.close_code is None
    await alice.request("join", room=unique("alive"))
    await alice.close()
