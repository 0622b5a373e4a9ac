"""Process lifecycle: start in order, stop in reverse on SIGTERM/SIGINT.

A deployable hands :func:`run` a ``Component``: ``start`` brings up its own
parts once NATS is connected; ``stop`` undoes them. The order on shutdown is
the one centrifugo and uvicorn use: fail readiness, stop accepting, let the
component close its work (with a bound), then drain NATS.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute

from . import bus, logs
from .http import CountRequests, expose_raw_send, health_routes
from .logs import event
from .natsclient import Client
from .settings import CommonSettings

log = logging.getLogger("chat_kit.runtime")


@dataclass
class Runtime:
    """What a component gets: settings, the NATS client, the stop signal."""

    name: str
    settings: CommonSettings
    nc: Client
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    # Extra readiness conditions (database reachable, caught up, …).
    checks: list[Callable[[], bool]] = field(default_factory=list)

    def is_ready(self) -> bool:
        return (not self.stopping.is_set() and self.nc.is_connected
                and all(check() for check in self.checks))


class Component(Protocol):
    async def start(self, rt: Runtime) -> None: ...
    async def stop(self) -> None: ...
    def routes(self) -> list[BaseRoute]: ...


def uvicorn_config(app: Starlette, host: str, port: int, **extra: object) -> uvicorn.Config:
    """uvicorn's settings; ``extra`` adds or overrides (the gateway's WebSocket
    limits, trusted proxies and protocol class). Proxy headers are off unless asked for:
    uvicorn's default would trust X-Forwarded-For from 127.0.0.1 or from
    whatever ``FORWARDED_ALLOW_IPS`` says."""
    options: dict[str, object] = {"proxy_headers": False, "ws": "websockets-sansio", **extra}
    return uvicorn.Config(
        expose_raw_send(app), host=host, port=port, log_config=None, access_log=False,
        loop="uvloop", http="httptools",
        lifespan="off", timeout_graceful_shutdown=5, **options,  # type: ignore[arg-type]
    )


async def serve(
    name: str, port: int, component: Component, settings: CommonSettings,
    stop_timeout: float = 10.0, server_options: dict[str, object] | None = None,
) -> None:
    """Run one process until SIGTERM/SIGINT; see the module docstring for the order."""
    logs.setup(name, settings.log_level, settings.log_format)
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_requested.set)

    nc = await bus.connect(settings.nats_url, name, stop_requested, settings.nats_auth)
    rt = Runtime(name=name, settings=settings, nc=nc)
    await component.start(rt)
    app = Starlette(routes=[*component.routes(), *health_routes(rt.is_ready)],
                    middleware=[Middleware(CountRequests)])
    server = uvicorn.Server(uvicorn_config(app, settings.host, port, **(server_options or {})))
    server.install_signal_handlers = lambda: None  # type: ignore[attr-defined]
    server_task = asyncio.create_task(server.serve())
    event(log, "started", port=port, nats=settings.nats_url)

    stop_wait = asyncio.create_task(stop_requested.wait())
    done, _ = await asyncio.wait({server_task, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
    event(log, "stopping")
    rt.stopping.set()  # readiness fails first, so the load balancer moves on
    try:
        await asyncio.wait_for(component.stop(), stop_timeout)
    except TimeoutError:
        event(log, "component stop timed out", logging.WARNING)
    server.should_exit = True
    await asyncio.gather(server_task, return_exceptions=True)
    stop_wait.cancel()
    try:
        await asyncio.wait_for(nc.drain(), 5)
    except Exception as exc:  # drain failing must not keep the process alive
        event(log, "nats drain failed", logging.WARNING, error=repr(exc))
    event(log, "stopped")


def main(name: str, port: int, component: Component, settings: CommonSettings,
         server_options: dict[str, object] | None = None) -> None:
    import uvloop

    uvloop.run(serve(name, port, component, settings, server_options=server_options))
