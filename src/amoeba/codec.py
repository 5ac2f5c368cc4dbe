"""Wire encoding of arguments, results and errors, derived from type hints.

Each method gets one :class:`MethodCodec`, built once at startup:

* RPC arguments travel as a msgpack array in parameter order and are
  decoded into a generated ``array_like`` Struct, so the callee validates
  them against its own signature;
* results are encoded by the callee and decoded by the caller against the
  method's return annotation, so a caller gets real Structs, dataclasses,
  datetimes, ``Decimal`` s and enums back;
* HTTP bodies are JSON objects keyed by parameter name, decoded into a
  generated Struct of the body parameters.

Validation failures become :class:`amoeba.errors.Invalid` with the field
path (``$.qty``) and msgspec's reason.

A parameter or result annotated with a pydantic model travels as the
model's JSON data and is validated by pydantic where it arrives (see
:mod:`amoeba.models`); a method without models has ``models is None`` and
``result_model is None`` and takes no other path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from amoeba.errors import Invalid, ServiceError, error_from_wire
from amoeba.models import Validator, enc_hook, uses_models
from amoeba.spec import MISSING, MethodSpec, Param

__all__ = ["MethodCodec", "codec_for", "decode_error", "encode_error", "invalid_from"]

# enc_hook is consulted only for types msgspec does not know (pydantic models).
msgpack_encoder = msgspec.msgpack.Encoder(enc_hook=enc_hook)
json_encoder = msgspec.json.Encoder(enc_hook=enc_hook)
_error_decoder = msgspec.msgpack.Decoder(dict[str, Any])


def invalid_from(exc: msgspec.ValidationError | msgspec.DecodeError, where: str = "body") -> Invalid:
    """Turn msgspec's message (``Expected `int`, got `str` - at `$.qty` ``) into
    an ``Invalid`` with a structured detail."""
    text = str(exc)
    path = "$"
    reason = text
    if " - at `" in text:
        reason, _, rest = text.rpartition(" - at `")
        path = rest.rstrip("`")
    if isinstance(exc, msgspec.DecodeError) and not isinstance(exc, msgspec.ValidationError):
        return Invalid(f"malformed {where}: {reason}", details=[{"path": path, "reason": reason}])
    return Invalid(f"invalid {where}: {reason} at {path}", details=[{"path": path, "reason": reason}])


def _fields(params: tuple[Param, ...] | list[Param], wire: dict[str, Any] | None = None
            ) -> list[tuple[str, Any] | tuple[str, Any, Any]]:
    """Struct fields of ``params``; ``wire`` replaces some annotations (a model's: Any)."""
    out: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    for p in params:
        ann = wire.get(p.name, p.annotation) if wire else p.annotation
        out.append((p.name, ann) if p.required else (p.name, ann, p.default))
    return out


@dataclass(frozen=True)
class MethodCodec:
    spec: MethodSpec
    names: tuple[str, ...]
    defaults: dict[str, Any]
    args_type: type[msgspec.Struct]
    args_decoder: msgspec.msgpack.Decoder[Any]
    result_decoder: msgspec.msgpack.Decoder[Any]
    body_type: type[msgspec.Struct] | None
    body_decoder: msgspec.json.Decoder[Any] | None
    query_type: type[msgspec.Struct] | None
    # pydantic: parameter index -> validator (None: no parameter names a model),
    # the result's validator, the struct OpenAPI describes the body with.
    models: dict[int, Validator] | None = None
    result_model: Validator | None = None
    body_schema_type: Any = None
    # Body(): the parameter the whole JSON body binds to.
    whole_body: str | None = None

    def validate(self, args: list[Any]) -> list[Any]:
        """Run the pydantic validators over decoded arguments (in place)."""
        assert self.models is not None
        for i, check in self.models.items():
            args[i] = check(args[i])
        return args

    # -- caller side -------------------------------------------------------
    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...] | list[Any]:
        """Arguments in parameter order, defaults filled in (as Python would)."""
        names = self.names
        if not kwargs and len(args) == len(names):
            return args
        if len(args) > len(names):
            raise TypeError(
                f"{self.spec.qualname}() takes {len(names)} arguments but {len(args)} were given"
            )
        out = list(args)
        for name in names[len(args):]:
            if name in kwargs:
                out.append(kwargs.pop(name))
            elif name in self.defaults:
                out.append(self.defaults[name])
            else:
                raise TypeError(f"{self.spec.qualname}() missing required argument {name!r}")
        if kwargs:
            raise TypeError(f"{self.spec.qualname}() got unexpected arguments {sorted(kwargs)}")
        return out

    def decode_result(self, data: bytes | memoryview) -> Any:
        if self.result_model is None:
            return self.result_decoder.decode(data)
        return self.result_model(self.result_decoder.decode(data))

    # -- callee side -------------------------------------------------------
    def decode_args(self, data: bytes | memoryview) -> list[Any]:
        try:
            struct = self.args_decoder.decode(data)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise invalid_from(exc, f"arguments of {self.spec.qualname}") from None
        args = [getattr(struct, n) for n in self.names]
        return args if self.models is None else self.validate(args)


def codec_for(spec: MethodSpec) -> MethodCodec:
    base = f"{spec.service}.{spec.name}"
    route = spec.route
    whole = route.whole_body if route is not None else None
    # pydantic models travel as their JSON data (Any on the wire), validated on arrival.
    wire = {p.name: Any for p in spec.params if uses_models(p.annotation)}
    models = {i: Validator(p.annotation, "$" if p.name == whole else f"$.{p.name}",
                           f"arguments of {base}")
              for i, p in enumerate(spec.params) if p.name in wire} or None
    result_model = (Validator(spec.returns, "$", f"result of {base}")
                    if uses_models(spec.returns) else None)
    args_type = msgspec.defstruct(f"{base}.args", _fields(spec.params, wire), array_like=True)
    body_type = query_type = None
    body_decoder = None
    body_schema_type: Any = None
    by_name = {p.name: p for p in spec.params}
    if route is not None and route.body_params:
        params = [by_name[n] for n in route.body_params]
        body_type = msgspec.defstruct(f"{base}.body", _fields(params, wire), kw_only=True)
        if whole is not None:
            # The JSON body is the parameter's value; the edge wraps it in body_type.
            body_decoder = msgspec.json.Decoder(wire.get(whole, by_name[whole].annotation))
            body_schema_type = by_name[whole].annotation
        else:
            body_decoder = msgspec.json.Decoder(body_type)
            body_schema_type = (msgspec.defstruct(f"{base}.body", _fields(params), kw_only=True)
                                if wire else body_type)
    if route is not None and (route.query_params or route.path_params):
        query_type = msgspec.defstruct(
            f"{base}.query",
            _fields([by_name[n] for n in route.path_params + route.query_params], wire),
            kw_only=True,
        )
    return MethodCodec(
        spec=spec,
        names=tuple(p.name for p in spec.params),
        defaults={p.name: p.default for p in spec.params if p.default is not MISSING},
        args_type=args_type,
        args_decoder=msgspec.msgpack.Decoder(args_type),
        result_decoder=msgspec.msgpack.Decoder(Any if result_model else spec.returns),
        body_type=body_type,
        body_decoder=body_decoder,
        query_type=query_type,
        models=models,
        result_model=result_model,
        body_schema_type=body_schema_type,
        whole_body=whole,
    )


def encode_error(exc: ServiceError) -> bytes:
    return msgpack_encoder.encode(exc.to_wire())


def decode_error(data: bytes | memoryview) -> ServiceError:
    return error_from_wire(_error_decoder.decode(data))
