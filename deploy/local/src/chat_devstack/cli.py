"""``chat-stack run | up | down | status``: the local stack on this machine."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from . import nats, stack
from .supervisor import RunDir, StartupError, Supervisor, status, stop_recorded


def _say(message: str) -> None:
    print(message, flush=True)


def _check_not_running(config: stack.StackConfig) -> int | None:
    """An exit code if a stack already runs from this run dir, None if we may start."""
    records = status(config.run_dir)
    alive = [rec.name for rec, running in records if running]
    if not alive:
        if records:  # leftovers of a crashed launcher or a reboot: nothing to stop
            stop_recorded(config.run_dir, say=lambda _m: None)
        return None
    if len(alive) == len(records):
        url = stack.read_url(config.run_dir) or config.url
        _say(f"chat stack is already up ({len(alive)} processes): open {url}")
        return 0
    dead = sorted({rec.name for rec, _ in records} - set(alive))
    _say(f"chat stack is partially up (not running: {', '.join(dead)}); run `chat-stack down`")
    return 1


def _start(config: stack.StackConfig, *, detached: bool) -> int:
    lock = RunDir(config.run_dir).lock()
    lock.acquire()
    try:
        code = _check_not_running(config)
        if code is not None:
            return code
        busy = stack.busy_ports(config)
        if busy:
            _say(f"chat-stack: ports already in use: {', '.join(busy)}; set those variables")
            return 1
        supervisor = Supervisor(stack.build_specs(config), config.run_dir, say=_say)
        stack.prepare(config)
        if detached:
            try:
                supervisor.start_detached()
            except StartupError as exc:
                _say(f"chat-stack: {exc}")
                return 1
            stack.write_state(config)
            _say(f"chat stack is up: open {config.url}")
            _say_server_api(config)
            _say("stop it with `chat-stack down`; logs are in " + str(config.run_dir / "logs"))
            return 0

        def ready() -> None:
            stack.write_state(config)
            lock.release()  # `up`/`status`/`down` from other shells may act now
            _say(f"chat stack is up: open {config.url}   (Ctrl-C stops it)")
            _say_server_api(config)

        try:
            return supervisor.run_foreground(on_ready=ready)
        finally:
            stack.clear_state(config.run_dir)
    finally:
        lock.release()


def _say_server_api(config: stack.StackConfig) -> None:
    """Where the server API listens and where its key is (README "Server API")."""
    ports = config.server_api_ports()
    if not ports:
        return
    urls = ", ".join(f"http://127.0.0.1:{port}" for port in ports)
    keys = os.environ.get("CHAT_SERVER_API_KEYS_FILE") or str(config.server_api_keys_file)
    _say(f"server API (internal): {urls}; keys in {keys}")


def _down(config: stack.StackConfig) -> int:
    with RunDir(config.run_dir).lock():
        stopped = stop_recorded(config.run_dir, say=_say)
        stack.clear_state(config.run_dir)
    _say("chat stack is down" if stopped else "chat stack was not running")
    return 0


def _status(config: stack.StackConfig) -> int:
    records = status(config.run_dir)
    if not records:
        _say("chat stack is not running")
        return 1
    width = max(len(rec.name) for rec, _ in records)
    for rec, running in records:
        _say(f"{rec.name:<{width}}  pid {rec.pid:<8} {'running' if running else 'DEAD'}")
    _say_stream_leaders(config)
    if all(running for _, running in records):
        _say(f"chat stack is up: open {stack.read_url(config.run_dir) or config.url}")
        return 0
    return 1


def _say_stream_leaders(config: stack.StackConfig) -> None:
    """Which NATS node leads each stream (the CHAT stream takes every message)."""
    for name, port in zip(config.nats_node_names(), config.nats_monitor_ports(), strict=True):
        if port is None:
            continue
        leaders = nats.stream_leaders(port)
        if not leaders:
            continue  # this node is down: ask the next
        for stream, leader in sorted(leaders.items()):
            _say(f"stream {stream}: leader {leader or '(electing)'} (asked {name})")
        return


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="chat-stack",
        description="Run the chat stack (NATS, PostgreSQL, services, gateways, Caddy) locally. "
        "Settings come from CHAT_* environment variables; see deploy/local/README.md.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="run in the foreground, streaming logs; Ctrl-C stops all")
    commands.add_parser("up", help="start detached and return once everything is ready")
    commands.add_parser("down", help="stop a detached (or orphaned) stack")
    commands.add_parser("status", help="list the stack's processes")
    args = parser.parse_args(argv)
    try:
        config = stack.StackConfig.from_env()
        if args.command == "run":
            return _start(config, detached=False)
        if args.command == "up":
            return _start(config, detached=True)
        if args.command == "down":
            return _down(config)
        return _status(config)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        _say(f"chat-stack: {exc}")
        return 1
    except KeyboardInterrupt:
        _say("chat-stack: interrupted")
        return 130
