"""The NATS role users (chat_devstack.nats_auth) on a real server: what each
role is refused, and that it can still do what its process needs.

nats-server answers a refused publish or subscribe with ``-ERR
'Permissions Violation ...'``, which nats-py hands to ``error_cb``
asynchronously; each refusal is asserted there *and* by its effect (the
message never arrived, the stream still holds its messages). The positive
side is also covered end to end: every e2e module runs the whole stack on
these users and fails on any violation in the server's log.

The last test runs auth-service, history-service, presence-service and a
gateway over TLS (a CA, server and client certificates made here; the
server verifies clients) and registers and logs in through the gateway.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from e2e.stack import Stack, permission_violations
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import KeyValueConfig, StorageType, StreamConfig
from nats.js.errors import NotFoundError
from waiting import eventually, scaled

from chat_contract import subjects
from chat_devstack.nats import NatsServer
from chat_devstack.nats_auth import NatsCredentials
from chat_devstack.ports import free_port

pytestmark = pytest.mark.integration

CHAT = subjects.CHAT_STREAM
SHORT = 0.5  # how long a refused JetStream request waits for the reply that never comes


@pytest.fixture(scope="module")
def creds(tmp_path_factory: pytest.TempPathFactory) -> NatsCredentials:
    return NatsCredentials.load_or_create(tmp_path_factory.mktemp("nats-auth"))


@pytest.fixture(scope="module")
def server(creds: NatsCredentials, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[NatsServer]:
    s = NatsServer.start(free_port(), tmp_path_factory.mktemp("nats"),
                         extra_config=creds.authorization())
    try:
        yield s
    finally:
        s.stop()


@dataclass
class Login:
    """A connection as one role, with the errors NATS reported to it."""

    nc: NATS
    errors: list[str] = field(default_factory=list)

    def violations(self) -> list[str]:
        return [e for e in self.errors if "permissions violation" in e.lower()]

    async def refused(self, what: str, timeout: float = 5.0) -> None:
        """Wait until NATS reported a permissions violation naming ``what``."""
        # nats-py lower-cases the server's message.
        await eventually(lambda: any(what.lower() in v.lower() for v in self.violations()),
                         timeout, f"a violation for {what!r} (errors: {self.errors})")


Connect = Callable[[str], Awaitable[Login]]


@pytest.fixture
async def login(server: NatsServer, creds: NatsCredentials) -> AsyncIterator[Connect]:
    opened: list[NATS] = []

    async def connect(role: str) -> Login:
        out = Login(NATS())

        async def on_error(exc: Exception) -> None:
            out.errors.append(str(exc))

        await out.nc.connect(server.url, error_cb=on_error, allow_reconnect=False,
                             **creds.connect_kwargs(role))
        opened.append(out.nc)
        return out

    yield connect
    for nc in opened:
        await nc.close()


@pytest.fixture
async def chat_stream(login: Connect) -> AsyncIterator[Login]:
    """The CHAT stream, created the way history-service does (history role)."""
    history = await login("history")
    js = history.nc.jetstream(timeout=scaled(2))
    try:
        await js.stream_info(CHAT)
    except NotFoundError:
        await js.add_stream(StreamConfig(name=CHAT, subjects=[subjects.CHAT_SUBJECTS],
                                         storage=StorageType.FILE, allow_direct=True))
    assert history.violations() == []
    yield history


async def _messages(admin: Login) -> int:
    return int((await admin.nc.jetstream(timeout=scaled(2)).stream_info(CHAT)).state.messages)


async def _receives(nc: NATS, subject: str) -> asyncio.Queue[Msg]:
    got: asyncio.Queue[Msg] = asyncio.Queue()

    async def cb(msg: Msg) -> None:
        await got.put(msg)

    await nc.subscribe(subject, cb=cb)
    await nc.flush()
    await nc.flush()
    return got


# --- no anonymous access --------------------------------------------------------


@pytest.mark.parametrize("options", [{}, {"user": "gateway", "password": "wrong"},
                                     {"user": "nobody", "password": "x"}])
async def test_anonymous_and_wrong_logins_are_refused(server: NatsServer,
                                                      options: dict[str, Any]) -> None:
    nc = NATS()
    try:
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await nc.connect(server.url, allow_reconnect=False, max_reconnect_attempts=0,
                             connect_timeout=scaled(2), **options)
    finally:
        await nc.close()  # nats-py leaves the refused socket open otherwise


# --- gateway ----------------------------------------------------------------------


async def test_gateway_cannot_read_logins(login: Connect) -> None:
    gateway, auth, admin = await login("gateway"), await login("auth"), await login("admin")
    spy = await _receives(gateway.nc, subjects.AUTH_LOGIN)
    await gateway.refused(f'subscription to "{subjects.AUTH_LOGIN}"')
    # Nor with a wildcard, nor the replies of other roles' requests.
    for pattern in ("svc.>", "svc.auth.*", "_INBOX.>", "_INBOX.history.>", ">"):
        await gateway.nc.subscribe(pattern)
        await gateway.refused(f'subscription to "{pattern}"')
    real = await _receives(auth.nc, subjects.AUTH_LOGIN)
    await admin.nc.publish(subjects.AUTH_LOGIN, b'{"username":"ann","password":"pw"}')
    await asyncio.wait_for(real.get(), 5)  # the login went out: auth-service got it
    await gateway.nc.flush()
    assert spy.empty()


async def test_gateway_cannot_answer_jwks(login: Connect) -> None:
    attacker, victim = await login("gateway"), await login("gateway")
    await attacker.nc.subscribe(subjects.AUTH_JWKS)
    await attacker.refused(f'subscription to "{subjects.AUTH_JWKS}"')
    await attacker.nc.subscribe(f"{subjects.AUTH_JWKS}", queue="auth")
    # Nobody answers: the gateway's request finds no responder instead of a forged key.
    with pytest.raises(nats.errors.NoRespondersError):
        await victim.nc.request(subjects.AUTH_JWKS, b"{}", timeout=scaled(2))
    # Nor can it publish into a requester's inbox it guessed.
    inbox = "_INBOX.gateway.victim.1"
    waiting = await _receives(victim.nc, inbox)
    await attacker.nc.publish(inbox, b'{"keys":[{"kid":"forged"}]}')
    await attacker.refused(f'publish to "{inbox}"')
    await victim.nc.flush()
    assert waiting.empty()


async def test_gateway_cannot_manage_the_stream(chat_stream: Login, login: Connect) -> None:
    gateway, admin = await login("gateway"), await login("admin")
    js = gateway.nc.jetstream(timeout=SHORT)
    ack = await js.publish("chat.room.perm", b'{"text":"kept"}')  # a send: allowed
    before = await _messages(admin)
    attempts: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
        (f"$JS.API.STREAM.DELETE.{CHAT}", lambda: js.delete_stream(CHAT)),
        (f"$JS.API.STREAM.PURGE.{CHAT}", lambda: js.purge_stream(CHAT)),
        (f"$JS.API.STREAM.MSG.DELETE.{CHAT}", lambda: js.delete_msg(CHAT, ack.seq)),
        (f"$JS.API.STREAM.UPDATE.{CHAT}", lambda: js.update_stream(
            StreamConfig(name=CHAT, subjects=[subjects.CHAT_SUBJECTS], max_msgs=1))),
        (f"$JS.API.STREAM.CREATE.{CHAT}", lambda: js.add_stream(
            StreamConfig(name=CHAT, subjects=[subjects.CHAT_SUBJECTS]))),
        (f"$JS.API.CONSUMER.CREATE.{CHAT}", lambda: js.add_consumer(CHAT)),
    ]
    for subject, attempt in attempts:
        with pytest.raises((nats.errors.TimeoutError, TimeoutError)):
            await attempt()
        await gateway.refused(f'publish to "{subject}')
    info = await admin.nc.jetstream(timeout=scaled(2)).stream_info(CHAT)
    assert info.state.messages == before and info.config.max_msgs in (None, -1)
    # What it needs: the stream's info and direct gets.
    assert (await js.stream_info(CHAT)).config.name == CHAT
    msg = await gateway.nc.jetstream(timeout=scaled(2)).get_msg(CHAT, seq=ack.seq, direct=True)
    assert msg.data == b'{"text":"kept"}'


# --- presence ---------------------------------------------------------------------


async def test_presence_cannot_publish_chat_events(chat_stream: Login, login: Connect) -> None:
    presence, admin, gateway = await login("presence"), await login("admin"), await login(
        "gateway")
    before = await _messages(admin)
    live = await _receives(gateway.nc, "presence.lobby")
    await presence.nc.publish("chat.room.lobby", b'{"text":"forged"}')
    await presence.refused('publish to "chat.room.lobby"')
    with pytest.raises((nats.errors.TimeoutError, TimeoutError)):
        await presence.nc.jetstream(timeout=SHORT).publish("chat.room.lobby", b"{}")
    await presence.nc.publish("chat.room.lobby.state", b"{}")
    await presence.refused('publish to "chat.room.lobby.state"')
    assert await _messages(admin) == before
    # What it needs: its KV buckets and presence events.
    kv = await presence.nc.jetstream(timeout=scaled(2)).create_key_value(KeyValueConfig(
        bucket=subjects.PRESENCE_ANNOUNCED_BUCKET, storage=StorageType.FILE, history=1))
    await kv.put("lobby.u1", b"{}")
    assert (await kv.get("lobby.u1")).value == b"{}"
    await presence.nc.publish("presence.lobby", b'{"event":"join"}')
    assert (await asyncio.wait_for(live.get(), 5)).data == b'{"event":"join"}'
    # Nor can it read the replies meant for gateways (login tokens).
    await presence.nc.subscribe("_INBOX.gateway.>")
    await presence.refused('subscription to "_INBOX.gateway.>"')


async def test_notify_follows_the_stream_but_cannot_touch_it(chat_stream: Login,
                                                               login: Connect) -> None:
    from chat_kit.settings import CommonSettings
    from chat_notify.config import NotifySettings
    from chat_notify.consumer import DELIVER_GROUP, consumer_config, deliver_subject
    from chat_notify.webhook import dead_stream_config

    notify, admin = await login("notify"), await login("admin")
    js = notify.nc.jetstream(timeout=scaled(2))
    # What it needs: its own durable on CHAT, its deliver subject, acks; the
    # dead-letter stream and its subjects; the four endpoints it asks.
    await js.add_consumer(CHAT, consumer_config(CHAT, 10))
    await js.consumer_info(CHAT, consumer_config(CHAT, 10).durable_name or "")
    pushed: asyncio.Queue[Msg] = asyncio.Queue()

    async def on_push(msg: Msg) -> None:
        if msg.reply and msg.reply.startswith("$JS.ACK."):
            await pushed.put(msg)

    await notify.nc.subscribe(deliver_subject(CHAT), queue=DELIVER_GROUP, cb=on_push)
    await notify.nc.flush()
    await admin.nc.jetstream(timeout=scaled(2)).publish("chat.room.lobby", b'{"x":1}')
    msg = await asyncio.wait_for(pushed.get(), 5)
    await msg.ack()
    common = CommonSettings(nats_url="", log_level="INFO", log_format="text",
                            request_timeout=2.0, stream_replicas=1, host="127.0.0.1")
    await js.add_stream(dead_stream_config(NotifySettings(common=common)))
    await js.publish(subjects.notify_dead_subject("u_1"), b"{}")
    for subject in ("svc.rooms.get", "svc.rooms.blocks", "svc.auth.users",
                    "svc.presence.online"):
        await notify.nc.publish(subject, b"{}")
    await notify.nc.flush()
    assert notify.violations() == []
    # What it may not: chat events, the stream's management or contents, other
    # durables, other services' requests and subjects, other roles' replies.
    before = await _messages(admin)
    await notify.nc.publish("chat.room.lobby", b'{"text":"forged"}')
    await notify.refused('publish to "chat.room.lobby"')
    assert await _messages(admin) == before
    for forbidden in (f"$JS.API.STREAM.CREATE.{CHAT}", f"$JS.API.STREAM.PURGE.{CHAT}",
                      f"$JS.API.STREAM.DELETE.{CHAT}", f"$JS.API.STREAM.MSG.DELETE.{CHAT}",
                      f"$JS.API.DIRECT.GET.{CHAT}", f"$JS.API.CONSUMER.CREATE.{CHAT}.other",
                      "svc.auth.login", "svc.rooms.create", "presence.lobby"):
        await notify.nc.publish(forbidden, b"{}")
        await notify.refused(f'publish to "{forbidden}"')
    for forbidden in ("svc.auth.>", "_INBOX.gateway.>", "chat.live.*", "chat.deliver.history"):
        await notify.nc.subscribe(forbidden)
        await notify.refused(f'subscription to "{forbidden}"')


# --- auth and history -------------------------------------------------------------


async def test_auth_cannot_read_history(login: Connect) -> None:
    auth, history, gateway = await login("auth"), await login("history"), await login("gateway")
    # (A second subscription of the same connection would break its
    # allow_responses below: the server tracks a reply per delivery.)
    asked = await _receives((await login("history")).nc, subjects.HISTORY_MESSAGES)
    with pytest.raises((nats.errors.TimeoutError, TimeoutError)):
        await auth.nc.request(subjects.HISTORY_MESSAGES, b'{"room":"secret"}', timeout=SHORT)
    await auth.refused(f'publish to "{subjects.HISTORY_MESSAGES}"')
    assert asked.empty()
    # Auth publishes nothing but replies; those it may send (allow_responses).
    await auth.nc.publish("chat.room.x", b"{}")
    await auth.refused('publish to "chat.room.x"')

    async def answer(msg: Msg) -> None:
        await msg.respond(b'{"access_token":"t"}')

    await auth.nc.subscribe("svc.auth.>", queue="auth", cb=answer)
    await auth.nc.flush()
    reply = await gateway.nc.request(subjects.AUTH_LOGIN, b"{}", timeout=scaled(2))
    assert reply.data == b'{"access_token":"t"}'
    assert reply.subject.startswith("_INBOX.gateway.")  # the gateway role's own inbox
    # History answers its requests and calls auth for user names.
    history_answers = await _receives(history.nc, "svc.history.>")
    request = asyncio.create_task(gateway.nc.request(subjects.HISTORY_MESSAGES, b"{}",
                                                     timeout=scaled(2)))
    got = await asyncio.wait_for(history_answers.get(), 5)
    await got.respond(b'{"messages":[]}')
    assert (await request).data == b'{"messages":[]}', history.errors
    assert (await history.nc.request(subjects.AUTH_USERS, b"{}", timeout=scaled(2))).data
    assert history.violations() == [] and gateway.violations() == []


# --- the server API (README "Server API") ---------------------------------------


async def test_server_role_asks_only_the_server_api(login: Connect) -> None:
    backend, gateway = await login("server"), await login("gateway")

    async def answer(msg: Msg) -> None:
        await msg.respond(b'{"rooms":[]}')  # allow_responses: the gateway answers it

    await gateway.nc.subscribe(subjects.SERVER_WILDCARD, queue=subjects.SERVER_QUEUE, cb=answer)
    await gateway.nc.flush()
    reply = await backend.nc.request(subjects.SERVER_ROOMS, b"{}", timeout=scaled(2))
    assert reply.data == b'{"rooms":[]}'
    assert backend.violations() == [] and gateway.violations() == []
    # Nothing else: not the services behind the gateway, not the chat, not the
    # disconnect notice; and it cannot answer the API in a gateway's place.
    for subject in (subjects.ROOMS_GET, subjects.AUTH_DISABLE, subjects.AUTH_USERS,
                    "chat.room.lobby", "sessions.disconnect.u_1", "presence.lobby"):
        await backend.nc.publish(subject, b"{}")
        await backend.refused(f'publish to "{subject}"')
    await backend.nc.subscribe(subjects.SERVER_WILDCARD)
    await backend.refused(f'subscription to "{subjects.SERVER_WILDCARD}"')


@pytest.mark.parametrize("role", ["auth", "history", "presence", "notify"])
async def test_other_roles_cannot_call_the_server_api(login: Connect, role: str) -> None:
    other = await login(role)
    await other.nc.publish(subjects.SERVER_DISABLE, b'{"user":"alice"}')
    await other.refused(f'publish to "{subjects.SERVER_DISABLE}"')


async def test_only_history_and_admin_may_create_the_stream(login: Connect) -> None:
    admin = await login("admin")
    with_js = admin.nc.jetstream(timeout=scaled(2))
    try:
        await with_js.delete_stream(CHAT)  # admin may; history re-creates it below
    except NotFoundError:
        pass
    for role in ("gateway", "presence", "auth"):
        other = await login(role)
        with pytest.raises((nats.errors.TimeoutError, TimeoutError)):
            await other.nc.jetstream(timeout=SHORT).add_stream(
                StreamConfig(name=CHAT, subjects=[subjects.CHAT_SUBJECTS]))
        await other.refused(f'publish to "$JS.API.STREAM.CREATE.{CHAT}"')
    history = await login("history")
    await history.nc.jetstream(timeout=scaled(2)).add_stream(
        StreamConfig(name=CHAT, subjects=[subjects.CHAT_SUBJECTS], allow_direct=True))
    assert history.violations() == []


# --- TLS --------------------------------------------------------------------------


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None,
          issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool = False,
          server: bool = False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (x509.CertificateBuilder().subject_name(name)
               .issuer_name(issuer.subject if issuer else name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=1))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(directory: Path, name: str, cert: x509.Certificate,
           key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


def make_pki(directory: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = _key()
    ca = _cert("chat test CA", ca_key, None, ca_key, ca=True)
    ca_path, _ = _write(directory, "ca", ca, ca_key)
    server_key, client_key = _key(), _key()
    server_cert, server_key_path = _write(
        directory, "server", _cert("nats", server_key, ca, ca_key, server=True), server_key)
    client_cert, client_key_path = _write(
        directory, "client", _cert("chat-services", client_key, ca, ca_key), client_key)
    return {"ca": ca_path, "server_cert": server_cert, "server_key": server_key_path,
            "client_cert": client_cert, "client_key": client_key_path}


async def test_stack_over_tls_with_a_generated_ca(creds: NatsCredentials, db_url: str,
                                                  tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    tls = (f"tls {{ cert_file: \"{pki['server_cert']}\", key_file: \"{pki['server_key']}\", "
           f"ca_file: \"{pki['ca']}\", verify: true, timeout: 2 }}")
    server = NatsServer.start(free_port(), tmp_path / "nats",
                              extra_config=creds.authorization() + "\n" + tls)
    url = f"tls://127.0.0.1:{server.port}"
    stack = Stack(url, db_url, tmp_path, gateways=1, auth=creds, extra_env={
        "CHAT_NATS_TLS_CA": str(pki["ca"]), "CHAT_NATS_TLS_CERT": str(pki["client_cert"]),
        "CHAT_NATS_TLS_KEY": str(pki["client_key"])})
    try:
        # Without a client certificate the server refuses the handshake.
        import ssl

        no_cert = ssl.create_default_context(cafile=str(pki["ca"]))
        with pytest.raises((nats.errors.Error, OSError)):
            await nats.connect(url, tls=no_cert, allow_reconnect=False,
                               max_reconnect_attempts=0, connect_timeout=scaled(2),
                               **creds.connect_kwargs("admin"))
        await asyncio.to_thread(stack.start)
        async with httpx.AsyncClient(base_url=stack.gateway(1).url, timeout=10) as http:
            body = {"username": "tls_ann", "password": "correct horse battery"}
            r = await http.post("/v1/auth/register", json=body)
            assert r.status_code == 201, r.text
            r = await http.post("/v1/auth/login", json=body)
            assert r.status_code == 200, r.text
            assert r.json()["access_token"]
    finally:
        await asyncio.to_thread(stack.stop)
        server.stop()
    assert permission_violations(server.log_path) == []


# --- chat_kit.bus.connect ---------------------------------------------------------


async def test_bus_connect_logs_in_from_the_environment(
        server: NatsServer, creds: NatsCredentials, monkeypatch: pytest.MonkeyPatch) -> None:
    from chat_kit import bus

    monkeypatch.setenv("CHAT_NATS_USER", "admin")
    monkeypatch.setenv("CHAT_NATS_PASSWORD_FILE", str(creds.password_file("admin")))
    nc = await bus.connect(server.url, "chat-admin")  # as chat-admin does
    try:
        assert nc.is_connected
    finally:
        await nc.close()
    # Refused credentials fail at once instead of retrying forever.
    monkeypatch.delenv("CHAT_NATS_PASSWORD_FILE")
    monkeypatch.setenv("CHAT_NATS_PASSWORD", "wrong")
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await asyncio.wait_for(bus.connect(server.url, "chat-admin"), 10)
