"""``python -m chat_kit.migrate SCHEMA PACKAGE``: apply a service's migrations, then exit.

The Kubernetes migration Job runs it in each image whose process owns a
schema (``auth chat_auth``, ``history chat_history``, ``notify chat_notify``)
while the Deployments run with ``CHAT_DB_MIGRATE=false`` (chat_kit.db). The
database is ``CHAT_DATABASE_URL`` (or the file named by
``CHAT_DATABASE_URL_FILE``). Exit status 0: the schema is current.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from .db import create_pool, migrate
from .env import env_secret, env_str
from .logs import event, setup

log = logging.getLogger("chat_kit.migrate")


async def run(url: str, schema: str, package: str) -> list[str]:
    pool = await create_pool(url, max_size=1)
    try:
        return await migrate(pool, schema, package, apply=True)
    finally:
        await pool.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chat_kit.migrate",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("schema", help="the service's schema, e.g. history")
    parser.add_argument("package", help="the package that ships migrations/, e.g. chat_history")
    args = parser.parse_args(argv)
    setup("migrate", env_str("CHAT_LOG_LEVEL", "info").upper(),
          env_str("CHAT_LOG_FORMAT", "json"))
    url = env_secret("CHAT_DATABASE_URL")
    if not url:
        parser.error("CHAT_DATABASE_URL (or CHAT_DATABASE_URL_FILE) is not set")
    applied = asyncio.run(run(url, args.schema, args.package))
    event(log, "schema current", schema=args.schema, applied=applied)
    return 0


if __name__ == "__main__":
    sys.exit(main())
