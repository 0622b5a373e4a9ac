"""Machine-readable specs generated from the contract: OpenAPI 3.1 for the
REST API (:mod:`.restapi`) and AsyncAPI 3.0 for the WebSocket protocol
(:mod:`.frames`, :mod:`.events`, :mod:`.acks`), their schemas rendered by
msgspec from the same structs that decode and encode the wire.

``python -m chat_contract.specs [DIR]`` writes ``DIR/openapi.json`` and
``DIR/asyncapi.json`` (DIR defaults to ``docs``); ``--check`` only compares
and fails when they are stale. The gateway serves the same documents at
``/openapi.json`` and ``/asyncapi.json`` (chat_gateway.apidocs), and a unit
test (tests/unit/test_contract_specs.py) keeps the committed files current
and every published ``pattern`` valid JavaScript.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec

from . import acks, events, frames, restapi
from .errors import HTTP_STATUS, CloseCode, ErrorCode

TITLE = "chat"
VERSION = "1"
_DESCRIPTION = ("A real-time chat backend over NATS: the contract in words is "
                "docs/protocol.md; this document is generated from chat_contract.")


def _components(types: list[Any], prefix: str) -> tuple[Any, dict[str, Any]]:
    return msgspec.json.schema_components(types, ref_template=prefix + "{name}")


def _ref(name: str, prefix: str = "#/components/schemas/") -> dict[str, Any]:
    return {"$ref": prefix + name}


# --- OpenAPI -------------------------------------------------------------------------

_STANDARD_ERRORS = (400, 500, 503)
_REASON = {200: "OK", 201: "Created", 204: "No Content", 206: "Partial Content",
           304: "Not Modified", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
           404: "Not Found", 409: "Conflict", 413: "Content Too Large",
           415: "Unsupported Media Type", 416: "Range Not Satisfiable",
           429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable"}


def _struct_types() -> list[Any]:
    seen: dict[str, Any] = {}
    for op in restapi.OPERATIONS:
        if isinstance(op.body, type):
            seen[op.body.__name__] = op.body
        for body in op.ok.values():
            if isinstance(body, type):
                seen[body.__name__] = body
    seen[restapi.ErrorBody.__name__] = restapi.ErrorBody
    return [seen[name] for name in sorted(seen)]


def _response(status: int, body: restapi.Body) -> dict[str, Any]:
    out: dict[str, Any] = {"description": _REASON.get(status, str(status))}
    if isinstance(body, type):
        out["content"] = {"application/json": {"schema": _ref(body.__name__)}}
    elif body == "binary":
        out["content"] = {"application/octet-stream": {
            "schema": {"type": "string", "contentMediaType": "application/octet-stream"}}}
    elif body == "text":
        out["content"] = {"text/plain": {"schema": {"type": "string"}}}
    elif body == "json":
        out["content"] = {"application/json": {"schema": {"type": "object"}}}
    elif body == "html":
        out["content"] = {"text/html": {"schema": {"type": "string"}}}
    return out


def _operation(op: restapi.Operation) -> dict[str, Any]:
    out: dict[str, Any] = {"operationId": op.id, "summary": op.summary, "tags": [op.tag]}
    if op.params:
        out["parameters"] = [
            {"name": p.name, "in": p.where, "required": p.required or p.where == "path",
             "schema": p.schema, **({"description": p.description} if p.description else {})}
            for p in op.params]
    if isinstance(op.body, type):
        out["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": _ref(op.body.__name__)}}}
    elif op.body == "upload":
        out["requestBody"] = {"required": True, "content": {
            "multipart/form-data": {"schema": {
                "type": "object", "required": ["file"],
                "properties": {"file": {"type": "string",
                                        "contentMediaType": "application/octet-stream"}}}},
            "application/octet-stream": {"schema": {
                "type": "string", "contentMediaType": "application/octet-stream"}}}}
    responses = {str(status): _response(status, body) for status, body in op.ok.items()}
    if op.tag != "operations":
        statuses = set(_STANDARD_ERRORS) | set(op.errors) | {429}
        if op.auth or op.id in ("login", "refresh"):
            statuses.add(401)
        if op.body is not None:
            statuses.add(413)
        for status in sorted(statuses):
            responses[str(status)] = _response(status, restapi.ErrorBody)
    out["responses"] = responses
    if op.auth:
        out["security"] = [{"bearer": []}]
    return out


def openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 document of every REST route (docs/protocol.md §5)."""
    _, schemas = _components(_struct_types(), "#/components/schemas/")
    paths: dict[str, dict[str, Any]] = {}
    for op in restapi.OPERATIONS:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op)
    statuses = ", ".join(f"`{code.value}` {HTTP_STATUS[code]}" for code in ErrorCode)
    return {
        "openapi": "3.1.0",
        "info": {"title": f"{TITLE} REST API", "version": VERSION,
                 "description": f"{_DESCRIPTION} Error codes and statuses: {statuses}."},
        "servers": [{"url": "/"}],
        "tags": [{"name": t} for t in dict.fromkeys(op.tag for op in restapi.OPERATIONS)],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "bearerFormat": "JWT"}},
        },
    }


