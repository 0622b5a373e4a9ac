"""chat_gateway.typists: typing notices coalesced on the way out, expired on the way in."""

from __future__ import annotations

from chat_contract.events import User
from chat_gateway.typists import COALESCE, TYPING_TTL, Incoming, Outgoing

ANN = User(id="u_ann", name="Ann")


def test_outgoing_coalesces_starts_with_a_trailing_refresh() -> None:
    out = Outgoing()
    key = ("r", ANN.id)
    assert out.start(key, ANN, 100.0)
    assert not any(out.start(key, ANN, 100.0 + i * 0.1) for i in range(1, 20))
    assert out.due(101.0) == []
    due = out.due(100.0 + COALESCE)
    assert len(due) == 1 and due[0][:2] == (key, ANN)
    assert abs(due[0][2] - (COALESCE - 1.9)) < 1e-9  # age of the last start it stands for
    assert out.due(100.0 + 2 * COALESCE) == []
    assert out.stop(key)
    assert not out.stop(key)  # one stop per published start


def test_outgoing_start_stop_flapping_is_bounded() -> None:
    out = Outgoing()
    key = ("r", ANN.id)
    published = 0
    t = 0.0
    while t < 30.0:
        published += out.start(key, ANN, t) + out.stop(key)
        published += len(out.due(t))
        t += 0.1
    assert published <= 2 * (30.0 / COALESCE + 1)


def test_outgoing_forgets_idle_typists() -> None:
    out = Outgoing()
    key = ("r", ANN.id)
    out.start(key, ANN, 0.0)
    out.due(TYPING_TTL + 1)
    assert key not in out.typists


def test_incoming_relays_first_start_and_expires() -> None:
    room = Incoming()
    assert room.start(ANN, 10.0, 0.0)
    assert not room.start(ANN, 12.0, 1.0)  # a refresh: deadline 12 + 6 - 1
    assert room.expired(16.9) == []
    assert room.expired(17.0) == [ANN]
    assert room.stop(ANN.id) is None
    assert room.start(ANN, 20.0, 0.0)
    assert room.stop(ANN.id) == ANN
