"""Crashes on a 3-node NATS cluster under steady load through Caddy (issue 10).

One stack (auth, history, presence, two gateways, Caddy in front) on the
session's ``nats_cluster``, the CHAT stream and the presence buckets R3.
Each case runs its own room under :mod:`.crashload`'s load — senders on both
gateways resending unacked sends with the same ``client_msg_id``, observers
on both gateways recording every event — and SIGKILLs one thing:

(a) a NATS node leading neither the CHAT stream nor the presence bucket,
(b) the CHAT stream's leader, (c) the leader of the presence bucket
(``KV_PRESENCE``), (d) history-service while it writes batches.

Then it restarts what it killed and checks correctness only (timings on a
shared machine are noise, so they are printed, never asserted): every acked
message stored once and delivered once to every observer, unbroken
``prev_seq`` chains, no client_msg_id stored twice, presence working, the
node back and every replica current. ``pytest -s`` shows each case's
unavailability window (README "Cluster mode").
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from nats.aio.client import Client as NATS

from chat_devstack.caddy import Caddy
from chat_devstack.nats import NatsCluster, NatsServer, stream_leaders
from chat_devstack.ports import LOOPBACK, free_port, http_ok

from .client import Session, register_and_login, rest
from .conftest import unique
from .crashload import Load, Observer, Sender, history_problems, now, observer_problems
from .hardening import metric, scrape, wait_for
from .stack import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

CHAT = "CHAT"
PRESENCE = "KV_PRESENCE"
GATEWAYS = ("gw-1", "gw-2")
SENDERS = 4
OBSERVERS = 2


@dataclass
class Env:
    stack: Stack
    caddy: Caddy
    cluster: NatsCluster
    admin: NATS
    users: list[dict[str, Any]]  # senders, observers, then a newcomer

    @property
    def ws(self) -> str:
        return f"ws://{LOOPBACK}:{self.caddy.lb_port}/ws"


# --- JetStream through an admin connection -----------------------------------


async def reset_jetstream(nc: NATS) -> None:
    """Delete every stream (and so every consumer): a stack creates them anew."""
    js = nc.jetstream(timeout=10)
    for info in await js.streams_info():
        await js.delete_stream(info.config.name)


async def stream_ok(nc: NATS, stream: str, nodes: int = 3) -> bool:
    """A leader, and every other replica online and current."""
    try:
        info = await nc.jetstream(timeout=3).stream_info(stream)
    except Exception:  # electing, or the request went to a node just killed
        return False
    cluster = info.cluster
    if cluster is None or not cluster.leader:
        return False
    replicas = cluster.replicas or []
    return len(replicas) == nodes - 1 and all(r.current and not r.offline for r in replicas)


async def wait_streams_ok(nc: NATS, timeout: float, streams: tuple[str, ...] = (CHAT, PRESENCE),
                          ) -> None:
    deadline = now() + timeout
    while not all([await stream_ok(nc, s) for s in streams]):
        if now() > deadline:
            raise AssertionError(f"{streams}: not all replicas current within {timeout} s")
        await asyncio.sleep(0.25)


def jsz_last_seq(node: NatsServer, stream: str) -> int | None:
    """``stream``'s last sequence as ``node`` itself stores it (its /jsz)."""
    url = f"http://{LOOPBACK}:{node.monitor_port}/jsz?accounts=true&streams=true"
    try:
        data = httpx.get(url, timeout=2, trust_env=False).json()
    except (httpx.HTTPError, ValueError):
        return None
    for account in data.get("account_details") or []:
        for detail in account.get("stream_detail") or []:
            if detail.get("name") == stream:
                return int((detail.get("state") or {}).get("last_seq", 0))
    return None


async def jetstream_state(env: Env) -> str:
    """Stream and consumer state, for a failure message."""
    js = env.admin.jetstream(timeout=5)
    try:
        info = await js.stream_info(CHAT)
        consumers = await js.consumers_info(CHAT)
    except Exception as exc:
        return f"JetStream state unavailable: {exc!r}"
    lines = [f"CHAT state {info.state} cluster {info.cluster}", f"leaders {leaders(env.cluster)}"]
    lines += [f"consumer {c.name}: delivered {c.delivered} ack_floor {c.ack_floor} "
              f"pending {c.num_pending} ack_pending {c.num_ack_pending} "
              f"redelivered {c.num_redelivered} cluster {c.cluster}" for c in consumers]
    return "\n".join(lines)


