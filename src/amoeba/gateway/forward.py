"""Forwarding: a mounted app's request, received by a listener of one process,
served by the process that hosts the mounting service.

It travels over the RPC pool like any call (pooling, replica ejection,
deadline, internal credential and trace come along) as the synthetic method
``<service>.__http__``.  A streamed answer comes back in pulls of
``<service>.__http_more__``, each pinned to the replica that holds the stream:
every pull returns what the app sent meanwhile (waiting up to a few seconds
for something), so a server-sent event stream crosses processes as it is
produced, with the app paced by the reader.  A stream nobody pulls for
``ABANDON`` seconds is closed (the app's ``receive()`` says disconnect).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import TYPE_CHECKING, Any

import msgspec

from amoeba import context
from amoeba.auth.principal import Principal
from amoeba.codec import MethodCodec, codec_for
from amoeba.errors import Internal, NotFound, Unavailable
from amoeba.gateway.asgi import AsgiResponse, MountedApp
from amoeba.gateway.http import Request, Response
from amoeba.spec import MethodSpec, Param

if TYPE_CHECKING:
    from amoeba.transport.client import ProcessClient

__all__ = ["Forwarder", "MountServer", "forward_codecs"]

log = logging.getLogger("amoeba.forward")

HTTP, MORE, OPENAPI = "__http__", "__http_more__", "__openapi__"
PULL_WAIT = 5.0  # longest a pull waits for the app's next part
ABANDON = 30.0  # a stream unpulled this long is closed
_DROP = frozenset({"x-amoeba-token", "connection", "keep-alive", "transfer-encoding"})


class HttpReply(msgspec.Struct, array_like=True):
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    stream: int = 0  # > 0: more comes by pulls of this stream id
    replica: int = 0  # the replica holding the stream


class HttpMore(msgspec.Struct, array_like=True):
    parts: list[bytes]
    done: bool


_SAFE = frozenset({"GET", "HEAD", "OPTIONS"})


def forward_codecs(service: str, idempotent: bool = False) -> tuple[MethodCodec, MethodCodec]:
    """The codecs of ``<service>.__http__`` and ``<service>.__http_more__``.
    ``idempotent``: the variant for safe HTTP methods, which the pool may send
    again to another replica when a connection is lost under it."""
    http = MethodSpec(service, HTTP, (
        Param("method", str), Param("path", str), Param("query", str),
        Param("headers", list[tuple[str, str]]), Param("body", bytes), Param("client", str),
        Param("request_id", str), Param("principal", Principal | None)),
        HttpReply, None, idempotent, None)
    more = MethodSpec(service, MORE, (Param("stream", int), Param("cancel", bool)),
                      HttpMore, None, False, None)
    return codec_for(http), codec_for(more)


def openapi_codec(service: str) -> MethodCodec:
    """``<service>.__openapi__``: the mounted apps' operations (JSON), for /openapi.json."""
    return codec_for(MethodSpec(service, OPENAPI, (), bytes, None, True, None))


class Forwarder:
    """The edge side: a mount whose service runs in another process."""

    def __init__(self, service: str, client: ProcessClient, caller: str):
        self.service = service
        self.client = client
        self.caller = caller
        self.http, self.more = forward_codecs(service)
        self.safe = forward_codecs(service, idempotent=True)[0]

    def __repr__(self) -> str:
        return f"<Forwarder {self.service!r} via {self.client.process}>"

    async def openapi(self) -> dict[str, Any] | None:
        """The operations of the mounted apps, asked of the process hosting them."""
        raw: bytes = await self.client.call(openapi_codec(self.service), self.caller, ())
        doc = msgspec.json.decode(raw)
        return doc if isinstance(doc, dict) and doc else None

    async def __call__(self, req: Request, rid: str) -> Response:
        headers = [(k, v) for k, v in req.headers.items() if k not in _DROP]
        reply: HttpReply = await self.client.call(
            self.safe if req.method in _SAFE else self.http, self.caller,
            (req.method, req.path, req.query, headers, req.body, req.client, rid, req.principal))
        if not reply.stream:
            return AsgiResponse(reply.status, reply.headers, reply.body)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(8)
        disconnect: asyncio.Future[None] = loop.create_future()
        if reply.body:
            queue.put_nowait(reply.body)
        task = loop.create_task(self._pull(reply, queue, disconnect))
        disconnect.add_done_callback(lambda _: task.cancel() if not task.done() else None)
        return AsgiResponse(reply.status, reply.headers, b"", queue, disconnect)

    async def _pull(self, reply: HttpReply, queue: asyncio.Queue[bytes | None],
                    disconnect: asyncio.Future[None]) -> None:
        # Each pull has a deadline of its own: a long stream outlives the request's.
        context.deadline.set(None)
        done = False
        try:
            while not done:
                more: HttpMore = await self.client.call(self.more, self.caller,
                                                        (reply.stream, False), pin=reply.replica)
                for part in more.parts:
                    await queue.put(part)
                done = more.done
            await queue.put(None)
        except asyncio.CancelledError:
            # The reader left: tell the app (best effort, the stream also expires).
            if not done:
                asyncio.get_running_loop().create_task(self._cancel(reply))
            raise
        except Exception as exc:
            log.warning("%s: stream %d broke off: %s", self, reply.stream, exc)
            disconnect.cancel()  # the answer ends short, and must not look whole
            if not queue.full():
                queue.put_nowait(None)

    async def _cancel(self, reply: HttpReply) -> None:
        try:
            await self.client.call(self.more, self.caller, (reply.stream, True), pin=reply.replica)
        except Exception as exc:
            log.debug("%s: cancelling stream %d: %s", self, reply.stream, exc)


