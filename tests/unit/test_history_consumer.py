"""The history consumer (chat_history.consumer): its delivery buffer, flow
control and writer loop, without servers.

A fake NATS client records what is published (acks, naks, progress, flow
control replies: the delivered messages' own ``ack()``/``nak()``/... publish
through it) and a fake store records the batches it is asked to insert, so
the batching, ack-after-commit and outage rules can be checked exactly. The
linger policy alone is in test_history_batching, the commit alone in
test_history_commit. Real NATS and PostgreSQL are in
tests/integration/test_history_*.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import msgspec
import pytest
from nats.aio.msg import Msg

from chat_contract.bus import ChatRecord
from chat_contract.events import User
from chat_history import consumer as consumer_module
from chat_history.consumer import HistoryConsumer
from chat_history.records import MessageRow

ANN = User(id="u_ann", name="ann")


class FakeNats:
    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []
        self.is_connected = True

    def jetstream(self, **_: Any) -> object:
        return object()

    async def publish(self, subject: str, payload: bytes = b"", **_: Any) -> None:
        self.published.append((subject, payload))

    async def flush(self, timeout: float = 0) -> None:
        pass

    def sent(self, payload: bytes) -> list[str]:
        return [subject for subject, p in self.published if p == payload]


class FakeStore:
    def __init__(self) -> None:
        self.batches: list[list[MessageRow]] = []
        self.failures = 0  # the next this many inserts raise as if the database were away
        self.delay = 0.0

    async def insert(self, rows: Sequence[MessageRow]) -> int:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionResetError("database away")
        self.batches.append(list(rows))
        return len(rows)

    @property
    def rows(self) -> int:
        return sum(len(b) for b in self.batches)


def reply(seq: int, delivered: int = 1) -> str:
    return f"$JS.ACK.CHAT.history-push.{delivered}.{seq}.{seq}.1700000000000000000.0"


def delivery(nc: FakeNats, seq: int, delivered: int = 1, data: bytes | None = None,
             reply_to: str | None = None) -> Msg:
    if data is None:
        data = msgspec.json.encode(ChatRecord(room="lobby", msg_id=f"m{seq}", sender=ANN,
                                              text=f"t{seq}", ts="2025-06-01T12:00:00Z"))
    return Msg(_client=nc, subject="chat.room.lobby",  # type: ignore[arg-type]
               reply=reply_to or reply(seq, delivered), data=data)


async def started(nc: FakeNats, store: FakeStore, *, batch: int = 500,
                  linger: float = 0.05) -> HistoryConsumer:
    consumer = HistoryConsumer(nc, store, batch=batch, linger=linger)  # type: ignore[arg-type]

    async def nothing() -> None:
        pass

    consumer._ensure = nothing  # type: ignore[method-assign]
    consumer._subscribe = nothing  # type: ignore[method-assign]
    await consumer.start()
    return consumer


async def until(check: Any, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.002)


async def test_deliveries_are_filed_by_their_stream_sequence() -> None:
    nc, store = FakeNats(), FakeStore()
    consumer = HistoryConsumer(nc, store, batch=500, linger=0.05)  # type: ignore[arg-type]
    for subject in ("$JS.ACK.CHAT.history-push.1.42.7.1700000000000000000.3",
                    # Newer forms: domain and account hash after ACK, a random token at the end.
                    "$JS.ACK._.ACCHASH.CHAT.history-push.2.43.8.1700000000000000000.0.x",
                    "$JS.ACK._.ACCHASH.CHAT.history-push.2.44.8.1700000000000000000.0"):
        await consumer._on_msg(delivery(nc, 0, reply_to=subject))
    assert list(consumer._buf) == [42, 43, 44]
    # Anything else on the deliver subject is not a delivery: counted, never filed or acked.
    for bad in ("_INBOX.abc", "$JS.ACK.CHAT.c.1.x.2.3.4", "$JS.ACK.CHAT.history-push.1.2.3.4"):
        await consumer._on_msg(delivery(nc, 0, reply_to=bad))
    assert list(consumer._buf) == [42, 43, 44] and nc.published == []


async def test_a_lone_message_is_stored_at_once_and_acked_after_commit() -> None:
    nc, store = FakeNats(), FakeStore()
    consumer = await started(nc, store, linger=5.0)
    try:
        t0 = time.monotonic()
        await consumer._on_msg(delivery(nc, 1))
        await until(lambda: nc.sent(b""))
        assert time.monotonic() - t0 < 1.0  # nowhere near the 5 s linger
        assert [[r.seq for r in b] for b in store.batches] == [[1]]
        assert nc.sent(b"") == [reply(1)]
        assert consumer.is_ready()
    finally:
        await consumer.stop()


async def test_a_busy_stream_is_stored_in_batches_of_one_linger() -> None:
    nc, store = FakeNats(), FakeStore()
    store.delay = 0.002
    consumer = await started(nc, store, linger=0.1)
    try:
        seq = 0
        for _ in range(100):  # ~2000 messages/s for ~0.5 s
            for _ in range(10):
                seq += 1
                await consumer._on_msg(delivery(nc, seq))
            await asyncio.sleep(0.005)
        await until(lambda: store.rows == seq)
        # At once while the rate was unknown, then about one batch per linger.
        assert len(store.batches) <= 12, [len(b) for b in store.batches]
        assert sorted(nc.sent(b"")) == sorted(reply(s) for s in range(1, seq + 1))
    finally:
        await consumer.stop()


async def test_a_full_batch_does_not_wait_for_the_linger() -> None:
    nc, store = FakeNats(), FakeStore()
    consumer = await started(nc, store, batch=50, linger=5.0)
    try:
        for seq in range(1, 401):
            await consumer._on_msg(delivery(nc, seq))
            if seq % 50 == 0:
                await asyncio.sleep(0.001)
        await until(lambda: store.rows == 400)
        assert max(len(b) for b in store.batches) == 50
    finally:
        await consumer.stop()


async def test_a_redelivery_replaces_its_waiting_copy() -> None:
    nc, store = FakeNats(), FakeStore()
    consumer = HistoryConsumer(nc, store, batch=500, linger=0.05)  # type: ignore[arg-type]
    await consumer._on_msg(delivery(nc, 7, delivered=1))
    await consumer._on_msg(delivery(nc, 8, delivered=1))
    await consumer._on_msg(delivery(nc, 7, delivered=2))
    assert list(consumer._buf) == [7, 8]
    assert consumer._buf[7].reply == reply(7, delivered=2)


async def test_the_buffer_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(consumer_module, "MAX_ACK_PENDING", 10)
    nc, store = FakeNats(), FakeStore()
    consumer = HistoryConsumer(nc, store, batch=500, linger=0.05)  # type: ignore[arg-type]
    for seq in range(1, 16):
        await consumer._on_msg(delivery(nc, seq))
    await consumer._on_msg(delivery(nc, 3, delivered=2))  # a redelivery still replaces
    assert list(consumer._buf) == list(range(1, 11))
    assert consumer._buf[3].reply == reply(3, delivered=2)
    assert nc.published == []  # dropped ones stay unacked: redelivered after ack_wait


async def test_flow_control_and_stalled_heartbeats_are_answered() -> None:
    nc, store = FakeNats(), FakeStore()
    consumer = HistoryConsumer(nc, store, batch=500, linger=0.05)  # type: ignore[arg-type]
    fc = Msg(_client=None, subject="chat.deliver.history",  # type: ignore[arg-type]
             reply="$JS.FC.CHAT.history-push.abc", data=b"",
             headers={"Status": "100", "Description": "FlowControl Request"})
    idle = Msg(_client=None, subject="chat.deliver.history",  # type: ignore[arg-type]
               data=b"", headers={"Status": "100", "Description": "Idle Heartbeat"})
    stalled = Msg(_client=None, subject="chat.deliver.history",  # type: ignore[arg-type]
                  data=b"", headers={"Status": "100", "Description": "Idle Heartbeat",
                                     "Nats-Consumer-Stalled": "$JS.FC.CHAT.history-push.def"})
    stray = Msg(_client=None, subject="chat.deliver.history",  # type: ignore[arg-type]
                data=b"hello")
    for msg in (fc, idle, stalled, stray):
        await consumer._on_msg(msg)
    assert nc.published == [("$JS.FC.CHAT.history-push.abc", b""),
                            ("$JS.FC.CHAT.history-push.def", b"")]
    assert consumer._buf == {}


async def test_bad_payloads_are_terminated_and_the_rest_stored() -> None:
    nc, store = FakeNats(), FakeStore()
    consumer = await started(nc, store)
    try:
        await consumer._on_msg(delivery(nc, 1))
        await consumer._on_msg(delivery(nc, 2, data=b"garbage"))
        await consumer._on_msg(delivery(nc, 3))
        await until(lambda: len(nc.sent(b"")) == 2)
        assert nc.sent(b"+TERM") == [reply(2)]
        assert consumer.rejected == 1 and consumer.stored == 2
    finally:
        await consumer.stop()


async def test_a_database_outage_keeps_the_batch_unacked_and_unready() -> None:
    nc, store = FakeNats(), FakeStore()
    store.failures = 3
    consumer = await started(nc, store)
    try:
        await consumer._on_msg(delivery(nc, 1))
        await until(lambda: not consumer.is_ready())
        assert nc.sent(b"") == []  # never acked before commit
        await until(lambda: store.rows == 1, timeout=5)
        await until(lambda: nc.sent(b"") == [reply(1)])
        assert nc.sent(b"+WPI")  # kept from redelivery while retrying
        assert consumer.is_ready()
    finally:
        await consumer.stop()


async def test_stop_stores_what_was_delivered() -> None:
    nc, store = FakeNats(), FakeStore()
    consumer = await started(nc, store, linger=5.0)
    store.delay = 0.05
    for seq in range(1, 1201):
        await consumer._on_msg(delivery(nc, seq))
    await consumer.stop()
    assert store.rows == 1200
    assert sorted(nc.sent(b"")) == sorted(reply(s) for s in range(1, 1201))
    assert not consumer.is_ready()


async def test_stop_with_the_database_away_hands_everything_back() -> None:
    nc, store = FakeNats(), FakeStore()
    consumer = await started(nc, store)
    store.failures = 10**6
    for seq in range(1, 1201):
        await consumer._on_msg(delivery(nc, seq))
    await until(lambda: not consumer.is_ready())
    await consumer.stop()
    assert nc.sent(b"") == []
    assert sorted(nc.sent(b"-NAK")) == sorted(reply(s) for s in range(1, 1201))


async def test_a_sender_waiting_for_each_message_is_never_made_to_linger() -> None:
    nc, store = FakeNats(), FakeStore()
    consumer = await started(nc, store, linger=5.0)
    try:
        t0 = time.monotonic()
        for seq in range(1, 101):  # fast, but each message only after the previous is stored
            await consumer._on_msg(delivery(nc, seq))
            await until(lambda n=seq: len(nc.sent(b"")) == n)
        assert time.monotonic() - t0 < 2.0  # a single 5 s linger would fail this
        assert consumer.batches == 100
    finally:
        await consumer.stop()


class TrackingStore(FakeStore):
    """Records how many inserts run at once and when each began and ended."""

    def __init__(self) -> None:
        super().__init__()
        self.running = 0
        self.most = 0
        self.log: list[tuple[str, list[int]]] = []

    async def insert(self, rows: Sequence[MessageRow]) -> int:
        self.running += 1
        self.most = max(self.most, self.running)
        self.log.append(("begin", [r.seq for r in rows]))
        try:
            return await super().insert(rows)
        finally:
            self.running -= 1
            self.log.append(("end", [r.seq for r in rows]))


async def test_two_batches_are_inserted_at_once_and_each_acked_after_its_own() -> None:
    nc, store = FakeNats(), TrackingStore()
    store.delay = 0.02
    consumer = await started(nc, store, batch=50, linger=5.0)
    try:
        for seq in range(1, 401):
            await consumer._on_msg(delivery(nc, seq))
        await until(lambda: store.rows == 400)
        await until(lambda: len(nc.sent(b"")) == 400)
        assert store.most == consumer_module.WRITERS == 2
        assert sorted(nc.sent(b"")) == sorted(reply(s) for s in range(1, 401))
    finally:
        await consumer.stop()


async def test_a_batch_with_changes_waits_for_the_batches_before_it() -> None:
    nc, store = FakeNats(), TrackingStore()
    store.delay = 0.02
    consumer = await started(nc, store, batch=10, linger=5.0)
    edit = msgspec.json.encode(ChatRecord(room="lobby", msg_id="m5", sender=ANN, text="new",
                                          kind="edit", ts="2025-06-01T12:00:00Z"))
    try:
        for seq in range(1, 31):
            await consumer._on_msg(delivery(nc, seq, data=edit if seq == 25 else None))
        await until(lambda: store.rows == 30)
        began = [i for i, (what, seqs) in enumerate(store.log) if what == "begin" and 25 in seqs]
        ended = [i for i, (what, seqs) in enumerate(store.log) if what == "end" and seqs[0] < 21]
        assert len(began) == 1 and len(ended) == 2 and max(ended) < began[0], store.log
    finally:
        await consumer.stop()