def leaders(cluster: NatsCluster) -> dict[str, str | None]:
    """Every stream's leader, as a running node's /jsz says."""
    for node in cluster.nodes:
        if node.running and node.monitor_port is not None:
            found = stream_leaders(node.monitor_port)
            if found:
                return found
    return {}


# --- fixtures ----------------------------------------------------------------


@pytest.fixture(scope="module")
async def admin(nats_cluster: NatsCluster, nats_cluster_admin: dict[str, Any],
                ) -> AsyncIterator[NATS]:
    nc = await nats.connect(nats_cluster.urls, max_reconnect_attempts=-1,
                            reconnect_time_wait=0.5, **nats_cluster_admin)
    try:
        yield nc
    finally:
        await nc.close()


@pytest.fixture(scope="module")
async def env(nats_cluster: NatsCluster, nats_cluster_env: dict[str, str], admin: NATS,
              e2e_db: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    await reset_jetstream(admin)
    logs: Path = tmp_path_factory.mktemp("cluster-crash-logs")
    stack = Stack(nats_cluster.url, e2e_db, logs,
                  extra_env={"CHAT_STREAM_REPLICAS": "3", **nats_cluster_env})
    caddy: Caddy | None = None
    try:
        await asyncio.to_thread(stack.start)
        caddy = await asyncio.to_thread(Caddy.start, free_port(),
                                        [stack.gateway(1).port, stack.gateway(2).port],
                                        logs / "caddy")
        await asyncio.to_thread(wait_for, lambda: http_ok(f"{caddy.url}/readyz"), 15.0,
                                "caddy")
        users = [await register_and_login(caddy.url, unique(f"cc{k}"))
                 for k in range(SENDERS + OBSERVERS + 1)]
        await wait_streams_ok(admin, 60)
        yield Env(stack, caddy, nats_cluster, admin, users)
    finally:
        if caddy is not None:
            await asyncio.to_thread(caddy.stop)
        await asyncio.to_thread(stack.stop)
        await reset_jetstream(admin)  # the next module on the cluster starts clean


# --- one case ----------------------------------------------------------------

Fault = Callable[[Env], Awaitable[tuple[str, Callable[[], Awaitable[None]]]]]


async def stored_messages(env: Env, room: str, token: str, timeout: float,
                          want: set[str]) -> list[dict[str, Any]]:
    """The room's whole history over REST (paged by ``after``), once it holds ``want``."""
    deadline = now() + timeout
    messages: list[dict[str, Any]] = []
    async with rest(env.caddy.url, token) as http:
        while True:
            messages, after = [], 0
            try:
                while True:
                    r = await http.get(f"/v1/rooms/{room}/messages",
                                       params={"after": after, "limit": 100})
                    r.raise_for_status()
                    page = r.json()
                    messages += page["messages"]
                    if not page["has_more"] or not page["messages"]:
                        break
                    after = page["messages"][-1]["seq"]
            except httpx.HTTPError:
                pass  # history-service restarting: 503 until it is back
            if want <= {m["msg_id"] for m in messages} or now() > deadline:
                return messages
            await asyncio.sleep(0.5)


async def presence_problems(env: Env, room: str, observers: list[Observer]) -> list[str]:
    """A newcomer's join reaches every observer as presence, and REST shows it online."""
    newcomer = env.users[-1]
    uid = newcomer["user"]["id"]
    deadline = now() + 30
    session: Session | None = None
    while session is None:
        try:
            session = await Session.open(env.ws, newcomer["access_token"])
            await session.request("join", room=room)
        except Exception:
            if session is not None:
                await session.close()
            session = None
            if now() > deadline:
                return ["the newcomer could not join"]
            await asyncio.sleep(0.5)
    problems: list[str] = []
    try:
        while not all(any(p["event"] == "join" and p["user"]["id"] == uid for p in o.presence)
                      for o in observers):
            if now() > deadline:
                problems.append("a presence join did not reach every observer")
                break
            await asyncio.sleep(0.1)
        async with rest(env.caddy.url, newcomer["access_token"]) as http:
            while True:
                r = await http.get(f"/v1/rooms/{room}")
                online = r.status_code == 200 and any(
                    m["id"] == uid and m.get("online") for m in r.json().get("members") or [])
                if online:
                    break
                if now() > deadline:
                    problems.append(f"GET /v1/rooms/{room} never showed the newcomer online")
                    break
                await asyncio.sleep(0.2)
    finally:
        await session.close()
    return problems


async def crash_case(env: Env, tmp_path: Path, name: str, fault: Fault,
                     presence_while_down: bool = True) -> dict[str, Any]:
    """Load, ``fault`` (which kills and returns how to restart), recover, check."""
    await wait_streams_ok(env.admin, 60)
    room = unique(name)
    senders = [Sender(f"s{k}", env.users[k]["access_token"], GATEWAYS[k % 2])
               for k in range(SENDERS)]
    observers = [Observer(f"o{k}", env.users[SENDERS + k]["access_token"], GATEWAYS[k % 2])
                 for k in range(OBSERVERS)]
    load = Load(env.ws, room, senders, observers)
    before = await asyncio.to_thread(gateway_counts, env.stack)
    await load.start()
    try:
        await load.wait_acks_after(now(), 5, 30)  # steady before the crash
        killed_at = now()
        victim, restart = await fault(env)
        await load.wait_acks_after(killed_at, 10, 90)  # acked again with it dead
        await asyncio.sleep(max(0.0, killed_at + 4.0 - now()))  # some load while degraded
        if presence_while_down:  # the new presence leader (or the old one) serves
            problems = await presence_problems(env, room, observers)
        await restart()
        back_at = now()
        await load.wait_acks_after(back_at, 5, 60)
        if not presence_while_down:  # joins need history-service
            problems = await presence_problems(env, room, observers)
        await load.stop_sending()
        await load.wait_observers(30)
    finally:
        await load.stop()
    acked = load.acked()
    want = {a.msg_id for a in acked.values()}
    stopped_at = now()
    stored = await stored_messages(env, room, env.users[SENDERS]["access_token"], 90, want)
    history_lag = now() - stopped_at
    problems += history_problems(stored, acked)
    stored_ids = {m["msg_id"] for m in stored}
    for o in observers:
        problems += observer_problems(o, acked, stored_ids)
    if {o.first_node for o in observers} != set(GATEWAYS):
        problems.append(f"observers not on both gateways: {[o.first_node for o in observers]}")
    if not all(s.nodes & set(GATEWAYS) for s in senders) or len(
            set().union(*(s.nodes for s in senders))) < 2:
        problems.append(f"senders not on both gateways: {[s.nodes for s in senders]}")
    # The killed node (or service) is back and caught up.
    await wait_streams_ok(env.admin, 60)
    last = (await env.admin.jetstream(timeout=5).stream_info(CHAT)).state.last_seq
    for node in env.cluster.nodes:
        seen = await asyncio.to_thread(jsz_last_seq, node, CHAT)
        if seen != last:
            problems.append(f"{node.name} holds CHAT up to {seen}, the leader {last}")
    after = await asyncio.to_thread(gateway_counts, env.stack)
    report = {"case": name, "killed": victim, **load.windows(),
              "history_complete_after_s": round(history_lag, 2),
              **{k: after[k] - before[k] for k in after}}
    print(f"\ncluster crash {json.dumps(report)}")
    (tmp_path / "windows.json").write_text(json.dumps(report, indent=2))
    if problems:
        problems += [f"observers received {[len(o.got) for o in observers]} of {len(acked)}",
                     await jetstream_state(env)]
    assert not problems, "\n".join(problems)
    return report


# --- faults ------------------------------------------------------------------


async def step_down(env: Env, stream: str, away_from: str) -> None:
    """Move ``stream``'s leadership off node ``away_from`` (an election elsewhere)."""
    deadline = now() + 30
    while leaders(env.cluster).get(stream) == away_from:
        if now() > deadline:
            raise AssertionError(f"{stream} stays led by {away_from}")
        try:
            await env.admin.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", b"", timeout=5)
        except Exception:  # an election under way: ask again
            pass
        await asyncio.sleep(1.0)


def kill_node(pick: Callable[[NatsCluster, dict[str, str | None]], str],
              spare: str | None = None) -> Fault:
    """SIGKILL the node ``pick`` names; first move ``spare``'s leadership off it,
    so that one case kills one leader."""
    async def fault(env: Env) -> tuple[str, Callable[[], Awaitable[None]]]:
        if spare is not None:
            await step_down(env, spare, pick(env.cluster, leaders(env.cluster)))
            await wait_streams_ok(env.admin, 30)
        node = env.cluster.node(await asyncio.to_thread(pick, env.cluster, leaders(env.cluster)))
        await asyncio.to_thread(node.kill)

        async def restart() -> None:
            await asyncio.to_thread(node._launch)

        return node.name, restart

    return fault


def gateway_counts(stack: Stack) -> dict[str, int]:
    """Both gateways' NATS reconnects and events relayed by gap repair, so far."""
    counts = {"gateway_nats_reconnects": 0, "gap_repaired_events": 0}
    for i in (1, 2):
        gw = stack.gateway(i)
        counts["gateway_nats_reconnects"] += gw.log_path.read_text(
            errors="replace").count('"msg":"nats reconnected"')
        counts["gap_repaired_events"] += int(metric(scrape(gw.url), "chat_gap_repairs_total"))
    return counts


def client_names(node: NatsServer) -> list[str]:
    """The names of the clients connected to ``node`` (its /connz)."""
    url = f"http://{LOOPBACK}:{node.monitor_port}/connz?limit=1024"
    try:
        data = httpx.get(url, timeout=2, trust_env=False).json()
    except (httpx.HTTPError, ValueError):
        return []
    return [str(c.get("name") or "") for c in data.get("connections") or []]


def _bystander(cluster: NatsCluster, lead: dict[str, str | None]) -> str:
    """A node leading neither CHAT nor the presence bucket; of those, one a
    gateway is connected to (its reconnect is part of the case), then one
    leading no stream at all."""
    busy = {lead.get(CHAT), lead.get(PRESENCE)}
    free = [n for n in cluster.nodes if n.name not in busy]

    def score(node: NatsServer) -> tuple[bool, bool]:
        gateways = any("gateway" in c for c in client_names(node))
        return gateways, node.name not in lead.values()

    return max(free, key=score).name


def _leader_of(stream: str) -> Callable[[NatsCluster, dict[str, str | None]], str]:
    def pick(_: NatsCluster, lead: dict[str, str | None]) -> str:
        name = lead.get(stream)
        assert name, f"{stream} has no leader: {lead}"
        return name

    return pick


async def kill_history(env: Env) -> tuple[str, Callable[[], Awaitable[None]]]:
    """SIGKILL history-service while its consumer holds delivered, unacked
    messages (a batch on its way to PostgreSQL), if one shows up within 10 s."""
    js = env.admin.jetstream(timeout=2)
    deadline, pending = now() + 10, 0
    while now() < deadline:
        try:
            pending = (await js.consumer_info(CHAT, "history-push")).num_ack_pending or 0
        except Exception:
            pending = 0
        if pending:
            break
        await asyncio.sleep(0.01)
    await env.stack.akill("history")

    async def restart() -> None:
        await env.stack.astart("history")

    return f"history ({pending} delivered, unacked)", restart


@pytest.fixture(autouse=True)
async def _nodes_back(env: Env) -> AsyncIterator[None]:
    """A case that failed half-way leaves no node (or service) dead for the next."""
    yield
    for node in env.cluster.nodes:
        if not node.running:
            await asyncio.to_thread(node._launch)
    if env.stack.services["history"].proc is None:
        await env.stack.astart("history")


async def test_kill_bystander_node(env: Env, tmp_path: Path) -> None:
    await crash_case(env, tmp_path, "bystander", kill_node(_bystander))


async def test_kill_chat_stream_leader(env: Env, tmp_path: Path) -> None:
    await crash_case(env, tmp_path, "chatleader", kill_node(_leader_of(CHAT), spare=PRESENCE))


async def test_kill_presence_bucket_leader(env: Env, tmp_path: Path) -> None:
    await crash_case(env, tmp_path, "presleader", kill_node(_leader_of(PRESENCE), spare=CHAT))


async def test_kill_history_service_mid_batch(env: Env, tmp_path: Path) -> None:
    await crash_case(env, tmp_path, "history", kill_history, presence_while_down=False)
