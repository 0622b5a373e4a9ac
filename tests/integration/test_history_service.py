"""history-service against real NATS (JetStream) and PostgreSQL.

Messages go in the way gateways send them: ``ChatRecord`` JSON published with
JetStream to ``chat.room.<room>``; the publish ack's sequence is the ``seq``
the history must report. Reads go through the micro endpoint as the gateway
calls it (``chat_kit.bus.call``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import asyncpg
import msgspec
import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, DeliverPolicy
from nats.js.errors import NotFoundError
from waiting import TIME_FACTOR

from chat_contract import subjects
from chat_contract.bus import ChatRecord, HistoryReply, HistoryRequest
from chat_contract.errors import ChatError, ErrorCode
from chat_contract.events import Message, User
from chat_history import consumer as consumer_module
from chat_history.config import HistorySettings
from chat_history.consumer_setup import (
    DELIVER_GROUP,
    DELIVER_SUBJECT,
    DURABLE,
    MAX_ACK_PENDING,
    consumer_config,
)
from chat_history.records import MessageRow
from chat_history.service import HistoryComponent
from chat_kit.bus import call
from chat_kit.runtime import Runtime
from chat_kit.settings import CommonSettings
from chat_kit.stream import ensure_chat_stream

pytestmark = pytest.mark.integration

# One unit of patience; slow machines scale it with CHAT_TEST_TIME_FACTOR.
UNIT = TIME_FACTOR  # CHAT_TEST_TIME_FACTOR, read in tests/waiting.py
ANN = User(id="u_ann", name="ann")


def make_settings(nats_url: str, db_url: str, *, batch: int = 500,
                  catchup_timeout: float = 1.5, linger: float = 0.05) -> HistorySettings:
    common = CommonSettings(nats_url=nats_url, log_level="INFO", log_format="text",
                            request_timeout=2.0, stream_replicas=1, host="127.0.0.1")
    return HistorySettings(common=common, port=0, database_url=db_url, batch=batch,
                           linger=linger, catchup_timeout=catchup_timeout)


@asynccontextmanager
async def running(nats_url: str, db_url: str, *, batch: int = 500, catchup_timeout: float = 1.5,
                  linger: float = 0.05) -> AsyncIterator[HistoryComponent]:
    """A history Component on its own NATS connection, as one process would run it."""
    settings = make_settings(nats_url, db_url, batch=batch, catchup_timeout=catchup_timeout,
                             linger=linger)
    nc = await nats.connect(nats_url)
    rt = Runtime("history-test", settings.common, nc)
    component = HistoryComponent(settings)
    await component.start(rt)
    try:
        assert rt.is_ready() or await _eventually(rt.is_ready)
        yield component
    finally:
        rt.stopping.set()
        await component.stop()
        await nc.drain()


async def _eventually(check: Callable[[], bool], timeout: float = 5 * UNIT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(0.02)
    return False


@pytest.fixture
async def client(nats_url: str) -> AsyncIterator[NATS]:
    """The publishing/reading side (a gateway's connection)."""
    nc = await nats.connect(nats_url)
    await ensure_chat_stream(nc.jetstream())
    yield nc
    await nc.drain()


def new_room() -> str:
    return "r" + uuid.uuid4().hex[:10]


async def send(js: JetStreamContext, room: str, text: str, *, msg_id: str | None = None,
               dedupe_id: str | None = None) -> int:
    msg_id = msg_id or "m_" + uuid.uuid4().hex
    record = ChatRecord(room=room, msg_id=msg_id, sender=ANN, text=text,
                        ts="2025-06-01T12:00:00.123Z")
    ack = await js.publish(subjects.room_subject(room), msgspec.json.encode(record),
                           headers={subjects.HDR_MSG_ID: dedupe_id or msg_id})
    return int(ack.seq)


async def history(nc: NATS, room: str, **kw: int) -> HistoryReply:
    return await call(nc, subjects.HISTORY_MESSAGES, HistoryRequest(room=room, **kw),
                      HistoryReply, timeout=5 * UNIT)


async def stored_rows(db_url: str, room: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(db_url)
    try:
        rows: list[asyncpg.Record] = await conn.fetch(
            "SELECT * FROM history.messages WHERE room = $1 ORDER BY seq", room)
        return rows
    finally:
        await conn.close()


def chain_ok(messages: list[Message], first_prev: int) -> bool:
    prev = first_prev
    for m in messages:
        if m.prev_seq != prev:
            return False
        prev = m.seq
    return True


# --- storing ---------------------------------------------------------------------------


async def test_published_messages_land_in_postgres_with_their_stream_seq(
    nats_url: str, db_url: str, client: NATS
) -> None:
    js = client.jetstream()
    a, b = new_room(), new_room()
    async with running(nats_url, db_url):
        sent = [(room, i, await send(js, room, f"hello {i}"))
                for i in range(20) for room in (a, b)]
        reply = await history(client, a)  # waits until storage caught up
        assert [m.text for m in reply.messages] == [f"hello {i}" for i in range(20)]
    rows = await stored_rows(db_url, a)
    assert [r["seq"] for r in rows] == [seq for room, _, seq in sent if room == a]
    first = rows[0]
    assert (first["sender_id"], first["sender_name"], first["text"]) == ("u_ann", "ann", "hello 0")
    assert reply.messages[0].ts == "2025-06-01T12:00:00.123Z"
    assert reply.messages[0].sender == ANN


async def test_a_read_right_after_a_send_sees_it(
    nats_url: str, db_url: str, client: NATS
) -> None:
    js = client.jetstream()
    room = new_room()
    async with running(nats_url, db_url):
        prev = 0
        for i in range(30):
            seq = await send(js, room, f"m{i}")
            reply = await history(client, room, limit=1)
            assert [(m.seq, m.prev_seq, m.text) for m in reply.messages] == [(seq, prev, f"m{i}")]
            prev = seq
        # min_seq: the caller knows a sequence of another room it needs stored too.
        other = new_room()
        seq = await send(js, other, "elsewhere")
        reply = await history(client, room, limit=1, min_seq=seq)
        assert reply.messages[-1].seq == prev


async def test_min_seq_beyond_the_stream_does_not_hang(
    nats_url: str, db_url: str, client: NATS
) -> None:
    room = new_room()
    async with running(nats_url, db_url):
        await send(client.jetstream(), room, "x")
        started = time.monotonic()
        reply = await history(client, room, min_seq=10**12)
        assert [m.text for m in reply.messages] == ["x"]
        assert time.monotonic() - started < 1.0 * UNIT


async def test_empty_room(nats_url: str, db_url: str, client: NATS) -> None:
    async with running(nats_url, db_url):
        for kw in ({}, {"after": 0}, {"before": 5}, {"after": 1, "before": 9}):
            reply = await history(client, new_room(), **kw)
            assert (reply.messages, reply.has_more) == ([], False)


# --- pagination ------------------------------------------------------------------------


async def test_pagination(nats_url: str, db_url: str, client: NATS) -> None:
    js = client.jetstream()
    room, noise = new_room(), new_room()
    async with running(nats_url, db_url):
        seqs = []
        for i in range(25):
            seqs.append(await send(js, room, f"m{i}"))
            await send(js, noise, "noise")  # so a room's seqs are not consecutive

        # Newest page, then older pages with `before`.
        newest = await history(client, room, limit=10)
        assert [m.seq for m in newest.messages] == seqs[15:] and newest.has_more
        older = await history(client, room, limit=10, before=newest.messages[0].seq)
        assert [m.seq for m in older.messages] == seqs[5:15] and older.has_more
        oldest = await history(client, room, limit=10, before=older.messages[0].seq)
        assert [m.seq for m in oldest.messages] == seqs[:5] and not oldest.has_more
        backwards = oldest.messages + older.messages + newest.messages
        assert [m.seq for m in backwards] == seqs and chain_ok(backwards, 0)

        # Forward with `after`, from the start.
        forward: list[Message] = []
        cursor, has_more = 0, True
        while has_more:
            page = await history(client, room, limit=7, after=cursor)
            forward += page.messages
            cursor, has_more = page.messages[-1].seq, page.has_more
        assert [m.seq for m in forward] == seqs and chain_ok(forward, 0)
        assert forward == backwards

        # Both bounds: a window, ascending from `after`, has_more towards `before`.
        window = await history(client, room, after=seqs[3], before=seqs[10], limit=3)
        assert [m.seq for m in window.messages] == seqs[4:7] and window.has_more
        assert window.messages[0].prev_seq == seqs[3]
        window = await history(client, room, after=seqs[3], before=seqs[10], limit=6)
        assert [m.seq for m in window.messages] == seqs[4:10] and not window.has_more
        window = await history(client, room, after=seqs[10], before=seqs[3])
        assert (window.messages, window.has_more) == ([], False)

        # Exclusive bounds, and bounds between a room's seqs (a noise seq).
        page = await history(client, room, after=seqs[23])
        assert [m.seq for m in page.messages] == [seqs[24]] and not page.has_more
        page = await history(client, room, after=seqs[24])
        assert (page.messages, page.has_more) == ([], False)
        page = await history(client, room, before=seqs[2] + 1, limit=2)
        assert [m.seq for m in page.messages] == seqs[1:3] and page.has_more
        assert page.messages[0].prev_seq == seqs[0]
        page = await history(client, room, after=seqs[5] + 1, limit=1)
        assert [(m.seq, m.prev_seq) for m in page.messages] == [(seqs[6], seqs[5])]

        # The internal maximum (join `since` asks for up to 500).
        page = await history(client, room, after=0, limit=500)
        assert len(page.messages) == 25 and not page.has_more


async def test_invalid_requests_answer_bad_request(
    nats_url: str, db_url: str, client: NATS
) -> None:
    async with running(nats_url, db_url):
        for room, kw in [("r1", {"limit": 0}), ("r1", {"limit": 501}),
                         ("a.b", {}), ("has space", {}), ("", {}), ("r1", {"before": -1})]:
            with pytest.raises(ChatError) as info:
                await history(client, room, **kw)
            assert info.value.code is ErrorCode.BAD_REQUEST, (room, kw)
        # A non-integer bound never becomes a HistoryRequest: the payload is refused.
        msg = await client.request(subjects.HISTORY_MESSAGES,
                                   b'{"room":"r1","before":"x","v":1}', timeout=5 * UNIT)
        assert msg.headers is not None
        assert msg.headers.get("Nats-Service-Error-Code") == "bad_request"


# --- idempotency and redelivery --------------------------------------------------------


async def test_republish_and_redelivery_store_each_message_once(
    nats_url: str, db_url: str, client: NATS
) -> None:
    js = client.jetstream()
    room = new_room()
    ids = [f"id-{room}-{i}" for i in range(10)]
    async with running(nats_url, db_url) as component:
        first = [await send(js, room, f"m{i}", msg_id=ids[i]) for i in range(10)]
        # Inside the dedupe window JetStream answers with the original sequence.
        again = [await send(js, room, f"m{i}", msg_id=ids[i]) for i in range(10)]
        assert again == first
        # Past the window (simulated with another Nats-Msg-Id) the same msg_id gets a
        # new sequence: msg_id stays unique, the first copy wins.
        await send(js, room, "m0 again", msg_id=ids[0], dedupe_id="late-" + ids[0])
        reply = await history(client, room)
        assert [m.seq for m in reply.messages] == first
        assert component.consumer.stored == 10

    # A new durable consumer redelivers the whole stream: nothing doubles.
    await js.delete_consumer(subjects.CHAT_STREAM, DURABLE)
    async with running(nats_url, db_url) as component:
        reply = await history(client, room)  # waits for the redelivered stream to be acked
        assert [m.seq for m in reply.messages] == first
        info = await js.consumer_info(subjects.CHAT_STREAM, DURABLE)
        assert info.ack_floor is not None and info.ack_floor.stream_seq >= first[-1]
        assert component.consumer.stored == 0
    assert [r["seq"] for r in await stored_rows(db_url, room)] == first


async def test_store_insert_is_idempotent(nats_url: str, db_url: str, client: NATS) -> None:
    room = new_room()
    async with running(nats_url, db_url) as component:
        await send(client.jetstream(), room, "once")
        reply = await history(client, room)
        rows = await stored_rows(db_url, room)
        again = [MessageRow(r["room"], r["seq"], r["msg_id"], r["sender_id"], r["sender_name"],
                            r["text"], r["reply_to"], r["ts"]) for r in rows]
        assert await component.store.insert(again) == 0
        assert await component.store.insert(again + again) == 0
        assert (await history(client, room)).messages == reply.messages


# --- lifecycle -------------------------------------------------------------------------


async def test_messages_sent_while_stopped_appear_after_restart(
    nats_url: str, db_url: str, client: NATS
) -> None:
    js = client.jetstream()
    room = new_room()
    async with running(nats_url, db_url):
        before = [await send(js, room, f"a{i}") for i in range(5)]
        await history(client, room)
    while_stopped = [await send(js, room, f"b{i}") for i in range(40)]
    with pytest.raises(ChatError) as info:
        await call(client, subjects.HISTORY_MESSAGES, HistoryRequest(room=room),
                   HistoryReply, timeout=0.5)
    assert info.value.code is ErrorCode.UNAVAILABLE  # nobody answers while stopped
    async with running(nats_url, db_url):
        reply = await history(client, room, limit=100)
        assert [m.seq for m in reply.messages] == before + while_stopped
        assert chain_ok(reply.messages, 0)


async def test_two_instances_share_the_consumer_and_store_each_message_once(
    nats_url: str, db_url: str, client: NATS
) -> None:
    js = client.jetstream()
    rooms = [new_room() for _ in range(8)]
    async with running(nats_url, db_url, batch=50) as one, \
            running(nats_url, db_url, batch=50) as two:
        sent: dict[str, list[int]] = {room: [] for room in rooms}
        for burst in range(20):
            acks = await asyncio.gather(*(
                js.publish(subjects.room_subject(room), msgspec.json.encode(ChatRecord(
                    room=room, msg_id=f"{room}-{burst}-{i}", sender=ANN, text="x",
                    ts="2025-06-01T12:00:00.000Z")))
                for i in range(10) for room in rooms))
            for ack, room in zip(acks, [room for _ in range(10) for room in rooms],
                                 strict=True):
                sent[room].append(int(ack.seq))
            await asyncio.sleep(0.01)
        for room in rooms:
            reply = await history(client, room, after=0, limit=500)
            assert [m.seq for m in reply.messages] == sorted(sent[room])
            assert chain_ok(reply.messages, 0)
        total = sum(len(v) for v in sent.values())
        # Every row was inserted by exactly one of them; redeliveries would show as 0-row
        # inserts, not as extra rows.
        assert one.consumer.stored + two.consumer.stored == total == 1600
        assert one.consumer.stored > 0 and two.consumer.stored > 0
    conn = await asyncpg.connect(db_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM history.messages") == 1600
    finally:
        await conn.close()


async def test_unstorable_payloads_do_not_block_later_messages(
    nats_url: str, db_url: str, client: NATS
) -> None:
    js = client.jetstream()
    room = new_room()
    subject = subjects.room_subject(room)
    async with running(nats_url, db_url) as component:
        good1 = await send(js, room, "before")
        for junk in (b"garbage", b"{}", msgspec.json.encode(ChatRecord(
                room=room, msg_id="nul", sender=ANN, ts="2025-06-01T12:00:00Z", text="a\x00b")),
                msgspec.json.encode(ChatRecord(room=room, msg_id="badts", sender=ANN,
                                               ts="noon"))):
            await js.publish(subject, junk)
        good2 = await send(js, room, "after")
        reply = await history(client, room)  # the ack floor passes the terminated ones
        assert [(m.seq, m.prev_seq) for m in reply.messages] == [(good1, 0), (good2, good1)]
        assert component.consumer.rejected == 4
        good3 = await send(js, room, "later")
        reply = await history(client, room, after=good2)
        assert [m.seq for m in reply.messages] == [good3]


async def test_reads_answer_unavailable_when_storage_cannot_catch_up(
    nats_url: str, db_url: str, client: NATS
) -> None:
    js = client.jetstream()
    room = new_room()
    async with running(nats_url, db_url, catchup_timeout=0.3) as component:
        await send(js, room, "stored")
        assert len((await history(client, room)).messages) == 1
        await component.consumer.stop()  # storage stalls; the endpoint still answers
        pending = await send(js, room, "not stored yet")
        with pytest.raises(ChatError) as info:
            await history(client, room)
        assert info.value.code is ErrorCode.UNAVAILABLE
        # A page entirely below what is stored needs no wait.
        reply = await history(client, room, before=pending)
        assert [m.text for m in reply.messages] == ["stored"]


async def test_a_row_the_database_refuses_is_isolated_and_terminated(
    nats_url: str, db_url: str, client: NATS
) -> None:
    js = client.jetstream()
    room = new_room()
    async with running(nats_url, db_url):  # creates the schema
        pass
    # A real constraint makes PostgreSQL refuse one row of an otherwise good batch.
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute("ALTER TABLE history.messages ADD CONSTRAINT no_poison"
                           " CHECK (text IS DISTINCT FROM 'poison')")
    finally:
        await conn.close()
    # Published while stopped, so the restarted consumer fetches them as one batch.
    texts = [f"m{i}" for i in range(5)] + ["poison"] + [f"n{i}" for i in range(5)]
    seqs = [await send(js, room, text) for text in texts]
    async with running(nats_url, db_url) as component:
        reply = await history(client, room)
        assert [m.text for m in reply.messages] == [t for t in texts if t != "poison"]
        assert reply.messages[5].prev_seq == seqs[4]
        assert component.consumer.rejected == 1
        assert component.consumer.stored == 10


async def test_texts_and_times_survive_the_round_trip(
    nats_url: str, db_url: str, client: NATS
) -> None:
    js = client.jetstream()
    room = new_room()
    texts = ['quote " backslash \\ slash / end', "line\nbreak\ttab\r\x01\x1f", "emoji 🎉 ÿ 中文",
             "separators \u2028 \u2029 and \ufeff", "<script>&amp;</script>", "x" * 4000]
    times = {"2025-06-01T12:00:00.123456+05:30": datetime(2025, 6, 1, 6, 30, 0, 123456, UTC),
             "2025-06-01T12:00:00": datetime(2025, 6, 1, 12, 0, tzinfo=UTC),
             "2025-12-31T23:59:59.999Z": datetime(2025, 12, 31, 23, 59, 59, 999000, UTC)}
    records = [ChatRecord(room=room, msg_id=f"t{i}", sender=User(id="u_é", name='"ann" 🎉'),
                          text=text, reply_to="m_1" if i % 2 else None, ts=ts)
               for i, (text, ts) in enumerate(zip(texts, list(times) * 2, strict=True))]
    async with running(nats_url, db_url):
        for r in records:
            await js.publish(subjects.room_subject(room), msgspec.json.encode(r))
        reply = await history(client, room)
    assert [m.text for m in reply.messages] == texts
    rows = await stored_rows(db_url, room)
    assert [(r["text"], r["reply_to"], r["sender_id"], r["sender_name"], r["ts"])
            for r in rows] == [(rec.text, rec.reply_to, "u_é", '"ann" 🎉', times[rec.ts])
                               for rec in records]


async def test_a_quiet_stream_is_stored_without_lingering(
    nats_url: str, db_url: str, client: NATS
) -> None:
    js = client.jetstream()
    room = new_room()
    # Messages 0.3 s apart are too few to linger for (fewer than LINGER_MIN per 1 s
    # linger); each read would time out if its message waited for the linger.
    async with running(nats_url, db_url, linger=1.0, catchup_timeout=0.5) as component:
        for i in range(5):
            seq = await send(js, room, f"m{i}")
            reply = await history(client, room, limit=1)
            assert [m.seq for m in reply.messages] == [seq]
            await asyncio.sleep(0.3)
        assert component.consumer.batches == 5


async def test_a_busy_stream_is_stored_in_few_batches(
    nats_url: str, db_url: str, client: NATS
) -> None:
    js = client.jetstream()
    rooms = [new_room() for _ in range(5)]
    async with running(nats_url, db_url, linger=0.2) as component:
        seqs: list[int] = []
        for burst in range(25):  # ~1000 messages/s for half a second
            acks = await asyncio.gather(*(
                js.publish(subjects.room_subject(room), msgspec.json.encode(ChatRecord(
                    room=room, msg_id=f"{room}-{burst}-{i}", sender=ANN, text="x",
                    ts="2025-06-01T12:00:00.000Z")))
                for i in range(4) for room in rooms))
            seqs += [int(a.seq) for a in acks]
            await asyncio.sleep(0.02)
        reply = await history(client, rooms[0], limit=500)
        assert len(reply.messages) == 100
        assert component.consumer.stored >= 400
        # One linger is ~40 messages here; without lingering it would be ~25+ batches.
        assert component.consumer.batches <= 12, component.consumer.batches


async def test_stop_leaves_nothing_delivered_unacked(
    nats_url: str, db_url: str, client: NATS
) -> None:
    js = client.jetstream()
    room = new_room()
    async with running(nats_url, db_url, linger=5.0):
        await asyncio.gather(*(
            js.publish(subjects.room_subject(room), msgspec.json.encode(ChatRecord(
                room=room, msg_id=f"s{i}", sender=ANN, text="x", ts="2025-06-01T12:00:00Z")))
            for i in range(300)))
    # Stopped right after the burst: what was delivered is stored and acked (none
    # waits for ACK_WAIT, which would stall fresh reads on other instances).
    info = await js.consumer_info(subjects.CHAT_STREAM, DURABLE)
    assert info.num_ack_pending == 0
    assert info.ack_floor is not None and info.delivered is not None
    assert info.ack_floor.stream_seq == info.delivered.stream_seq
    assert len(await stored_rows(db_url, room)) == info.ack_floor.stream_seq
    async with running(nats_url, db_url):
        assert len((await history(client, room, limit=500)).messages) == 300


# --- the durable consumer --------------------------------------------------------------


async def test_the_consumer_is_a_push_consumer_with_a_deliver_group(
    nats_url: str, db_url: str, client: NATS
) -> None:
    js = client.jetstream()
    # An existing durable keeps its start position and gets our other settings.
    old = consumer_config()
    old.deliver_policy, old.opt_start_seq = DeliverPolicy.BY_START_SEQUENCE, 1
    old.max_ack_pending = 10
    await js.add_consumer(subjects.CHAT_STREAM, old)
    async with running(nats_url, db_url):
        info = await js.consumer_info(subjects.CHAT_STREAM, DURABLE)
    c = info.config
    assert (c.deliver_subject, c.deliver_group) == (DELIVER_SUBJECT, DELIVER_GROUP)
    assert (c.deliver_policy, c.opt_start_seq) == (DeliverPolicy.BY_START_SEQUENCE, 1)
    assert c.ack_policy == AckPolicy.EXPLICIT and c.max_ack_pending == MAX_ACK_PENDING
    assert c.flow_control and c.idle_heartbeat


async def test_a_deleted_consumer_is_recreated_while_running(
    nats_url: str, db_url: str, client: NATS, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(consumer_module, "CHECK_INTERVAL", 0.1)
    js = client.jetstream()
    room = new_room()
    async with running(nats_url, db_url) as component:
        first = await send(js, room, "before")
        await history(client, room)
        await js.delete_consumer(subjects.CHAT_STREAM, DURABLE)
        second = await send(js, room, "while it was gone")

        async def present() -> bool:
            try:
                await js.consumer_info(subjects.CHAT_STREAM, DURABLE)
            except NotFoundError:
                return False
            return True

        deadline = time.monotonic() + 5 * UNIT
        while not await present():
            assert time.monotonic() < deadline, "consumer not re-created"
            await asyncio.sleep(0.05)
        third = await send(js, room, "after")
        reply = await history(client, room)
        assert [m.seq for m in reply.messages] == [first, second, third]
        assert component.consumer.stored == 3


# --- edits, deletes, blocked senders ---------------------------------------------------


async def change(js: JetStreamContext, room: str, msg_id: str, kind: str,
                 text: str | None = None) -> int:
    record = ChatRecord(room=room, msg_id=msg_id, sender=ANN, ts="2025-06-01T12:00:00.123Z",
                        kind=kind, text=text)  # type: ignore[arg-type]
    ack = await js.publish(subjects.room_subject(room), msgspec.json.encode(record))
    return int(ack.seq)


async def test_edits_and_deletes_are_events_and_history_shows_the_latest_state(
    nats_url: str, db_url: str, client: NATS
) -> None:
    js = client.jetstream()
    room = new_room()
    async with running(nats_url, db_url):
        s1 = await send(js, room, "first draft", msg_id="m_one")
        s2 = await send(js, room, "secret words", msg_id="m_two")
        e1 = await change(js, room, "m_one", "edit", "final text")
        d2 = await change(js, room, "m_two", "delete")
        reply = await history(client, room)
        # The stream erasure is a task of its own (erasure.py), woken by the
        # commit: let it run before the service stops.
        deadline = time.monotonic() + 5 * UNIT
        while True:
            try:
                await js.get_msg(subjects.CHAT_STREAM, s2)
            except NotFoundError:
                break
            assert time.monotonic() < deadline, "stream still holds deleted text"
            await asyncio.sleep(0.05)
    items = [(m.seq, m.msg_id, m.text, m.edited, m.deleted) for m in reply.messages]
    assert items == [
        (s1, "m_one", "final text", True, False),
        (s2, "m_two", None, False, True),
        (e1, "m_one", "final text", True, False),
        (d2, "m_two", None, False, True),
    ]
    assert chain_ok(reply.messages, 0)  # the same chain live delivery showed
    rows = await stored_rows(db_url, room)
    assert all(r["text"] is None for r in rows if r["msg_id"] == "m_two")  # gone from storage
    assert [r["text"] for r in rows if r["seq"] == e1] == [None]  # text lives once
    conn = await asyncpg.connect(db_url)
    try:
        hits = await conn.fetchval(
            "SELECT count(*) FROM history.messages WHERE room = $1"
            " AND tsv @@ websearch_to_tsquery('simple', 'secret')", room)
    finally:
        await conn.close()
    assert hits == 0
    # ... and from the stream: the original and its edits are erased, the events stay.
    for seq in (s2,):
        with pytest.raises(NotFoundError):
            await js.get_msg(subjects.CHAT_STREAM, seq)
    assert (await js.get_msg(subjects.CHAT_STREAM, d2)).seq == d2
    assert (await js.get_msg(subjects.CHAT_STREAM, s1)).seq == s1  # not deleted: kept


async def test_a_deleted_messages_edits_are_erased_from_the_stream_too(
    nats_url: str, db_url: str, client: NATS
) -> None:
    js = client.jetstream()
    room = new_room()
    async with running(nats_url, db_url):
        s1 = await send(js, room, "v1", msg_id="m_gone")
        e1 = await change(js, room, "m_gone", "edit", "v2 private")
        d1 = await change(js, room, "m_gone", "delete")
        late = await change(js, room, "m_gone", "edit", "v3 raced the delete")
        await history(client, room)  # everything stored

        async def erased(seq: int) -> bool:
            try:
                await js.get_msg(subjects.CHAT_STREAM, seq)
            except NotFoundError:
                return True
            return False

        deadline = time.monotonic() + 5 * UNIT
        while not all([await erased(s) for s in (s1, e1, late)]):
            assert time.monotonic() < deadline, "stream still holds deleted text"
            await asyncio.sleep(0.05)
        assert not await erased(d1)
        reply = await history(client, room)
    assert {(m.text, m.deleted) for m in reply.messages} == {(None, True)}


async def test_changes_apply_in_seq_order_once_whatever_the_batches(
    nats_url: str, db_url: str, client: NATS
) -> None:
    room = new_room()

    def r(seq: int, kind: str, text: str | None) -> MessageRow:
        return MessageRow(room, seq, "m_x", ANN.id, ANN.name, text, None,
                          datetime(2025, 6, 1, tzinfo=UTC), kind)  # type: ignore[arg-type]

    async with running(nats_url, db_url) as component:
        store = component.store
        # A message and its edit in one batch (a send edited within the linger).
        assert await store.insert([r(10, "edit", "v2"), r(5, "message", "v1")]) == 2
        # An older edit committed late by another instance changes nothing.
        assert await store.insert([r(8, "edit", "v0")]) == 1
        (page, _) = await store.page(room, before=None, after=None, limit=10)
        assert [(m.seq, m.text) for m in page] == [(5, "v2"), (8, "v2"), (10, "v2")]
        # A delete is final: a later edit does not bring the text back.
        await store.insert([r(12, "delete", None), r(14, "edit", "again")])
        (page, _) = await store.page(room, before=None, after=None, limit=10)
        assert {(m.text, m.deleted) for m in page} == {(None, True)}
        # A replayed batch is a no-op.
        assert await store.insert([r(12, "delete", None), r(14, "edit", "again")]) == 0


async def test_pages_leave_out_excluded_senders_and_keep_their_chain(
    nats_url: str, db_url: str, client: NATS
) -> None:
    room = new_room()
    ts = datetime(2025, 6, 1, tzinfo=UTC)
    rows = [MessageRow(room, seq, f"m{seq}", "u_bad" if seq % 2 else ANN.id, "x", f"t{seq}",
                       None, ts) for seq in range(1, 9)]
    async with running(nats_url, db_url) as component:
        await component.store.insert(rows)
        newest, _ = await component.store.page(room, before=None, after=None, limit=10,
                                               exclude=["u_bad"])
        assert [m.seq for m in newest] == [2, 4, 6, 8]
        assert chain_ok(newest, 0)
        after, more = await component.store.page(room, before=None, after=4, limit=1,
                                                 exclude=["u_bad"])
        assert [(m.seq, m.prev_seq) for m in after] == [(6, 4)] and more
