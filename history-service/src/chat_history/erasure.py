"""Deleted text leaves the CHAT stream too: after a delete is committed, the
stream messages of the message's original and its edits are deleted (history
keeps the event rows, without text). Best effort: a failure is counted and
logged once, and the text stays in the stream until it ages out.
"""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError

from chat_kit.stream import StreamSettings

from . import metrics
from .store import MessageStore
from .troubles import Troubles

# JetStream's "no message found" (JSNoMessageFoundErr): not in the stream.
_NO_MESSAGE = 10057


async def erase_msg(js: JetStreamContext, stream: str, seq: int) -> bool:
    """Delete one stream message; False if it is not there any more: erased
    before (a replay) or aged out of the window (the stream's limits), which
    is the same outcome, not an error."""
    try:
        await js.delete_msg(stream, seq)
    except NotFoundError:
        return False
    except APIError as exc:
        if exc.err_code == _NO_MESSAGE:
            return False
        raise
    return True


async def erase_deleted(js: JetStreamContext, store: MessageStore, layout: StreamSettings,
                        changed: set[tuple[str, str]], troubles: Troubles) -> None:
    """Erase from the stream what ``changed`` (room, msg_id) pairs left to erase."""
    for room, msg_id in changed:
        try:
            for seq in await store.erasable(room, msg_id):
                if await erase_msg(js, layout.stream_for_room(room), seq):
                    metrics.ERASED.inc()
        except Exception as exc:
            metrics.ERASE_ERRORS.inc()
            troubles.failing("erase", "erasing a deleted message from the stream failed", exc)
            continue
        troubles.recovered("erase")
