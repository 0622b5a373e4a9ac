"""Two users on two gateways: messaging, order, history, reconnects (issue 2)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .client import Session, register_and_login
from .conftest import unique
from .stack import Stack

pytestmark = pytest.mark.e2e


async def _user(stack: Stack, gw: int = 1) -> dict[str, Any]:
    return await register_and_login(stack.gateway(gw).url, unique("user"))


async def test_two_users_on_two_gateways_chat(stack: Stack) -> None:
    alice, bob = await _user(stack, 1), await _user(stack, 2)
    a = await Session.open(stack.ws_url(1), alice["access_token"])
    b = await Session.open(stack.ws_url(2), bob["access_token"])
    assert a.welcome["node"] == "gw-1" and b.welcome["node"] == "gw-2"
    assert a.welcome["user"] == alice["user"]
    room = unique("room")
    ja = await a.request("join", room=room)
    jb = await b.request("join", room=room)
    assert ja["last_seq"] == 0 and ja["missed"] == [] and jb["room"] == room

    ack = await a.request("send", room=room, text="  hello bob  ")
    got = await b.next_event("message")
    assert got["msg_id"] == ack["msg_id"] and got["seq"] == ack["seq"] and got["ts"] == ack["ts"]
    assert got["text"] == "hello bob" and got["prev_seq"] == 0
    assert got["sender"] == alice["user"] and got["room"] == room
    own = await a.next_event("message")  # the sender gets its own event too
    assert own["msg_id"] == ack["msg_id"]

    ack2 = await b.request("send", room=room, text="hi alice", reply_to=ack["msg_id"])
    back = await a.next_event("message")
    assert back["text"] == "hi alice" and back["prev_seq"] == ack["seq"]
    assert back["reply_to"] == ack["msg_id"] and back["seq"] == ack2["seq"] > ack["seq"]
    await a.close()
    await b.close()


async def test_three_senders_two_gateways_unbroken_chain_same_order(stack: Stack) -> None:
    users = [await _user(stack, 1 + i % 2) for i in range(4)]
    room = unique("busy")
    sessions = [await Session.open(stack.ws_url(1 + i % 2), u["access_token"])
                for i, u in enumerate(users)]
    for s in sessions:
        await s.request("join", room=room)
    senders, observer = sessions[:3], sessions[3]
    per_sender = [67, 67, 66]  # 200 messages, within the default burst per sender

    async def pump(s: Session, n: int, tag: str) -> None:
        for i in range(n):
            await s.request("send", room=room, text=f"{tag}-{i}")
            if i % 15 == 14:
                await asyncio.sleep(1.6)  # stay under the default 10/s rate limit

    await asyncio.gather(*(pump(s, n, f"s{k}") for k, (s, n) in
                           enumerate(zip(senders, per_sender, strict=True))))
    orders = []
    for s in sessions:
        msgs = await s.messages(200, timeout=20)
        chain_prev = 0
        for m in msgs:
            assert m["prev_seq"] == chain_prev, "broken prev_seq chain"
            chain_prev = m["seq"]
        orders.append([m["msg_id"] for m in msgs])
    assert all(o == orders[0] for o in orders)
    assert len(set(orders[0])) == 200
    texts = [m for m in orders[0]]
    assert len(texts) == 200
    del observer
    for s in sessions:
        await s.close()


async def test_history_pagination_ws_and_rest(stack: Stack) -> None:
    alice = await _user(stack)
    s = await Session.open(stack.ws_url(1), alice["access_token"])
    room = unique("hist")
    await s.request("join", room=room)
    seqs = []
    for i in range(12):
        seqs.append((await s.request("send", room=room, text=f"m{i}"))["seq"])
        if i == 9:
            await asyncio.sleep(1.1)
    newest = await s.request("history", room=room, limit=5)
    assert [m["seq"] for m in newest["messages"]] == seqs[-5:] and newest["has_more"] is True
    older = await s.request("history", room=room, before=seqs[-5], limit=5)
    assert [m["seq"] for m in older["messages"]] == seqs[2:7] and older["has_more"] is True
    oldest = await s.request("history", room=room, before=seqs[2], limit=5)
    assert [m["seq"] for m in oldest["messages"]] == seqs[:2] and oldest["has_more"] is False
    after = await s.request("history", room=room, after=seqs[8], limit=10)
    assert [m["seq"] for m in after["messages"]] == seqs[9:] and after["has_more"] is False
    assert after["messages"][0]["prev_seq"] == seqs[8]
    assert after["messages"][0]["text"] == "m9"

    headers = {"Authorization": f"Bearer {alice['access_token']}"}
    async with httpx.AsyncClient(base_url=stack.gateway(2).url, headers=headers) as http:
        r = await http.get(f"/v1/rooms/{room}/messages", params={"limit": 3})
        assert r.status_code == 200
        assert [m["seq"] for m in r.json()["messages"]] == seqs[-3:]
        r = await http.get(f"/v1/rooms/{room}/messages", params={"after": seqs[0], "limit": 2})
        assert [m["seq"] for m in r.json()["messages"]] == seqs[1:3] and r.json()["has_more"]
        for bad in ({"limit": 0}, {"limit": 101}, {"before": "x"}, {"after": "-1"}):
            r = await http.get(f"/v1/rooms/{room}/messages", params=bad)
            assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request", bad
        r = await http.get("/v1/rooms/bad.room/messages")
        assert r.status_code == 400
        r = await http.get(f"/v1/rooms/{room}/messages", headers={"Authorization": "Bearer x"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    for bad_frame in ({"limit": 0}, {"limit": 101}, {"before": "7"}, {"after": 1.5}):
        with pytest.raises(Exception) as info:
            await s.request("history", room=room, **bad_frame)
        assert getattr(info.value, "code", None) == "bad_request", bad_frame
    await s.close()


async def test_reconnect_to_other_gateway_with_since_gets_missed_once(stack: Stack) -> None:
    alice, bob = await _user(stack, 1), await _user(stack, 2)
    room = unique("since")
    a = await Session.open(stack.ws_url(1), alice["access_token"])
    b = await Session.open(stack.ws_url(2), bob["access_token"])
    await a.request("join", room=room)
    await b.request("join", room=room)
    first = await a.request("send", room=room, text="before")
    seen = (await b.next_event("message"))["seq"]
    assert seen == first["seq"]
    await b.close()  # bob drops off gateway 2

    sent = [await a.request("send", room=room, text=f"missed {i}") for i in range(5)]
    b2 = await Session.open(stack.ws_url(1), bob["access_token"])  # and comes back on 1
    joined = await b2.request("join", room=room, since=seen)
    missed = joined["missed"]
    assert [m["msg_id"] for m in missed] == [x["msg_id"] for x in sent]
    assert missed[0]["prev_seq"] == seen and joined["last_seq"] == sent[-1]["seq"]
    after = await a.request("send", room=room, text="live again")
    live = await b2.next_event("message")
    assert live["msg_id"] == after["msg_id"] and live["prev_seq"] == sent[-1]["seq"]
    leftover = [b2.events.get_nowait() for _ in range(b2.events.qsize())]
    # nothing was delivered twice (presence events may be queued too)
    assert [e for e in leftover if e["type"] == "message"] == []
    await a.close()
    await b2.close()


async def test_messages_sent_while_history_is_down_are_stored(stack: Stack) -> None:
    alice = await _user(stack)
    room = unique("outage")
    a = await Session.open(stack.ws_url(2), alice["access_token"])
    await a.request("join", room=room)
    await stack.astop("history")
    try:
        sent = [await a.request("send", room=room, text=f"during outage {i}") for i in range(10)]
        with pytest.raises(Exception) as info:
            await a.request("history", room=room)
        assert getattr(info.value, "code", None) == "unavailable"
    finally:
        await stack.astart("history")
    page = await a.request("history", room=room, limit=50)
    assert [m["msg_id"] for m in page["messages"]] == [x["msg_id"] for x in sent]
    await a.close()


async def test_every_gateway_serves_the_page_and_probes(stack: Stack) -> None:
    async with httpx.AsyncClient() as http:
        for i in (1, 2):
            base = stack.gateway(i).url
            page = await http.get(f"{base}/")
            assert page.status_code == 200 and "text/html" in page.headers["content-type"]
            assert "/ws" in page.text and "innerHTML" not in page.text
            assert (await http.get(f"{base}/healthz")).status_code == 200
            assert (await http.get(f"{base}/readyz")).status_code == 200
            metrics = (await http.get(f"{base}/metrics")).text
            for name in ("chat_ws_connections", "chat_ws_messages_in_total",
                         "chat_ws_messages_out_total", "chat_delivery_latency_seconds",
                         "chat_nats_connected 1.0"):
                assert name in metrics, name
        for name in ("auth", "history", "presence"):
            svc = stack.services[name]
            assert (await http.get(f"{svc.url}/readyz")).status_code == 200
            assert "chat_service_requests_total" in (await http.get(f"{svc.url}/metrics")).text


def _sample(text: str, name: str, **labels: str) -> float:
    """One sample's value in a /metrics text (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


