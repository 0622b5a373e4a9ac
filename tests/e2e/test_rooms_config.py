"""Auto-creation of rooms on join turned off (issue 3: "configurable off")."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .client import Session, refused, register_and_login, rest
from .conftest import unique
from .hardening import make_stack
from .stack import Stack

pytestmark = pytest.mark.e2e

OFF = {"CHAT_GATEWAY_AUTO_CREATE_ROOMS": "0"}


@pytest.fixture(scope="module")
def stack(e2e_nats: str, e2e_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from make_stack(e2e_nats, e2e_db, tmp_path_factory.mktemp("rooms-off-logs"), **OFF)


async def test_join_of_unknown_room_is_refused_when_auto_create_is_off(stack: Stack) -> None:
    alice = await register_and_login(stack.gateway(1).url, unique("user"))
    a = await Session.open(stack.ws_url(2), alice["access_token"])
    ghost = unique("ghost")
    assert await refused(a, "join", room=ghost) == "not_found"
    assert await refused(a, "send", room=ghost, text="anyone?") == "forbidden"
    async with rest(stack.gateway(1).url, alice["access_token"]) as ha:
        r = await ha.get(f"/v1/rooms/{ghost}")
        assert r.status_code == 404, r.text  # the refused join created nothing
        r = await ha.post("/v1/rooms", json={"id": ghost, "name": "Now it exists",
                                              "visibility": "public"})
        assert r.status_code == 201, r.text
    joined = await a.request("join", room=ghost)
    assert joined["room"] == ghost and joined["last_seq"] == 0
    await a.request("send", room=ghost, text="hello")
    await a.close()
