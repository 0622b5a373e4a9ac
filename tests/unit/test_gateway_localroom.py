"""chat_gateway.localroom: one member map, fan-out of one frame, blocks at
delivery with the blocker's prev_seq chain kept unbroken, the join replay."""

from __future__ import annotations

from typing import Any, cast

import msgspec
from gateway_fakes import ANN, BOB, EVE, Sock, conn

from chat_contract.events import Message, PresenceEvent, ReadEvent, User, encode
from chat_gateway.localroom import JOINING, LocalRoom


def msg(seq: int, prev: int, sender: User, **kw: Any) -> Message:
    return Message(room="r", msg_id=f"m{seq}", seq=seq, prev_seq=prev, sender=sender,
                   ts="2024-01-01T00:00:00.000Z", text="hi", **kw)


def room_with(*members: tuple[Sock, int], last: int = 0) -> LocalRoom:
    room = LocalRoom("r")
    room.members = {conn(s): floor for s, floor in members}
    room.last_seq = last
    return room


def test_blocker_gets_no_event_of_the_blocked_and_an_unbroken_chain() -> None:
    plain, blocker = Sock(ANN), Sock(BOB, {EVE.id})
    room = room_with((plain, 0), (blocker, 0))
    room.relay(msg(1, 0, ANN))
    room.relay(msg(2, 1, EVE))
    room.relay(msg(3, 2, EVE, edited=True))
    room.relay(msg(5, 3, ANN))
    room.relay(msg(6, 5, ANN))
    assert plain.chain() == [(1, 0), (2, 1), (3, 2), (5, 3), (6, 5)]
    assert blocker.chain() == [(1, 0), (5, 1), (6, 5)]
    # Everyone else shares one frame; only the blocker's re-linked one differs.
    assert plain.frames[3] != blocker.frames[1] and plain.frames[4] == blocker.frames[2]
    assert not room.chains and room.last_seq == 6


def test_blocked_sender_as_first_event_links_to_the_join_floor() -> None:
    blocker = Sock(BOB, {EVE.id})
    room = room_with((blocker, 10), last=10)
    room.relay(msg(11, 10, EVE))
    room.relay(msg(12, 11, ANN))
    assert blocker.chain() == [(12, 10)]


def test_a_real_gap_stays_visible_to_a_blocker() -> None:
    blocker = Sock(BOB, {EVE.id})
    room = room_with((blocker, 0), last=3)
    room.relay(msg(4, 3, EVE))  # what the member holds ends before 3
    room.relay(msg(5, 4, ANN))
    assert blocker.chain() == [(5, 3)]


def test_events_at_or_below_the_floor_are_not_written() -> None:
    a, b = Sock(ANN), Sock(BOB)
    room = room_with((a, 0), (b, 2))
    for seq in (1, 2, 3):
        room.relay(msg(seq, seq - 1, EVE))
    assert [s for s, _ in a.chain()] == [1, 2, 3] and [s for s, _ in b.chain()] == [3]


def test_admit_replays_above_the_floor_filtered_and_relinked_for_a_blocker() -> None:
    room = room_with()
    for seq, sender in ((1, ANN), (2, EVE), (3, ANN)):
        room.relay(msg(seq, seq - 1, sender))
    blocker, plain = Sock(BOB, {EVE.id}), Sock(ANN)
    room.admit(conn(blocker), 0)
    room.admit(conn(plain), 1)
    assert blocker.chain() == [(1, 0), (3, 1)]
    assert plain.chain() == [(2, 1), (3, 2)]
    assert room.members[conn(blocker)] == 3 and room.members[conn(plain)] == 3


def test_admit_links_to_what_a_blockers_missed_ended_with() -> None:
    # join since=2: missed (blocked senders left out) ended at 3, the room at 5
    room = room_with(last=5)
    blocker = Sock(BOB, {EVE.id})
    room.admit(conn(blocker), 5, held=3)
    room.relay(msg(6, 5, ANN))
    assert blocker.chain() == [(6, 3)]


def test_a_second_admit_never_doubles_delivery() -> None:
    a = Sock(ANN)
    room = room_with((a, 0))
    room.relay(msg(1, 0, EVE))
    room.admit(conn(a), 0)  # a second join of the same room
    assert a.chain() == [(1, 0)] and room.members[conn(a)] == 0


