"""The ASGI bridge: serve a mounted ASGI 3 application from the edge.

* :class:`MountedApp` imports ``module:attribute`` in this process, runs the
  app's lifespan (``startup`` / ``shutdown``) and turns an edge
  :class:`~amoeba.gateway.http.Request` into one ASGI ``http`` call;
* :class:`AsgiResponse` is the answer: complete (``content-length``), or
  streamed (chunked) when the app sends its body in several parts, as a
  server-sent event stream does;
* :class:`MountTable` maps path prefixes to mounted apps, or to forwarders
  when the mounting service runs in another process (see ``forward.py``).

The edge calls into this module only after its router missed, so native
routes never pay for it.  What the app sees in its scope: the verified
principal as ``scope["amoeba.principal"]`` and ``scope["state"]["principal"]``
(Starlette: ``request.state.principal``), the request id as
``scope["state"]["request_id"]``.  The request body is read (up to the
listener's cap) before the app is called, then handed over in one message.
WebSocket and HTTP/2 are not supported.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from amoeba.auth.principal import Principal
from amoeba.codec import json_encoder
from amoeba.errors import Internal
from amoeba.gateway.http import Request, Response
from amoeba.provide import current_mount

if TYPE_CHECKING:
    from amoeba.service import Mount

__all__ = ["AsgiResponse", "LifespanError", "MountTable", "MountedApp", "load_app"]

log = logging.getLogger("amoeba.asgi")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
_STREAM_BUFFER = 8  # body parts queued between a streaming app and the socket
_HIGH_WATER = 256 * 1024  # socket buffer size above which a stream waits



class LifespanError(RuntimeError):
    """A mounted app's lifespan startup failed: the process must not serve."""


def load_app(ref: str, where: str) -> ASGIApp:
    """Import ``module:attribute`` (dots in the attribute walk into objects)."""
    module_name, _, attr = ref.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise LifespanError(f"{where}: cannot import {module_name!r} for Mount({ref!r}): {exc}; "
                            f"check the topology's pythonpath") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise LifespanError(f"{where}: module {module_name!r} has no attribute {attr!r} "
                                f"(Mount({ref!r}))") from None
    if not callable(obj):
        raise LifespanError(f"{where}: {ref} is {type(obj).__name__}, not an ASGI application")
    return obj  # type: ignore[no-any-return]


