"""Steady chat load through the load balancer, for the cluster crash tests.

Senders send continuously, each message with a ``client_msg_id`` and a text
unique to it. On ``unavailable``, a timeout or a dropped socket a sender
reconnects (through Caddy, so possibly to the other gateway), rejoins with
``since`` and resends the same message with the same ``client_msg_id``, until
it is acked. Observers stay in the room and record every ``message`` event in
the order received; when their socket drops they rejoin with ``since``.

What a case then checks is pure bookkeeping on these records (the
``*_problems`` functions); what it reports is :meth:`Load.windows`: how long
sends could not be acked.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .client import RequestFailed, Session

SEND_INTERVAL = 0.12  # per sender, after each ack: ~7/s each, under the 10/s limit
ACK_TIMEOUT = 8.0  # the gateway answers `unavailable` after CHAT_REQUEST_TIMEOUT (2 s)


def now() -> float:
    return asyncio.get_running_loop().time()


async def open_on(url: str, token: str, node: str | None, tries: int = 12) -> Session:
    """A session through the balancer, on gateway ``node`` if round-robin gets there."""
    session = await Session.open(url, token)
    for _ in range(tries):
        if node is None or session.welcome.get("node") == node:
            break
        await session.close()
        session = await Session.open(url, token)
    return session


async def _close(session: Session | None) -> None:
    if session is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(session.close(), 2.0)


@dataclass
class Acked:
    client_msg_id: str
    text: str
    msg_id: str
    seq: int
    at: float


@dataclass
class Sender:
    name: str
    token: str
    node: str | None  # the gateway to start on
    acked: list[Acked] = field(default_factory=list)
    failed_attempts: int = 0
    reconnects: int = 0
    windows: list[float] = field(default_factory=list)  # first failure → next ack
    longest_wait: float = 0.0  # one attempt's send → ack
    nodes: set[str] = field(default_factory=set)
    reasons: Counter[str] = field(default_factory=Counter)  # why attempts failed

    def acks_after(self, t: float) -> int:
        return sum(1 for a in self.acked if a.at > t)

    async def run(self, url: str, room: str, stop: asyncio.Event) -> None:
        session: Session | None = None
        since: int | None = None
        pending: tuple[str, str] | None = None
        failed_at: float | None = None
        i = 0
        while pending is not None or not stop.is_set():
            if pending is None:
                i += 1
                # Unique across rooms too: the same user reuses no id within the
                # 2-minute dedupe window.
                pending = (f"{room}-{self.name}-{i}", f"{room} {self.name} #{i}")
            started = now()
            stage = "join"
            try:
                if session is None:
                    first = not self.nodes  # later reconnects take whichever gateway
                    session = await open_on(url, self.token, self.node if first else None)
                    self.nodes.add(str(session.welcome.get("node")))
                    await session.request("join", room=room,
                                          **({} if since is None else {"since": since}))
                cid, text = pending
                stage = "send"
                ack = await asyncio.wait_for(
                    session.request("send", room=room, text=text, client_msg_id=cid),
                    ACK_TIMEOUT)
            except RequestFailed as exc:
                if exc.code == "rate_limited":
                    await asyncio.sleep(0.5)
                    continue
                failed = f"{stage} {exc.code}"
            except Exception as exc:  # a timeout, a dropped socket, a refused connect
                failed = f"{stage} {type(exc).__name__}"
            else:
                failed = ""
            if failed:
                self.failed_attempts += 1
                self.reasons[failed] += 1
                failed_at = started if failed_at is None else failed_at
                await _close(session)
                session = None
                self.reconnects += 1
                await asyncio.sleep(0.1)
                continue
            t = now()
            self.longest_wait = max(self.longest_wait, t - started)
            if failed_at is not None:
                self.windows.append(t - failed_at)
                failed_at = None
            self.acked.append(Acked(pending[0], pending[1], ack["msg_id"], ack["seq"], t))
            since = ack["seq"] if since is None else max(since, ack["seq"])
            pending = None
            await asyncio.sleep(SEND_INTERVAL)
        await _close(session)


@dataclass
class Observer:
    """A member that records every message event, and the chain it links."""

    name: str
    token: str
    node: str
    got: list[dict[str, Any]] = field(default_factory=list)
    presence: list[dict[str, Any]] = field(default_factory=list)
    # The seq each (re)join said the observer held: last_seq, or since.
    joins: list[tuple[int, int]] = field(default_factory=list)  # (index into got, held)
    rejoins: int = 0
    joined: asyncio.Event = field(default_factory=asyncio.Event)
    first_node: str | None = None

    async def run(self, url: str, room: str, stop: asyncio.Event) -> None:
        since: int | None = None
        while not stop.is_set():
            session: Session | None = None
            try:
                session = await open_on(url, self.token, self.node if since is None else None)
                if self.first_node is None:
                    self.first_node = str(session.welcome.get("node"))
                ack = await session.request("join", room=room,
                                            **({} if since is None else {"since": since}))
                held = since if since is not None else int(ack["last_seq"])
                self.joins.append((len(self.got), held))
                for m in ack["missed"]:
                    self.got.append(m)
                since = self.got[-1]["seq"] if self.got else held
                self.joined.set()
                assert session._reader is not None
                while not stop.is_set():
                    try:
                        frame = await asyncio.wait_for(session.events.get(), 0.2)
                    except TimeoutError:
                        if session._reader.done() and session.events.empty():
                            break  # the socket dropped: rejoin with since
                        continue
                    if frame.get("room") != room:
                        continue
                    if frame.get("type") == "message":
                        self.got.append(frame)
                        since = frame["seq"]
                    elif frame.get("type") == "presence":
                        self.presence.append(frame)
            except Exception:
                await asyncio.sleep(0.2)
            finally:
                await _close(session)
            if not stop.is_set():
                self.rejoins += 1

    def has_all(self, msg_ids: set[str]) -> bool:
        return msg_ids <= {m["msg_id"] for m in self.got}


def observer_problems(obs: Observer, acked: dict[str, Acked], stored: set[str]) -> list[str]:
    """Every acked message exactly once, nothing that was not stored, an unbroken chain."""
    problems: list[str] = []
    counts = Counter(m["msg_id"] for m in obs.got)
    missing = [a.text for a in acked.values() if counts[a.msg_id] == 0]
    doubled = [mid for mid, n in counts.items() if n > 1]
    unknown = [mid for mid in counts if mid not in stored]
    if missing:
        problems.append(f"{obs.name} missed {len(missing)} acked messages, e.g. {missing[:3]}")
    if doubled:
        problems.append(f"{obs.name} got {len(doubled)} messages twice, e.g. {doubled[:3]}")
    if unknown:
        problems.append(f"{obs.name} got {len(unknown)} messages not in history")
    starts = dict(obs.joins)
    held: int | None = None
    for i, m in enumerate(obs.got):
        if i in starts and (held is None or starts[i] != held):
            # A rejoin with since = the last seq held: the same link, or the first join.
            if held is not None:
                problems.append(f"{obs.name} rejoined holding {starts[i]}, not {held}")
            held = starts[i]
        if m["prev_seq"] != held:
            problems.append(f"{obs.name} chain broken at seq {m['seq']}: prev_seq "
                            f"{m['prev_seq']} but it held {held}")
        held = m["seq"]
    return problems


def history_problems(stored: list[dict[str, Any]], acked: dict[str, Acked]) -> list[str]:
    """Every acked message stored exactly once; no text (one per client_msg_id) twice."""
    problems: list[str] = []
    by_id = Counter(m["msg_id"] for m in stored)
    by_text = Counter(m["text"] for m in stored)
    missing = [a.text for a in acked.values() if by_id[a.msg_id] == 0]
    if missing:
        problems.append(f"{len(missing)} acked messages not in history, e.g. {missing[:3]}")
    doubled_ids = [k for k, n in by_id.items() if n > 1]
    if doubled_ids:
        problems.append(f"msg_ids stored twice: {doubled_ids[:3]}")
    doubled_texts = [k for k, n in by_text.items() if n > 1]
    if doubled_texts:
        problems.append(f"{len(doubled_texts)} client_msg_ids stored twice, e.g. "
                        f"{doubled_texts[:3]}")
    texts = {a.text for a in acked.values()}
    strays = [m["text"] for m in stored if m["text"] not in texts]
    if strays:
        problems.append(f"{len(strays)} stored messages were never acked, e.g. {strays[:3]}")
    seqs = [m["seq"] for m in stored]
    if seqs != sorted(seqs):
        problems.append("history is not in seq order")
    for a in acked.values():
        if by_id[a.msg_id] == 1:
            match = next(m for m in stored if m["msg_id"] == a.msg_id)
            if match["seq"] != a.seq or match["text"] != a.text:
                problems.append(f"{a.text}: acked seq {a.seq}, stored {match['seq']} "
                                f"{match['text']!r}")
                break
    return problems


class Load:
    """Senders and observers in one room, through the balancer at ``url``."""

    def __init__(self, url: str, room: str, senders: list[Sender],
                 observers: list[Observer]) -> None:
        self.url = url
        self.room = room
        self.senders = senders
        self.observers = observers
        self._stop_send = asyncio.Event()
        self._stop_observe = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._observing: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._observing = [asyncio.create_task(o.run(self.url, self.room, self._stop_observe))
                           for o in self.observers]
        await asyncio.wait_for(asyncio.gather(*(o.joined.wait() for o in self.observers)), 30)
        self._tasks = [asyncio.create_task(s.run(self.url, self.room, self._stop_send))
                       for s in self.senders]

    def acked(self) -> dict[str, Acked]:
        return {a.client_msg_id: a for s in self.senders for a in s.acked}

    async def wait_acks_after(self, t: float, n: int, timeout: float) -> None:
        """Until every sender has ``n`` acks later than ``t``."""
        deadline = now() + timeout
        while not all(s.acks_after(t) >= n for s in self.senders):
            if now() > deadline:
                counts = {s.name: s.acks_after(t) for s in self.senders}
                raise AssertionError(f"sends not acked again within {timeout} s: {counts}")
            if any(task.done() for task in self._tasks):
                for task in self._tasks:
                    if task.done():
                        task.result()  # a sender crashed: show why
            await asyncio.sleep(0.1)

    async def stop_sending(self, timeout: float = 60.0) -> None:
        """Stop after each sender's last message is acked."""
        self._stop_send.set()
        await asyncio.wait_for(asyncio.gather(*self._tasks), timeout)

    async def wait_observers(self, timeout: float) -> bool:
        """Until every observer holds every acked message (False at the deadline)."""
        ids = {a.msg_id for a in self.acked().values()}
        deadline = now() + timeout
        while not all(o.has_all(ids) for o in self.observers):
            if now() > deadline:
                return False
            await asyncio.sleep(0.1)
        return True

    async def stop(self) -> None:
        self._stop_send.set()
        self._stop_observe.set()
        for task in self._tasks + self._observing:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 10)

    def windows(self) -> dict[str, Any]:
        """The unavailability this case cost, as the senders measured it."""
        return {
            "window_s": round(max((w for s in self.senders for w in s.windows), default=0.0),
                              2),
            "longest_ack_wait_s": round(max(s.longest_wait for s in self.senders), 2),
            "failed_attempts": sum(s.failed_attempts for s in self.senders),
            "reasons": dict(sum((s.reasons for s in self.senders), Counter[str]())),
            "acked": sum(len(s.acked) for s in self.senders),
            "observer_rejoins": sum(o.rejoins for o in self.observers),
        }