def test_a_joining_member_gets_presence_but_nothing_sequenced_until_admitted() -> None:
    joiner, member = Sock(ANN), Sock(BOB)
    room = room_with((joiner, JOINING), (member, 0))
    room.relay(msg(1, 0, EVE))
    room.tell_joined(encode(ReadEvent(room="r", user=EVE, seq=1)))
    room.tell_all(encode(PresenceEvent(room="r", event="join", user=ANN, ts="t")), ANN.id,
                  skip_self=False)
    assert [type(e) for e in joiner.events()] == [PresenceEvent]
    assert len(member.frames) == 3
    assert room.joined() == [conn(member)]
    room.admit(conn(joiner), 0)  # its join returned last_seq 0: the replay brings seq 1
    assert joiner.chain() == [(1, 0)] and room.joined() == [conn(joiner), conn(member)]


def test_tell_all_skips_blockers_of_the_user_and_with_skip_self_their_own() -> None:
    eve, blocker, plain = Sock(EVE), Sock(BOB, {EVE.id}), Sock(ANN)
    room = room_with((eve, 0), (blocker, 0), (plain, 0))
    room.tell_all(b"{}", EVE.id, skip_self=True)
    assert (len(eve.frames), len(blocker.frames), len(plain.frames)) == (0, 0, 1)


def test_a_member_who_unblocked_gets_its_owed_link_once_then_shared_frames() -> None:
    blocker, plain = Sock(BOB, {EVE.id}), Sock(ANN)
    room = room_with((blocker, 0), (plain, 0))
    room.relay(msg(1, 0, EVE))
    blocker.blocked = set()  # a BlocksNotice emptied the set
    room.relay(msg(2, 1, ANN))
    room.relay(msg(3, 2, ANN))
    assert blocker.chain() == [(2, 0), (3, 2)]
    assert blocker.frames[1] == plain.frames[2] and not room.chains


def test_unblocked_members_never_touch_the_chains() -> None:
    a, b = Sock(ANN), Sock(BOB)
    room = room_with((a, 0), (b, 0))
    room.relay(msg(1, 0, EVE))
    assert a.frames == b.frames and len(a.frames) == 1 and not room.chains


def test_a_join_whose_floor_left_the_replay_buffer_sees_a_hole() -> None:
    room = LocalRoom("r3")
    assert not room.has_hole(0)
    event = cast(Message, None)  # not looked at by has_hole
    room.recent.extend([(10, 7, b"", event), (12, 10, b"", event)])
    assert not room.has_hole(7)  # the buffer reaches back to the floor
    assert not room.has_hole(9)
    assert room.has_hole(5)  # events in (5, 7] are gone from the buffer


def test_drop_forgets_the_member_and_its_owed_link() -> None:
    blocker = Sock(BOB, {EVE.id})
    room = room_with((blocker, 0))
    room.relay(msg(1, 0, EVE))
    assert room.chains
    room.drop(conn(blocker))
    assert not room.members and not room.chains
    assert msgspec.to_builtins(room.recent[-1][3])["seq"] == 1


def test_missed_since_answers_plain_messages_from_the_replay_buffer() -> None:
    room = room_with(last=0)
    for seq, prev in ((1, 0), (3, 1), (4, 3), (7, 4)):
        room.relay(msg(seq, prev, ANN))
    assert [m.seq for m in room.missed_since(3) or []] == [4, 7]
    assert [m.seq for m in room.missed_since(2) or []] == [3, 4, 7]  # 2 itself was never a seq
    assert [m.seq for m in room.missed_since(0) or []] == [1, 3, 4, 7]
    assert room.missed_since(7) == [] and room.known_last_seq() == 7


def test_missed_since_defers_to_history_when_the_buffer_cannot_say() -> None:
    room = room_with(last=10)
    room.relay(msg(12, 10, ANN))
    room.relay(msg(13, 12, ANN))
    assert room.missed_since(5) is None  # the buffer starts after 10: 6..10 unknown
    edited = room_with(last=0)
    edited.relay(msg(1, 0, ANN))
    edited.relay(msg(2, 1, ANN, edited=True))
    assert edited.missed_since(0) is None  # history shows message 1 in its edited state
    assert edited.missed_since(2) == []
    threaded = room_with(last=0)
    threaded.relay(msg(1, 0, ANN))
    threaded.relay(msg(2, 1, ANN, thread="m1"))
    assert threaded.missed_since(0) is None  # the root's thread_info is history's


def test_known_last_seq_only_while_the_room_is_in_step() -> None:
    room = room_with(last=-1)
    assert room.known_last_seq() is None  # never looked up
    room.last_seq = 4
    room.backlog = [(6, 5, b"")]
    assert room.known_last_seq() is None  # a gap repair is under way
    room.backlog = None
    room.closed = True
    assert room.known_last_seq() is None
