"""The machine-readable specs, served: ``GET /openapi.json`` (REST, OpenAPI
3.1), ``GET /asyncapi.json`` (WebSocket, AsyncAPI 3.0), and ``GET /docs``, a
self-contained HTML page listing every operation and message from them (no
script, no CDN). The documents are rendered once from chat_contract
(:mod:`chat_contract.specs`), the same ones committed under docs/.
"""

from __future__ import annotations

import html
import json
from functools import cache
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from chat_contract import specs

_CACHE = "public, max-age=300"


@cache
def _documents() -> dict[str, bytes]:
    return {name: specs.render(build()).encode() for name, build in specs.FILES.items()}


def _schema_text(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    if "anyOf" in schema:
        return " | ".join(_schema_text(s) for s in schema["anyOf"])
    if "enum" in schema:
        return " | ".join(json.dumps(v) for v in schema["enum"])
    if schema.get("type") == "array":
        return f"[{_schema_text(schema.get('items', {}))}]"
    text = str(schema.get("type", "any"))
    if "pattern" in schema:
        text += f" {schema['pattern']}"
    return text


def _schemas_html(*docs: dict[str, Any]) -> str:
    """Every schema of both documents: its fields, their types, * when required."""
    rows = []
    seen: set[str] = set()
    for doc in docs:
        for name, schema in doc["components"]["schemas"].items():
            if name in seen:
                continue
            seen.add(name)
            required = set(schema.get("required", []))
            fields = ", ".join(f"{key}{'*' if key in required else ''}: {_schema_text(sub)}"
                               for key, sub in schema.get("properties", {}).items())
            rows.append(f"<tr><td id=\"{html.escape(name)}\">{html.escape(name)}</td>"
                        f"<td>{html.escape(fields or _schema_text(schema))}</td></tr>")
    return "\n".join(rows)


def _ops_html(doc: dict[str, Any]) -> str:
    rows = []
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            params = ", ".join(
                f"{p['name']} ({p['in']}{', required' if p.get('required') else ''})"
                for p in op.get("parameters", []))
            body = op.get("requestBody", {}).get("content", {})
            body_text = ", ".join(
                f"{media}: {_schema_text(v['schema'])}" for media, v in body.items())
            responses = ", ".join(
                f"{status}" + (f" {_schema_text(next(iter(r['content'].values()))['schema'])}"
                               if r.get("content") and not status.startswith(("4", "5"))
                               else "")
                for status, r in op["responses"].items())
            lock = "🔒 " if op.get("security") else ""
            rows.append(
                f"<tr><td><code>{method.upper()} {html.escape(path)}</code></td>"
                f"<td>{lock}{html.escape(op['summary'])}</td><td>{html.escape(params)}</td>"
                f"<td>{html.escape(body_text)}</td><td>{html.escape(responses)}</td></tr>")
    return "\n".join(rows)


def _messages_html(doc: dict[str, Any]) -> str:
    rows = []
    for name, op in doc["operations"].items():
        sent = ", ".join(m["$ref"].rsplit("/", 1)[-1] for m in op["messages"])
        replies = ", ".join(m["$ref"].rsplit("/", 1)[-1]
                            for m in op.get("reply", {}).get("messages", []))
        rows.append(f"<tr><td>{html.escape(name)}</td><td>{op['action']}</td>"
                    f"<td>{html.escape(sent)}</td><td>{html.escape(replies)}</td></tr>")
    return "\n".join(rows)


@cache
def _page() -> bytes:
    rest, ws = specs.openapi(), specs.asyncapi()
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(rest['info']['title'])}</title>
<style>
body{{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}}
table{{border-collapse:collapse;width:100%;margin-bottom:2em}}
td,th{{border:1px solid #ccc;padding:4px 6px;text-align:left;vertical-align:top}}
th{{background:#f3f3f3}} code{{white-space:nowrap}}
</style></head><body>
<h1>{html.escape(rest['info']['title'])}</h1>
<p>{html.escape(rest['info']['description'])}</p>
<p>Machine-readable: <a href="/openapi.json">/openapi.json</a> (OpenAPI 3.1),
<a href="/asyncapi.json">/asyncapi.json</a> (AsyncAPI 3.0, the WebSocket at <code>/ws</code>).
🔒: <code>Authorization: Bearer &lt;access_token&gt;</code>.</p>
<h2>REST</h2>
<table><tr><th>route</th><th>what</th><th>parameters</th><th>body</th><th>responses</th></tr>
{_ops_html(rest)}
</table>
<h2>WebSocket</h2>
<p>{html.escape(ws['info']['description'])}</p>
<table><tr><th>operation</th><th>action</th><th>messages</th><th>replies</th></tr>
{_messages_html(ws)}
</table>
<h2>Schemas</h2>
<p>Fields marked * are required.</p>
<table><tr><th>name</th><th>fields</th></tr>
{_schemas_html(rest, ws)}
</table>
</body></html>
""".encode()


async def _openapi(_: Request) -> Response:
    return Response(_documents()["openapi.json"], media_type="application/json",
                    headers={"Cache-Control": _CACHE})


async def _asyncapi(_: Request) -> Response:
    return Response(_documents()["asyncapi.json"], media_type="application/json",
                    headers={"Cache-Control": _CACHE})


async def _docs(_: Request) -> Response:
    return Response(_page(), media_type="text/html; charset=utf-8",
                    headers={"Cache-Control": _CACHE,
                             "Content-Security-Policy": "default-src 'none'; style-src "
                                                        "'unsafe-inline'"})


def routes() -> list[Route]:
    return [Route("/openapi.json", _openapi, methods=["GET"]),
            Route("/asyncapi.json", _asyncapi, methods=["GET"]),
            Route("/docs", _docs, methods=["GET"])]
