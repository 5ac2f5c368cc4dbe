"""Frozen descriptions of services and methods, built from type hints.

Pure data: building a spec opens nothing; it asks msgspec whether each
parameter and return type can be encoded and described, so a type that
cannot fails when the class is described, not on its first call.  Every other
part of amoeba (codec, router, stubs, OpenAPI, topology checks) reads these
records instead of re-inspecting classes.
"""

from __future__ import annotations

import inspect
import linecache
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import msgspec

from amoeba.auth.principal import Principal
from amoeba.events.event import ON_EVENT_ATTR, Event
from amoeba.models import uses_models
from amoeba.resource import Resource
from amoeba.service import (
    IDEMPOTENT_ATTR,
    LIFECYCLE,
    ROUTE_ATTR,
    Body,
    Header,
    Mount,
    RouteDecl,
    Service,
)

__all__ = ["MISSING", "MethodSpec", "Param", "RouteSpec", "ServiceSpec", "SpecError", "spec_of"]

MISSING: Any = inspect.Parameter.empty
_PATH_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class SpecError(TypeError):
    """A service class cannot be described: says which class, method and why.

    When the fault is one method's, ``file`` and ``line`` say where it is
    defined and ``key`` names it (``service.method``), so ``amoeba check``
    reports it like a topology problem: ``message`` and ``fix`` without the
    ``where`` (``Class.method``) that ``str()`` starts with."""

    def __init__(self, message: str, *, where: str | None = None, fix: str | None = None,
                 key: str | None = None, func: Any = None):
        self.message = message
        self.fix = fix
        self.key = key
        code = getattr(inspect.unwrap(func), "__code__", None) if func is not None else None
        self.file: str | None = code.co_filename if code is not None else None
        self.line: int | None = _def_line(code) if code is not None else None
        text = f"{where}: {message}" if where else message
        super().__init__(text if fix is None else f"{text}; fix: {fix}")


def _def_line(code: types.CodeType) -> int:
    """The line of ``def`` itself: a code object's first line is its first decorator's."""
    for n in range(code.co_firstlineno, code.co_firstlineno + 40):
        text = linecache.getline(code.co_filename, n).lstrip()
        if text.startswith(("def ", "async def ")):
            return n
    return code.co_firstlineno


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
    # The parameter marked Body(): the whole JSON body binds to it.
    whole_body: str | None = None
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
    # ASGI apps the service serves under path prefixes (``mounts = (Mount(...),)``)
    mounts: tuple[Mount, ...] = ()
    # attribute name -> the typing.Protocol it is annotated with; the App binds
    # each to the one service implementing it (and adds it to ``dependencies``)
    protocols: dict[str, type] = field(default_factory=dict)


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
    protocols: dict[str, type] = {}
    for attr, hint in _hints(cls, cls.__qualname__).items():
        if attr == "runtime" or typing.get_origin(hint) is typing.ClassVar:
            continue
        if isinstance(hint, type) and issubclass(hint, Service):
            dependencies[attr] = hint.name
        elif is_protocol(hint):
            protocols[attr] = hint
        elif isinstance(hint, type) and issubclass(hint, Resource):
            resources[attr] = hint

    for attr, func in inspect.getmembers(cls, inspect.isfunction):
        decl: RouteDecl | None = getattr(func, ROUTE_ATTR, None)
        marked = decl is not None or hasattr(func, ON_EVENT_ATTR) or hasattr(func, IDEMPOTENT_ATTR)
        if marked and not inspect.iscoroutinefunction(func):
            # Without this the method is silently not part of the interface: a 404.
            what = (f"@{decl.method.lower()}({decl.path!r})" if decl is not None else
                    "@on_event" if hasattr(func, ON_EVENT_ATTR) else "@idempotent")
            raise SpecError(f"{what} is on a plain `def`; only `async def` methods are served",
                            where=f"{cls.__qualname__}.{attr}",
                            fix=f"declare it `async def {attr}(...)`",
                            key=f"{name}.{attr}", func=func)

    methods: dict[str, MethodSpec] = {}
    handlers: dict[str, type[Event]] = {}
    for attr, func in inspect.getmembers(cls, inspect.iscoroutinefunction):
        if attr.startswith("_") or attr in LIFECYCLE:
            continue
        event = getattr(func, ON_EVENT_ATTR, None)
        if event is not None:
            handlers[attr] = _handler(name, cls, attr, func, event)
            continue
        methods[attr] = _method(name, cls, attr, func)
    publishes = tuple(getattr(cls, "publishes", ()) or ())
    for ev in publishes:
        if not (isinstance(ev, type) and issubclass(ev, Event)):
            raise SpecError(f"{cls.__qualname__}.publishes: {ev!r} is not an Event subclass")
        _check_wire(_Fail(name, cls, "publishes", None), "event", ev)
    mounts = tuple(getattr(cls, "mounts", ()) or ())
    for m in mounts:
        if not isinstance(m, Mount):
            raise SpecError(f"{cls.__qualname__}.mounts: {m!r} is not an amoeba.Mount; "
                            f"write mounts = (Mount('module:app', '/prefix'),)")
    return ServiceSpec(
        name=name,
        cls=cls,
        methods=methods,
        dependencies=dependencies,
        resources=resources,
        doc=inspect.getdoc(cls) if cls.__doc__ else None,
        handlers=handlers,
        publishes=publishes,
        mounts=mounts,
        protocols=protocols,
    )


