"""chat_gateway.sockets: the indexes by user and by login session (one socket
held without a set, several in one) and what reads them."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import msgspec

from chat_contract.bus import BlocksNotice
from chat_contract.events import User
from chat_gateway.connection import Connection
from chat_gateway.sockets import Sockets, held

ANN = User(id="u_ann", name="ann")


class Conn(Connection):
    """A Connection with no socket behind it."""

    def __init__(self, user: User, sid: str | None) -> None:  # noqa: D107 - no super()
        self.user, self.sid, self.closed, self.blocks_seen = user, sid, False, 0
        self.blocked = frozenset()
        self.closes: list[int] = []

    async def close(self, code: int, reason: str = "") -> None:
        self.closed = True
        self.closes.append(code)


def test_one_socket_is_held_alone_several_in_a_set_and_back() -> None:
    sockets = Sockets()
    a, b = Conn(ANN, "sid1"), Conn(ANN, "sid1")
    sockets.add(a)
    assert sockets.by_user["u_ann"] is a and sockets.by_sid["sid1"] is a
    sockets.add(a)  # twice: still one
    assert sockets.by_user["u_ann"] is a
    sockets.add(b)
    assert sockets.by_user["u_ann"] == {a, b} and set(held(sockets.by_sid, "sid1")) == {a, b}
    sockets.remove(a)
    assert sockets.by_user["u_ann"] is b and sockets.by_sid["sid1"] is b
    sockets.remove(b)
    assert sockets.by_user == {} and sockets.by_sid == {} and len(sockets) == 0
    assert held(sockets.by_user, "u_ann") == ()


async def test_blocks_and_revocations_reach_every_socket_of_the_index() -> None:
    sockets = Sockets()
    a, b, c = Conn(ANN, "sid1"), Conn(ANN, "sid2"), Conn(ANN, None)
    for conn in (a, b, c):
        sockets.add(conn)
    notice = BlocksNotice(user="u_ann", blocked=["u_eve"])
    msg: Any = SimpleNamespace(data=msgspec.json.encode(notice))
    await sockets.on_blocks(msg)
    assert all(conn.blocked == {"u_eve"} for conn in (a, b, c))
    sockets.session_revoked("sid2")
    sockets.user_revoked("u_ann")  # only the socket whose token had no session
    for task in list(sockets._closing):
        await task
    assert (a.closes, b.closes, c.closes) == ([], [4401], [4401])
