"""``chat-admin``: what an operator does by hand to the chat's NATS resources.

    chat-admin stream show
        The CHAT stream as JSON: its live config, state (messages, bytes,
        first/last seq), cluster (leader, replicas: current, lag, offline),
        the configured settings and how the live stream differs from them.

    chat-admin stream apply [--allow-lower-replicas] [--dry-run]
        Bring the stream to the configured settings (``CHAT_STREAM_*``;
        creating it if missing) and print what changed. Fields it does not
        manage (description, placement…) are kept. Lowering the replica count
        is refused unless ``--allow-lower-replicas`` is given.

    chat-admin user disable <name>
    chat-admin user enable <name>
        Disable an account (it can no longer log in or refresh, and every
        session of it ends: its tokens are refused and its sockets closed
        with 4401 on every gateway within a second), or enable it again. Asks
        auth-service (``svc.auth.disable``, which the admin NATS role may
        publish, and the gateways for the server API's ``disable``) and
        prints the account, its state and the sessions ended.

    chat-admin server publish ROOM TEXT --as NAME | disconnect USER |
               presence ROOM | rooms | members ROOM | disable USER
        The server API over HTTP, as a backend calls it (chat_kit.admin_server:
        the URL and the API key it uses).

Processes never change an existing stream (chat_kit.stream): this command
is the one way the configured retention and replicas reach a running stream.
It connects with ``CHAT_NATS_URL`` (and whatever credentials
``chat_kit.bus.connect`` reads from the environment). Exit status: 0 done,
1 refused (also: no such user), 2 NATS, JetStream or the service failed.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import enum
import json
import logging
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import StreamConfig, StreamInfo
from nats.js.errors import NotFoundError

from chat_contract import rpc, subjects
from chat_contract.bus import DisableRequest
from chat_contract.errors import ChatError, ErrorCode

from . import admin_server, bus
from .settings import env_str
from .stream import (
    MANAGED_FIELDS,
    StreamSettings,
    chat_stream_config,
    differences,
)

# How long to try reaching NATS before giving up (a command, not a service).
CONNECT_TIMEOUT = 10.0
REQUEST_TIMEOUT = 10.0


class Refused(Exception):
    """The change is not made (exit status 1)."""


def _plain(value: Any) -> Any:
    """nats-py's dataclasses as JSON-able values, unset fields left out."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)
                if getattr(value, f.name) is not None}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def describe(info: StreamInfo, wanted: StreamConfig) -> dict[str, Any]:
    """What ``stream show`` prints for one stream."""
    cluster = info.cluster
    return {
        "stream": info.config.name,
        "config": _plain(info.config),
        "state": _plain(info.state),
        "cluster": {
            "name": cluster.name if cluster else None,
            "leader": cluster.leader if cluster else None,
            "replicas": [{"name": p.name, "current": bool(p.current),
                          "offline": bool(p.offline), "lag": p.lag or 0,
                          "active_seconds": (p.active or 0) / 1e9}
                         for p in (cluster.replicas or [])] if cluster else [],
        },
        "configured": _plain(wanted),
        "differences": differences(info.config, wanted),
    }


async def show(nc: NATS, settings: StreamSettings) -> list[dict[str, Any]]:
    js = nc.jetstream(timeout=REQUEST_TIMEOUT)
    out = []
    for name in settings.names():
        try:
            info = await js.stream_info(name)
        except NotFoundError:
            out.append({"stream": name, "missing": True})
            continue
        out.append(describe(info, chat_stream_config(settings, name)))
    return out


async def apply(nc: NATS, settings: StreamSettings, *, allow_lower_replicas: bool = False,
                dry_run: bool = False) -> list[dict[str, Any]]:
    """Make every chat stream match ``settings``; returns, per stream, what
    was (or would be) done. A refusal stops before any stream is changed."""
    js = nc.jetstream(timeout=REQUEST_TIMEOUT)
    wanted = [chat_stream_config(settings, name) for name in settings.names()]
    plans = [await _plan(js, config, allow_lower_replicas) for config in wanted]
    return [await _apply_one(js, config, info, dry_run)
            for config, info in zip(wanted, plans, strict=True)]


