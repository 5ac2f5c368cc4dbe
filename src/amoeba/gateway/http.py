"""A lean HTTP/1.1 server protocol on httptools.

One listener port serves HTTP and RPC: a connection whose first bytes are
the RPC magic is handed to :class:`~amoeba.transport.server.RpcServerProtocol`.
Requests on one connection are answered in order (pipelining is honoured),
refusals included: a request the parser refuses (400, 413, 414, 431, 408 on
a timeout) is answered after the answers of the requests before it, then the
connection closes.  The limits and timeouts are the listener's
:class:`~amoeba.gateway.connections.ConnectionLimits`; a client that does not
read its answers stops being read (``pause_writing``), so one connection
cannot pile up answers in memory.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections import deque
from http import HTTPStatus
from typing import TYPE_CHECKING, cast

import httptools

from amoeba.codec import json_encoder
from amoeba.errors import ServiceError
from amoeba.gateway.connections import ConnectionTable
from amoeba.transport.server import MAGIC, RpcServerProtocol

if TYPE_CHECKING:
    from amoeba.auth.principal import Principal
    from amoeba.gateway.edge import Edge, RouteHandler

__all__ = ["HttpProtocol", "Request", "Response", "error_response", "normalise_path", "refusal"]

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
    # A streamed answer (a mounted ASGI app's, see asgi.py): ``encode`` gives the
    # head, ``write_body`` the rest and says whether the connection may be reused.
    streaming = False

    async def write_body(self, transport: asyncio.Transport) -> bool:
        return True

    def close(self) -> None:
        """The connection is gone before the answer was written in full."""

    def __init__(self, status: int, body: bytes, content_type: bytes = b"application/json",
                 headers: list[tuple[str, str]] | None = None):
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers

    def __repr__(self) -> str:
        return f"<Response {self.status} {len(self.body)} bytes>"

    def encode(self, request_id: str, keep_alive: bool, head: bool = False) -> bytes:
        """The answer on the wire; ``head``: to a HEAD request (headers only,
        ``content-length`` still that of the body a GET would get)."""
        parts = [b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\nx-request-id: %s\r\n"
                 % (self.status, _REASONS.get(self.status, b"Unknown"), self.content_type,
                    len(self.body), request_id.encode("latin-1"))]
        if self.headers:
            parts.extend(f"{k}: {v}\r\n".encode("latin-1") for k, v in self.headers)
        if not keep_alive:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        if not head:
            parts.append(self.body)
        return b"".join(parts)


def error_response(exc: ServiceError, request_id: str) -> Response:
    err = exc.to_wire()
    err["request_id"] = request_id
    resp = Response(exc.status, json_encoder.encode({"error": err}))
    if exc.retry_after is not None:
        resp.headers = [("retry-after", str(max(1, math.ceil(exc.retry_after))))]
    return resp


def refusal(status: int, message: str, request_id: str, headers: list[tuple[str, str]] | None = None
            ) -> Response:
    """The error answer of the connection itself (parse-time refusals, timeouts,
    a full listener), in the body shape of :func:`error_response`."""
    phrase = HTTPStatus(status).phrase
    kind = _ERROR_TYPES.get(status) or "".join(w[:1].upper() + w[1:] for w in phrase.split())
    body = json_encoder.encode({"error": {"type": kind, "status": status, "message": message,
                                          "request_id": request_id}})
    return Response(status, body, headers=headers)


_ERROR_TYPES = {400: "BadRequest", 413: "PayloadTooLarge", 503: "Unavailable"}
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_PCT = re.compile(r"%([0-9A-Fa-f]{2})")


def _unreserved(m: re.Match[str]) -> str:
    code = int(m.group(1), 16)
    return chr(code) if code in _UNRESERVED else "%" + m.group(1).upper()


def normalise_path(path: str) -> str:
    """RFC 3986 6.2.2: percent-encoded unreserved characters decoded, the other
    escapes in upper case, so ``/api/%70roducts`` is ``/api/products``."""
    return _PCT.sub(_unreserved, path)


# What the connection is reading.  IDLE: between requests; HEAD: a request line
# and headers; BODY: a body; REFUSED: a refusal is queued, input is discarded;
# CLOSING: the refusal is written and the connection lingers, discarding input,
# so the client reads the answer instead of a reset.
# FIRST: nothing read yet (the bytes may be the RPC magic).  The states from
# HEAD on take data_received's one slow branch (as does a large read).
_IDLE, _BODY, _HEAD, _FIRST, _REFUSED, _CLOSING = range(6)
_LINGER = 2.0  # seconds a refused connection discards input before it closes
_SINGLE = frozenset(("host", "authorization", "content-type"))  # twice is a 400
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class _Refused(Exception):
    """Raised in a parser callback to stop parsing: a refusal is queued."""


class _Nobody:
    """What a closed connection's parser reports to: nothing holds the protocol."""


