"""chat_contract.mentions: the names ``@name`` in a text may mention (docs/protocol.md §3.3)."""

from __future__ import annotations

from chat_contract import limits
from chat_contract.mentions import may_mention, mention_names


def test_names_in_order_lowercased_once() -> None:
    assert mention_names("hi @Alice and @bob, @ALICE again") == ["alice", "bob"]


def test_no_at_sign_costs_nothing_and_finds_nothing() -> None:
    assert not may_mention("plain text")
    assert mention_names("plain text") == []


def test_an_email_address_is_no_mention() -> None:
    assert mention_names("write to alice@example.org") == []


def test_sentence_punctuation_gives_both_candidates() -> None:
    assert mention_names("thanks @bob.") == ["bob.", "bob"]
    assert mention_names("ask @carol-- she knows") == ["carol--", "carol"]
    assert mention_names("(@dave)") == ["dave"]


def test_names_outside_the_username_pattern_are_ignored() -> None:
    assert mention_names("@ab is too short, @" + "x" * 33 + " too long, @ alone") == []
    assert mention_names("@" + "x" * 32) == ["x" * 32]


def test_at_most_mentions_max_names() -> None:
    text = " ".join(f"@user{i:03d}" for i in range(limits.MENTIONS_MAX + 5))
    names = mention_names(text)
    assert len(names) == limits.MENTIONS_MAX
    assert names[0] == "user000"
