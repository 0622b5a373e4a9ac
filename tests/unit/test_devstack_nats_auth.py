"""chat_devstack.nats_auth: the role users' credentials and the role table
(who may publish and subscribe to what), without a server."""

from __future__ import annotations

import stat
from pathlib import Path

from chat_contract import subjects
from chat_devstack.nats_auth import ROLES, NatsCredentials


def test_credentials_are_private_and_kept(tmp_path: Path) -> None:
    first = NatsCredentials.load_or_create(tmp_path / "nats-auth")
    assert set(first.passwords) == {"gateway", "auth", "history", "presence", "notify",
                                    "server", "admin"}
    assert len(set(first.passwords.values())) == 7
    assert stat.S_IMODE((tmp_path / "nats-auth").stat().st_mode) == 0o700
    for role in first.passwords:
        assert stat.S_IMODE(first.password_file(role).stat().st_mode) == 0o600
    again = NatsCredentials.load_or_create(tmp_path / "nats-auth")
    assert again.passwords == first.passwords  # a restart keeps every login


def test_role_table_keeps_the_issue_promises() -> None:
    gateway, auth, history, presence = (ROLES[r] for r in ("gateway", "auth", "history",
                                                           "presence"))
    # Only auth-service subscribes to svc.auth.>; gateways answer the server
    # API (svc.server.*) and no service.
    assert "svc.auth.>" in auth.subscribe
    for role in (gateway, history, presence):
        assert not any(s.startswith("svc.auth") for s in role.subscribe)
    assert [s for s in gateway.subscribe if s.startswith("svc.")] == ["svc.server.*"]
    assert {"svc.auth.>", "svc.rooms.>", "$SRV.>"} <= set(gateway.subscribe_deny)
    # Nobody but history (and admin) manages the CHAT stream; gateways only read it.
    for role in (gateway, auth, presence):
        assert not any(".CHAT" in s and ("CREATE" in s or "DELETE" in s or "PURGE" in s
                                         or "UPDATE" in s) for s in role.publish)
    assert f"$JS.API.STREAM.CREATE.{subjects.CHAT_STREAM}" in history.publish
    assert f"$JS.API.STREAM.INFO.{subjects.CHAT_STREAM}" in gateway.publish
    # Presence never publishes chat events.
    assert "chat.>" in presence.publish_deny
    assert not any(s.startswith("chat.") for s in presence.publish)
    # Inboxes never cross roles.
    for role in (gateway, auth, history, presence):
        assert [s for s in role.subscribe if s.startswith("_INBOX")] == [
            f"_INBOX.{role.name}.>"]
    assert auth.allow_responses and history.allow_responses and presence.allow_responses


def test_server_role_only_asks_the_server_api() -> None:
    server = ROLES["server"]
    assert server.publish == (subjects.SERVER_WILDCARD,)
    assert server.subscribe == ("_INBOX.server.>",)
    assert not server.allow_responses and not server.publish_deny


def test_role_table_uses_the_contract_names() -> None:
    from chat_devstack import nats_auth
    from chat_history.consumer_setup import DELIVER_SUBJECT, DURABLE

    assert nats_auth.CHAT == subjects.CHAT_STREAM
    assert nats_auth.PRESENCE_BUCKETS == (subjects.PRESENCE_BUCKET,
                                          subjects.PRESENCE_ANNOUNCED_BUCKET,
                                          subjects.PRESENCE_LEADER_BUCKET)
    assert (nats_auth.HISTORY_DURABLE, nats_auth.HISTORY_DELIVER) == (DURABLE, DELIVER_SUBJECT)


def test_notify_role_is_least_privilege() -> None:
    from chat_devstack.nats_auth import notify_role
    from chat_notify import consumer

    assert (nats_auth_names() ==
            (consumer.DURABLE, consumer.DELIVER_SUBJECT, subjects.NOTIFY_DEAD_STREAM))
    notify = ROLES["notify"]
    # Answers its own service only, with its own inbox.
    assert notify.allow_responses and "svc.notify.>" in notify.subscribe
    assert [s for s in notify.subscribe if s.startswith("svc.")] == ["svc.notify.>"]
    assert [s for s in notify.subscribe if s.startswith("_INBOX")] == ["_INBOX.notify.>"]
    # Asks exactly the four endpoints it uses.
    asks = {s for s in notify.publish if s.startswith("svc.")}
    assert asks == {"svc.rooms.get", "svc.rooms.blocks", "svc.auth.users",
                    "svc.presence.online"}
    # Never writes chat events, never manages the chat stream (only its own durable).
    assert "chat.>" in notify.publish_deny
    assert not any(s.startswith("chat.") for s in notify.publish)
    chat_api = [s for s in notify.publish if ".CHAT" in s]
    assert chat_api and all(s.startswith("$JS.API.STREAM.INFO.CHAT")
                            or consumer.DURABLE in s for s in chat_api), chat_api
    assert not any("DELETE" in s or "PURGE" in s or "UPDATE" in s for s in notify.publish)
    # Its dead letters: created when missing, appended to on notify.dead.<user>.
    assert {f"$JS.API.STREAM.CREATE.{subjects.NOTIFY_DEAD_STREAM}",
            f"{subjects.NOTIFY_DEAD_PREFIX}.*"} <= set(notify.publish)
    # Partitioned: one durable and deliver subject per partition stream.
    three = notify_role(3)
    for p in range(3):
        assert f"{consumer.DELIVER_SUBJECT}.CHAT_{p}" in three.subscribe
        assert f"$JS.ACK.CHAT_{p}.{consumer.DURABLE}.>" in three.publish
    # The gateway may ask for a level, nothing else of the service.
    gateway = ROLES["gateway"]
    assert "svc.notify.level" in gateway.publish


def nats_auth_names() -> tuple[str, str, str]:
    from chat_devstack import nats_auth

    return nats_auth.NOTIFY_DURABLE, nats_auth.NOTIFY_DELIVER, nats_auth.NOTIFY_DEAD


def test_attachments_bucket_rights() -> None:
    from chat_devstack import nats_auth

    gateway, history = ROLES["gateway"], ROLES["history"]
    bucket, stream = subjects.ATTACHMENTS_BUCKET, subjects.ATTACHMENTS_STREAM
    assert nats_auth.ATTACHMENTS_BUCKET == bucket
    # history-service creates the bucket (when missing) and removes objects.
    assert {f"$JS.API.STREAM.CREATE.{stream}", f"$JS.API.STREAM.PURGE.{stream}"} <= set(
        history.publish)
    assert "svc.attachments.>" in history.subscribe
    # Gateways store and read objects, ask svc.attachments.*, never manage the bucket.
    assert {f"$O.{bucket}.C.>", f"$O.{bucket}.M.>", f"$JS.API.DIRECT.GET.{stream}",
            "svc.attachments.*"} <= set(gateway.publish)
    assert not any(f"{verb}.{stream}" in s for s in gateway.publish
                   for verb in ("CREATE", "DELETE", "UPDATE"))
    # Nobody else touches it.
    for name in ("auth", "presence", "notify"):
        assert not any(bucket in s for s in ROLES[name].publish + ROLES[name].subscribe)
