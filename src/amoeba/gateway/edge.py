"""The HTTP face of one listener: bind a request to a service method, call it
(locally or through a stub: the edge does not know), and encode the answer.

Built-in endpoints on every listener: ``/healthz`` (alive), ``/readyz``
(resources and remote dependencies reachable; 503 while draining),
``/openapi.json`` and ``/docs`` (the routes this listener serves), and ``/``
(app, topology name as ``mode``, process) unless a service claims it.
On a private listener everything except the health endpoints requires the
internal credential in the ``x-amoeba-token`` header.

A public listener applies the process's :class:`~.policy.EdgePolicy`: it
verifies ``Authorization: Bearer`` access tokens once and refuses those of
a revoked session (the result fills ``Principal`` parameters), applies rate
limits (health endpoints exempt), answers CORS preflights, and writes the
access log.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote

import msgspec

from amoeba import context
from amoeba.auth.tokens import INVALID
from amoeba.codec import MethodCodec, invalid_from, json_encoder
from amoeba.errors import (
    BadRequest,
    Internal,
    Invalid,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ServiceError,
    TooManyRequests,
    Unauthorized,
    UnsupportedMediaType,
)
from amoeba.gateway.http import Request, Response, error_response
from amoeba.gateway.openapi import openapi_document
from amoeba.gateway.router import Router
from amoeba.topology.model import Listener

if TYPE_CHECKING:
    from amoeba.gateway.asgi import MountTable
    from amoeba.gateway.policy import EdgePolicy
    from amoeba.observe.metrics import Hist
    from amoeba.runtime.host import Host

__all__ = ["Edge", "RouteHandler", "is_json"]

log = logging.getLogger("amoeba.edge")
_ids = itertools.count(1)
_ID_PREFIX = os.urandom(4).hex()
_ALLOWED_RID = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")


def _validating(codec: MethodCodec, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """``fn`` behind pydantic validation of its model parameters: only routes
    whose signature names a model take this extra step."""
    validate = codec.validate

    async def call(*args: Any) -> Any:
        return await fn(*validate(list(args)))

    return call


def _ints(value: Any) -> Any:
    if isinstance(value, float):
        return int(value) if value.is_integer() else value
    if isinstance(value, dict):
        return {k: _ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_ints(v) for v in value]
    return value


def is_json(content_type: str) -> bool:
    """``application/json`` or a ``+json`` type (RFC 6839), by media type: a
    parameter such as ``charset=json`` does not make ``text/plain`` JSON."""
    if content_type == "application/json":
        return True
    media = content_type.partition(";")[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


class RouteHandler:
    """Turns a request into arguments for one method and calls it."""

    def __init__(self, codec: MethodCodec, fn: Callable[..., Awaitable[Any]]):
        self.codec = codec
        self.fn = fn
        # Metrics on: the route's histogram per status, timed by Edge.handle.  (The
        # edge's calls of the method, caller "http", are read from these.)
        self.by_status: dict[int, Hist] = {}
        route = codec.spec.route
        assert route is not None
        self.status = route.status
        self.template = route.path
        self.service = codec.spec.service
        self.span_name = f"{route.method} {route.path}"
        self.query_names = route.query_params
        self.wants_query = bool(codec.query_type)
        self.body_required = any(
            p.required for p in codec.spec.params if p.name in route.body_params)
        # Where each positional argument comes from: the query/path struct or the body struct;
        # parameters the edge binds (Principal, Header) are filled in afterwards by position.
        bound = {n for n, _ in route.principal_params} | {n for n, _ in route.header_params}
        self.sources = [(name in route.body_params, name if name not in bound else "__class__")
                        for name in codec.names]
        index = {n: i for i, n in enumerate(codec.names)}
        self.principals = [(index[n], required) for n, required in route.principal_params]
        self.wants_principal = bool(self.principals)
        by_name = {p.name: p for p in codec.spec.params}
        self.headers = [(index[n], h, by_name[n]) for n, h in route.header_params]
        self.plain = not self.principals and not self.headers
        self.whole_body = codec.whole_body
        if codec.models is not None:  # pydantic: validated after binding, by parameter index
            self.fn = _validating(codec, fn)

    def __repr__(self) -> str:
        return f"<RouteHandler {self.codec.spec.qualname}>"

    async def __call__(self, req: Request, path_params: dict[str, str],
                       auth_error: Unauthorized | None = None) -> Any:
        codec = self.codec
        q = b = None
        if self.principals and (auth_error is not None or req.principal is None):
            self._check_principal(req, auth_error)  # 401 before any 422 about the input
        if self.wants_query:
            raw: dict[str, Any] = {k: unquote(v) for k, v in path_params.items()}
            if self.query_names and req.query:
                for k, v in parse_qsl(req.query, keep_blank_values=True):
                    if k in self.query_names:
                        raw[k] = v
            try:
                q = msgspec.convert(raw, codec.query_type, strict=False)
            except msgspec.ValidationError as exc:
                raise invalid_from(exc, "parameters") from None
        if codec.body_decoder is not None:
            ctype = req.headers.get("content-type")
            if ctype is not None and not is_json(ctype):
                raise UnsupportedMediaType(
                    f"expected Content-Type: application/json, got {ctype.split(';')[0]!r}")
            body = req.body
            if not body.strip():
                if self.body_required:
                    raise Invalid("a JSON object body is required",
                                  details=[{"path": "$", "reason": "missing body"}])
                body = b"{}"
            try:
                b = codec.body_decoder.decode(body)
            except msgspec.ValidationError as exc:
                b = self._integral_floats(body, exc)
            except msgspec.DecodeError as exc:
                raise BadRequest(f"malformed JSON body: {exc}") from None
            except RecursionError:
                raise BadRequest("malformed JSON body: nested too deeply") from None
            if self.whole_body is not None:  # Body(): the JSON is the parameter's value
                b = codec.body_type(**{self.whole_body: b})  # type: ignore[misc]
        args = [getattr(b if in_body else q, name) for in_body, name in self.sources]
        if not self.plain:
            self._bind_edge_params(req, args, auth_error)
        return await self.fn(*args)

    def _integral_floats(self, body: bytes, exc: msgspec.ValidationError) -> Any:
        """JSON Schema's ``integer`` (what OpenAPI says of an ``int``) includes
        ``10.0``; msgspec's strict decoding does not.  Only on that failure (off
        the hot path): decode again with integral floats as ints, strictly else."""
        if "got `float`" not in str(exc):
            raise invalid_from(exc) from None
        try:
            return msgspec.convert(_ints(msgspec.json.decode(body)), self.codec.body_type,
                                   strict=True)
        except msgspec.ValidationError as again:
            raise invalid_from(again) from None
        except RecursionError:
            raise BadRequest("malformed JSON body: nested too deeply") from None

    def _check_principal(self, req: Request, auth_error: Unauthorized | None) -> None:
        if auth_error is not None:  # a token was presented and is not valid: never anonymous
            raise auth_error
        if req.principal is None and any(required for _, required in self.principals):
            raise Unauthorized("authentication required: send Authorization: Bearer <token>")

    def _bind_edge_params(self, req: Request, args: list[Any], auth_error: Unauthorized | None) -> None:
        for i, _ in self.principals:
            args[i] = req.principal
        for i, header, param in self.headers:
            value = req.headers.get(header)
            if value is None:
                if param.required:
                    raise Invalid(f"header {header!r} is required",
                                  details=[{"path": f"header.{header}", "reason": "missing"}])
                args[i] = param.default
                continue
            try:
                args[i] = msgspec.convert(value, param.annotation, strict=False)
            except msgspec.ValidationError as exc:
                raise Invalid(f"invalid header {header!r}: {exc}",
                              details=[{"path": f"header.{header}", "reason": str(exc)}]) from None


class Edge:
    def __init__(self, host: Host, listener: Listener, handlers: list[RouteHandler],
                 policy: EdgePolicy | None = None):
        self.host = host
        self.listener = listener
        self.settings = host.topology.settings
        # The body limit, enforced here whoever hands the edge a request: the
        # socket listener refuses earlier (from Content-Length, or as the body
        # grows), an in-process caller (amoeba.testing) meets it here.
        self.max_body = self.settings.max_body
        self.private = not listener.public
        # Public listeners only: private ones are reached by other processes, not users.
        self.policy = policy if listener.public else None
        self.access = self.policy.access if self.policy else None
        self.metrics = host.metrics
        self.tracing = host.observe.tracing
        self.tracer = host.tracer
        self.cors = self.policy.cors if self.policy else None
        self.limiter = self.policy.limiter if self.policy else None
        self.router: Router[RouteHandler | Callable[[Request], Awaitable[Response]]] = Router()
        self.handlers = handlers
        for h in handlers:
            route = h.codec.spec.route
            assert route is not None
            self.router.add(route.method, route.path, h)
        app = host.app
        builtins: dict[str, Callable[[Request], Awaitable[Response]]] = {
            "/healthz": self._live, "/readyz": self._ready,
            "/openapi.json": self._openapi, "/docs": self._docs, "/": self._index,
        }
        builtins.update({p: self._live for p in app.live_paths})
        builtins.update({p: self._ready for p in app.ready_paths})
        self.open_paths = {"/healthz", "/readyz", *app.live_paths, *app.ready_paths}
        self.unmetered: set[str] = set()
        if host.metrics is not None:
            # Open on private listeners (what Prometheus scrapes); on public ones only
            # as settings.observe.expose says (default: to loopback peers).
            from amoeba.observe.endpoints import Observe

            observe = Observe(host, public=listener.public)
            builtins.update(observe.routes())
            self.open_paths.update(observe.routes())
            self.unmetered.update(observe.routes())  # readers' polls are not the app's traffic
        # Probes and observability polls: not the app's traffic, not in the access log.
        self.unlogged = frozenset(self.open_paths)
        for path, fn in builtins.items():
            if ("GET", path) not in self.router.static:
                self.router.add("GET", path, fn)
        self._openapi_body: bytes | None = None
        # Mounted ASGI apps (and forwarders to them), set by the host: asked only
        # after the router missed.
        self.mounts: MountTable | None = None

    def __repr__(self) -> str:
        return f"<Edge {self.listener!r} {len(self.handlers)} routes>"

    @staticmethod
    def request_id(headers: dict[str, str]) -> str:
        rid = headers.get("x-request-id")
        if rid and len(rid) <= 128 and all(c in _ALLOWED_RID for c in rid):
            return rid
        return f"{_ID_PREFIX}-{next(_ids):x}"

    async def handle(self, req: Request, rid: str) -> Response:
        if len(req.body) > self.max_body:  # answered as the listener would, before anything else
            return error_response(PayloadTooLarge(
                f"request body exceeds the limit of {self.max_body} bytes"), rid)
        access = self.access
        metrics = self.metrics
        if metrics is None and (access is None or not access.active()):
            resp = await self._serve(req, rid)
        else:
            started = time.perf_counter()
            resp = await self._serve(req, rid)
            elapsed = time.perf_counter() - started
            if metrics is not None:
                handler = req.handler
                if handler is not None:
                    status = resp.status
                    hist = handler.by_status.get(status)
                    if hist is None:
                        hist = handler.by_status[status] = metrics.route(
                            req.method, handler.template, status)
                    hist.observe(elapsed)
                elif req.route not in self.unmetered:
                    metrics.http(req.method, req.route or "<unmatched>", resp.status, elapsed)
            if access is not None and access.active() and (
                    access.everything or req.path not in self.unlogged):
                assert self.policy is not None
                access.write(req.method, req.path, resp.status, elapsed * 1e3, rid,
                             req.principal.subject if req.principal else None,
                             self.policy.client_ip(req), context.trace_id())
        if self.cors is not None and "origin" in req.headers:
            self.cors.decorate(req, resp)
        return resp

    def _authenticate(self, req: Request) -> Unauthorized | None:
        """Sets ``req.principal`` from a valid bearer token; the error for an invalid one."""
        assert self.policy is not None
        auth = req.headers.get("authorization")
        if auth is None:
            return None
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return Unauthorized(INVALID)
        try:
            req.principal = self.policy.verifier.verify_access(token.strip())
        except Unauthorized as exc:
            return exc
        return None

    async def _serve(self, req: Request, rid: str) -> Response:
        host = self.host
        host.inflight += 1
        try:
            policy = self.policy
            auth_error: Unauthorized | None = None
            if policy is not None:
                if self.cors is not None and req.method == "OPTIONS":
                    pre = self.cors.preflight(req)
                    if pre is not None:
                        return pre
                if "authorization" in req.headers:
                    auth_error = self._authenticate(req)
                    sid = req.principal.session if req.principal is not None else None
                    if (sid is not None and policy.revocations is not None
                            and await policy.revocations.is_revoked(sid)):
                        req.principal = None  # a logged-out session: its tokens are dead everywhere
                        auth_error = Unauthorized(INVALID)
                if self.limiter is not None and req.path not in self.open_paths:
                    wait = await self.limiter.check(
                        req.principal.subject if req.principal else None, policy.client_ip(req))
                    if wait:
                        resp = error_response(TooManyRequests("rate limit exceeded; retry later"), rid)
                        resp.headers = [("retry-after", str(max(1, math.ceil(wait))))]
                        return resp
            try:
                target, params = self.router.match(req.method, req.path)
            except (NotFound, MethodNotAllowed):
                mounted = self.mounts.find(req.path) if self.mounts is not None else None
                if mounted is None:
                    raise
                return await self._mounted(req, rid, *mounted)
            if self.private and req.path not in self.open_paths:
                token = req.headers.get("x-amoeba-token")
                if not token:
                    raise Unauthorized("this listener is private: internal credential required")
                host.signer.verify(token, host.process.name)
            if isinstance(target, RouteHandler):
                req.route = target.template
                req.handler = target
                context.request_id.set(rid)
                context.service.set(target.service)
                context.deadline.set(host.loop_time() + self.settings.deadline)
                if self.tracer is not None:
                    return await self._traced(target, req, params, auth_error)
                if self.tracing:
                    context.start_trace(req.headers.get("traceparent", ""))
                result = await target(req, params, auth_error)
                return Response(target.status, json_encoder.encode(result))
            req.route = req.path  # a built-in endpoint: its path is static
            return await target(req)
        except Unauthorized as exc:
            resp = error_response(exc, rid)
            if policy is not None:
                resp.headers = [("www-authenticate", 'Bearer error="invalid_token"'
                                 if "authorization" in req.headers else "Bearer")]
            return resp
        except MethodNotAllowed as exc:
            resp = error_response(exc, rid)
            resp.headers = [("allow", ", ".join(self.router.allowed(req.path)))]
            return resp
        except ServiceError as exc:
            return error_response(exc, rid)
        except Exception:
            log.exception("unexpected error serving %s %s (request %s)", req.method, req.path, rid)
            return error_response(Internal(), rid)
        finally:
            host.inflight -= 1

    async def _traced(self, target: RouteHandler, req: Request, params: dict[str, str],
                      auth_error: Unauthorized | None) -> Response:
        """A route call inside an exported SERVER span (OpenTelemetry configured)."""
        tracer = self.tracer
        assert tracer is not None
        span, tp = tracer.start(target.span_name, req.headers.get("traceparent", ""), "server",
                                {"http.request.method": req.method, "http.route": target.template})
        context.traceparent.set(tp)
        result = await tracer.within(span, target(req, params, auth_error), target.status)
        return Response(target.status, json_encoder.encode(result))

    async def _mounted(self, req: Request, rid: str, prefix: str, service: str,
                       handler: Callable[[Request, str], Awaitable[Response]]) -> Response:
        """A request for a mounted ASGI app (here or, forwarded, in another process)."""
        host = self.host
        if self.private:
            token = req.headers.get("x-amoeba-token")
            if not token:
                raise Unauthorized("this listener is private: internal credential required")
            host.signer.verify(token, host.process.name)
        req.route = prefix if prefix.endswith("/") else prefix + "/*"  # the metric label
        context.request_id.set(rid)
        context.service.set(service)
        context.deadline.set(host.loop_time() + self.settings.deadline)
        if self.tracer is not None:
            span, tp = self.tracer.start(f"{req.method} {req.route}",
                                         req.headers.get("traceparent", ""), "server",
                                         {"http.request.method": req.method,
                                          "http.route": req.route})
            context.traceparent.set(tp)
            resp = await self.tracer.within(span, handler(req, rid))
            return resp
        if self.tracing:
            context.start_trace(req.headers.get("traceparent", ""))
        return await handler(req, rid)

    # -- built-in endpoints ----------------------------------------------------
    async def _live(self, req: Request) -> Response:
        return Response(200, json_encoder.encode({
            "status": "healthy", "service": self.host.process.name,
            "services": list(self.host.process.services)}))

    async def _ready(self, req: Request) -> Response:
        ok, checks = await self.host.readiness()
        status = "ready" if ok else ("draining" if self.host.draining else "not ready")
        return Response(200 if ok else 503, json_encoder.encode(
            {"status": status, "service": self.host.process.name, "checks": checks}))

    async def _index(self, req: Request) -> Response:
        return Response(200, json_encoder.encode({
            "app": self.host.app.name, "mode": self.host.topology.name,
            "process": self.host.process.name, "replica": self.host.replica, "pid": os.getpid(),
            "services": list(self.host.process.services), "docs": "/docs"}))

    async def _openapi(self, req: Request) -> Response:
        if self._openapi_body is None:
            doc = openapi_document(self.host.app, [h.codec for h in self.handlers],
                                   bearer=self.policy is not None)
            complete = True
            if self.mounts is not None:
                from amoeba.gateway.asgi import add_mounted_docs

                complete = await add_mounted_docs(doc, self.mounts)
            body = json_encoder.encode(doc)
            if not complete:  # a mounting process was unreachable: ask again next time
                return Response(200, body)
            self._openapi_body = body
        return Response(200, self._openapi_body)

    async def _docs(self, req: Request) -> Response:
        page = resources.files("amoeba.gateway").joinpath("docs.html").read_text()
        page = page.replace("{{TITLE}}", f"{self.host.app.title} — API docs")
        return Response(200, page.encode(), b"text/html; charset=utf-8")
