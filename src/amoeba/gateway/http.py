"""A lean HTTP/1.1 server protocol on httptools.

One listener port serves HTTP and RPC: a connection whose first bytes are
the RPC magic is handed to :class:`~amoeba.transport.server.RpcServerProtocol`.
Requests on one connection are answered in order (pipelining is honoured);
bodies over the listener's limit are refused with 413 before they are read.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from http import HTTPStatus
from typing import TYPE_CHECKING, cast

import httptools

from amoeba.codec import json_encoder
from amoeba.errors import PayloadTooLarge, ServiceError
from amoeba.transport.server import MAGIC, RpcServerProtocol

if TYPE_CHECKING:
    from amoeba.auth.principal import Principal
    from amoeba.gateway.edge import Edge, RouteHandler

__all__ = ["HttpProtocol", "Request", "Response", "error_response"]

log = logging.getLogger("amoeba.http")

MAX_PIPELINED = 32  # requests queued on one connection before it stops reading
_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}


class Request:
    # ``principal``: set by the edge from a verified access token.
    # ``route``: the route template that matched (a metric label), set by the edge;
    # ``handler``: the route's handler, once matched (metrics record by it).
    __slots__ = ("body", "client", "handler", "headers", "method", "path", "principal", "query",
                 "route")

    def __init__(self, method: str, path: str, query: str, headers: dict[str, str], body: bytes,
                 client: str = ""):
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.client = client
        self.principal: Principal | None = None
        self.route = ""
        self.handler: RouteHandler | None = None

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.path}>"


class Response:
    __slots__ = ("body", "content_type", "headers", "status")

    def __init__(self, status: int, body: bytes, content_type: bytes = b"application/json",
                 headers: list[tuple[str, str]] | None = None):
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers

    def __repr__(self) -> str:
        return f"<Response {self.status} {len(self.body)} bytes>"

    def encode(self, request_id: str, keep_alive: bool) -> bytes:
        parts = [b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\nx-request-id: %s\r\n"
                 % (self.status, _REASONS.get(self.status, b"Unknown"), self.content_type,
                    len(self.body), request_id.encode("latin-1"))]
        if self.headers:
            parts.extend(f"{k}: {v}\r\n".encode("latin-1") for k, v in self.headers)
        if not keep_alive:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        parts.append(self.body)
        return b"".join(parts)


def error_response(exc: ServiceError, request_id: str) -> Response:
    err = exc.to_wire()
    err["request_id"] = request_id
    resp = Response(exc.status, json_encoder.encode({"error": err}))
    if exc.retry_after is not None:
        resp.headers = [("retry-after", str(max(1, math.ceil(exc.retry_after))))]
    return resp


class HttpProtocol(asyncio.Protocol):
    def __init__(self, edge: Edge):
        self.edge = edge
        self.max_body = edge.settings.max_body
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.first = True
        self.queue: deque[tuple[Request, bool]] = deque()
        self.busy = False
        self.closing = False
        self.paused = False
        # per-message state
        self.url = b""
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.size = 0
        self.too_large = False
        self.client = ""

    # -- connection ---------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.client = peer[0] if isinstance(peer, tuple) else ""
        self.edge.host.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.edge.host.connections.discard(self)
        self.transport = None

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def goaway(self) -> None:
        """Draining begins: nothing to announce, every answer from now on says
        ``connection: close`` (see ``_serve``)."""

    def close_if_idle(self) -> None:
        """Called when draining: close now if nothing is in flight, else after it."""
        self.closing = True
        if not self.busy and self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.first:
            self.first = False
            if data[:4] == MAGIC:
                self._become_rpc(data[4:])
                return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, "protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            if not self.too_large:
                self._fail(400, f"malformed HTTP request: {exc}")

    def _become_rpc(self, rest: bytes) -> None:
        assert self.transport is not None
        self.edge.host.connections.discard(self)
        rpc = RpcServerProtocol(self.edge.host)
        self.transport.set_protocol(rpc)
        rpc.connection_made(self.transport)
        if rest:
            rpc.data_received(rest)

    def _fail(self, status: int, message: str) -> None:
        if self.transport is None:
            return
        exc = ServiceError(message)
        body = error_response(exc, "-").body
        self.transport.write(Response(status, body).encode("-", keep_alive=False))
        self.transport.close()

    # -- httptools callbacks -----------------------------------------------
    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = {}
        self.body = []
        self.size = 0
        self.too_large = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        length = self.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            self._refuse_large()

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > self.max_body:
            self._refuse_large()
            if self.size > 16 * self.max_body and self.transport is not None:
                self.transport.close()  # enough discarding: let the client see a reset
        elif not self.too_large:
            self.body.append(body)

    def _refuse_large(self) -> None:
        if self.too_large or self.transport is None:
            return
        self.too_large = True
        exc = PayloadTooLarge(f"request body exceeds the limit of {self.max_body} bytes")
        rid = self.edge.request_id(self.headers)
        self.transport.write(error_response(exc, rid).encode(rid, keep_alive=False))
        # Closing with unread upload bytes makes the kernel send a reset and the
        # client may never read the 413: discard the rest of the body first
        # (bounded in size above and in time here), then close.
        asyncio.get_running_loop().call_later(5.0, self.transport.close)

    def on_message_complete(self) -> None:
        if self.too_large:
            if self.transport is not None:
                self.transport.close()
            return
        url = httptools.parse_url(self.url)
        path = url.path.decode("latin-1")
        query = url.query.decode("latin-1") if url.query else ""
        method = self.parser.get_method().decode("ascii")
        req = Request(method, path, query, self.headers, b"".join(self.body), self.client)
        self.queue.append((req, bool(self.parser.should_keep_alive())))
        if len(self.queue) >= MAX_PIPELINED and self.transport is not None:
            self.transport.pause_reading()  # a pipelining client waits for its answers
            self.paused = True
        if not self.busy:
            self.busy = True
            asyncio.get_running_loop().create_task(self._serve())

    async def _serve(self) -> None:
        while self.queue:
            req, keep_alive = self.queue.popleft()
            rid = self.edge.request_id(req.headers)
            resp = await self.edge.handle(req, rid)
            if self.transport is None:
                break
            # While the host drains, the connection closes after each answer:
            # a proxy learns it from the answer instead of racing our close
            # of an idle connection it is about to reuse.
            keep_alive = keep_alive and not self.closing and not self.edge.host.draining
            self.transport.write(resp.encode(rid, keep_alive))
            if not keep_alive:
                self.transport.close()
                break
            if self.paused and len(self.queue) < MAX_PIPELINED // 2:
                self.paused = False
                self.transport.resume_reading()
        self.busy = False
