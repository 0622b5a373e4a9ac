"""NATS users per role: the permission table, the ``authorization`` block, local secrets.

One NATS user per role — ``gateway``, ``auth``, ``history``, ``presence``,
``notify``, ``server`` (an integrator's backend: the server API over NATS)
and ``admin`` (operators, ``chat-admin``, tests) — each allowed to publish and
subscribe exactly what its code uses (deploy/README.md "NATS credentials and
permissions" says why, line by line). There is no anonymous user: a client
without credentials is refused.

Service roles answer requests, so they have ``allow_responses``: they may
publish to the reply subject of a request they received, once, and to no
other inbox. Each role's replies come back on ``_INBOX.<role>.>``
(chat_kit.nats_auth sets the client's inbox prefix), so subscribe rights on
inboxes never cross roles.

The same table renders the block with literal passwords (``chat-stack``,
tests) or with ``$VARIABLE`` references that nats-server resolves from its
environment (the Kubernetes config, where the passwords come from a Secret).

Local secrets live under ``<run dir>/nats-auth/`` (dir 0700, files 0600):
``<role>.password``, created once and kept, so a restart keeps its logins.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHAT = "CHAT"  # the chat stream (chat_contract.subjects.CHAT_STREAM)


def chat_streams(partitions: int = 1) -> list[str]:
    """The chat streams: ``CHAT``, or ``CHAT_0..P-1`` (chat_kit.stream's names).

    NATS wildcards are whole tokens, so ``CHAT_*`` cannot be written: the
    table is rendered for a partition count (``--partitions``).
    """
    return [CHAT] if partitions <= 1 else [f"{CHAT}_{p}" for p in range(partitions)]


def _deliver(stream: str) -> str:
    """history-service's deliver subject on ``stream`` (chat_history.consumer_setup)."""
    return HISTORY_DELIVER if stream == CHAT else f"{HISTORY_DELIVER}.{stream}"


def _chat_reader(stream: str) -> list[str]:
    """Look a chat stream up and read messages by sequence or last per subject."""
    return [f"$JS.API.STREAM.INFO.{stream}", f"$JS.API.DIRECT.GET.{stream}",
            f"$JS.API.DIRECT.GET.{stream}.>"]


def _chat_owner(stream: str) -> list[str]:
    """history-service on one chat stream: create it when missing, erase single
    messages, its durable consumer, acks."""
    return [
        *_chat_reader(stream),
        f"$JS.API.STREAM.CREATE.{stream}",  # only when missing (chat_kit.stream)
        f"$JS.API.STREAM.MSG.DELETE.{stream}",  # erasing a deleted message's text
        f"$JS.API.CONSUMER.INFO.{stream}.{HISTORY_DURABLE}",
        f"$JS.API.CONSUMER.CREATE.{stream}.{HISTORY_DURABLE}",
        f"$JS.API.CONSUMER.CREATE.{stream}.{HISTORY_DURABLE}.>",
        f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{HISTORY_DURABLE}",
        f"$JS.ACK.{stream}.{HISTORY_DURABLE}.>",  # acks, naks, progress
        f"$JS.FC.{stream}.{HISTORY_DURABLE}.>",  # flow-control replies
    ]
HISTORY_DURABLE = "history-push"  # history-service's push consumer
HISTORY_DELIVER = "chat.deliver.history"  # where JetStream pushes that consumer
NOTIFY_DURABLE = "notify-push"  # notify-service's push consumer (chat_notify.consumer)
NOTIFY_DELIVER = "chat.deliver.notify"
NOTIFY_DEAD = "NOTIFY_DEAD"  # its dead-letter stream, on notify.dead.<user>


def _notify_deliver(stream: str) -> str:
    """notify-service's deliver subject on ``stream`` (chat_notify.consumer)."""
    return NOTIFY_DELIVER if stream == CHAT else f"{NOTIFY_DELIVER}.{stream}"


def _chat_follower(stream: str, durable: str) -> list[str]:
    """A service with a durable push consumer of its own on one chat stream:
    look the stream up, create/update and check the consumer, ack, answer
    flow control. Never creates the stream nor reads it otherwise."""
    return [
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.CONSUMER.INFO.{stream}.{durable}",
        f"$JS.API.CONSUMER.CREATE.{stream}.{durable}",
        f"$JS.API.CONSUMER.CREATE.{stream}.{durable}.>",
        f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{durable}",
        f"$JS.ACK.{stream}.{durable}.>",  # acks, naks, progress, terms
        f"$JS.FC.{stream}.{durable}.>",  # flow-control replies
    ]
PRESENCE_BUCKETS = ("PRESENCE", "PRESENCE_ANNOUNCED", "PRESENCE_LEADER")
REVOKED_BUCKET = "CHAT_REVOKED"  # the revocation denylist: auth writes, gateways watch
ATTACHMENTS_BUCKET = "CHAT_ATTACHMENTS"  # the attachments' object store (chat_kit.objects)
AUTH_DIR = "nats-auth"


def _inbox(role: str) -> str:
    return f"_INBOX.{role}.>"


def _micro(service: str) -> list[str]:
    """What ``nats.micro`` subscribes for a service: discovery and its own id."""
    return ["$SRV.PING", "$SRV.INFO", "$SRV.STATS", f"$SRV.*.{service}", f"$SRV.*.{service}.*"]


def _kv_owner(bucket: str) -> list[str]:
    """Create/verify/update, read and watch one KV bucket, and write its keys."""
    stream = f"KV_{bucket}"
    return [
        f"$KV.{bucket}.>",
        f"$JS.API.STREAM.CREATE.{stream}",
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.STREAM.UPDATE.{stream}",
        f"$JS.API.STREAM.MSG.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}.>",
        # Watchers are ordered (ephemeral) consumers with flow control.
        f"$JS.API.CONSUMER.CREATE.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}.>",
        f"$JS.API.CONSUMER.DELETE.{stream}.*",
        f"$JS.API.CONSUMER.INFO.{stream}.*",
        f"$JS.FC.{stream}.>",
    ]


def _kv_watcher(bucket: str) -> list[str]:
    """Look one KV bucket up and watch it (an ordered consumer); no writes."""
    stream = f"KV_{bucket}"
    return [
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}.>",
        f"$JS.API.CONSUMER.DELETE.{stream}.*",
        f"$JS.API.CONSUMER.INFO.{stream}.*",
        f"$JS.FC.{stream}.>",
    ]


