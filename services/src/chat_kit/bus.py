"""NATS for every process: connect with backoff, durable publish, request-reply.

The CHAT stream itself lives in :mod:`chat_kit.stream`.

Services answer on ``svc.<service>.<verb>`` through ``nats.micro`` (queue
group per service, so replicas share the load, with PING/INFO/STATS for free).
Errors travel in the micro error headers: the code header carries our wire
error code (``not_found``…), the description its message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import msgspec
import nats
from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import EndpointConfig, Service, ServiceConfig

from chat_contract.errors import ChatError, ErrorCode
from chat_contract.rpc import Rpc

from . import metrics
from .logs import event
from .nats_auth import NatsAuthSettings, connect_options
from .natsclient import Client as Client

log = logging.getLogger("chat_kit.bus")

ERROR_HEADER = "Nats-Service-Error"
ERROR_CODE_HEADER = "Nats-Service-Error-Code"
RETRY_AFTER_HEADER = "Chat-Retry-After"  # seconds, on ``rate_limited`` errors
# The caller's deadline (unix seconds): a request still queued past it is
# dropped unanswered — the caller already answered ``unavailable``, and
# serving it anyway is how a burst of retries turns into a collapse.
DEADLINE_HEADER = "Chat-Deadline"
# Slack for clocks of different hosts (NTP keeps them far closer), and the
# least a request is late before it is dropped: a skewed clock shows as
# `expired` counts and a warning (below) long before it drops everything.
DEADLINE_GRACE = 2.0

Req = TypeVar("Req", bound=msgspec.Struct)
Rep = TypeVar("Rep", bound=msgspec.Struct)


async def connect(url: str, name: str, stop: asyncio.Event | None = None,
                  auth: NatsAuthSettings | None = None) -> Client:
    """Connect, retrying with capped backoff until NATS answers (or ``stop`` is set).

    Once connected the client reconnects by itself forever; the readiness
    probe reports the gap meanwhile. ``auth`` gives the credentials, TLS and
    the role's inbox prefix (:mod:`chat_kit.nats_auth`; read from the
    ``CHAT_NATS_*`` environment when not given, as tools like chat-admin
    rely on); credentials the server refuses fail the start at once
    (waiting cannot fix them).
    """
    servers = [u.strip() for u in url.split(",") if u.strip()]  # a cluster: every node
    options = connect_options(auth if auth is not None else NatsAuthSettings.from_env(), name)
    connected = False

    async def on_error(exc: Exception) -> None:
        # nats-py retries a refused login forever (max_reconnect_attempts=-1);
        # raising here ends its first connect instead. Later (a password
        # rotated on the server) it is logged and retried.
        if not connected and _refused(exc):
            raise exc
        await _on_error(exc)

    delay = 0.1
    while True:
        try:
            nc = Client()
            await nc.connect(
                servers,
                name=name,
                max_reconnect_attempts=-1,
                reconnect_time_wait=1,
                ping_interval=10,
                error_cb=on_error,
                disconnected_cb=_on_disconnected,
                reconnected_cb=_on_reconnected,
                # Gateways subscribe per room; allow bursts without silent drops.
                pending_size=64 * 1024 * 1024,
                **options,
            )
            connected = True
            metrics.NATS_CONNECTED.set(1)
            return nc
        except (OSError, NatsTimeoutError, nats.errors.NoServersError) as exc:
            if stop is not None and stop.is_set():
                raise
            event(log, "nats connect failed", logging.WARNING, url=url, error=repr(exc))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
        except nats.errors.Error as exc:
            if _refused(exc):
                event(log, "nats refused our credentials", logging.ERROR, url=url,
                      user=options.get("user", ""), error=str(exc))
            with contextlib.suppress(Exception):
                await nc.close()  # nats-py leaves the refused socket open
            raise


def _refused(exc: Exception) -> bool:
    """NATS refused the login (bad or unknown credentials, or none given)."""
    return "authorization violation" in str(exc).lower()


async def _on_error(exc: Exception) -> None:
    if isinstance(exc, nats.errors.SlowConsumerError):
        # nats-py dropped a message because a subscription's pending limit
        # overflowed; gateways repair the gap from the stream. Counted, and
        # not logged per message.
        metrics.WS_DROPPED.labels("nats_slow_consumer").inc()
        return
    event(log, "nats error", logging.WARNING, error=repr(exc))


async def _on_disconnected() -> None:
    metrics.NATS_CONNECTED.set(0)
    event(log, "nats disconnected", logging.WARNING)


async def _on_reconnected() -> None:
    metrics.NATS_CONNECTED.set(1)
    event(log, "nats reconnected")


class PubAck(msgspec.Struct):
    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: dict[str, object] | None = None


_puback = msgspec.json.Decoder(PubAck)


async def publish_durable(nc: NATS, subject: str, payload: bytes, timeout: float,
                          headers: dict[str, str] | None = None) -> PubAck:
    """Publish to JetStream and wait until it is stored; the ack, decoded once.

    What ``JetStreamContext.publish`` does, minus its std-json decode and
    dataclass building per message. No stream → ``unavailable``.

    While NATS is unreachable it answers ``unavailable`` at once instead of
    letting nats-py buffer the publish and replay it after the reconnect (a
    message the client was told failed would then be stored after all).
    """
    if not nc.is_connected:
        metrics.JETSTREAM_PUBLISH_FAILURES.labels("disconnected").inc()
        raise ChatError(ErrorCode.UNAVAILABLE, "message bus unavailable")
    try:
        if isinstance(nc, Client):  # every process's (connect below): the lean path
            data = await nc.request_raw(subject, payload, timeout, headers)
        else:
            data = (await nc.request(subject, payload, timeout=timeout, headers=headers)).data
    except NoRespondersError:
        metrics.JETSTREAM_PUBLISH_FAILURES.labels("no_responders").inc()
        raise ChatError(ErrorCode.UNAVAILABLE, "message store unavailable") from None
    except (TimeoutError, NatsTimeoutError):
        metrics.JETSTREAM_PUBLISH_FAILURES.labels("timeout").inc()
        raise ChatError(ErrorCode.UNAVAILABLE, "message store timed out") from None
    ack = _puback.decode(data)
    if ack.error is not None or ack.seq <= 0:
        metrics.JETSTREAM_PUBLISH_FAILURES.labels("refused").inc()
        event(log, "publish refused", logging.ERROR, subject=subject, error=ack.error)
        raise ChatError(ErrorCode.UNAVAILABLE, "message store refused the message")
    return ack


async def request(nc: NATS, rpc: Rpc[Req, Rep], payload: Req, timeout: float) -> Rep:
    """Call the service endpoint ``rpc`` (chat_contract.rpc): its subject, its reply type."""
    return await call(nc, rpc.subject, payload, rpc.reply, timeout)


async def call(
    nc: NATS, subject: str, request: msgspec.Struct, reply_type: type[Rep], timeout: float
) -> Rep:
    """One request-reply with a typed reply; failures become :class:`ChatError`.

    No responder or no answer in time → ``unavailable`` (the gateway maps it
    to 503), a service error → its own code, a garbled reply → ``internal``.
    NATS unreachable → ``unavailable`` at once (no replay after reconnect).
    """
    if not nc.is_connected:
        raise ChatError(ErrorCode.UNAVAILABLE, "message bus unavailable")
    deadline = {DEADLINE_HEADER: f"{time.time() + timeout:.3f}"}
    try:
        msg = await nc.request(subject, msgspec.json.encode(request), timeout=timeout,
                               headers=deadline)
    except NoRespondersError:
        raise ChatError(ErrorCode.UNAVAILABLE, f"no service answers {subject}") from None
    except (TimeoutError, NatsTimeoutError):
        raise ChatError(ErrorCode.UNAVAILABLE, f"{subject} timed out") from None
    headers = msg.headers or {}
    code = headers.get(ERROR_CODE_HEADER)
    if code is not None:
        retry = headers.get(RETRY_AFTER_HEADER)
        try:
            retry_after = float(retry) if retry else None
        except ValueError:
            retry_after = None
        raise ChatError(code, headers.get(ERROR_HEADER, code), retry_after)
    try:
        return msgspec.json.decode(msg.data, type=reply_type)
    except msgspec.DecodeError as exc:
        event(log, "bad reply", logging.ERROR, subject=subject, error=str(exc))
        raise ChatError(ErrorCode.INTERNAL, "internal error") from None


MicroHandler = Callable[[Request], Awaitable[None]]


def endpoint(
    service: str, name: str, request_type: type[Req],
    handler: Callable[[Req], Awaitable[msgspec.Struct]],
    concurrency: int = 64,
) -> MicroHandler:
    """Wrap a typed handler as a micro endpoint: decode, call, encode, count.

    Bad payloads answer ``bad_request``; a :class:`ChatError` answers its code;
    anything else is logged with its traceback and answered ``internal``.

    nats-py runs a subscription's callback for one message at a time, so a
    slow request (a password hash, a read waiting for storage to catch up)
    would hold up every other. Each request runs in its own task instead, at
    most ``concurrency`` at once; past that the subscription waits, which is
    the backpressure.
    """
    decoder = msgspec.json.Decoder(request_type)
    warned = [-10.0]  # when "dropped past their deadline" was last logged
    slots = asyncio.Semaphore(concurrency)
    running: set[asyncio.Task[None]] = set()

    async def handle(req: Request) -> None:
        await slots.acquire()
        task = asyncio.create_task(serve(req))
        running.add(task)
        task.add_done_callback(running.discard)
        task.add_done_callback(lambda _: slots.release())

    async def serve(req: Request) -> None:
        if _past_deadline(req):
            metrics.SERVICE_REQUESTS.labels(service, name, "expired").inc()
            now = time.monotonic()
            if now - warned[0] >= 10.0:  # once per 10 s per endpoint
                warned[0] = now
                event(log, "requests dropped past their deadline", logging.WARNING,
                      endpoint=name, hint="overload, or this host's clock ahead of callers'")
            return
        started = time.perf_counter()
        outcome = "ok"
        try:
            try:
                payload = decoder.decode(req.data)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise ChatError(ErrorCode.BAD_REQUEST, f"bad payload: {exc}") from None
            reply = await handler(payload)
            await req.respond(msgspec.json.encode(reply))
        except ChatError as exc:
            outcome = exc.code.value
            extra = ({RETRY_AFTER_HEADER: f"{exc.retry_after:.0f}"}
                     if exc.retry_after is not None else None)
            await req.respond_error(exc.code.value, exc.message, headers=extra)
        except Exception:
            outcome = "internal"
            log.exception("endpoint failed", extra={"fields": {"endpoint": name}})
            await req.respond_error(ErrorCode.INTERNAL.value, "internal error")
        finally:
            metrics.SERVICE_REQUESTS.labels(service, name, outcome).inc()
            metrics.SERVICE_LATENCY.labels(service, name).observe(time.perf_counter() - started)

    return handle


def _past_deadline(req: Request) -> bool:
    """True if the caller's deadline (plus the clock grace) has passed."""
    raw = (req.headers or {}).get(DEADLINE_HEADER)
    if raw is None:
        return False
    try:
        return time.time() > float(raw) + DEADLINE_GRACE
    except ValueError:
        return False


