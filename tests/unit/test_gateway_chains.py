"""chat_gateway.chains: the prev_seq a blocker is owed after skipped events."""

from __future__ import annotations

from chat_gateway.chains import Chains


def test_chains_owe_the_first_skipped_prev_only() -> None:
    chains: Chains[str] = Chains()
    assert not chains and chains.prev_for("a", 5) is None
    chains.skip("a", 5)
    chains.skip("a", 6)  # a second skip in a row keeps the first link
    assert chains
    assert chains.prev_for("a", 7) == 5
    assert not chains and chains.prev_for("a", 8) is None


def test_chains_owed_equal_to_prev_needs_no_copy_and_forget_clears() -> None:
    chains: Chains[str] = Chains()
    chains.skip("a", 4)
    assert chains.prev_for("a", 4) is None
    chains.skip("b", 1)
    chains.forget("b")
    assert not chains