_DEAD = httptools.HttpRequestParser(_Nobody())


class HttpProtocol(asyncio.Protocol):
    """One accepted connection: parse (with the listener's limits), queue,
    answer in order, and keep the client's pace in both directions."""

    def __init__(self, edge: Edge, table: ConnectionTable):
        self.edge = edge
        self.table = table
        limits = table.limits
        self.max_body = limits.max_body
        self.max_line = limits.max_header_line
        self.max_head = limits.max_header_size
        self.max_headers = limits.max_headers
        self.header_timeout = limits.header_timeout
        self.body_timeout = limits.body_timeout
        self.keepalive_timeout = limits.keepalive_timeout
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.queue: deque[tuple[Request, bool]] = deque()
        self.final: bytes | None = None  # a refusal, written after the queued answers
        self.busy = False
        self.closing = False
        self.pipeline_full = False
        self.write_paused = False
        self.writable: asyncio.Future[None] | None = None
        self.state = _FIRST
        self.seq = 0  # requests begun on this connection
        # What the table's last sweep saw, and since when (see tick).
        self.seen: tuple[int, int, int, bool, bool] | None = None
        self.since = 0.0
        self.discarded = 0
        # per-message state
        self.url = b""
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.size = 0
        self.head_bytes = 0  # -1: the head began in the read being parsed
        self.header_count = 0  # repeated header lines
        self.large = False  # this read is large, or continues a head: check every line
        self.client = ""
        self.streaming: Response | None = None

    def __repr__(self) -> str:
        return f"<HttpProtocol {self.client} state={self.state} queued={len(self.queue)}>"

    # -- connection ---------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.client = peer[0] if isinstance(peer, tuple) else ""
        if not self.table.admit(self):
            self.parser = _DEAD
            self.state = _CLOSING
            msg = "this listener is at its connection limit; retry later"
            self.transport.write(refusal(503, msg, "-", [("retry-after", "1")]).encode("-", False))
            self.transport.close()
            return
        self.edge.host.connections.add(self)
        self.since = self.loop.time()  # a first request's head is due header_timeout from here
        self.seen = (self.state, self.seq, self.size, self.busy, self.write_paused)

    def connection_lost(self, exc: Exception | None) -> None:
        self.table.discard(self)
        self.edge.host.connections.discard(self)
        self.transport = None
        if self.streaming is not None:
            self.streaming.close()
        # The parser holds bound methods of this protocol: drop it, and what was
        # buffered, now rather than at the next cyclic garbage collection.
        self.parser = _DEAD
        self.queue.clear()
        self.body = []
        self.headers = {}
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)

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

    # -- limits the listener's table enforces ----------------------------------
    def sheddable(self) -> bool:
        return not self.busy and self.state in (_IDLE, _HEAD, _FIRST, _CLOSING)

    def shed(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def tick(self, now: float) -> None:
        """Called by the table's sweep.  The hot path keeps no clock: it changes
        state, counts requests and body bytes; a connection whose state has not
        moved since ``since`` for longer than that state allows has timed out."""
        seen = (self.state, self.seq, self.size, self.busy, self.write_paused)
        if seen != self.seen:
            self.seen, self.since = seen, now
            return
        state = self.state
        if self.write_paused:
            limit = self.body_timeout  # the client does not read its answers
        elif state == _HEAD:
            limit = self.header_timeout  # counted from its start: trickling does not extend it
        elif state == _BODY:
            limit = self.body_timeout  # counted from the last body bytes
        elif state in (_IDLE, _FIRST) and not self.busy:
            limit = self.keepalive_timeout if self.seq else self.header_timeout
        elif state == _CLOSING:
            limit = _LINGER
        else:
            return  # the server's turn
        if now - self.since >= limit:
            self.seen = None
            self.timed_out()

    def timed_out(self) -> None:
        if self.transport is None:
            return
        if self.state == _CLOSING or self.write_paused:
            self.transport.abort()  # a peer that does not read: nothing more to say to it
        elif self.state == _HEAD:
            self._refuse(408, f"request head not received within {self.header_timeout:g}s")
        elif self.state == _BODY:
            self._refuse(408, f"request body stalled for {self.body_timeout:g}s")
        elif self.state in (_IDLE, _FIRST) and not self.busy:
            self.transport.close()

    # -- flow control ----------------------------------------------------------
    def pause_writing(self) -> None:
        # The client does not read its answers: stop reading its requests, and
        # give it body_timeout to catch up.
        self.write_paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)
        self.writable = None
        if self.transport is not None and not self.pipeline_full:
            self.transport.resume_reading()

    # -- input -------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self.state >= _HEAD or len(data) > self.max_line:
            self._slow_read(data)
            return
        self._feed(data)
        if self.state == _HEAD:
            self._count_head(data)

    def _slow_read(self, data: bytes) -> None:
        """The first read, input after a refusal, and reads that could hold a
        header line over the limit or continue a head: those have every header
        line checked (on_header)."""
        if self.state >= _FIRST:
            if self.state != _FIRST:
                self._discard(len(data))
                return
            self.state = _IDLE
            if data[:4] == MAGIC:
                self._become_rpc(data[4:])
                return
        self.large = True
        try:
            self._feed(data)
        finally:
            self.large = False
        if self.state == _HEAD:
            self._count_head(data)

    def _feed(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            # An Upgrade offer (h2c, websocket) is ignored, as RFC 9110 allows: the
            # request was answered as HTTP/1.1 and the connection stays HTTP/1.1.
            if self.state >= _REFUSED:
                return
            if self.parser.get_method() == b"CONNECT":  # a tunnel follows: never
                if self.queue:
                    self.queue.pop()
                self._refuse(400, "CONNECT is not supported")
                return
            self.parser = httptools.HttpRequestParser(self)
            self.data_received(data[int(exc.args[0]):])
        except httptools.HttpParserCallbackError:
            if self.state < _REFUSED:  # not ours: a bug, but still the client's request
                log.exception("error parsing a request from %s", self.client)
                self._refuse(400, "malformed HTTP request")
        except httptools.HttpParserError as exc:
            if self.state < _REFUSED:
                self._refuse(400, f"malformed HTTP request: {exc}")

    def _count_head(self, data: bytes) -> None:
        """A head still unfinished after a read: bound it.  (httptools buffers an
        unfinished header line itself, so its callbacks cannot.)"""
        if self.head_bytes < 0:  # it began in this read: count from its start
            end = data.rfind(b"\r\n\r\n")
            self.head_bytes = len(data) - (end + 4 if end >= 0 else 0)
        else:
            self.head_bytes += len(data)
        if self.head_bytes > self.max_head:
            self._refuse(431, f"request head exceeds the limit of {self.max_head} bytes")

    def _discard(self, n: int) -> None:
        self.discarded += n
        if self.discarded > 4 * self.max_body + self.max_head and self.transport is not None:
            self.transport.abort()  # enough discarding: let the client see a reset

    def _become_rpc(self, rest: bytes) -> None:
        assert self.transport is not None
        self.edge.host.connections.discard(self)
        rpc = RpcServerProtocol(self.edge.host, self.header_timeout)
        self.table.replace(self, rpc)
        self.parser = _DEAD
        self.transport.set_protocol(rpc)
        rpc.connection_made(self.transport)
        if rest:
            rpc.data_received(rest)

    def _refuse(self, status: int, message: str) -> None:
        """Answer ``status`` after the answers already queued, then close.
        Raises nothing; a parser callback raises ``_Refused`` after it."""
        if self.state >= _REFUSED or self.transport is None:
            return
        self.state = _REFUSED
        rid = self.edge.request_id(self.headers)
        self.final = refusal(status, message, rid).encode(rid, False)
        if not self.busy:
            self.busy = True
            self.loop.create_task(self._serve())

    # -- httptools callbacks -----------------------------------------------
    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = {}
        self.body = []
        self.size = self.header_count = 0
        self.state = _HEAD
        self.head_bytes = -1
        self.seq += 1

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self.max_line:
            self._refuse(414, f"request target exceeds the limit of {self.max_line} bytes")
            raise _Refused

    def on_header(self, name: bytes, value: bytes) -> None:
        text = value.decode("latin-1")
        if self.headers.setdefault(name.decode("latin-1").lower(), text) is not text or self.large:
            self._header(name, value, text)

    def _header(self, name: bytes, value: bytes, text: str) -> None:
        """A header line of a large read, or a repeated one: checked."""
        if len(name) + len(value) > self.max_line:
            self._refuse(431, f"a header line exceeds {self.max_line} bytes")
            raise _Refused
        key = name.decode("latin-1").lower()
        headers = self.headers
        if headers[key] is text:
            return
        if key in _SINGLE:
            self._refuse(400, f"header {key!r} given twice")
            raise _Refused
        self.header_count += 1  # the distinct ones are counted at the end of the head
        # RFC 9110 5.3: repeated fields are one comma-separated list (cookies: "; ").
        headers[key] += ("; " if key == "cookie" else ", ") + text

    def on_headers_complete(self) -> None:
        headers = self.headers
        if self.large or "host" not in headers or len(headers) > self.max_headers:
            self._check_head()
        self.state = _BODY
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            self._refuse(413, f"request body exceeds the limit of {self.max_body} bytes")
            raise _Refused
        if "expect" in headers:
            self._expect(headers["expect"])

    def _check_head(self) -> None:
        headers = self.headers
        if len(headers) + self.header_count > self.max_headers:
            self._refuse(431, f"more than {self.max_headers} header lines")
            raise _Refused
        if self.large and sum(len(k) + len(v) for k, v in headers.items()) > self.max_head:
            self._refuse(431, f"request head exceeds the limit of {self.max_head} bytes")
            raise _Refused
        if "host" not in headers and self.parser.get_http_version() == "1.1":
            self._refuse(400, "an HTTP/1.1 request needs a Host header (RFC 9112 3.2)")
            raise _Refused

    def _expect(self, expect: str) -> None:
        if expect.lower() != "100-continue":
            self._refuse(417, f"unsupported expectation {expect!r}")
            raise _Refused
        # Said only when nothing is queued ahead of it (else the client's own
        # timeout sends the body, as RFC 9110 10.1.1 expects).
        if not self.busy and self.transport is not None:
            self.transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > self.max_body:
            self._refuse(413, f"request body exceeds the limit of {self.max_body} bytes")
            raise _Refused
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.state = _IDLE
        parser = self.parser
        method = parser.get_method().decode("ascii")
        try:
            url = httptools.parse_url(self.url)
        except httptools.HttpParserInvalidURLError:
            self._refuse(400, "malformed request target")
            raise _Refused from None
        path = url.path.decode("latin-1")
        if "%" in path:
            path = normalise_path(path)
        query = url.query.decode("latin-1") if url.query else ""
        req = Request(method, path, query, self.headers, b"".join(self.body), self.client)
        self.queue.append((req, bool(parser.should_keep_alive())))
        if len(self.queue) >= MAX_PIPELINED and self.transport is not None:
            self.transport.pause_reading()  # a pipelining client waits for its answers
            self.pipeline_full = True
        if not self.busy:
            self.busy = True
            self.loop.create_task(self._serve())

    # -- output ------------------------------------------------------------
    async def _serve(self) -> None:
        while self.queue:
            req, keep_alive = self.queue.popleft()
            rid = self.edge.request_id(req.headers)
            resp = await self.edge.handle(req, rid)
            transport = self.transport
            if transport is None:
                break
            # While the host drains, the connection closes after each answer:
            # a proxy learns it from the answer instead of racing our close
            # of an idle connection it is about to reuse.
            keep_alive = keep_alive and not self.closing and not self.edge.host.draining
            transport.write(resp.encode(rid, keep_alive, req.method == "HEAD"))
            if resp.streaming and req.method == "HEAD":
                resp.close()  # headers only: the app's stream is not read
            elif resp.streaming:
                self.streaming = resp
                whole = await resp.write_body(transport)
                self.streaming = None
                if self.transport is None:
                    break
                keep_alive = keep_alive and whole
            if not keep_alive:
                transport.close()
                break
            if self.write_paused:
                self.writable = self.loop.create_future()
                await self.writable
                if self.transport is None:
                    break
            if self.pipeline_full and len(self.queue) < MAX_PIPELINED // 2:
                self.pipeline_full = False
                if not self.write_paused:
                    transport.resume_reading()
        self.busy = False
        if self.final is not None:
            self._write_final(self.final)

    def _write_final(self, data: bytes) -> None:
        transport = self.transport
        if transport is None:
            return
        self.state = _CLOSING
        transport.write(data)
        # Half-close and keep discarding what the client still sends, for a
        # while: closing with unread input makes the kernel send a reset, and
        # the client might never read the answer.
        if transport.can_write_eof():
            transport.write_eof()
            transport.resume_reading()
        else:
            transport.close()

    def eof_received(self) -> bool | None:
        if self.state == _CLOSING and self.transport is not None:
            self.transport.close()
        return None
