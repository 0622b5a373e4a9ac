"""Loopback port helpers: pick free ports and wait for servers to answer."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import httpx

LOOPBACK = "127.0.0.1"
_POLL = 0.1


class ProcessExitedError(RuntimeError):
    """The process we were waiting for died before it became ready."""


def free_port(host: str = LOOPBACK) -> int:
    """A port that is free right now (the OS picks it; a race with others is possible)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def port_in_use(port: int, host: str = LOOPBACK) -> bool:
    """True when binding host:port fails (someone listens there already)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Same option the servers use: a TIME_WAIT leftover must not count as "in use".
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
        return False


def http_ok(url: str, timeout: float = 1.0) -> bool:
    """True when GET url answers 2xx."""
    try:
        # trust_env=False: a developer's HTTP(S)_PROXY must not swallow loopback probes.
        response = httpx.get(url, timeout=timeout, trust_env=False)
    except httpx.HTTPError:
        return False
    return response.is_success


def wait_until(
    probe: Callable[[], bool],
    what: str,
    timeout: float,
    *,
    alive: Callable[[], bool] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> None:
    """Poll ``probe`` until it returns True.

    ``alive`` lets the caller fail fast when the process it started has exited
    instead of waiting out the whole timeout; ``cancelled`` aborts (e.g. Ctrl-C).
    """
    deadline = time.monotonic() + timeout
    while True:
        if cancelled is not None and cancelled():
            raise InterruptedError(f"cancelled while waiting for {what}")
        if alive is not None and not alive():
            raise ProcessExitedError(f"process exited before {what} was ready")
        if probe():
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not ready after {timeout:.0f}s")
        time.sleep(_POLL)


def wait_port(
    host: str,
    port: int,
    timeout: float = 30.0,
    *,
    alive: Callable[[], bool] | None = None,
) -> None:
    """Block until host:port accepts connections (TimeoutError otherwise)."""
    wait_until(lambda: port_open(host, port), f"{host}:{port}", timeout, alive=alive)


def wait_http_ok(
    url: str,
    timeout: float = 30.0,
    *,
    alive: Callable[[], bool] | None = None,
) -> None:
    """Block until GET url answers 2xx (TimeoutError otherwise)."""
    wait_until(lambda: http_ok(url), url, timeout, alive=alive)
