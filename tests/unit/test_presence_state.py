"""chat_presence.state: presence aggregated per (room, user) across sessions, without I/O."""

from __future__ import annotations

from chat_contract.events import User
from chat_presence.state import PresenceState, split_announced_key, split_live_key

ANN = User(id="u_ann", name="Ann")
BOB = User(id="u_bob", name="bob")


def test_user_present_while_any_session_lives() -> None:
    st = PresenceState()
    pair = st.put_live("r", ANN, "s1")
    st.put_live("r", ANN, "s2")
    assert st.diff(pair) == ("join", ANN, 0)
    st.set_announced(pair, 7, ANN)
    assert st.diff(pair) is None
    st.drop_live("r", ANN.id, "s1")
    assert st.diff(pair) is None and st.members("r") == [ANN]
    st.drop_live("r", ANN.id, "s2")
    assert st.diff(pair) == ("leave", ANN, 7)
    assert st.members("r") == [] and "r" not in st.rooms
    st.drop_announced(pair)
    assert st.diff(pair) is None and st.all_pairs() == set()


def test_members_sorted_and_keys_split() -> None:
    st = PresenceState()
    st.put_live("r", BOB, "s1")
    st.put_live("r", ANN, "s2")
    assert st.members("r") == [ANN, BOB]
    assert st.live_entries() == 2
    st.put_live("r", BOB, "s1")  # a refresh of a known entry
    st.put_live("r", BOB, "s3")
    st.drop_live("r", ANN.id, "gone")  # an unknown session
    assert st.live_entries() == 3
    st.drop_live("r", BOB.id, "s1")
    st.drop_live("r", BOB.id, "s1")
    assert st.live_entries() == sum(len(s) for s in st.sessions.values()) == 2
    assert split_live_key("room.u_1.s_2") == ("room", "u_1", "s_2")
    assert split_live_key("room.u_1") is None and split_live_key("a..b") is None
    assert split_announced_key("room.u_1") == ("room", "u_1")
    assert split_announced_key("room.u_1.s") is None


def test_online_anywhere_counts_rooms_not_sessions() -> None:
    st = PresenceState()
    assert not st.online(ANN.id)
    st.put_live("r1", ANN, "s1")
    st.put_live("r1", ANN, "s2")  # a second tab in the same room
    st.put_live("r2", ANN, "s1")  # the same connection in another room
    st.put_live("r2", ANN, "s1")  # a refresh
    assert st.online(ANN.id) and st.users == {ANN.id: 2}
    assert not st.online(BOB.id)
    st.drop_live("r1", ANN.id, "s1")
    assert st.users == {ANN.id: 2}  # s2 still holds r1
    st.drop_live("r1", ANN.id, "s2")
    assert st.online(ANN.id) and st.users == {ANN.id: 1}
    st.drop_live("r2", ANN.id, "unknown")  # an unknown session changes nothing
    assert st.online(ANN.id)
    st.drop_live("r2", ANN.id, "s1")
    st.drop_live("r2", ANN.id, "s1")  # twice (a delete and an expiry marker)
    assert not st.online(ANN.id) and st.users == {}
    # Across users: each counted on its own.
    st.put_live("r", ANN, "a")
    st.put_live("r", BOB, "b")
    st.drop_live("r", BOB.id, "b")
    assert st.online(ANN.id) and not st.online(BOB.id)