class _Stream:
    __slots__ = ("expiry", "queue", "response")

    def __init__(self, response: AsgiResponse):
        assert response.queue is not None
        self.response = response
        self.queue = response.queue
        self.expiry: asyncio.TimerHandle | None = None


class MountServer:
    """The hosting side: serves ``__http__`` / ``__http_more__`` of one service."""

    def __init__(self, service: str, mounted: list[MountedApp], replica: int):
        self.service = service
        self.replica = replica
        self.table: list[tuple[str, MountedApp]] = sorted(
            ((p, m) for m in mounted for p in m.mount.prefixes), key=lambda e: -len(e[0]))
        self.streams: dict[int, _Stream] = {}
        self.ids = itertools.count(1)

    def __repr__(self) -> str:
        return f"<MountServer {self.service!r} streams={len(self.streams)}>"

    async def http(self, method: str, path: str, query: str, headers: list[tuple[str, str]],
                   body: bytes, client: str, request_id: str,
                   principal: Principal | None) -> HttpReply:
        app = next((m for p, m in self.table
                    if p == "/" or path == p or (path.startswith(p) and path[len(p)] == "/")), None)
        if app is None:
            raise NotFound(f"service {self.service!r} mounts nothing at {path}")
        req = Request(method, path, query, dict(headers), body, client)
        req.principal = principal
        context.request_id.set(request_id)
        resp = await app(req, request_id)
        assert isinstance(resp, AsgiResponse)
        if not resp.streaming:
            return HttpReply(resp.status, resp.raw, resp.body)
        sid = next(self.ids)
        stream = self.streams[sid] = _Stream(resp)
        self._touch(sid, stream)
        return HttpReply(resp.status, resp.raw, b"", sid, self.replica)

    async def more(self, stream: int, cancel: bool) -> HttpMore:
        st = self.streams.get(stream)
        if st is None:
            raise Unavailable(f"stream {stream} of {self.service!r} is gone (expired or finished)")
        if cancel:
            self._end(stream)
            return HttpMore([], True)
        if st.expiry is not None:
            st.expiry.cancel()
        loop = asyncio.get_running_loop()
        dl = context.deadline.get()
        wait = PULL_WAIT if dl is None else max(0.0, min(PULL_WAIT, dl - loop.time() - 0.5))
        parts: list[bytes] = []
        done = False
        queue = st.queue
        try:
            first = await asyncio.wait_for(queue.get(), wait)
            done = first is None
            if first:
                parts.append(first)
            while not done and not queue.empty():  # whatever else is ready, in one answer
                nxt = queue.get_nowait()
                done = nxt is None
                if nxt:
                    parts.append(nxt)
        except TimeoutError:
            pass  # nothing yet: the caller pulls again
        disconnect = st.response.disconnect
        if done and disconnect is not None and disconnect.cancelled():
            self._end(stream)
            raise Internal(f"the app of {self.service!r} failed mid-stream")
        if done:
            self._end(stream)
        else:
            self._touch(stream, st)
        return HttpMore(parts, done)

    def _touch(self, sid: int, st: _Stream) -> None:
        st.expiry = asyncio.get_running_loop().call_later(ABANDON, self._end, sid)

    def _end(self, sid: int) -> None:
        st = self.streams.pop(sid, None)
        if st is not None:
            if st.expiry is not None:
                st.expiry.cancel()
            st.response.close()

    def handlers(self) -> dict[str, tuple[MethodCodec, Any, None]]:
        """RPC handlers to add to the host's table."""
        http, more = forward_codecs(self.service)
        described = openapi_codec(self.service)
        return {http.spec.qualname: (http, self.http, None),
                more.spec.qualname: (more, self.more, None),
                described.spec.qualname: (described, self.openapi, None)}

    async def openapi(self) -> bytes:
        from amoeba.gateway.openapi import merge_mounted

        doc: dict[str, Any] = {}
        for app in {id(m): m for _, m in self.table}.values():
            part = app.openapi()
            if part is not None:
                merge_mounted(doc, part)
        return msgspec.json.encode({"paths": doc.get("paths", {}),
                                    "schemas": doc.get("components", {}).get("schemas", {})})