class AsgiResponse(Response):
    """An ASGI app's answer; its headers are the app's own, passed on verbatim."""

    __slots__ = ("chunked", "disconnect", "queue", "raw", "streaming")

    def __init__(self, status: int, raw: list[tuple[bytes, bytes]], body: bytes,
                 queue: asyncio.Queue[bytes | None] | None = None,
                 disconnect: asyncio.Future[None] | None = None):
        super().__init__(status, body, b"")
        self.raw = raw
        self.queue = queue
        self.disconnect = disconnect
        self.streaming = queue is not None
        self.chunked = self.streaming and not any(k.lower() == b"content-length" for k, _ in raw)

    def __repr__(self) -> str:
        return f"<AsgiResponse {self.status}{' streamed' if self.streaming else ''}>"

    def encode(self, request_id: str, keep_alive: bool, head: bool = False) -> bytes:
        """As :meth:`Response.encode`; ``head``: the headers a GET would have, no body."""
        parts = [b"HTTP/1.1 %d %s\r\n" % (self.status, _REASONS.get(self.status, b"Unknown"))]
        has_length = False
        for k, v in self.raw:
            lk = k.lower()
            if lk == b"content-length":
                if self.streaming:
                    has_length = True
                else:
                    continue  # ours below is the truth
            elif lk in (b"connection", b"transfer-encoding", b"x-request-id"):
                continue
            parts.append(b"%s: %s\r\n" % (k, v))
        if self.streaming:
            if not has_length:
                parts.append(b"transfer-encoding: chunked\r\n")
        else:
            parts.append(b"content-length: %d\r\n" % len(self.body))
        parts.append(b"x-request-id: %s\r\n" % request_id.encode("latin-1"))
        if self.headers:  # added by the edge (CORS, rate limits)
            parts.extend(f"{k}: {v}\r\n".encode("latin-1") for k, v in self.headers)
        if not keep_alive:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        if not self.streaming and not head:
            parts.append(self.body)
        return b"".join(parts)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The streamed body parts as the app sends them (ends when it is done)."""
        assert self.queue is not None
        try:
            while (part := await self.queue.get()) is not None:
                if part:
                    yield part
        finally:
            self.close()

    def close(self) -> None:
        """The client is gone or the body was read: the app's ``receive()`` says
        ``http.disconnect`` from now on."""
        if self.disconnect is not None and not self.disconnect.done():
            self.disconnect.set_result(None)

    async def write_body(self, transport: asyncio.Transport) -> bool:
        """Send the streamed body; False when the connection broke meanwhile."""
        chunked = self.chunked
        async for part in self.chunks():
            if transport.is_closing():
                return False
            transport.write(b"%x\r\n%s\r\n" % (len(part), part) if chunked else part)
            while transport.get_write_buffer_size() > _HIGH_WATER:
                if transport.is_closing():
                    return False
                await asyncio.sleep(0.005)  # a slow reader: the app waits with us
        if transport.is_closing() or (self.disconnect is not None and self.disconnect.cancelled()):
            return False  # gone, or the app failed mid-stream: the answer must not look whole
        if chunked:
            transport.write(b"0\r\n\r\n")
        return True


def error_answer(status: int, message: str) -> AsgiResponse:
    body = json_encoder.encode({"error": {"type": "Internal" if status >= 500 else "Error",
                                          "status": status, "message": message}})
    return AsgiResponse(status, [(b"content-type", b"application/json")], body)


class MountedApp:
    """One ``Mount`` of a local service: its app, lifespan and per-request bridge."""

    def __init__(self, service: str, mount: Mount, resolve: Callable[[Any, str], Any],
                 server: tuple[str, int] = ("127.0.0.1", 0)):
        self.service = service
        self.mount = mount
        self.where = f"service {service!r}, Mount({mount.app!r})"
        self.app: ASGIApp | None = None
        self.resolve = resolve
        self.server = server
        self.state: dict[str, Any] = {}
        self._lifespan: asyncio.Task[None] | None = None
        self._shutdown: asyncio.Future[None] | None = None
        self._supported = True
        self.inflight = 0
        self.loop: asyncio.AbstractEventLoop  # set by startup()

    def __repr__(self) -> str:
        return f"<MountedApp {self.mount!r} of {self.service!r}>"

    # -- lifespan ------------------------------------------------------------
    async def startup(self) -> None:
        """Import the app and run its lifespan startup; raise LifespanError if it failed."""
        self.app = load_app(self.mount.app, self.where)
        loop = self.loop = asyncio.get_running_loop()
        started: asyncio.Future[str | None] = loop.create_future()
        self._shutdown = loop.create_future()
        done: asyncio.Future[str | None] = loop.create_future()
        sent_startup = False

        async def receive() -> Message:
            nonlocal sent_startup
            if not sent_startup:
                sent_startup = True
                return {"type": "lifespan.startup"}
            assert self._shutdown is not None
            await self._shutdown
            return {"type": "lifespan.shutdown"}

        async def send(message: Message) -> None:
            kind = message.get("type")
            if kind == "lifespan.startup.complete" and not started.done():
                started.set_result(None)
            elif kind == "lifespan.startup.failed" and not started.done():
                started.set_result(message.get("message") or "startup failed")
            elif kind == "lifespan.shutdown.complete" and not done.done():
                done.set_result(None)
            elif kind == "lifespan.shutdown.failed" and not done.done():
                done.set_result(message.get("message") or "shutdown failed")

        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"},
                 "state": self.state}
        app = self.app
        token = current_mount.set((self.resolve, self.service))

        async def run() -> None:
            try:
                await app(scope, receive, send)
            except BaseException as exc:
                if not started.done():
                    # Raised before answering startup: the app does not speak the
                    # lifespan protocol (what uvicorn also assumes), unless it is
                    # cancellation.
                    if isinstance(exc, asyncio.CancelledError):
                        started.cancel()
                        raise
                    log.info("%s: the app raised %s on the lifespan scope; running it "
                             "without lifespan", self.where, type(exc).__name__)
                    self._supported = False
                    started.set_result(None)
                elif not done.done():
                    done.set_result(f"{type(exc).__name__}: {exc}")
                    if not isinstance(exc, Exception):
                        raise
            finally:
                if not started.done():  # returned without a word: no lifespan (as uvicorn does)
                    self._supported = False
                    started.set_result(None)
                if not done.done():
                    done.set_result(None)

        try:
            self._lifespan = loop.create_task(run())
        finally:
            current_mount.reset(token)
        self._done = done
        failure = await started
        if failure is not None:
            # Starlette sends the whole traceback: log it, and name its last line.
            lines = [ln for ln in failure.strip().splitlines() if ln.strip()]
            if len(lines) > 1:
                log.error("%s: lifespan startup failed:\n%s", self.where, failure)
            raise LifespanError(f"{self.where}: the app's lifespan startup failed: "
                                f"{lines[-1] if lines else 'no reason given'}")

    async def shutdown(self) -> None:
        """Run the lifespan shutdown (after the drain); errors are logged."""
        if self._lifespan is None or self._shutdown is None:
            return
        if not self._shutdown.done():
            self._shutdown.set_result(None)
        if self._supported:
            failure = await self._done
            if failure is not None:
                log.error("%s: the app's lifespan shutdown failed: %s", self.where, failure)
        if not self._lifespan.done():
            self._lifespan.cancel()
        self._lifespan = None

    def openapi(self) -> dict[str, Any] | None:
        """The app's own OpenAPI operations under the mount's prefixes, when it
        describes itself (FastAPI: ``app.openapi()``); None otherwise."""
        from amoeba.gateway.openapi import mounted_paths

        describe = getattr(self.app, "openapi", None)
        if not callable(describe):
            return None
        try:
            doc = describe()
        except Exception:
            log.exception("%s: the app's openapi() failed; its routes are left out of "
                          "/openapi.json", self.where)
            return None
        return mounted_paths(doc, self.mount.prefixes) if isinstance(doc, dict) else None

    # -- requests --------------------------------------------------------------
    async def __call__(self, req: Request, rid: str) -> Response:
        app = self.app
        assert app is not None, f"{self.where}: served before startup"
        loop = self.loop
        head: asyncio.Future[AsgiResponse] = loop.create_future()
        disconnect: asyncio.Future[None] = loop.create_future()
        principal = req.principal
        state = dict(self.state) if self.state else {}
        state["principal"] = principal
        state["request_id"] = rid
        path = req.path
        scope: Scope = {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1", "method": req.method, "scheme": "http",
            "path": unquote(path) if "%" in path else path, "raw_path": path.encode("latin-1"),
            "query_string": req.query.encode("latin-1"), "root_path": "",
            "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in req.headers.items()],
            "client": (req.client, 0) if req.client else None, "server": self.server,
            "state": state, "amoeba.principal": principal, "amoeba.request_id": rid,
        }
        # The app runs in a task of its own: a streamed answer is returned while
        # the app goes on sending (the _run task ends with the app).
        task = loop.create_task(self._run(app, scope, req.body, head, disconnect))
        try:
            return await head
        except asyncio.CancelledError:
            task.cancel()
            raise

    async def _run(self, app: ASGIApp, scope: Scope, body: bytes,
                   head: asyncio.Future[AsgiResponse], disconnect: asyncio.Future[None]) -> None:
        current_mount.set((self.resolve, self.service))
        self.inflight += 1
        status = 0
        raw: list[tuple[bytes, bytes]] = []
        parts: list[bytes] = []
        queue: asyncio.Queue[bytes | None] | None = None
        body_sent = False

        async def receive() -> Message:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            # Shielded: a cancelled receive() (Starlette cancels its disconnect
            # listener when the body is sent) must not cancel the shared future.
            await asyncio.shield(disconnect)
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            nonlocal status, raw, queue
            kind = message["type"]
            if kind == "http.response.start":
                if status:
                    raise RuntimeError("http.response.start sent twice")
                status = int(message["status"])
                raw = [(bytes(k), bytes(v)) for k, v in message.get("headers", ())]
                return
            if kind != "http.response.body":
                return  # extensions we do not offer (trailers, push, zero-copy)
            if not status:
                raise RuntimeError("http.response.body sent before http.response.start")
            chunk = bytes(message.get("body", b""))
            more = bool(message.get("more_body", False))
            if queue is not None:
                if disconnect.done():
                    raise OSError("the client disconnected")
                await queue.put(chunk)
                if not more:
                    await queue.put(None)
                return
            if chunk:
                parts.append(chunk)
            if not more:
                if not head.done():
                    head.set_result(AsgiResponse(status, raw, b"".join(parts)))
                if not disconnect.done():
                    disconnect.set_result(None)
                return
            queue = asyncio.Queue(_STREAM_BUFFER)
            for p in parts:
                queue.put_nowait(p)
            if head.done():  # the request was cancelled: nobody reads the stream
                raise OSError("the request was cancelled")
            head.set_result(AsgiResponse(status, raw, b"", queue, disconnect))

        try:
            await app(scope, receive, send)
            if not head.done():
                log.error("%s: the app returned without a complete response to %s %s",
                          self.where, scope["method"], scope["path"])
                head.set_result(error_answer(500, Internal().message))
            elif queue is not None and not disconnect.done():
                await queue.put(None)
        except Exception:
            if disconnect.done() and queue is not None:
                pass  # the client left mid-stream: the app's error is ours to swallow
            else:
                log.exception("%s: unexpected error serving %s %s (request %s)", self.where,
                              scope["method"], scope["path"], scope["amoeba.request_id"])
            if not head.done():
                head.set_result(error_answer(500, Internal().message))
            elif queue is not None:
                # Mid-stream: the answer cannot change any more; end it short.
                if not disconnect.done():
                    disconnect.cancel()
                if not queue.full():
                    queue.put_nowait(None)
        finally:
            self.inflight -= 1


def principal_of(scope: Scope) -> Principal | None:
    p = scope.get("amoeba.principal")
    return p if isinstance(p, Principal) else None


class MountTable:
    """Path prefixes to handlers (a local :class:`MountedApp` or a forwarder),
    longest prefix first.  A request is theirs when the path is the prefix or
    continues it after a ``/``."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, str, Callable[[Request, str], Awaitable[Response]]]] = []

    def __repr__(self) -> str:
        return f"<MountTable {[p for p, _, _ in self.entries]}>"

    def __bool__(self) -> bool:
        return bool(self.entries)

    def add(self, prefix: str, service: str,
            handler: Callable[[Request, str], Awaitable[Response]]) -> None:
        for p, s, _ in self.entries:
            if p == prefix and s != service:
                raise ValueError(f"path prefix {prefix!r} is mounted by both services {s!r} and "
                                 f"{service!r} on one listener; change one Mount's prefix or "
                                 f"serve them on different listeners")
            if p == prefix:
                return
        self.entries.append((prefix, service, handler))
        self.entries.sort(key=lambda e: -len(e[0]))

    def find(self, path: str) -> tuple[str, str, Callable[[Request, str], Awaitable[Response]]] | None:
        """(prefix, service, handler) of the mount that owns ``path``, if any."""
        for prefix, service, handler in self.entries:
            if prefix == "/" or path == prefix or (path.startswith(prefix)
                                                   and path[len(prefix)] == "/"):
                return prefix, service, handler
        return None


async def add_mounted_docs(doc: dict[str, Any], table: MountTable) -> bool:
    """Merge the OpenAPI operations of every app in ``table`` into ``doc``;
    False when one of them could not be asked (its process unreachable)."""
    from amoeba.gateway.openapi import merge_mounted

    complete = True
    seen: set[int] = set()
    for _, service, handler in table.entries:
        if id(handler) in seen:
            continue
        seen.add(id(handler))
        describe = getattr(handler, "openapi", None)
        if describe is None:
            continue
        try:
            part = describe()
            if asyncio.iscoroutine(part):
                part = await part
        except Exception as exc:
            log.warning("/openapi.json: the mounted apps of %r cannot be described now: %s",
                        service, exc)
            complete = False
            continue
        if part:
            merge_mounted(doc, part)
    return complete
