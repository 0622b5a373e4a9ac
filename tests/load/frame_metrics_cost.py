"""Per-frame cost of the request metrics on the gateway's send path (issue 15).

Drives chat_gateway.session.Session as the endpoint does for one ``send``
frame (receive_text, calls_to_make, succeeded, data_to_send, then the
endpoint's ``chat_send_ack_seconds`` observation), with the metrics live and
with them replaced by no-ops, interleaved, and prints the best CPU time
(process_time) per frame of each: the difference is what counting costs.
Then the single operations. Run: ``.venv/bin/python tests/load/frame_metrics_cost.py``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from chat_contract.claims import AccessClaims
from chat_gateway import session as s
from chat_kit import metrics

N = 20_000
ROUNDS = 30
RESULT = {"msg_id": "m_abc_1", "seq": 1, "ts": "2026-12-07T14:00:00.000Z"}


class _Noop:
    def inc(self, amount: float = 1) -> None:
        pass

    def observe(self, amount: float) -> None:
        pass


def _open_session() -> s.Session:
    rules = s.Rules(node="gw", heartbeat=25, send_rate=1e12, send_burst=10**9)
    session = s.Session(rules, "s_1", {"r"}, lambda _: False, 0.0)
    session.connect("t")
    [call] = session.calls_to_make()
    now = int(time.time())
    session.succeeded(call, AccessClaims(sub="u", name="u", iss="i", aud="a", iat=now,
                                         exp=now + 3600, jti="j"))
    session.data_to_send()
    return session


def run(live: bool) -> float:
    """µs of CPU per send frame, acked."""
    session = _open_session()
    frame = json.dumps({"type": "send", "id": "1", "room": "r", "text": "hello there"})
    noop = _Noop()
    saved: dict[str, Any] = {"ws_request": metrics.ws_request, "SEND_ACK": metrics.SEND_ACK}
    if not live:
        metrics.ws_request = lambda type_, outcome: noop
        metrics.SEND_ACK = noop  # type: ignore[assignment]
    ack = metrics.SEND_ACK
    mono = time.monotonic
    try:
        t0 = time.process_time()
        for _ in range(N):
            session.receive_text(frame, mono())
            for c in session.calls_to_make():
                session.succeeded(c, RESULT)
                session.data_to_send()
                if type(c) is s.SendMessage:
                    ack.observe(mono() - c.received)
        return (time.process_time() - t0) / N * 1e6
    finally:
        metrics.ws_request = saved["ws_request"]
        metrics.SEND_ACK = saved["SEND_ACK"]


def best_ns(fn: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(ROUNDS):
        t0 = time.process_time()
        for _ in range(N):
            fn()
        best = min(best, time.process_time() - t0)
    return best / N * 1e9


def main() -> None:
    offs, ons = [], []
    for _ in range(ROUNDS):  # interleaved; the best of each is the least disturbed run
        offs.append(run(False))
        ons.append(run(True))
    off, on = min(offs), min(ons)
    print(f"send frame: {off:.2f} µs without metrics, {on:.2f} µs with: +{on - off:.2f} µs")
    child = metrics.ws_request("send", "ok")
    ops: list[tuple[str, Callable[[], object]]] = [
        ("metrics.ws_request('send', 'ok').inc()", lambda: metrics.ws_request("send", "ok").inc()),
        ("a resolved child's .inc()", child.inc),
        ("WS_REQUESTS.labels('send', 'ok').inc()",
         lambda: metrics.WS_REQUESTS.labels("send", "ok").inc()),
        ("SEND_ACK.observe(0.003)", lambda: metrics.SEND_ACK.observe(0.003)),
    ]
    for label, fn in ops:
        print(f"{label}: {best_ns(fn):.0f} ns")


if __name__ == "__main__":
    main()