def _objects_writer(bucket: str) -> list[str]:
    """Store objects in one object store and read them: look it up, publish
    chunks and meta entries, read the meta (last per subject) and chunks
    (direct gets), and purge an object's chunks when a put fails."""
    stream = f"OBJ_{bucket}"
    return [
        f"$O.{bucket}.C.>", f"$O.{bucket}.M.>",
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.STREAM.MSG.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}.>",
        f"$JS.API.STREAM.PURGE.{stream}",
    ]


def _objects_owner(bucket: str) -> list[str]:
    """Create one object store when missing, and delete objects (purge their
    chunks and meta entries); no reads of the bytes."""
    stream = f"OBJ_{bucket}"
    return [
        f"$JS.API.STREAM.CREATE.{stream}",
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.STREAM.MSG.GET.{stream}",
        f"$JS.API.STREAM.PURGE.{stream}",
    ]


@dataclass(frozen=True)
class Role:
    """One NATS user: what it may publish and subscribe, and why it exists."""

    name: str
    why: str
    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()
    publish_deny: tuple[str, ...] = ()
    subscribe_deny: tuple[str, ...] = ()
    allow_responses: bool = False

    def permissions(self) -> dict[str, object]:
        """The user's ``permissions`` map, as nats-server reads it."""
        perms: dict[str, object] = {}
        for key, allow, deny in (("publish", self.publish, self.publish_deny),
                                 ("subscribe", self.subscribe, self.subscribe_deny)):
            entry: dict[str, list[str]] = {}
            if allow:
                entry["allow"] = list(allow)
            if deny:
                entry["deny"] = list(deny)
            perms[key] = entry
        if self.allow_responses:
            perms["allow_responses"] = True
        return perms