class _Fail:
    """Raises a :class:`SpecError` located at one method."""

    def __init__(self, service: str, cls: type, attr: str, func: Any):
        self.where = f"{cls.__qualname__}.{attr}"
        self.key = f"{service}.{attr}"
        self.func = func

    def __repr__(self) -> str:
        return f"<_Fail {self.where}>"

    def __call__(self, message: str, fix: str) -> SpecError:
        return SpecError(message, where=self.where, fix=fix, key=self.key, func=self.func)


def is_protocol(hint: Any) -> bool:
    return isinstance(hint, type) and bool(getattr(hint, "_is_protocol", False))


def protocol_members(proto: type) -> dict[str, bool]:
    """A Protocol's public members: name -> whether it is an ``async def``."""
    out: dict[str, bool] = {}
    for base in reversed(proto.__mro__):
        if base in (object, typing.Protocol, typing.Generic) or not is_protocol(base):
            continue
        for name in (*base.__dict__, *getattr(base, "__annotations__", {})):
            if not name.startswith("_"):
                out[name] = inspect.iscoroutinefunction(base.__dict__.get(name))
    return out


def implements(cls: type, proto: type) -> bool:
    """Does service class ``cls`` have every member of ``proto`` (async where it is)?"""
    for name, is_async in protocol_members(proto).items():
        member = getattr(cls, name, None)
        if member is None or (is_async and not inspect.iscoroutinefunction(member)):
            return False
    return True


def _handler(service: str, cls: type, attr: str, func: Any, event: type[Event]) -> type[Event]:
    fail = _Fail(service, cls, attr, func)
    params = list(inspect.signature(func).parameters.values())[1:]
    if len(params) != 1:
        raise fail("an @on_event handler takes exactly one parameter, the event",
                   f"async def {attr}(self, event: {event.__name__}) -> None")
    hint = _hints(func, fail.where).get(params[0].name)
    if hint is not None and hint is not event:
        raise fail(f"@on_event({event.__name__}) but the parameter is annotated "
                   f"{getattr(hint, '__name__', hint)}",
                   f"annotate it `{params[0].name}: {event.__name__}`")
    _check_wire(fail, "event", event)
    return event


