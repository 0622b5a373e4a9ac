"""``chat-admin server …``: the server API (README "Server API") from a shell.

    chat-admin server publish ROOM TEXT --as NAME
    chat-admin server disconnect USER
    chat-admin server presence ROOM
    chat-admin server rooms [--limit N] [--cursor C]
    chat-admin server members ROOM
    chat-admin server disable USER

Each is one ``POST <url>/v1/server/<method>`` to a gateway's internal
listener, the same call a backend makes; the reply is printed as JSON.

- URL: ``--url``, else ``CHAT_SERVER_API_URL``, else ``http://127.0.0.1:8181``
  (chat-stack's gateway-1).
- Key (``<key-id>:<secret>``): ``CHAT_SERVER_API_KEY``; else the first key
  line of ``--key-file`` / ``CHAT_SERVER_API_KEY_FILE`` (a keys file line
  ``<key-id>:<secret>:<scopes>`` works as is), else of chat-stack's
  ``<CHAT_RUN_DIR or .run>/server-api/keys``.

Exit status: 0 done, 1 refused (a 4xx: the message says why), 2 the API
could not be reached or failed (5xx).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8181"
TIMEOUT = 10.0


class ApiFailed(Exception):
    """The call did not succeed; ``status`` is the exit status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def read_key(key_file: str | None = None) -> str:
    """The ``<key-id>:<secret>`` to present (see the module docstring)."""
    key = os.environ.get("CHAT_SERVER_API_KEY", "").strip()
    if key and not key_file:
        return key
    path = Path(key_file or os.environ.get("CHAT_SERVER_API_KEY_FILE")
                or Path(os.environ.get("CHAT_RUN_DIR") or ".run") / "server-api" / "keys")
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ApiFailed(1, f"no API key: set CHAT_SERVER_API_KEY or a key file ({path}: "
                           f"{exc.strerror})") from None
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            key_id, _, rest = line.partition(":")
            return f"{key_id}:{rest.split(':', 1)[0]}"
    raise ApiFailed(1, f"no key in {path}")


def call(url: str, key: str, method: str, body: dict[str, Any]) -> Any:
    """One server API call; the decoded reply, or ApiFailed."""
    request = urllib.request.Request(
        f"{url.rstrip('/')}/v1/server/{method}", data=json.dumps(body).encode(),
        method="POST", headers={"Authorization": f"Bearer {key}",
                                "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:  # noqa: S310
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            error = json.loads(exc.read())["error"]
            message = f"{exc.code} {error['code']}: {error['message']}"
        except (ValueError, KeyError, TypeError):
            message = f"HTTP {exc.code}"
        raise ApiFailed(1 if exc.code < 500 else 2, message) from None
    except (urllib.error.URLError, OSError) as exc:
        raise ApiFailed(2, f"cannot reach the server API at {url}: {exc}") from None


def body_of(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The method and body for the parsed ``server`` subcommand."""
    match args.action:
        case "publish":
            return "publish", {"room": args.room, "text": args.text, "as": args.as_name}
        case "disconnect" | "disable":
            return args.action, {"user": args.user}
        case "presence" | "members":
            return args.action, {"room": args.room}
        case _:
            body: dict[str, Any] = {"limit": args.limit}
            if args.cursor:
                body["cursor"] = args.cursor
            return "rooms", body


def add_parser(what: Any) -> None:
    """``server`` and its subcommands under chat-admin's parser."""
    server = what.add_parser("server", help="the server API (a gateway's internal port)")
    server.add_argument("--url", default=None,
                        help=f"server API base URL (CHAT_SERVER_API_URL, else {DEFAULT_URL})")
    server.add_argument("--key-file", default=None,
                        help="file with the key (CHAT_SERVER_API_KEY_FILE)")
    actions = server.add_subparsers(dest="action", required=True)
    publish = actions.add_parser("publish", help="a bot's message into a room")
    publish.add_argument("room")
    publish.add_argument("text")
    publish.add_argument("--as", dest="as_name", required=True, help="the bot's name")
    for action, text in (("disconnect", "close the user's sockets on every gateway"),
                         ("disable", "disable the account: sessions end, no logins")):
        one = actions.add_parser(action, help=text)
        one.add_argument("user", help="a user id or name")
    for action, text in (("presence", "who is in the room now"),
                         ("members", "the room's members, each with online")):
        one = actions.add_parser(action, help=text)
        one.add_argument("room")
    rooms = actions.add_parser("rooms", help="every room, newest first")
    rooms.add_argument("--limit", type=int, default=100)
    rooms.add_argument("--cursor", default=None, help="the previous page's next_cursor")


def run(args: argparse.Namespace) -> int:
    url = args.url or os.environ.get("CHAT_SERVER_API_URL") or DEFAULT_URL
    try:
        method, body = body_of(args)
        result = call(url, read_key(args.key_file), method, body)
    except ApiFailed as exc:
        print(f"chat-admin: {exc}", file=sys.stderr)
        return exc.status
    print(json.dumps(result, indent=2, sort_keys=True, ensure_ascii=False))
    return 0