def serves(
    service: str, rpc: Rpc[Req, Rep], handler: Callable[[Req], Awaitable[Rep]],
    concurrency: int = 64,
) -> tuple[str, tuple[str, MicroHandler]]:
    """One entry of :func:`start_service`'s endpoints: ``rpc`` answered by ``handler``."""
    return rpc.name, (rpc.subject, endpoint(service, rpc.name, rpc.request, handler,
                                            concurrency))


async def drain_or_unsubscribe(sub: Subscription, timeout: float = 2.0) -> None:
    """Stop a subscription keeping what the server already sent (drain), or,
    if that fails or takes longer than ``timeout``, at least unsubscribe."""
    try:
        await asyncio.wait_for(sub.drain(), timeout)  # type: ignore[no-untyped-call]
    except Exception:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def sync(nc: NATS) -> None:
    """Return once the server has every SUB this client sent before the call.

    nats-py 2.16's ``flush()`` writes its PING ahead of commands still in the
    write buffer, so one PONG can come back before the server saw a new SUB
    (seen as "no responders" in ~3% of tries). The first flush pushes the
    buffer out; the second PONG is then ordered behind it.
    """
    await nc.flush()
    await nc.flush()


async def start_service(
    nc: NATS, service: str, version: str, endpoints: dict[str, tuple[str, MicroHandler]]
) -> Service:
    """Register a micro service; ``endpoints`` maps name → (subject, handler)."""
    svc = await add_service(nc, ServiceConfig(name=service, version=version, queue_group=service))
    for name, (subject, handler) in endpoints.items():
        await svc.add_endpoint(EndpointConfig(name=name, subject=subject, handler=handler))
    await sync(nc)  # answering from the moment we return
    return svc
