"""chat_gateway.usercap: which sessions the per-user connection cap closes."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from chat_contract.bus import SessionEntry
from chat_contract.events import User
from chat_gateway.usercap import ASK_BATCH, SessionRegistry, over_cap


def _entry(session: str, opened: int) -> SessionEntry:
    return SessionEntry(user="u_1", session=session, node="gw", opened_ms=opened)


def test_over_cap_closes_the_oldest_others_never_the_new_one() -> None:
    entries = [_entry("s_new", 50), _entry("s_b", 20), _entry("s_a", 10), _entry("s_c", 30)]
    assert over_cap(entries, "s_new", 3) == ["s_a"]
    assert over_cap(entries, "s_new", 2) == ["s_a", "s_b"]
    assert over_cap(entries, "s_new", 4) == []
    assert over_cap(entries, "s_new", 0) == []  # cap off
    # Clock skew: the new session looks oldest, yet it is never the one closed.
    assert over_cap([_entry("s_new", 1), _entry("s_x", 5)], "s_new", 1) == ["s_x"]


# --- SessionRegistry on an in-memory NATS (core publish/subscribe only) ------------


class Bus:
    """Core NATS for several registries: wildcard ``*`` tokens, reply subjects,
    every delivery a separate loop step (as a real server's would be)."""

    def __init__(self) -> None:
        self.subs: list[tuple[str, Any]] = []
        self.published: list[str] = []

    def client(self) -> FakeNats:
        return FakeNats(self)

    async def deliver(self, subject: str, data: bytes, reply: str) -> None:
        self.published.append(subject)
        for pattern, cb in list(self.subs):
            if _matches(pattern, subject):
                await asyncio.sleep(0)
                await cb(SimpleNamespace(subject=subject, data=data, reply=reply))


def _matches(pattern: str, subject: str) -> bool:
    p, s = pattern.split("."), subject.split(".")
    return len(p) == len(s) and all(a in ("*", b) for a, b in zip(p, s, strict=True))


class FakeNats:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.is_connected = True

    async def subscribe(self, subject: str, cb: Any) -> None:
        self.bus.subs.append((subject, cb))

    async def publish(self, subject: str, data: bytes, reply: str = "") -> None:
        if not self.is_connected:
            raise ConnectionError("nats away")
        asyncio.get_running_loop().create_task(self.bus.deliver(subject, data, reply))


class Conn:
    """What the registry reads of a connection, and its close."""

    def __init__(self, user: str, session: str) -> None:
        self.user = User(id=user, name=user)
        self.session = session
        self.closed = False
        self.code: int | None = None

    async def close(self, code: int, reason: str = "") -> None:
        self.closed, self.code = True, code


async def _settle() -> None:
    await asyncio.sleep(ASK_BATCH * 2)  # the batched questions go out
    for _ in range(50):
        await asyncio.sleep(0)


async def _gateways(bus: Bus, n: int, cap: int) -> list[SessionRegistry]:
    regs = [SessionRegistry(bus.client(), f"gw-{i}", cap, 2.0) for i in range(n)]  # type: ignore[arg-type]
    for reg in regs:
        await reg.start()
    return regs


async def _open(reg: SessionRegistry, user: str, session: str) -> Conn:
    conn = Conn(user, session)
    reg.opened_conn(conn)  # type: ignore[arg-type]
    await _settle()
    await asyncio.sleep(0.002)  # distinct opening times
    return conn


async def test_cap_across_gateways_closes_the_oldest_with_4409() -> None:
    bus = Bus()
    g1, g2, g3 = await _gateways(bus, 3, cap=3)
    a = await _open(g1, "u_1", "s_a")
    b = await _open(g2, "u_1", "s_b")
    c = await _open(g3, "u_1", "s_c")
    assert not any(x.closed for x in (a, b, c))
    d = await _open(g2, "u_1", "s_d")  # the 4th: the oldest (on another gateway) goes
    assert (a.code, b.code, c.code, d.code) == (4409, None, None, None)
    g1.closed_conn(a)  # type: ignore[arg-type]
    # Another user is counted apart; one more of u_1 now closes b, the oldest left.
    await _open(g1, "u_2", "s_x")
    e = await _open(g1, "u_1", "s_e")
    assert (b.code, c.code, d.code, e.code) == (4409, None, None, None)
    for reg in (g1, g2, g3):
        await reg.close()


async def test_over_the_cap_on_one_gateway_needs_no_answer() -> None:
    bus = Bus()
    (g1,) = await _gateways(bus, 1, cap=1)
    a = await _open(g1, "u_1", "s_a")
    b = await _open(g1, "u_1", "s_b")
    assert (a.code, b.code) == (4409, None)
    # Only questions went out: a lone gateway kicks its own without a message.
    assert all(s.startswith("sessions.list.") for s in bus.published)
    await g1.close()


async def test_a_users_first_connection_gets_no_answer() -> None:
    bus = Bus()
    g1, g2 = await _gateways(bus, 2, cap=2)
    await _open(g1, "u_1", "s_a")
    await _open(g2, "u_2", "s_b")
    assert all(s.startswith("sessions.list.") for s in bus.published)
    assert not g1._asking.keys() - {"s_a"} and not g2._asking.keys() - {"s_b"}
    for reg in (g1, g2):
        await reg.close()


async def test_racing_connects_on_two_gateways_end_within_the_cap() -> None:
    bus = Bus()
    g1, g2 = await _gateways(bus, 2, cap=1)
    old = await _open(g1, "u_1", "s_old")
    x, y = Conn("u_1", "s_x"), Conn("u_1", "s_y")
    g1.opened_conn(x)  # type: ignore[arg-type]
    g2.opened_conn(y)  # type: ignore[arg-type]
    await _settle()
    open_ = [c for c in (old, x, y) if not c.closed]
    assert len(open_) == 1 and old.closed
    for reg in (g1, g2):
        await reg.close()


async def test_nats_away_fails_open() -> None:
    bus = Bus()
    g1, g2 = await _gateways(bus, 2, cap=1)
    a = await _open(g1, "u_1", "s_a")
    g2.nc.is_connected = False  # type: ignore[misc]
    b = await _open(g2, "u_1", "s_b")
    assert (a.code, b.code) == (None, None)  # not enforced meanwhile
    g2.nc.is_connected = True  # type: ignore[misc]
    c = await _open(g2, "u_1", "s_c")  # counted at the user's next connect
    assert (a.code, b.code, c.code) == (4409, 4409, None)
    for reg in (g1, g2):
        await reg.close()


async def test_cap_off_asks_nothing() -> None:
    bus = Bus()
    (g1,) = await _gateways(bus, 1, cap=0)
    await _open(g1, "u_1", "s_a")
    await _open(g1, "u_1", "s_b")
    assert bus.published == [] and bus.subs == []