def gateway_role(partitions: int = 1) -> Role:
    return Role(
        "gateway",
        "clients' sends and reads; calls every service, answers only the server API",
        publish=(
            "chat.room.*",  # a send or edit: stored by the CHAT stream (request → PubAck)
            # Partitioned, the server checks the mapped subject: chat.part.<p>.<room>.
            *(f"chat.part.{p}.*" for p in range(partitions if partitions > 1 else 0)),
            "presence.*",  # typing notices
            # The per-user connection cap: which sessions of a user the other
            # gateways hold (asked, answered), and close one over the cap.
            "sessions.list.*", "sessions.held.*", "sessions.kick.*",
            # The server API's disconnect: every gateway closes the user's sockets.
            "sessions.disconnect.*",
            "svc.auth.register", "svc.auth.login", "svc.auth.refresh", "svc.auth.logout",
            "svc.auth.jwks", "svc.auth.password",
            # The server API: a user by id or name (disconnect, disable), and the
            # disable itself (a key with the users scope; README "Server API").
            "svc.auth.users", "svc.auth.disable",
            "svc.history.messages", "svc.presence.members", "svc.rooms.*",
            "svc.notify.level",  # PUT /v1/rooms/{id}/notify
            "svc.attachments.*",  # uploads: may the caller, register, claim, read
            "$KV.PRESENCE.>",  # its connections' presence entries (put, delete, refresh)
            "$JS.API.INFO",
            # Is the stream there (never creates it); gap repair by sequence; a
            # room's last message at join.
            *(subject for stream in chat_streams(partitions) for subject in _chat_reader(stream)),
            f"$JS.API.STREAM.INFO.KV_{PRESENCE_BUCKETS[0]}",  # the presence TTL
            *_kv_watcher(REVOKED_BUCKET),  # revoked sessions: refuse tokens, close sockets
            *_objects_writer(ATTACHMENTS_BUCKET),  # uploads in, downloads out
        ),
        # Writing the denylist is auth-service's alone. (Disabling an account
        # is asked for only by the server API, behind an API key's users scope.)
        publish_deny=(f"$KV.{REVOKED_BUCKET}.>",),
        subscribe=(
            _inbox("gateway"),
            "chat.live.*",  # the stream's republished events of rooms with local members
            "chat.room.*.state",  # removals, archives, reads (from history-service)
            "presence.*", "sessions.list.*", "sessions.held.*", "sessions.kick.*",
            "sessions.disconnect.*", "users.*.blocks",
            "svc.server.*",  # the server API's requests (queue group "server")
        ),
        # Implied by the allow list; spelled out because it is the point: a
        # gateway can neither read logins nor answer as another service.
        subscribe_deny=("svc.auth.>", "svc.history.>", "svc.rooms.>", "svc.presence.>",
                        "svc.notify.>", "svc.attachments.>", "$SRV.>"),
        allow_responses=True,  # answers svc.server.* (once, to the asker's inbox)
    )


AUTH = Role(
    "auth",
    "answers svc.auth.* (accounts, tokens, the JWKS) and writes the revocation denylist",
    # Besides replies (allow_responses): the CHAT_REVOKED bucket only.
    publish=("$JS.API.INFO", *_kv_owner(REVOKED_BUCKET)),
    publish_deny=("chat.>",),
    subscribe=("svc.auth.>", *_micro("auth"), _inbox("auth")),
    allow_responses=True,
)

def history_role(partitions: int = 1) -> Role:
    return Role(
        "history",
        "stores the CHAT stream in PostgreSQL, answers svc.history.* and svc.rooms.*",
        publish=(
            "svc.auth.users",  # names of the users it lists
            "chat.room.*.state", "users.*.blocks",  # room and block notices to gateways
            "$JS.API.INFO",
            *(subject for stream in chat_streams(partitions) for subject in _chat_owner(stream)),
            # The attachments bucket: created when missing; a deleted message's
            # and expired uploads' objects removed.
            *_objects_owner(ATTACHMENTS_BUCKET),
        ),
        subscribe=(*(_deliver(stream) for stream in chat_streams(partitions)),
                   "svc.history.>", "svc.rooms.>", "svc.attachments.>", *_micro("history"),
                   _inbox("history")),
        allow_responses=True,
    )


PRESENCE = Role(
    "presence",
    "owns the presence buckets, publishes join/leave, answers svc.presence.*",
    publish=(
        "presence.*",
        "$JS.API.INFO",  # nats-py checks the API level for KV limit markers
        *(subject for bucket in PRESENCE_BUCKETS for subject in _kv_owner(bucket)),
    ),
    publish_deny=("chat.>",),  # never a chat event, whatever is added above
    subscribe=("svc.presence.>", *_micro("presence"), _inbox("presence")),
    allow_responses=True,
)

def notify_role(partitions: int = 1) -> Role:
    return Role(
        "notify",
        "webhooks for DMs and mentions to offline users (its own durable on the chat "
        "streams), answers svc.notify.*",
        publish=(
            # Room members (DMs), names, block lists, who is online anywhere.
            "svc.rooms.get", "svc.rooms.blocks", "svc.auth.users", "svc.presence.online",
            "$JS.API.INFO",
            *(subject for stream in chat_streams(partitions)
              for subject in _chat_follower(stream, NOTIFY_DURABLE)),
            # The dead-letter stream: created when missing, appended to.
            f"$JS.API.STREAM.CREATE.{NOTIFY_DEAD}", f"$JS.API.STREAM.INFO.{NOTIFY_DEAD}",
            "notify.dead.*",
        ),
        publish_deny=("chat.>",),  # never a chat event, whatever is added above
        subscribe=(*(_notify_deliver(stream) for stream in chat_streams(partitions)),
                   "svc.notify.>", *_micro("notify"), _inbox("notify")),
        allow_responses=True,
    )


SERVER = Role(
    "server",
    "an integrator's backend: the server API's requests (svc.server.*), nothing else",
    publish=("svc.server.*",),
    subscribe=(_inbox("server"),),
)

ADMIN = Role(
    "admin",
    "operators: chat-admin (stream apply), the nats CLI, tests; everything",
    publish=(">",),
    subscribe=(">",),
)

