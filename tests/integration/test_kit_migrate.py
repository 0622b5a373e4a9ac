"""CHAT_DB_MIGRATE and the migration Job's command (chat_kit.db, chat_kit.migrate)
on a real PostgreSQL: with migrations off a process applies nothing and waits
at start until the Job has made its schema current."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from importlib import resources

import pytest

from chat_kit.db import create_pool, migrate, migrate_at_start, pending_migrations
from chat_kit.env import SettingsError
from chat_kit.migrate import run

pytestmark = pytest.mark.integration


def shipped(package: str) -> list[str]:
    return sorted(f.name for f in resources.files(package).joinpath("migrations").iterdir()
                  if f.name.endswith(".sql"))


def test_chat_db_migrate_defaults_to_true(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CHAT_DB_MIGRATE", raising=False)
    assert migrate_at_start() is True  # make run and compose migrate at start
    monkeypatch.setenv("CHAT_DB_MIGRATE", "false")
    assert migrate_at_start() is False
    monkeypatch.setenv("CHAT_DB_MIGRATE", "later")
    with pytest.raises(SettingsError, match="CHAT_DB_MIGRATE"):
        migrate_at_start()


async def test_with_migrate_off_a_process_waits_for_the_job(
        db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHAT_DB_MIGRATE", "false")
    pool = await create_pool(db_url)
    try:
        # What a service's start does: migrate(pool, SCHEMA, package).
        waiting = asyncio.create_task(migrate(pool, "notify", "chat_notify", poll=0.05))
        await asyncio.sleep(0.5)
        assert not waiting.done(), "started without its schema"
        assert await pending_migrations(pool, "notify", "chat_notify") == shipped("chat_notify")
        # The Job.
        assert await run(db_url, "notify", "chat_notify") == shipped("chat_notify")
        assert await asyncio.wait_for(waiting, 5) == []
        assert await pending_migrations(pool, "notify", "chat_notify") == []
        # Already current: the next pod starts at once, and the Job applies nothing.
        assert await asyncio.wait_for(migrate(pool, "notify", "chat_notify"), 5) == []
        assert await run(db_url, "notify", "chat_notify") == []
    finally:
        await pool.close()


async def test_with_migrate_on_the_process_applies_them(
        db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHAT_DB_MIGRATE", "true")
    pool = await create_pool(db_url)
    try:
        assert await migrate(pool, "notify", "chat_notify") == shipped("chat_notify")
        assert await pending_migrations(pool, "notify", "chat_notify") == []
    finally:
        await pool.close()


async def test_the_job_command_migrates_each_schema(db_url: str) -> None:
    env = {**os.environ, "CHAT_DATABASE_URL": db_url, "CHAT_LOG_FORMAT": "text"}
    for schema, package in (("auth", "chat_auth"), ("history", "chat_history"),
                            ("notify", "chat_notify")):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "chat_kit.migrate", schema, package, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, out.decode()
        assert "schema current" in out.decode()
    pool = await create_pool(db_url)
    try:
        for schema, package in (("auth", "chat_auth"), ("history", "chat_history"),
                                ("notify", "chat_notify")):
            assert await pending_migrations(pool, schema, package) == []
    finally:
        await pool.close()


def test_the_job_command_needs_a_database_url() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_DATABASE_URL")}
    proc = subprocess.run([sys.executable, "-m", "chat_kit.migrate", "auth", "chat_auth"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "CHAT_DATABASE_URL" in proc.stderr
