"""chat_notify.config: the CHAT_NOTIFY_* variables, their defaults and refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from chat_kit.settings import SettingsError
from chat_notify.config import NotifySettings


def test_defaults_are_disabled_and_documented(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CHAT_NOTIFY_WEBHOOK_URL", "CHAT_NOTIFY_WEBHOOK_SECRET",
                 "CHAT_NOTIFY_WEBHOOK_SECRET_FILE"):
        monkeypatch.delenv(name, raising=False)
    s = NotifySettings.from_env()
    assert not s.enabled and s.port == 8094
    assert (s.max_attempts, s.backoff_base, s.backoff_cap) == (5, 0.5, 30.0)
    assert (s.concurrency, s.webhook_concurrency, s.max_ack_pending) == (32, 32, 1000)
    assert (s.max_age, s.cache_ttl, s.text_max, s.webhook_timeout) == (3600.0, 10.0, 200, 10.0)
    readme = (Path(__file__).resolve().parents[2] / "notify-service" / "README.md").read_text()
    for name in ("CHAT_NOTIFY_PORT", "CHAT_NOTIFY_MAX_ATTEMPTS", "CHAT_NOTIFY_BACKOFF_BASE",
                 "CHAT_NOTIFY_BACKOFF_CAP", "CHAT_NOTIFY_CONCURRENCY", "CHAT_NOTIFY_MAX_AGE",
                 "CHAT_NOTIFY_WEBHOOK_CONCURRENCY", "CHAT_NOTIFY_MAX_ACK_PENDING",
                 "CHAT_NOTIFY_CACHE_TTL", "CHAT_NOTIFY_TEXT_MAX", "CHAT_NOTIFY_DEAD_MAX_AGE",
                 "CHAT_NOTIFY_DEAD_MAX_BYTES", "CHAT_NOTIFY_DB_POOL",
                 "CHAT_NOTIFY_WEBHOOK_TIMEOUT", "CHAT_NOTIFY_WEBHOOK_SECRET_FILE"):
        assert f"`{name}`" in readme, name


def test_secret_from_a_file_and_hidden(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "key").write_text("k3y\n")
    monkeypatch.setenv("CHAT_NOTIFY_WEBHOOK_URL", "https://hooks.example.com/x?token=t")
    monkeypatch.setenv("CHAT_NOTIFY_WEBHOOK_SECRET_FILE", str(tmp_path / "key"))
    s = NotifySettings.from_env()
    assert s.enabled and s.webhook_secret == "k3y"
    assert "k3y" not in repr(s)


@pytest.mark.parametrize(("env", "message"), [
    ({"CHAT_NOTIFY_WEBHOOK_URL": "https://h.example/x"}, "CHAT_NOTIFY_WEBHOOK_SECRET"),
    ({"CHAT_NOTIFY_WEBHOOK_URL": "ftp://h.example/x", "CHAT_NOTIFY_WEBHOOK_SECRET": "s"},
     "CHAT_NOTIFY_WEBHOOK_URL"),
    ({"CHAT_NOTIFY_BACKOFF_BASE": "5", "CHAT_NOTIFY_BACKOFF_CAP": "1"}, "CHAT_NOTIFY_BACKOFF_CAP"),
    ({"CHAT_NOTIFY_MAX_ATTEMPTS": "0"}, "CHAT_NOTIFY_MAX_ATTEMPTS"),
])
def test_refusals_name_the_variable(monkeypatch: pytest.MonkeyPatch, env: dict[str, str],
                                    message: str) -> None:
    for name in ("CHAT_NOTIFY_WEBHOOK_URL", "CHAT_NOTIFY_WEBHOOK_SECRET",
                 "CHAT_NOTIFY_WEBHOOK_SECRET_FILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=message):
        NotifySettings.from_env()
