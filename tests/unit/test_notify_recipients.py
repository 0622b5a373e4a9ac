"""chat_notify.recipients: who is notified of a record, and the levels."""

from __future__ import annotations

from typing import Any

import pytest

from chat_contract.bus import ChatRecord
from chat_contract.events import User
from chat_notify.payload import ELLIPSIS, notification, truncate
from chat_notify.recipients import by_level, candidates, default_level, drop, wanted

ANN = User(id="u_ann", name="ann")
BOB = User(id="u_bob", name="bob")
CAT = User(id="u_cat", name="cat")
DM = "dm-0123456789abcdef"
TS = "2026-12-07T12:00:00.000Z"


def record(room: str, sender: User = ANN, **kw: Any) -> ChatRecord:
    return ChatRecord(room=room, msg_id="m_1", sender=sender, ts=TS, text="hi", **kw)


def test_dm_notifies_every_member_but_the_sender() -> None:
    assert candidates(record(DM), DM, [ANN, BOB]) == {BOB.id: "dm"}
    assert candidates(record(DM, sender=BOB), DM, [ANN, BOB]) == {ANN.id: "dm"}


def test_mentions_anywhere_but_never_the_sender() -> None:
    r = record("lobby", mentions=[BOB.id, ANN.id, CAT.id, BOB.id])
    assert candidates(r, "lobby") == {BOB.id: "mention", CAT.id: "mention"}
    # A plain message in a group room notifies nobody (no per-message notification there).
    assert candidates(record("lobby"), "lobby", [ANN, BOB]) == {}
    # A mention in a DM is a mention (one notification per user).
    assert candidates(record(DM, mentions=[BOB.id]), DM, [ANN, BOB]) == {BOB.id: "mention"}


@pytest.mark.parametrize("kind", ["edit", "delete"])
def test_only_new_messages_notify(kind: str) -> None:
    assert candidates(record(DM, kind=kind, mentions=[BOB.id]), DM, [ANN, BOB]) == {}


def test_levels_and_their_defaults() -> None:
    assert default_level(DM) == "all" and default_level("lobby") == "mentions"
    assert wanted("dm", "all") and wanted("mention", "all")
    assert not wanted("dm", "mentions") and wanted("mention", "mentions")
    assert not wanted("dm", "none") and not wanted("mention", "none")
    found = {BOB.id: "dm", CAT.id: "mention"}
    # Defaults (nothing stored) in a DM: all.
    assert by_level(found, DM, {}) == (found, [])
    keep, skipped = by_level(found, DM, {BOB.id: "mentions", CAT.id: "none"})
    assert keep == {} and skipped == [(BOB.id, "level"), (CAT.id, "level")]
    keep, skipped = by_level({BOB.id: "mention"}, "lobby", {})
    assert keep == {BOB.id: "mention"} and skipped == []
    keep, _ = by_level({BOB.id: "mention"}, "lobby", {BOB.id: "none"})
    assert keep == {}


def test_drop_names_who_and_why() -> None:
    keep, skipped = drop({BOB.id: "dm", CAT.id: "mention"}, {CAT.id, "u_other"}, "online")
    assert keep == {BOB.id: "dm"} and skipped == [(CAT.id, "online")]


def test_the_webhook_body_in_order_and_truncated() -> None:
    r = record(DM, mentions=[])
    r.text = "x" * 250
    n = notification(r, DM, 42, BOB, "dm", 200)
    assert len(n.text) == 200 and n.text.endswith(ELLIPSIS)
    assert n.key == "m_1:u_bob"
    import msgspec

    body = msgspec.json.decode(msgspec.json.encode(n))
    assert list(body) == ["v", "type", "user", "room", "msg_id", "seq", "sender", "text", "ts"]
    assert body["user"] == {"id": BOB.id, "name": "bob"} and body["sender"]["id"] == ANN.id
    assert (body["v"], body["type"], body["seq"], body["ts"]) == (1, "dm", 42, TS)
    assert truncate("short", 200) == "short" and truncate(None, 10) == ""
    assert truncate("abcdef", 3) == "ab" + ELLIPSIS