# --- AsyncAPI ------------------------------------------------------------------------

_FRAMES: tuple[type[msgspec.Struct], ...] = (
    frames.Auth, frames.Join, frames.Leave, frames.Send, frames.Edit, frames.Delete,
    frames.React, frames.Typing, frames.Read, frames.History, frames.Presence, frames.Ping)
_EVENTS: tuple[type[msgspec.Struct], ...] = (
    events.Welcome, events.Message, events.ReactionEvent, events.PresenceEvent,
    events.TypingEvent, events.ReadEvent, events.System, events.Error, events.Pong)
_ACKS: tuple[type[msgspec.Struct], ...] = (
    acks.EmptyAck, acks.JoinAck, acks.SendAck, acks.SeqAck, acks.HistoryAck, acks.PresenceAck)


def _tag(struct: type[msgspec.Struct]) -> str:
    return str(struct.__struct_config__.tag)


def asyncapi() -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the WebSocket protocol (docs/protocol.md §3, §4)."""
    prefix = "#/components/schemas/"
    _, schemas = _components([*_FRAMES, *_EVENTS, *_ACKS], prefix)
    messages: dict[str, Any] = {}
    for frame in _FRAMES:
        messages[f"{_tag(frame)}Frame"] = {
            "name": _tag(frame), "title": f"{_tag(frame)} (client → server)",
            "payload": _ref(frame.__name__)}
    for event in _EVENTS:
        messages[f"{_tag(event)}Event"] = {
            "name": _tag(event), "title": f"{_tag(event)} (server → client)",
            "payload": _ref(event.__name__)}
    for ack in _ACKS:
        messages[ack.__name__] = {"name": "ack", "title": ack.__name__,
                                  "summary": (ack.__doc__ or "").split("\n")[0] or None,
                                  "payload": _ref(ack.__name__)}
        if messages[ack.__name__]["summary"] is None:
            del messages[ack.__name__]["summary"]
    channel_ref = {"$ref": "#/channels/socket"}

    def msg(name: str) -> dict[str, str]:
        return {"$ref": f"#/channels/socket/messages/{name}"}

    operations: dict[str, Any] = {}
    for frame in _FRAMES:
        tag = _tag(frame)
        replies = [msg("pongEvent")] if tag == "ping" else [msg(acks.BY_FRAME[tag].__name__)]
        if tag == "auth":
            replies.insert(0, msg("welcomeEvent"))
        replies.append(msg("errorEvent"))
        operations[f"send{tag.capitalize()}"] = {
            "action": "send", "channel": channel_ref, "messages": [msg(f"{tag}Frame")],
            "reply": {"channel": channel_ref, "messages": replies}}
    operations["receiveEvents"] = {
        "action": "receive", "channel": channel_ref,
        "messages": [msg(f"{_tag(e)}Event") for e in _EVENTS]}
    closes = "; ".join(f"{int(c)} {c.name.lower()}" for c in CloseCode)
    return {
        "asyncapi": "3.0.0",
        "info": {"title": f"{TITLE} WebSocket protocol", "version": VERSION,
                 "description": (f"{_DESCRIPTION} One JSON object per text frame. A request "
                                 "with an `id` gets one `ack` or one `error` with that `id`. "
                                 f"Close codes: {closes}.")},
        "defaultContentType": "application/json",
        "servers": {"gateway": {"host": "localhost:8080", "protocol": "ws",
                                "pathname": "/ws",
                                "description": "any gateway, or the load balancer"}},
        "channels": {"socket": {
            "address": "/ws",
            "messages": {name: {"$ref": f"#/components/messages/{name}"} for name in messages},
            "bindings": {"ws": {"query": {
                "type": "object",
                "properties": {"token": {
                    "type": "string",
                    "description": "an access token; or send an auth frame first"}}}}}}},
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }


# --- files ---------------------------------------------------------------------------

FILES = {"openapi.json": openapi, "asyncapi.json": asyncapi}


def render(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def patterns(node: Any) -> Iterator[str]:
    """Every ``pattern`` in a document (what JavaScript must accept)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "pattern" and isinstance(value, str):
                yield value
            else:
                yield from patterns(value)
    elif isinstance(node, list):
        for item in node:
            yield from patterns(item)


def main(argv: list[str]) -> int:
    check = "--check" in argv
    args = [a for a in argv if a != "--check"]
    out = Path(args[0] if args else "docs")
    stale = []
    for name, build in FILES.items():
        path = out / name
        text = render(build())
        if check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(str(path))
        else:
            path.write_text(text, encoding="utf-8")
    if stale:
        print("stale (run python -m chat_contract.specs):", *stale, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
