"""A bare ASGI 3 application, no framework: what the bridge must honour."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from mountapp import events


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                events.record("raw startup")
                scope["state"]["greeting"] = "hello from lifespan"
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                events.record("raw shutdown")
                await send({"type": "lifespan.shutdown.complete"})
                return
    assert scope["type"] == "http"
    path = scope["path"]
    if path == "/raw/stream":
        n = int(dict(p.split("=") for p in scope["query_string"].decode().split("&") if p).get("n", 3))
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        for i in range(n):
            await send({"type": "http.response.body", "body": f"chunk {i}\n".encode(),
                        "more_body": True})
            await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        events.record(f"raw streamed {n}")
        return
    if path == "/raw/boom":
        raise RuntimeError("the app failed")
    body = b""
    while True:
        msg = await receive()
        body += msg.get("body", b"")
        if not msg.get("more_body"):
            break
    principal = scope.get("amoeba.principal")
    headers = dict(scope["headers"])
    answer = {
        "method": scope["method"], "path": path, "query": scope["query_string"].decode(),
        "body": body.decode(), "principal": principal.subject if principal else None,
        "state_principal": getattr(scope["state"].get("principal"), "subject", None),
        "request_id": scope["state"]["request_id"],
        "greeting": scope["state"].get("greeting"),
        "traceparent": headers.get(b"traceparent", b"").decode(),
    }
    await send({"type": "http.response.start", "status": 201 if scope["method"] == "POST" else 200,
                "headers": [(b"content-type", b"application/json"), (b"x-raw", b"1")]})
    await send({"type": "http.response.body", "body": json.dumps(answer).encode()})