async def _plan(js: JetStreamContext, wanted: StreamConfig,
                allow_lower_replicas: bool) -> StreamInfo | None:
    """The stream's info (None if missing); Refused if the change must not be made."""
    try:
        info = await js.stream_info(wanted.name or subjects.CHAT_STREAM)
    except NotFoundError:
        return None
    live_r, want_r = info.config.num_replicas or 1, wanted.num_replicas or 1
    if want_r < live_r and not allow_lower_replicas:
        raise Refused(f"stream {info.config.name} has {live_r} replicas and the settings ask "
                      f"for {want_r}: lowering them loses redundancy; pass "
                      "--allow-lower-replicas to do it")
    return info


async def _apply_one(js: JetStreamContext, wanted: StreamConfig, info: StreamInfo | None,
                     dry_run: bool) -> dict[str, Any]:
    name = wanted.name or subjects.CHAT_STREAM
    if info is None:
        if not dry_run:
            await js.add_stream(wanted)
        return {"stream": name, "created": not dry_run, "config": _plain(wanted)}
    diff = differences(info.config, wanted)
    if diff and not dry_run:
        changes = {field: getattr(wanted, field) for field in MANAGED_FIELDS if field in diff}
        await js.update_stream(dataclasses.replace(info.config, **changes))
    return {"stream": name, "changed": diff if not dry_run else {}, "differences": diff}


async def set_disabled(nc: NATS, name: str, disabled: bool) -> dict[str, Any]:
    """Disable or enable the account ``name`` (Refused if there is none)."""
    try:
        reply = await bus.request(nc, rpc.AUTH_DISABLE,
                                  DisableRequest(name=name, disabled=disabled), REQUEST_TIMEOUT)
    except ChatError as exc:
        if exc.code in (ErrorCode.NOT_FOUND, ErrorCode.BAD_REQUEST):
            raise Refused(exc.message) from None
        raise
    return {"user": {"id": reply.user.id, "name": reply.user.name},
            "disabled": reply.disabled, "sessions_ended": reply.sessions}


async def run(args: argparse.Namespace) -> int:
    if args.resource == "server":  # HTTP with an API key; no NATS login
        return await asyncio.to_thread(admin_server.run, args)
    settings = StreamSettings.from_env()
    url = env_str("CHAT_NATS_URL", "nats://127.0.0.1:4222")
    stop = asyncio.Event()
    try:
        nc = await asyncio.wait_for(bus.connect(url, "chat-admin", stop), CONNECT_TIMEOUT)
    except Exception as exc:  # refused, or not reachable within CONNECT_TIMEOUT
        stop.set()
        print(f"chat-admin: cannot reach NATS at {url}: {exc!r}", file=sys.stderr)
        return 2
    try:
        if args.resource == "user":
            result: Any = await set_disabled(nc, args.name, args.action == "disable")
        elif args.action == "show":
            result = await show(nc, settings)
        else:
            result = await apply(nc, settings, allow_lower_replicas=args.allow_lower_replicas,
                                 dry_run=args.dry_run)
        print(json.dumps(result, indent=2, sort_keys=True, default=str))
        return 0
    except Refused as exc:
        print(f"chat-admin: refused: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # JetStream refused or timed out: say so, no traceback
        print(f"chat-admin: {exc!r}", file=sys.stderr)
        return 2
    finally:
        await nc.close()


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="chat-admin", description=__doc__.split("\n")[0])
    what = top.add_subparsers(dest="resource", required=True)
    stream = what.add_parser("stream", help="the CHAT stream")
    actions = stream.add_subparsers(dest="action", required=True)
    actions.add_parser("show", help="config, state and cluster as JSON")
    do = actions.add_parser("apply", help="update the stream to the configured settings")
    do.add_argument("--allow-lower-replicas", action="store_true",
                    help="allow the update to lower the replica count")
    do.add_argument("--dry-run", action="store_true", help="print the differences only")
    user = what.add_parser("user", help="an account (through auth-service)")
    user_actions = user.add_subparsers(dest="action", required=True)
    for action, text in (("disable", "no login or refresh; end every session"),
                         ("enable", "allow logins again")):
        one = user_actions.add_parser(action, help=text)
        one.add_argument("name", help="the user name (any letter case)")
    admin_server.add_parser(what)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # Connection retries log a warning each; the command reports the outcome once.
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
