"""Insert, then ack (chat_history.commit), without servers.

The delivered messages are nats-py ``Msg`` objects whose client is a fake
that records what their ``ack()``, ``nak()``, ``in_progress()`` and
``term()`` publish; a fake store records inserts (and what had been
published when each ran), so "never ack before commit" is checked exactly.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import asyncpg
import msgspec
import pytest
from nats.aio.msg import Msg

from chat_contract.bus import ChatRecord, RecordKind
from chat_contract.events import User
from chat_history.acks import Acks
from chat_history.commit import Committer
from chat_history.records import MessageRow
from chat_history.troubles import Troubles

ANN = User(id="u_ann", name="ann")
ACK, NAK, WPI, TERM = b"", b"-NAK", b"+WPI", b"+TERM"


class FakeNats:
    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []

    async def publish(self, subject: str, payload: bytes = b"", **_: Any) -> None:
        self.published.append((subject, payload))

    def sent(self, payload: bytes) -> list[str]:
        return [subject for subject, p in self.published if p == payload]


class FakeStore:
    def __init__(self, nc: FakeNats) -> None:
        self.nc = nc
        self.inserts: list[tuple[list[int], int]] = []  # (seqs, publishes before it)
        self.failures = 0  # the next this many inserts fail as if the database were away

    async def insert(self, rows: Sequence[MessageRow]) -> int:
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionResetError("database away")
        if len(rows) > 1 and any(r.text == "poison" for r in rows):
            raise asyncpg.CheckViolationError("no_poison")  # fails the whole batch
        if rows and rows[0].text == "poison":
            raise asyncpg.CheckViolationError("no_poison")
        self.inserts.append(([r.seq for r in rows], len(self.nc.published)))
        return len(rows)


def reply(seq: int) -> str:
    return f"$JS.ACK.CHAT.history-push.1.{seq}.{seq}.1700000000000000000.0"


def delivery(nc: FakeNats, seq: int, text: str | None = "hi", *, data: bytes | None = None,
             kind: RecordKind = "message", msg_id: str | None = None) -> tuple[int, Msg]:
    if data is None:
        data = msgspec.json.encode(ChatRecord(room="lobby", msg_id=msg_id or f"m{seq}",
                                              sender=ANN, text=text, kind=kind,
                                              ts="2025-06-01T12:00:00Z"))
    return seq, Msg(_client=nc, subject="chat.room.lobby",  # type: ignore[arg-type]
                    reply=reply(seq), data=data)


def committer(nc: FakeNats, store: FakeStore,
              stopping: asyncio.Event | None = None) -> tuple[Committer, Troubles]:
    troubles = Troubles(logging.getLogger("test"))
    c = Committer(store, Acks(nc), troubles, stopping or asyncio.Event())  # type: ignore[arg-type]
    return c, troubles


async def test_each_message_is_acked_after_its_batch_committed() -> None:
    nc = FakeNats()
    store = FakeStore(nc)
    c, _ = committer(nc, store)
    stored: list[int] = []
    c.on_stored = lambda: stored.append(len(nc.published))
    assert await c.write([delivery(nc, s) for s in (3, 4, 5)])
    assert store.inserts == [([3, 4, 5], 0)]  # nothing was published before the insert
    assert nc.published == [(reply(s), ACK) for s in (3, 4, 5)]  # one ack per message
    assert stored == [3] and c.stored == 3


async def test_bad_payloads_are_terminated_and_the_rest_stored() -> None:
    nc = FakeNats()
    store = FakeStore(nc)
    c, _ = committer(nc, store)
    assert await c.write([delivery(nc, 1), delivery(nc, 2, data=b"garbage"),
                          delivery(nc, 3, text="a\x00b"), delivery(nc, 4)])
    assert nc.sent(TERM) == [reply(2), reply(3)]
    assert store.inserts == [([1, 4], 2)]
    assert nc.sent(ACK) == [reply(1), reply(4)]
    assert (c.rejected, c.stored) == (2, 2)


async def test_a_batch_the_database_refuses_is_retried_row_by_row() -> None:
    nc = FakeNats()
    store = FakeStore(nc)
    c, troubles = committer(nc, store)
    texts = ["a", "b", "poison", "c"]
    assert await c.write([delivery(nc, i + 1, t) for i, t in enumerate(texts)])
    assert [seqs for seqs, _ in store.inserts] == [[1], [2], [4]]
    assert nc.sent(TERM) == [reply(3)]
    assert sorted(nc.sent(ACK)) == sorted([reply(1), reply(2), reply(4)])
    assert c.rejected == 1 and not troubles.kinds()  # a data error is no outage


async def test_an_outage_keeps_the_batch_in_progress_until_it_commits(
        monkeypatch: pytest.MonkeyPatch) -> None:
    nc = FakeNats()
    store = FakeStore(nc)
    store.failures = 2
    c, troubles = committer(nc, store)
    seen: list[set[str]] = []
    real_pause = c._pause

    async def pause(delay: float) -> None:
        seen.append(troubles.kinds())
        await real_pause(0.001)

    monkeypatch.setattr(c, "_pause", pause)
    assert await c.write([delivery(nc, 1), delivery(nc, 2)])
    assert seen == [{"db"}, {"db"}]  # unready while it lasts
    # "in progress" after each failed try keeps JetStream from redelivering meanwhile.
    assert nc.sent(WPI) == [reply(1), reply(2)] * 2
    assert nc.sent(ACK) == [reply(1), reply(2)] and store.inserts[0][0] == [1, 2]
    assert not troubles.kinds()


async def test_stopping_with_the_database_away_hands_the_batch_back() -> None:
    nc = FakeNats()
    store = FakeStore(nc)
    store.failures = 10**6
    stopping = asyncio.Event()
    stopping.set()
    c, _ = committer(nc, store, stopping=stopping)
    assert not await c.write([delivery(nc, 1), delivery(nc, 2)])
    assert nc.sent(NAK) == [reply(1), reply(2)] and nc.sent(ACK) == []


async def test_a_batch_with_changes_wakes_the_eraser_after_it_committed() -> None:
    nc = FakeNats()
    store = FakeStore(nc)
    c, _ = committer(nc, store)
    woken: list[int] = []
    c.on_changed = lambda: woken.append(len(store.inserts))
    assert await c.write([delivery(nc, 1, msg_id="m_x")])
    assert woken == []  # plain messages: nothing to erase
    assert await c.write([delivery(nc, 2, None, msg_id="m_x", kind="delete")])
    assert woken == [2]  # after the delete's batch was stored (the store queued the erasure)
    assert nc.sent(ACK) == [reply(1), reply(2)]
