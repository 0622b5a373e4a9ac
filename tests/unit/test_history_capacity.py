"""The per-user admission gate of chat_history.capacity (search, room creation), no I/O."""

from __future__ import annotations

import pytest

from chat_contract.errors import ChatError, ErrorCode
from chat_history.capacity import UserLimiter


def _refused(limiter: UserLimiter, user: str) -> ChatError:
    with pytest.raises(ChatError) as info:
        limiter.enter(user)
    assert info.value.code is ErrorCode.RATE_LIMITED
    assert info.value.retry_after is not None and info.value.retry_after >= 1
    return info.value


def test_concurrency_is_per_user_and_freed_on_leave() -> None:
    gate = UserLimiter(2, 0, 60.0, "searches")
    gate.enter("u_a")
    gate.enter("u_a")
    _refused(gate, "u_a")
    gate.enter("u_b")  # another user's own slots
    gate.leave("u_a")
    gate.enter("u_a")
    gate.leave("u_a")
    gate.leave("u_a")
    gate.leave("u_a")  # one leave too many is harmless
    gate.enter("u_a")


def test_the_window_counts_attempts_and_says_when_to_retry() -> None:
    gate = UserLimiter(0, 3, 60.0, "new rooms")
    for _ in range(3):
        gate.check("u_a")
        gate.count("u_a")
    err = _refused(gate, "u_a")
    assert err.retry_after is not None and err.retry_after <= 60
    gate.check("u_b")


def test_zero_turns_both_bounds_off() -> None:
    gate = UserLimiter(0, 0, 60.0, "searches")
    for _ in range(1000):
        gate.enter("u_a")
