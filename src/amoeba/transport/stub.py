"""Stubs: objects with a service's methods that call it some other way.

One spec yields both kinds (Service Weaver's habit): the *remote* stub sends
each call through a :class:`ProcessClient`; the *strict* stub calls the
co-located instance but first sends arguments, result and errors through the
wire codec, so a monolith cannot rely on sharing mutable objects.  A plain
local dependency needs no stub at all: it is the instance itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from amoeba.codec import MethodCodec, decode_error, encode_error, msgpack_encoder
from amoeba.errors import Internal, ServiceError
from amoeba.spec import ServiceSpec
from amoeba.transport.client import ProcessClient

if TYPE_CHECKING:
    from amoeba.observe.metrics import Metrics

__all__ = ["remote_stub", "strict_stub", "stub_class"]

log = logging.getLogger("amoeba.strict")


def stub_class(spec: ServiceSpec, kind: str, methods: dict[str, Callable[..., Any]]) -> Any:
    ns: dict[str, Any] = dict(methods)
    ns["__repr__"] = lambda self: f"<{kind} stub of {spec.name!r}>"
    ns["name"] = spec.name
    return type(f"{spec.cls.__name__}{kind.title()}Stub", (), ns)()


def remote_stub(spec: ServiceSpec, codecs: dict[str, MethodCodec], client: ProcessClient,
                caller: str, stats: tuple[Metrics, str] | None = None) -> Any:
    """``caller``: the calling process (sent on the wire).  ``stats``: the
    metrics and the calling service, to count the bytes each call moves."""

    def make(codec: MethodCodec) -> Callable[..., Coroutine[Any, Any, Any]]:
        call = client.call
        bind = codec.bind
        stat = stats[0].call(stats[1], spec.name, codec.spec.name, "remote") if stats else None

        async def method(self: Any, *args: Any, **kwargs: Any) -> Any:
            return await call(codec, caller, bind(args, kwargs), stat)

        method.__name__ = codec.spec.name
        method.__doc__ = codec.spec.doc
        return method

    return stub_class(spec, "remote", {n: make(c) for n, c in codecs.items()})


def strict_stub(spec: ServiceSpec, codecs: dict[str, MethodCodec], target: Any) -> Any:
    def make(codec: MethodCodec) -> Callable[..., Coroutine[Any, Any, Any]]:
        fn = getattr(target, codec.spec.name)

        async def method(self: Any, *args: Any, **kwargs: Any) -> Any:
            wire_args = codec.decode_args(msgpack_encoder.encode(codec.bind(args, kwargs)))
            try:
                result = await fn(*wire_args)
            except ServiceError as exc:
                raise decode_error(encode_error(exc)) from None
            except Exception:
                log.exception("unexpected error in %s", codec.spec.qualname)
                raise Internal() from None
            return codec.decode_result(msgpack_encoder.encode(result))

        method.__name__ = codec.spec.name
        return method

    return stub_class(spec, "strict", {n: make(c) for n, c in codecs.items()})
