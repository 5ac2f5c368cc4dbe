"""The ``Service`` base class and the decorators that describe its methods.

A service is a plain class.  Its public ``async def`` methods are its
interface; class annotations that name another ``Service`` are dependencies
and annotations that name a ``Resource`` are resources.  Nothing here does
I/O: the runtime reads these declarations (through :mod:`amoeba.spec`) and
injects what each annotation names.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from amoeba.runtime.info import RuntimeInfo

__all__ = ["Body", "Header", "Mount", "Service", "delete", "get", "idempotent", "patch", "post", "put"]

F = TypeVar("F", bound=Callable[..., Any])

ROUTE_ATTR = "__amoeba_route__"
IDEMPOTENT_ATTR = "__amoeba_idempotent__"

# Methods of the base class (lifecycle hooks, publish): not part of the interface.
LIFECYCLE = frozenset({"start", "stop", "publish"})


@dataclass(frozen=True)
class RouteDecl:
    """What a route decorator recorded on a method."""

    method: str
    path: str
    status: int
    summary: str | None
    tags: tuple[str, ...]
    body_schema: dict[str, Any] | None = None


@dataclass(frozen=True)
class Header:
    """Bind a route parameter to a request header instead of the body or query::

        key: Annotated[str | None, Header("Idempotency-Key")] = None

    The name is matched case-insensitively; the value is converted to the
    annotated type.  Called between services, it is an ordinary argument."""

    name: str

    def __post_init__(self) -> None:
        if not self.name or any(c in self.name for c in " :\r\n"):
            raise ValueError(f"Header({self.name!r}): not a valid header name")


# A word starts at an upper-case letter that follows a lower-case letter or a
# digit, or at the last capital of a run followed by a lower-case letter, so
# acronyms stay whole: ``HTTPGateway`` -> ``http_gateway``, ``GREETER`` -> ``greeter``.
_WORD = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def snake_name(name: str) -> str:
    """The service name of a class named ``name`` (see ``Service``)."""
    return _WORD.sub("_", name).lower()


class Mount:
    """Serve an existing ASGI 3 application (FastAPI, Starlette, Litestar...)
    as part of a service, under one or more path prefixes::

        class Tickets(Service):
            vacancy: Vacancy
            mounts = (Mount("tickets_api.main:app", "/api/v1"),)

    ``app`` is ``"module:attribute"``, imported in the process that hosts the
    service (never pickled).  Paths are passed on whole (the prefix is a claim,
    not stripped), so the app's own routes keep their paths.  A native route
    always wins: the mount table is consulted only when no route matched."""

    __slots__ = ("app", "prefixes")

    def __init__(self, app: str, *prefixes: str):
        module, _, attr = app.partition(":")
        if not module or not attr:
            raise ValueError(f"Mount({app!r}): name the app as 'module:attribute', "
                             f"e.g. 'myapp.main:app'")
        if not prefixes:
            raise ValueError(f"Mount({app!r}): give at least one path prefix, e.g. '/api'")
        for p in prefixes:
            if not p.startswith("/") or (p != "/" and p.endswith("/")) or "{" in p:
                raise ValueError(f"Mount({app!r}, {p!r}): a prefix starts with '/', does not end "
                                 f"with one and has no {{parameters}}, e.g. '/api/v1'")
        self.app = app
        self.prefixes = tuple(prefixes)

    def __repr__(self) -> str:
        return f"Mount({self.app!r}, {', '.join(map(repr, self.prefixes))})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mount) and (self.app, self.prefixes) == (other.app, other.prefixes)

    def __hash__(self) -> int:
        return hash((self.app, self.prefixes))


class Body:
    """Make one parameter the whole JSON body of its route, FastAPI's convention
    for a model parameter, so an existing ``{"qty": 1}`` contract survives::

        @post("/api/v1/reserve")
        async def reserve(self, req: Annotated[QtyRequest, Body()]) -> OperationResponse: ...

    Without it the body is an object keyed by parameter name
    (``{"req": {"qty": 1}}``).  Between services it is an ordinary argument."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "Body()"


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class Service:
    """Base class of every service.

    Subclasses may set ``name``; by default it is the class name in snake_case,
    an acronym kept as one word: ``Vacancy`` -> ``vacancy``, ``TicketOffice``
    -> ``ticket_office``, ``HTTPGateway`` -> ``http_gateway``, ``GREETER`` ->
    ``greeter``, ``OrdersV2`` -> ``orders_v2``.  They may also
    override the ``start`` / ``stop`` hooks, which run once per process after
    every dependency is wired, in dependency order (``stop`` in reverse).
    """

    name: ClassVar[str]
    # ASGI applications this service serves under path prefixes (see Mount).
    mounts: ClassVar[tuple[Mount, ...]] = ()
    # Set by the runtime before ``start``: topology, process and replica.
    runtime: RuntimeInfo

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = snake_name(cls.__name__)

    async def start(self) -> None:
        """Called once the service's dependencies and resources are in place."""

    async def stop(self) -> None:
        """Called when the process stops, after in-flight requests finished."""

    async def publish(self, event: Any) -> None:
        """Publish ``event`` (an :class:`amoeba.events.Event` named in this class's
        ``publishes``).  Inside ``self.db.transaction()`` it is written to the
        service's outbox in that transaction and relayed after the commit, so a
        rollback publishes nothing and a crash or broker outage loses nothing."""
        events = getattr(self, "_amoeba_events", None)
        if events is None:
            raise RuntimeError(f"{type(self).__qualname__}.publish: the service is not running "
                               f"under amoeba (no event bus was wired)")
        await events.publish(self, event)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} service {self.name!r}>"


def _route(method: str) -> Callable[..., Callable[[F], F]]:
    def decorator_factory(
        path: str, *, status: int = 200, summary: str | None = None, tags: tuple[str, ...] = (),
        body_schema: dict[str, Any] | None = None,
    ) -> Callable[[F], F]:
        if not path.startswith("/"):
            raise ValueError(f"@{method.lower()}({path!r}): a route path starts with '/'")

        def decorate(func: F) -> F:
            setattr(func, ROUTE_ATTR, RouteDecl(method, path, status, summary, tuple(tags),
                                                body_schema))
            return func

        return decorate

    decorator_factory.__name__ = method.lower()
    decorator_factory.__doc__ = (
        f"Serve the method at ``{method} path``.  Path parameters (``{{id}}``) and, for "
        f"GET/DELETE, query parameters bind to method parameters by name; otherwise the "
        f"JSON body's keys do.  ``status`` is the success status code.  ``body_schema``: "
        f"JSON Schema keywords added to the request body's schema in the OpenAPI document, "
        f"for rules across fields that type hints cannot state (the method enforces them)."
    )
    return decorator_factory


get = _route("GET")
post = _route("POST")
put = _route("PUT")
patch = _route("PATCH")
delete = _route("DELETE")


def idempotent(func: F) -> F:
    """Mark a method as safe to retry: a remote call that failed after it was
    sent may be sent again to another replica."""
    setattr(func, IDEMPOTENT_ATTR, True)
    return func