async def test_the_gateway_counts_frames_send_acks_and_rest_statuses(stack: Stack) -> None:
    """docs/protocol.md §7: a send, a refused send and REST 404s move the
    gateway's counters, with the route's template and never the raw path."""
    alice = await _user(stack, 1)
    base = stack.gateway(1).url
    sent, refused = {"type": "send", "outcome": "ok"}, {"type": "send", "outcome": "forbidden"}
    unknown_room = {"route": "/v1/rooms/{room}", "method": "GET", "status": "404"}
    unmatched = {"route": "unmatched", "method": "GET", "status": "404"}
    async with httpx.AsyncClient() as http:
        before = (await http.get(f"{base}/metrics")).text
        a = await Session.open(stack.ws_url(1), alice["access_token"])
        room = unique("counted")
        await a.request("join", room=room)
        await a.request("send", room=room, text="counted")
        with pytest.raises(Exception) as info:
            await a.request("send", room=unique("not-joined"), text="refused")
        assert getattr(info.value, "code", None) == "forbidden"
        await a.close()
        auth = {"Authorization": f"Bearer {alice['access_token']}"}
        missing = await http.get(f"{base}/v1/rooms/{unique('nowhere')}", headers=auth)
        assert missing.status_code == 404
        assert (await http.get(f"{base}/no/such/path")).status_code == 404
        after = (await http.get(f"{base}/metrics")).text
    ws = "chat_ws_requests_total"
    assert _sample(after, ws, **sent) - _sample(before, ws, **sent) >= 1
    assert _sample(after, ws, **refused) - _sample(before, ws, **refused) >= 1
    acks = "chat_send_ack_seconds_count"
    assert _sample(after, acks) - _sample(before, acks) >= 1
    rest = "chat_http_requests_total"
    assert _sample(after, rest, **unknown_room) - _sample(before, rest, **unknown_room) >= 1
    assert _sample(after, rest, **unmatched) - _sample(before, rest, **unmatched) >= 1
    assert "/no/such/path" not in after and "nowhere" not in after
    assert "# HELP chat_jetstream_publish_failures_total" in after  # no failure: no series
