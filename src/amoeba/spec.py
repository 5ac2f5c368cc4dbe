"""Frozen descriptions of services and methods, built from type hints.

Pure data: building a spec imports nothing and opens nothing.  Every other
part of amoeba (codec, router, stubs, OpenAPI, topology checks) reads these
records instead of re-inspecting classes.
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from amoeba.auth.principal import Principal
from amoeba.events.event import ON_EVENT_ATTR, Event
from amoeba.resource import Resource
from amoeba.service import IDEMPOTENT_ATTR, LIFECYCLE, ROUTE_ATTR, Header, RouteDecl, Service

__all__ = ["MISSING", "MethodSpec", "Param", "RouteSpec", "ServiceSpec", "SpecError", "spec_of"]

MISSING: Any = inspect.Parameter.empty
_PATH_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class SpecError(TypeError):
    """A service class cannot be described: says which class, method and why."""


@dataclass(frozen=True)
class Param:
    name: str
    annotation: Any
    default: Any = MISSING

    @property
    def required(self) -> bool:
        return self.default is MISSING


@dataclass(frozen=True)
class RouteSpec:
    method: str
    path: str
    status: int
    summary: str | None
    tags: tuple[str, ...]
    path_params: tuple[str, ...]
    query_params: tuple[str, ...]
    body_params: tuple[str, ...]
    # Bound by the edge, never from path/query/body: (parameter, required).
    principal_params: tuple[tuple[str, bool], ...] = ()
    # (parameter, lower-case header name)
    header_params: tuple[tuple[str, str], ...] = ()
    # Extra JSON Schema keywords for the body (OpenAPI only; the method enforces them).
    body_schema: dict[str, Any] | None = None


@dataclass(frozen=True)
class MethodSpec:
    service: str
    name: str
    params: tuple[Param, ...]
    returns: Any
    route: RouteSpec | None
    idempotent: bool
    doc: str | None

    @property
    def qualname(self) -> str:
        return f"{self.service}.{self.name}"


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    cls: type[Service]
    methods: dict[str, MethodSpec] = field(repr=False)
    # attribute name -> service *name* it depends on
    dependencies: dict[str, str]
    # attribute name -> resource class
    resources: dict[str, type[Resource]]
    doc: str | None = None
    # method name -> the Event class it handles (@on_event)
    handlers: dict[str, type[Event]] = field(default_factory=dict)
    # event classes the service declares it publishes (``publishes = (...)``)
    publishes: tuple[type[Event], ...] = ()


_CACHE: dict[type[Service], ServiceSpec] = {}


def spec_of(cls: type[Service]) -> ServiceSpec:
    """The spec of a service class (cached: a class is described once)."""
    spec = _CACHE.get(cls)
    if spec is None:
        spec = _CACHE[cls] = _build(cls)
    return spec


def _hints(obj: Any, where: str) -> dict[str, Any]:
    try:
        return typing.get_type_hints(obj, include_extras=True)
    except NameError as exc:
        raise SpecError(
            f"{where}: a type hint names something that is not defined ({exc}); "
            f"import it at module level (not only under TYPE_CHECKING)"
        ) from exc


def _build(cls: type[Service]) -> ServiceSpec:
    if not (isinstance(cls, type) and issubclass(cls, Service)):
        raise SpecError(f"{cls!r} is not a subclass of amoeba.Service")
    name = cls.name
    dependencies: dict[str, str] = {}
    resources: dict[str, type[Resource]] = {}
    for attr, hint in _hints(cls, cls.__qualname__).items():
        if attr == "runtime" or typing.get_origin(hint) is typing.ClassVar:
            continue
        if isinstance(hint, type) and issubclass(hint, Service):
            dependencies[attr] = hint.name
        elif isinstance(hint, type) and issubclass(hint, Resource):
            resources[attr] = hint

    methods: dict[str, MethodSpec] = {}
    handlers: dict[str, type[Event]] = {}
    for attr, func in inspect.getmembers(cls, inspect.iscoroutinefunction):
        if attr.startswith("_") or attr in LIFECYCLE:
            continue
        event = getattr(func, ON_EVENT_ATTR, None)
        if event is not None:
            handlers[attr] = _handler(cls, attr, func, event)
            continue
        methods[attr] = _method(name, cls, attr, func)
    publishes = tuple(getattr(cls, "publishes", ()) or ())
    for ev in publishes:
        if not (isinstance(ev, type) and issubclass(ev, Event)):
            raise SpecError(f"{cls.__qualname__}.publishes: {ev!r} is not an Event subclass")
    return ServiceSpec(
        name=name,
        cls=cls,
        methods=methods,
        dependencies=dependencies,
        resources=resources,
        doc=inspect.getdoc(cls) if cls.__doc__ else None,
        handlers=handlers,
        publishes=publishes,
    )


def _handler(cls: type, attr: str, func: Any, event: type[Event]) -> type[Event]:
    where = f"{cls.__qualname__}.{attr}"
    params = list(inspect.signature(func).parameters.values())[1:]
    if len(params) != 1:
        raise SpecError(f"{where}: an @on_event handler takes exactly one parameter, the event")
    hint = _hints(func, where).get(params[0].name)
    if hint is not None and hint is not event:
        raise SpecError(f"{where}: @on_event({event.__name__}) but the parameter is annotated "
                        f"{getattr(hint, '__name__', hint)}")
    return event


def _method(service: str, cls: type, attr: str, func: Any) -> MethodSpec:
    where = f"{cls.__qualname__}.{attr}"
    hints = _hints(func, where)
    if "return" not in hints:
        raise SpecError(f"{where}: add a return type hint (-> None if it returns nothing)")
    params: list[Param] = []
    for p in list(inspect.signature(func).parameters.values())[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise SpecError(f"{where}: *args / **kwargs cannot cross the wire; name each parameter")
        if p.name not in hints:
            raise SpecError(f"{where}: parameter {p.name!r} needs a type hint")
        params.append(Param(p.name, hints[p.name], p.default))

    decl: RouteDecl | None = getattr(func, ROUTE_ATTR, None)
    route = _route(where, decl, params) if decl else None
    return MethodSpec(
        service=service,
        name=attr,
        params=tuple(params),
        returns=hints["return"],
        route=route,
        idempotent=bool(getattr(func, IDEMPOTENT_ATTR, False)) or (decl is not None and decl.method == "GET"),
        doc=inspect.getdoc(func),
    )


def principal_kind(annotation: Any) -> bool | None:
    """True: ``Principal`` (required); False: ``Principal | None``; None: neither."""
    if annotation is Principal:
        return True
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and Principal in args:
        return False if type(None) in args and len(args) == 2 else None
    return None


def header_of(annotation: Any) -> Header | None:
    if typing.get_origin(annotation) is typing.Annotated:
        return next((m for m in annotation.__metadata__ if isinstance(m, Header)), None)
    return None


def _route(where: str, decl: RouteDecl, params: list[Param]) -> RouteSpec:
    principals: list[tuple[str, bool]] = []
    headers: list[tuple[str, str]] = []
    for p in params:
        kind = principal_kind(p.annotation)
        if kind is not None:
            principals.append((p.name, kind and p.required))
        elif (h := header_of(p.annotation)) is not None:
            headers.append((p.name, h.name.lower()))
        elif Principal in typing.get_args(p.annotation):
            raise SpecError(f"{where}: parameter {p.name!r}: annotate it `Principal` or "
                            f"`Principal | None`; the edge fills it from the access token")
    special = {n for n, _ in principals} | {n for n, _ in headers}
    names = [p.name for p in params if p.name not in special]
    in_path = tuple(_PATH_PARAM.findall(decl.path))
    for n in in_path:
        if n in special:
            raise SpecError(f"{where}: {{{n}}} in route {decl.path} names a parameter bound by the "
                            f"edge (Principal or Header); rename one of them")
        if n not in names:
            raise SpecError(
                f"{where}: route {decl.method} {decl.path} has {{{n}}} but the method has no "
                f"parameter {n!r}"
            )
    rest = tuple(n for n in names if n not in in_path)
    from_query = decl.method in ("GET", "DELETE", "HEAD")
    return RouteSpec(
        method=decl.method,
        path=decl.path,
        status=decl.status,
        summary=decl.summary,
        tags=decl.tags,
        path_params=in_path,
        query_params=rest if from_query else (),
        body_params=() if from_query else rest,
        body_schema=decl.body_schema,
        principal_params=tuple(principals),
        header_params=tuple(headers),
    )
