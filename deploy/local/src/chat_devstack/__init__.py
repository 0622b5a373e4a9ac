"""Local launcher for the chat stack: real NATS, PostgreSQL and Caddy from PyPI wheels.

Test fixtures use the server classes directly::

    from chat_devstack import NatsServer, PostgresServer, free_port
    nats = NatsServer.start(free_port(), tmp / "nats")
    pg = PostgresServer.start(free_port(), tmp / "pg")
"""

from .caddy import Caddy
from .nats import NatsServer
from .ports import free_port
from .postgres import PostgresServer

__all__ = ["Caddy", "NatsServer", "PostgresServer", "free_port"]