def _method(service: str, cls: type, attr: str, func: Any) -> MethodSpec:
    fail = _Fail(service, cls, attr, func)
    hints = _hints(func, fail.where)
    if "return" not in hints:
        raise fail("no return type hint", "add one (-> None if it returns nothing)")
    params: list[Param] = []
    for p in list(inspect.signature(func).parameters.values())[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise fail("*args / **kwargs cannot cross the wire", "name each parameter")
        if p.name not in hints:
            raise fail(f"parameter {p.name!r} has no type hint", f"annotate it: `{p.name}: int` "
                       f"(or its type)")
        params.append(Param(p.name, hints[p.name], p.default))

    for param in params:
        _check_wire(fail, f"parameter {param.name!r}", param.annotation)
    _check_wire(fail, "return type", hints["return"])
    decl: RouteDecl | None = getattr(func, ROUTE_ATTR, None)
    route = _route(fail, decl, params) if decl else None
    return MethodSpec(
        service=service,
        name=attr,
        params=tuple(params),
        returns=hints["return"],
        route=route,
        idempotent=bool(getattr(func, IDEMPOTENT_ATTR, False)) or (decl is not None and decl.method == "GET"),
        doc=inspect.getdoc(func),
    )


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__qualname__
    return repr(annotation).replace("typing.", "")


def _check_wire(fail: _Fail, what: str, annotation: Any) -> None:
    """Refuse a type the codec cannot encode or decode, or OpenAPI describe:
    msgspec treats an unknown class as a custom type that needs hooks amoeba
    does not give, so it would fail on the first call (a 500) and break
    ``/openapi.json`` for every route of the listener.  pydantic models are
    the codec's too (:mod:`amoeba.models`): pydantic checks them itself."""
    if uses_models(annotation):
        return
    try:
        msgspec.json.schema(annotation)
        msgspec.msgpack.Decoder(annotation)
    except (TypeError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[-1]
        raise fail(f"{what} {_type_name(annotation)} cannot cross the wire or be described in "
                   f"OpenAPI ({reason})",
                   "use a msgspec.Struct, a dataclass, a TypedDict, an Enum or built-in types (int, "
                   "float, str, bool, bytes, datetime, Decimal, UUID, list[...], dict[str, ...])"
                   ) from None


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


def is_body(annotation: Any) -> bool:
    if typing.get_origin(annotation) is typing.Annotated:
        return any(isinstance(m, Body) for m in annotation.__metadata__)
    return False


def _route(fail: _Fail, decl: RouteDecl, params: list[Param]) -> RouteSpec:
    principals: list[tuple[str, bool]] = []
    headers: list[tuple[str, str]] = []
    for p in params:
        kind = principal_kind(p.annotation)
        if kind is not None:
            principals.append((p.name, kind and p.required))
        elif (h := header_of(p.annotation)) is not None:
            headers.append((p.name, h.name.lower()))
        elif Principal in typing.get_args(p.annotation):
            raise fail(f"parameter {p.name!r} mixes Principal with other types",
                       "annotate it `Principal` or `Principal | None`; the edge fills it from the "
                       "access token")
    special = {n for n, _ in principals} | {n for n, _ in headers}
    names = [p.name for p in params if p.name not in special]
    in_path = tuple(_PATH_PARAM.findall(decl.path))
    for n in in_path:
        if n in special:
            raise fail(f"{{{n}}} in route {decl.path} names a parameter bound by the edge "
                       f"(Principal or Header)", "rename one of them")
        if n not in names:
            raise fail(f"route {decl.method} {decl.path} has {{{n}}} but the method has no "
                       f"parameter {n!r}", f"add a parameter `{n}`, or take {{{n}}} out of the path")
    rest = tuple(n for n in names if n not in in_path)
    from_query = decl.method in ("GET", "DELETE", "HEAD")
    whole = [p.name for p in params if is_body(p.annotation)]
    if whole:
        if from_query:
            raise fail(f"{decl.method} has no body", f"remove Body() from {whole[0]!r}")
        others = [n for n in rest if n != whole[0]]
        if len(whole) > 1 or others:
            raise fail(f"parameter {whole[0]!r} is the whole body (Body()), so "
                       f"{', '.join(repr(n) for n in [*whole[1:], *others])} cannot come from it",
                       "take them from the path, a Header(...), or put them in the model")
        if whole[0] in in_path:
            raise fail(f"{{{whole[0]}}} is in the path and marked Body()",
                       f"remove Body() from {whole[0]!r}, or take {{{whole[0]}}} out of the path")
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
        whole_body=whole[0] if whole else None,
    )
