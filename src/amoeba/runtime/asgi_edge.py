"""The edge as an ASGI application, for platforms that require one.

::

    # main.py
    from amoeba.runtime.asgi_edge import asgi_edge
    app = asgi_edge("topologies/monolith.yaml", process="main")

    uvicorn main:app --port 8080     # or granian, hypercorn

The ASGI server serves HTTP and hands each request to the process's first
listener's edge (same routes, mounts, policy, errors).  The topology's
listeners still open as usual, so other processes reach this one's RPC on
the listener port.  Slower than ``amoeba run``: the ASGI server parses HTTP
and builds a scope, then the edge binds the request again (see
bench/asgi_mount.py --only edge).  The host starts with the lifespan
(an ASGI server without lifespan support cannot run it) and drains at its
shutdown.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from amoeba.gateway.asgi import AsgiResponse
from amoeba.gateway.http import Request
from amoeba.runtime.host import Host

__all__ = ["asgi_edge"]

Message = MutableMapping[str, Any]


class AsgiEdge:
    def __init__(self, topology: str | Path, process: str, replica: int = 0):
        self.topology = str(topology)
        self.process = process
        self.replica = replica
        self.host: Host | None = None

    def __repr__(self) -> str:
        return f"<AsgiEdge {self.topology} process={self.process!r}>"

    async def __call__(self, scope: MutableMapping[str, Any],
                       receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http" or self.host is None:
            raise RuntimeError(f"{self!r}: only HTTP is served, after the lifespan startup")
        edge = self.host.edges[0]
        body = b""
        more = True
        while more:
            msg = await receive()
            body += msg.get("body", b"")
            more = bool(msg.get("more_body"))
            if len(body) > edge.settings.max_body:
                await send({"type": "http.response.start", "status": 413, "headers": []})
                await send({"type": "http.response.body", "body": b""})
                return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        client = scope.get("client")
        req = Request(scope["method"], scope.get("raw_path", b"").decode("latin-1").partition("?")[0]
                      or scope["path"], scope.get("query_string", b"").decode("latin-1"),
                      headers, body, client[0] if client else "")
        rid = edge.request_id(headers)
        resp = await edge.handle(req, rid)
        if isinstance(resp, AsgiResponse):
            raw = [(k, v) for k, v in resp.raw if k.lower() not in (b"content-length",
                                                                     b"transfer-encoding")]
        else:
            raw = [(b"content-type", resp.content_type)]
        raw.append((b"x-request-id", rid.encode("latin-1")))
        raw.extend((k.encode("latin-1"), v.encode("latin-1")) for k, v in resp.headers or ())
        await send({"type": "http.response.start", "status": resp.status, "headers": raw})
        if isinstance(resp, AsgiResponse) and resp.streaming:
            async for part in resp.chunks():
                await send({"type": "http.response.body", "body": part, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        else:
            await send({"type": "http.response.body", "body": resp.body})

    async def _lifespan(self, receive: Callable[[], Awaitable[Message]],
                        send: Callable[[Message], Awaitable[None]]) -> None:
        from amoeba.runtime.process import load_bound

        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                try:
                    app, topo = load_bound(self.topology)
                    self.host = Host(app, topo, self.process, self.replica)
                    await self.host.start()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                if self.host is not None:
                    await self.host.drain(delay=False)
                await send({"type": "lifespan.shutdown.complete"})
                return


def asgi_edge(topology: str | Path, process: str, replica: int = 0) -> AsgiEdge:
    """An ASGI 3 application serving ``process`` of ``topology`` (see the module doc)."""
    return AsgiEdge(topology, process, replica)
