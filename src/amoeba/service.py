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

__all__ = ["Header", "Service", "delete", "get", "idempotent", "patch", "post", "put"]

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


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class Service:
    """Base class of every service.

    Subclasses may set ``name`` (default: the class name in snake_case) and
    override the ``start`` / ``stop`` hooks, which run once per process after
    every dependency is wired, in dependency order (``stop`` in reverse).
    """

    name: ClassVar[str]
    # Set by the runtime before ``start``: topology, process and replica.
    runtime: RuntimeInfo

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = _snake(cls.__name__)

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
