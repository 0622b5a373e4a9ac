"""An asyncio client of the chat (docs/protocol.md): see clients/python/README.md."""

from .client import ChatClient, ChatClosed, ChatConnectionLost, ChatRequestError, Tokens
from .logic import Backoff, CloseAction, Deduper, Gap, RoomTracker, close_action

__all__ = ["Backoff", "ChatClient", "ChatClosed", "ChatConnectionLost", "ChatRequestError",
           "CloseAction", "Deduper", "Gap", "RoomTracker", "Tokens", "close_action"]
