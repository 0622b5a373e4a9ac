"""CHAT_STREAM_PARTITIONS=3 on the shared 3-node cluster: rooms spread over
three R3 streams by the server's ``partition()`` mapping, and everything a
client sees stays per room — seq/prev_seq chains, history, ``since``.

The mapping is account-wide (every ``chat.room.*`` publish goes through it),
so this module adds it to the shared cluster by a rolling restart and takes it
away again the same way when it ends.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js.errors import NotFoundError

from chat_devstack.nats import NatsCluster
from chat_devstack.nats_auth import NatsCredentials
from chat_kit.stream import StreamSettings, partition_of, partition_stream, subject_mapping

from .client import Session, register_and_login, rest
from .stack import Stack

pytestmark = pytest.mark.e2e

P = 3
LAYOUT = StreamSettings(replicas=3, partitions=P)
PER_ROOM = 4


async def _delete_partition_streams(cluster: NatsCluster, admin: dict[str, Any]) -> None:
    nc = await nats.connect(servers=cluster.urls, **admin)
    try:
        js = nc.jetstream(timeout=10)
        for name in LAYOUT.names():
            try:
                await js.delete_stream(name)
            except NotFoundError:
                pass
    finally:
        await nc.close()


@pytest.fixture(scope="module")
def partitioned(nats_cluster: NatsCluster, nats_cluster_admin: dict[str, Any],
                nats_cluster_credentials: NatsCredentials) -> Iterator[NatsCluster]:
    """The shared cluster with the partition mapping and the partition streams'
    rights in the role table, as chat-stack configures it for P=3."""
    asyncio.run(_delete_partition_streams(nats_cluster, nats_cluster_admin))
    nats_cluster.reconfigure(mappings=subject_mapping(P),
                             extra_config=nats_cluster_credentials.authorization(P))
    try:
        yield nats_cluster
    finally:
        asyncio.run(_delete_partition_streams(nats_cluster, nats_cluster_admin))
        nats_cluster.reconfigure(mappings={},
                                 extra_config=nats_cluster_credentials.authorization())


@pytest.fixture(scope="module")
def stack(partitioned: NatsCluster, nats_cluster_env: dict[str, str], e2e_db: str,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    logs: Path = tmp_path_factory.mktemp("partitioned-stack-logs")
    env = {**nats_cluster_env, "CHAT_STREAM_PARTITIONS": str(P), "CHAT_STREAM_REPLICAS": "3",
           "CHAT_GATEWAY_SEND_RATE": "1000", "CHAT_GATEWAY_SEND_BURST": "1000"}
    s = Stack(partitioned.url, e2e_db, logs, gateways=2, extra_env=env)
    try:
        s.start()
        yield s
    finally:
        s.stop()


def _rooms_covering_every_partition(per_partition: int = 2) -> list[str]:
    tag = uuid.uuid4().hex[:6]
    rooms: list[str] = []
    counts = dict.fromkeys(range(P), 0)
    i = 0
    while min(counts.values()) < per_partition:
        room = f"part-{tag}-{i}"
        i += 1
        p = partition_of(room, P)
        if counts[p] < per_partition:
            counts[p] += 1
            rooms.append(room)
    return rooms


async def test_rooms_spread_over_partitions_keep_their_own_chains_history_and_since(
        stack: Stack, partitioned: NatsCluster, nats_cluster_admin: dict[str, Any]) -> None:
    alice = await register_and_login(stack.gateway(1).url, f"pa_{uuid.uuid4().hex[:8]}")
    bob = await register_and_login(stack.gateway(2).url, f"pb_{uuid.uuid4().hex[:8]}")
    sender = await Session.open(stack.ws_url(1), alice["access_token"])
    reader = await Session.open(stack.ws_url(2), bob["access_token"])
    rooms = _rooms_covering_every_partition()
    acked: dict[str, list[int]] = {room: [] for room in rooms}
    try:
        for room in rooms:
            await sender.request("join", room=room)
            await reader.request("join", room=room)
        for i in range(PER_ROOM):  # interleaved over the rooms, so the streams interleave
            for room in rooms:
                ack = await sender.request("send", room=room, text=f"{room} #{i}")
                acked[room].append(ack["seq"])
        got = await reader.messages(len(rooms) * PER_ROOM)
    finally:
        await sender.close()

    # Each room's events: in order, chained from 0, the seqs the sender was acked.
    by_room: dict[str, list[dict[str, Any]]] = {room: [] for room in rooms}
    for m in got:
        by_room[m["room"]].append(m)
    for room in rooms:
        events = by_room[room]
        assert [m["seq"] for m in events] == acked[room], room
        assert [m["prev_seq"] for m in events] == [0, *acked[room][:-1]], room
        assert [m["text"] for m in events] == [f"{room} #{i}" for i in range(PER_ROOM)]

    # Each room lives in the stream its hash names, under chat.part.<p>.<room>;
    # the partitions are R3 streams with a leader each.
    nc = await nats.connect(servers=partitioned.urls, **nats_cluster_admin)
    try:
        js = nc.jetstream(timeout=10)
        leaders = {}
        for p in range(P):
            info = await js.stream_info(partition_stream(p))
            assert info.config.num_replicas == 3
            assert info.cluster is not None and info.cluster.leader
            leaders[partition_stream(p)] = info.cluster.leader
            mine = [room for room in rooms if partition_of(room, P) == p]
            assert info.state.messages == len(mine) * PER_ROOM
        for room in rooms:
            stored = await js.get_msg(LAYOUT.stream_for_room(room), seq=acked[room][0])
            assert stored.subject == LAYOUT.stored_subject(room)
        print("partition leaders:", leaders)
    finally:
        await nc.close()

    # History reads wait on the room's own partition consumer, and page by its seqs.
    async with rest(stack.gateway(1).url, alice["access_token"]) as http:
        for room in rooms:
            r = await http.get(f"/v1/rooms/{room}/messages")
            assert r.status_code == 200, r.text
            assert [m["seq"] for m in r.json()["messages"]] == acked[room]

    # A reconnect with ``since`` on the other gateway gets exactly what it missed.
    room = rooms[-1]
    await reader.close()
    again = await Session.open(stack.ws_url(1), bob["access_token"])
    try:
        joined = await again.request("join", room=room, since=acked[room][1])
        assert [m["seq"] for m in joined["missed"]] == acked[room][2:]
        assert joined["last_seq"] == acked[room][-1]
    finally:
        await again.close()
