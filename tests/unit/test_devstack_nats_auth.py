"""chat_devstack.nats_auth: the role users' credentials and the role table
(who may publish and subscribe to what), without a server."""

from __future__ import annotations

import stat
from pathlib import Path

from chat_contract import subjects
from chat_devstack.nats_auth import ROLES, NatsCredentials


def test_credentials_are_private_and_kept(tmp_path: Path) -> None:
    first = NatsCredentials.load_or_create(tmp_path / "nats-auth")
    assert set(first.passwords) == {"gateway", "auth", "history", "presence", "admin"}
    assert len(set(first.passwords.values())) == 5
    assert stat.S_IMODE((tmp_path / "nats-auth").stat().st_mode) == 0o700
    for role in first.passwords:
        assert stat.S_IMODE(first.password_file(role).stat().st_mode) == 0o600
    again = NatsCredentials.load_or_create(tmp_path / "nats-auth")
    assert again.passwords == first.passwords  # a restart keeps every login


def test_role_table_keeps_the_issue_promises() -> None:
    gateway, auth, history, presence = (ROLES[r] for r in ("gateway", "auth", "history",
                                                           "presence"))
    # Only auth-service subscribes to svc.auth.>; gateways answer no service.
    assert "svc.auth.>" in auth.subscribe
    for role in (gateway, history, presence):
        assert not any(s.startswith("svc.auth") for s in role.subscribe)
    assert {"svc.>", "$SRV.>"} <= set(gateway.subscribe_deny) and not gateway.allow_responses
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


def test_role_table_uses_the_contract_names() -> None:
    from chat_devstack import nats_auth
    from chat_history.consumer_setup import DELIVER_SUBJECT, DURABLE

    assert nats_auth.CHAT == subjects.CHAT_STREAM
    assert nats_auth.PRESENCE_BUCKETS == (subjects.PRESENCE_BUCKET,
                                          subjects.PRESENCE_ANNOUNCED_BUCKET,
                                          subjects.PRESENCE_LEADER_BUCKET)
    assert (nats_auth.HISTORY_DURABLE, nats_auth.HISTORY_DELIVER) == (DURABLE, DELIVER_SUBJECT)
