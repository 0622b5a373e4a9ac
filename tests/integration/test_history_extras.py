"""Reactions, threads and mentions in history-service (svc.rooms.react,
svc.rooms.resolve, history items, thread pages, unread mentions) against real
NATS, PostgreSQL and auth-service: records reach storage the real way (the
CHAT stream and the history consumer), requests go over NATS like a gateway's.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from test_rooms_service import (
    Stack,
    block,
    create,
    fails,
    join,
    member,
    mine,
    new_room,
    read,
    rpc,
    running_stack,
    stored,
)

from chat_contract import subjects
from chat_contract.bus import (
    ChatRecord,
    HistoryReply,
    HistoryRequest,
    ReactGrant,
    ReactRequest,
    ResolveReply,
    ResolveRequest,
)
from chat_contract.errors import ErrorCode
from chat_contract.events import Message, ReactionCount, ReactionEvent, ThreadInfo, User
from chat_kit.bus import publish_durable

pytestmark = pytest.mark.integration

TS = "2025-06-01T12:00:00.123Z"
CAP = 3  # CHAT_HISTORY_REACTIONS_PER_MESSAGE for these tests


@pytest.fixture
async def stack(nats_url: str, db_url: str, tmp_path: Path) -> AsyncIterator[Stack]:
    async with running_stack(nats_url, db_url, tmp_path, reactions_per_message=CAP) as s:
        yield s


async def publish(s: Stack, record: ChatRecord) -> int:
    ack = await publish_durable(s.nc, subjects.room_subject(record.room),
                                msgspec.json.encode(record), 10.0)
    await stored(s, record.room, ack.seq)
    return ack.seq


async def say(s: Stack, room: str, who: User, text: str, *, thread: str | None = None,
              mentions: list[str] | None = None) -> tuple[str, int]:
    msg_id = "m_" + uuid.uuid4().hex
    seq = await publish(s, ChatRecord(room=room, msg_id=msg_id, sender=who, ts=TS, text=text,
                                      thread=thread, mentions=mentions or []))
    return msg_id, seq


async def react(s: Stack, room: str, who: User, msg_id: str, emoji: str,
                on: bool = True) -> ReactGrant:
    """Ask the grant; publish the event when it says so (as the gateway does)."""
    grant = await rpc(s.nc, subjects.ROOMS_REACT, ReactRequest(
        caller=who, room=room, msg_id=msg_id, emoji=emoji, on=on), ReactGrant)
    if grant.publish:
        await publish(s, ChatRecord(room=room, msg_id=msg_id, sender=who, ts=TS,
                                    kind="react" if on else "unreact", text=emoji))
    return grant


async def page(s: Stack, room: str, reader: User | None, **kw: object) -> HistoryReply:
    return await rpc(s.nc, subjects.HISTORY_MESSAGES, HistoryRequest(
        room=room, user=reader.id if reader else None, **kw), HistoryReply)  # type: ignore[arg-type]


def messages(reply: HistoryReply) -> dict[str, Message]:
    """The latest item of each message on the page."""
    return {m.msg_id: m for m in reply.messages if isinstance(m, Message)}


def chain_ok(reply: HistoryReply) -> None:
    prev = reply.messages[0].prev_seq
    for item in reply.messages:
        assert item.prev_seq == prev
        prev = item.seq


async def public_room(s: Stack, *members: User) -> str:
    room = new_room()
    for who in members:
        await join(s, who, room)
    return room


# --- reactions --------------------------------------------------------------------------


async def test_reactions_are_events_in_history_and_aggregated_per_reader(stack: Stack) -> None:
    s = stack
    room = await public_room(s, s.ann, s.bob, s.cat)
    m1, _ = await say(s, room, s.ann, "hello")
    assert (await react(s, room, s.bob, m1, "👍")).publish
    assert (await react(s, room, s.cat, m1, "👍")).publish
    assert (await react(s, room, s.cat, m1, "🎉")).publish

    reply = await page(s, room, s.bob)
    chain_ok(reply)
    kinds = [type(m).__name__ for m in reply.messages]
    assert kinds == ["Message", "ReactionEvent", "ReactionEvent", "ReactionEvent"]
    first = reply.messages[1]
    assert isinstance(first, ReactionEvent)
    assert (first.msg_id, first.user, first.emoji, first.on) == (m1, s.bob, "👍", True)
    assert messages(reply)[m1].reactions == [ReactionCount("👍", 2, True),
                                             ReactionCount("🎉", 1, False)]
    ann_view = messages(await page(s, room, s.ann))[m1]
    assert ann_view.reactions == [ReactionCount("👍", 2, False), ReactionCount("🎉", 1, False)]
    # A trusted read (gap repair: live events) carries no aggregates.
    assert messages(await page(s, room, None))[m1].reactions is None


async def test_one_of_each_emoji_per_user_a_repeat_publishes_nothing(stack: Stack) -> None:
    s = stack
    room = await public_room(s, s.ann, s.bob)
    m1, _ = await say(s, room, s.ann, "hello")
    first = await react(s, room, s.bob, m1, "👍")
    assert first.publish
    last = (await page(s, room, s.bob)).messages[-1].seq
    again = await react(s, room, s.bob, m1, "👍")
    assert not again.publish and again.seq == last  # the event that set it
    never = await react(s, room, s.bob, m1, "🎉", on=False)
    assert not never.publish and never.seq == 0
    off = await react(s, room, s.bob, m1, "👍", on=False)
    assert off.publish
    reply = await page(s, room, s.bob)
    assert messages(reply)[m1].reactions is None
    assert [(m.emoji, m.on) for m in reply.messages if isinstance(m, ReactionEvent)] == [
        ("👍", True), ("👍", False)]
    off_again = await react(s, room, s.bob, m1, "👍", on=False)
    assert not off_again.publish and off_again.seq == reply.messages[-1].seq


async def test_a_replayed_older_reaction_changes_nothing(stack: Stack) -> None:
    s = stack
    room = await public_room(s, s.ann, s.bob)
    m1, _ = await say(s, room, s.ann, "hello")
    await react(s, room, s.bob, m1, "👍")
    await react(s, room, s.bob, m1, "👍", on=False)
    # The same two events again, as another consumer instance might commit
    # them late (the state row keeps the newest seq).
    conn_seq = (await page(s, room, s.bob)).messages
    on_seq = conn_seq[1].seq
    from chat_history.records import MessageRow, parse_ts
    old = MessageRow(room=room, seq=on_seq, msg_id=m1, sender_id=s.bob.id,
                     sender_name=s.bob.name, text="👍", reply_to=None, ts=parse_ts(TS),
                     kind="react")
    await s.history.store.insert([old])
    assert messages(await page(s, room, s.bob))[m1].reactions is None


async def test_reaction_refusals(stack: Stack) -> None:
    s = stack
    room = await public_room(s, s.ann, s.bob)
    m1, _ = await say(s, room, s.ann, "hello")
    other = await public_room(s, s.ann)
    m_other, _ = await say(s, other, s.ann, "elsewhere")
    # Not a member (a public room cat never joined).
    await fails(ErrorCode.FORBIDDEN, react(s, room, s.cat, m1, "👍"))
    # Not one emoji.
    await fails(ErrorCode.BAD_REQUEST, react(s, room, s.bob, m1, "+1"))
    # Unknown, another room's, deleted.
    await fails(ErrorCode.NOT_FOUND, react(s, room, s.bob, "m_nope", "👍"))
    await fails(ErrorCode.NOT_FOUND, react(s, room, s.bob, m_other, "👍"))
    m2, _ = await say(s, room, s.ann, "soon gone")
    await react(s, room, s.bob, m2, "👍")
    await publish(s, ChatRecord(room=room, msg_id=m2, sender=s.ann, ts=TS, kind="delete"))
    await fails(ErrorCode.NOT_FOUND, react(s, room, s.bob, m2, "🎉"))
    # Its reactions went with it.
    assert messages(await page(s, room, s.bob))[m2].reactions is None
    # A private room the caller may not see: not_found, like an unknown room.
    secret = new_room()
    await create(s, s.ann, secret, visibility="private")
    m3, _ = await say(s, secret, s.ann, "psst")
    await fails(ErrorCode.NOT_FOUND, react(s, secret, s.bob, m3, "👍"))
    # At most CAP distinct emoji on one message; more of one already there is fine.
    for emoji in ("😀", "😁", "😂"):
        await react(s, room, s.bob, m1, emoji)
    await fails(ErrorCode.TOO_LARGE, react(s, room, s.bob, m1, "🤣"))
    assert (await react(s, room, s.ann, m1, "😀")).publish
    reactions = messages(await page(s, room, s.ann))[m1].reactions
    assert reactions is not None and [(r.emoji, r.count, r.me) for r in reactions] == [
        ("😀", 2, True), ("😁", 1, False), ("😂", 1, False)]


async def test_a_blocker_sees_none_of_the_blocked_users_reactions(stack: Stack) -> None:
    s = stack
    room = await public_room(s, s.ann, s.bob, s.cat)
    m1, _ = await say(s, room, s.ann, "hello")
    await react(s, room, s.bob, m1, "👍")
    await react(s, room, s.cat, m1, "👍")
    await block(s, s.ann, s.bob.id)
    reply = await page(s, room, s.ann)
    chain_ok(reply)
    assert all(m.user != s.bob for m in reply.messages if isinstance(m, ReactionEvent))
    assert messages(reply)[m1].reactions == [ReactionCount("👍", 1, False)]
    assert messages(await page(s, room, s.cat))[m1].reactions == [
        ReactionCount("👍", 2, True)]


async def test_unread_and_last_message_ignore_reactions(stack: Stack) -> None:
    s = stack
    room = await public_room(s, s.ann, s.bob)
    m1, seq = await say(s, room, s.ann, "hello")
    await read(s, s.bob, room, seq)
    await react(s, room, s.ann, m1, "👍")
    view = (await mine(s, s.bob))[room]
    assert view.unread == 0
    assert view.last_message is not None and view.last_message.msg_id == m1


# --- threads ----------------------------------------------------------------------------


async def test_resolve_checks_the_thread_root(stack: Stack) -> None:
    s = stack
    room = await public_room(s, s.ann, s.bob)
    root, _ = await say(s, room, s.ann, "root")
    ok = await rpc(s.nc, subjects.ROOMS_RESOLVE, ResolveRequest(
        caller=s.bob, room=room, thread=root), ResolveReply)
    assert ok.thread == root and ok.mentions == []
    reply_id, _ = await say(s, room, s.bob, "a reply", thread=root)
    # A reply's thread is its root's.
    again = await rpc(s.nc, subjects.ROOMS_RESOLVE, ResolveRequest(
        caller=s.bob, room=room, thread=reply_id), ResolveReply)
    assert again.thread == root
    other = await public_room(s, s.ann)
    elsewhere, _ = await say(s, other, s.ann, "other room")
    for bad in (elsewhere, "m_unknown", "x" * 65):
        await fails(ErrorCode.BAD_REQUEST, rpc(s.nc, subjects.ROOMS_RESOLVE, ResolveRequest(
            caller=s.bob, room=room, thread=bad), ResolveReply))
    await fails(ErrorCode.FORBIDDEN, rpc(s.nc, subjects.ROOMS_RESOLVE, ResolveRequest(
        caller=s.cat, room=room, thread=root), ResolveReply))


async def test_thread_pages_and_thread_info(stack: Stack) -> None:
    s = stack
    room = await public_room(s, s.ann, s.bob, s.cat)
    root, _ = await say(s, room, s.ann, "root")
    replies = []
    for i in range(5):
        replies.append(await say(s, room, (s.bob, s.cat)[i % 2], f"r{i}", thread=root))
        await say(s, room, s.ann, f"main {i}")
    whole = await page(s, room, s.ann)
    info = messages(whole)[root].thread_info
    assert info == ThreadInfo(count=5, last_seq=replies[-1][1])
    assert messages(whole)[replies[0][0]].thread == root

    thread = await page(s, room, s.ann, thread=root)
    assert [m.msg_id for m in thread.messages] == [r[0] for r in replies]
    assert not thread.has_more
    chain_ok(thread)
    assert thread.messages[0].prev_seq == 0
    # Paged like history.
    newest = await page(s, room, s.ann, thread=root, limit=2)
    assert [m.msg_id for m in newest.messages] == [r[0] for r in replies[3:]]
    assert newest.has_more and newest.messages[0].prev_seq == replies[2][1]
    older = await page(s, room, s.ann, thread=root, limit=2, before=newest.messages[0].seq)
    assert [m.msg_id for m in older.messages] == [r[0] for r in replies[1:3]]
    after = await page(s, room, s.ann, thread=root, limit=2, after=replies[1][1])
    assert [m.msg_id for m in after.messages] == [r[0] for r in replies[2:4]]
    assert after.messages[0].prev_seq == replies[1][1] and after.has_more

    # A blocker's count and page leave the blocked user's replies out.
    await block(s, s.ann, s.cat.id)
    mine_view = await page(s, room, s.ann, thread=root)
    assert [m.msg_id for m in mine_view.messages] == [r[0] for r in replies[0::2]]
    assert messages(await page(s, room, s.ann))[root].thread_info == ThreadInfo(
        count=3, last_seq=replies[4][1])
    # An unknown root, and a room the caller may not see: not_found.
    await fails(ErrorCode.NOT_FOUND, page(s, room, s.ann, thread="m_unknown"))
    await fails(ErrorCode.NOT_FOUND, page(s, room, s.ann, thread="m\x00"))
    secret = new_room()
    await create(s, s.ann, secret, visibility="private")
    hidden_root, _ = await say(s, secret, s.ann, "psst")
    await fails(ErrorCode.NOT_FOUND, page(s, secret, s.bob, thread=hidden_root))


# --- mentions ---------------------------------------------------------------------------


async def test_resolve_names_members_only(stack: Stack) -> None:
    s = stack
    room = await public_room(s, s.ann, s.bob)
    got = await rpc(s.nc, subjects.ROOMS_RESOLVE, ResolveRequest(
        caller=s.ann, room=room, names=[s.bob.name.upper(), s.cat.name, "nobody_here"]),
        ResolveReply)
    assert got.mentions == [s.bob.id] and got.thread is None  # cat is no member


async def test_unread_mentions_in_the_room_list(stack: Stack) -> None:
    s = stack
    room = new_room()
    await create(s, s.ann, room, visibility="private")
    await member(s, s.ann, room, s.bob.id, True)
    await member(s, s.ann, room, s.cat.id, True)
    _, _ = await say(s, room, s.ann, "hi @bob", mentions=[s.bob.id])
    gone, _ = await say(s, room, s.ann, "@bob gone", mentions=[s.bob.id])
    await publish(s, ChatRecord(room=room, msg_id=gone, sender=s.ann, ts=TS, kind="delete"))
    await say(s, room, s.cat, "@bob from cat", mentions=[s.bob.id])
    _, seq = await say(s, room, s.ann, "no mention")
    assert (await mine(s, s.bob))[room].mentions == 2
    assert (await mine(s, s.ann))[room].mentions == 0
    await block(s, s.bob, s.cat.id)
    assert (await mine(s, s.bob))[room].mentions == 1
    await read(s, s.bob, room, seq)
    view = (await mine(s, s.bob))[room]
    assert view.mentions == 0 and view.unread == 0
    item = [m for m in (await page(s, room, s.bob)).messages
            if isinstance(m, Message) and m.text == "hi @bob"]
    assert item[0].mentions == [s.bob.id]