def roles(partitions: int = 1) -> dict[str, Role]:
    """The role table for a deployment with ``partitions`` chat streams."""
    return {role.name: role for role in (gateway_role(partitions), AUTH,
                                         history_role(partitions), PRESENCE,
                                         notify_role(partitions), SERVER, ADMIN)}


ROLES: dict[str, Role] = roles()
GATEWAY, HISTORY = ROLES["gateway"], ROLES["history"]
# Which role each stack process runs as.
PROCESS_ROLES = {"auth": "auth", "history": "history", "presence": "presence",
                 "notify": "notify", "gateway": "gateway"}
# The variables chat_kit.nats_auth reads credentials from (one kind at a time).
CREDENTIAL_VARIABLES = ("CHAT_NATS_USER", "CHAT_NATS_PASSWORD", "CHAT_NATS_PASSWORD_FILE",
                        "CHAT_NATS_CREDS", "CHAT_NATS_NKEY_SEED_FILE", "CHAT_NATS_ROLE")


def role_env(directory: Path, role: str) -> dict[str, str]:
    """What a process of ``role`` needs to log in (chat_kit.nats_auth reads it)."""
    return {"CHAT_NATS_USER": role,
            "CHAT_NATS_PASSWORD_FILE": str(Path(directory) / f"{role}.password"),
            "CHAT_NATS_ROLE": role}


def _conf(value: object) -> str:
    """A value in nats-server's config syntax (JSON is valid there)."""
    return json.dumps(value)


def render_authorization(password: Callable[[str], str],
                         roles: Mapping[str, Role] | None = None) -> str:
    """The ``authorization { users: [...] }`` block.

    ``password(role)`` returns the config text of the role's password: a
    quoted literal (:func:`literal`) or a ``$VARIABLE`` reference.
    """
    lines = ["authorization {", "  users: ["]
    for role in (roles or ROLES).values():
        permissions = json.dumps(role.permissions(), indent=2).replace("\n", "\n      ")
        lines += ["    {",
                  f"      # {role.why}",
                  f"      user: {_conf(role.name)}",
                  f"      password: {password(role.name)}",
                  f"      permissions: {permissions}",
                  "    }"]
    lines += ["  ]", "}"]
    return "\n".join(lines)


def literal(passwords: Mapping[str, str]) -> Callable[[str], str]:
    return lambda role: _conf(passwords[role])


def env_reference(role: str) -> str:
    """``$NATS_<ROLE>_PASSWORD``: how the Kubernetes config names each password."""
    return f"$NATS_{role.upper()}_PASSWORD"


@dataclass
class NatsCredentials:
    """Each role's password, kept in ``<dir>/<role>.password``."""

    dir: Path
    passwords: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load_or_create(cls, directory: Path) -> NatsCredentials:
        """Read the roles' passwords, creating any missing one (dir 0700, files 0600)."""
        directory = Path(directory).resolve()
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o700)
        creds = cls(directory)
        for role in ROLES:
            path = creds.password_file(role)
            if not path.exists():
                _write_secret(path, secrets.token_urlsafe(24))
            path.chmod(0o600)
            creds.passwords[role] = path.read_text().strip()
            if not creds.passwords[role]:
                raise ValueError(f"{path} is empty; delete it to generate a new password")
        return creds

    def password_file(self, role: str) -> Path:
        return Path(role_env(self.dir, role)["CHAT_NATS_PASSWORD_FILE"])

    def authorization(self, partitions: int = 1) -> str:
        return render_authorization(literal(self.passwords), roles(partitions))

    def role_env(self, role: str) -> dict[str, str]:
        return role_env(self.dir, role)

    def connect_kwargs(self, role: str) -> dict[str, Any]:
        """``nats.connect(url, **creds.connect_kwargs("admin"))`` in tests and tools."""
        return {"user": role, "password": self.passwords[role],
                "inbox_prefix": f"_INBOX.{role}"}


def _write_secret(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(value + "\n")


DEPLOY_HEADER = """\
# NATS users per role, with each password read from the server's environment
# ($NATS_<ROLE>_PASSWORD). Generated from chat_devstack/nats_auth.py (the
# role table, deploy/README.md "NATS credentials and permissions"):
#   python -m chat_devstack.nats_auth > deploy/nats/authorization.conf
# tests/unit/test_deploy_manifests.py checks that this copy is current.
"""


def deploy_authorization(partitions: int = 1) -> str:
    """The block docker-compose and Kubernetes use: passwords from the environment."""
    return DEPLOY_HEADER + render_authorization(env_reference, roles(partitions)) + "\n"


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="print the deploy authorization block")
    parser.add_argument("--partitions", type=int, default=1,
                        help="CHAT_STREAM_PARTITIONS of the deployment (default 1)")
    print(deploy_authorization(parser.parse_args().partitions), end="")
