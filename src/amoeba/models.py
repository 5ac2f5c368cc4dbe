"""pydantic models in service method signatures.

msgspec carries the wire; a parameter or result whose annotation names a
pydantic ``BaseModel`` (alone, optional, in a list...) travels as plain
JSON-compatible data (``model_dump(mode="json")``) and is validated by a
pydantic ``TypeAdapter`` of the annotation on the receiving side.

pydantic is never imported here: a class can only be a ``BaseModel`` if
pydantic was already imported by whoever defined it, so :func:`uses_models`
looks in ``sys.modules`` and a signature without models costs one dict
lookup, once, at startup.
"""

from __future__ import annotations

import sys
import typing
from typing import Any

from amoeba.errors import Invalid

__all__ = ["Validator", "enc_hook", "model_components", "schema_hook", "uses_models"]


def uses_models(annotation: Any) -> bool:
    """Does ``annotation`` name a pydantic model anywhere (``Model``,
    ``Model | None``, ``list[Model]``, ``Annotated[Model, ...]``)?"""
    pydantic = sys.modules.get("pydantic")
    if pydantic is None:
        return False
    base = pydantic.BaseModel
    seen: list[Any] = [annotation]
    while seen:
        t = seen.pop()
        if isinstance(t, type) and issubclass(t, base):
            return True
        seen.extend(typing.get_args(t))
    return False


def enc_hook(obj: Any) -> Any:
    """msgspec's hook for types it does not know: a model becomes its JSON data."""
    dump = getattr(obj, "model_dump", None)
    if dump is not None and "pydantic" in sys.modules:
        return dump(mode="json")
    raise NotImplementedError(f"cannot encode objects of type {type(obj).__qualname__}")


def schema_hook(t: Any) -> dict[str, Any]:
    """msgspec's schema hook: a model's JSON schema; the models it nests are
    referenced as components (added by :func:`model_components`)."""
    schema = getattr(t, "model_json_schema", None)
    if schema is None:
        raise NotImplementedError(f"no JSON schema for {t!r}")
    doc: dict[str, Any] = schema(ref_template="#/components/schemas/{model}")
    doc.pop("$defs", None)  # nested models: see model_components
    return doc


def model_components(types: list[Any]) -> dict[str, Any]:
    """The ``$defs`` of the models among ``types`` (nested models), as components."""
    out: dict[str, Any] = {}
    for t in types:
        schema = getattr(t, "model_json_schema", None)
        if schema is not None:
            out.update(schema(ref_template="#/components/schemas/{model}").get("$defs", {}))
    return out


class Validator:
    """Validates one parameter's (or a result's) value with pydantic."""

    __slots__ = ("adapter", "path", "where")

    def __init__(self, annotation: Any, path: str, where: str):
        from pydantic import TypeAdapter  # imported only for a signature with a model

        self.adapter: Any = TypeAdapter(annotation)
        self.path = path  # "$.qty" (a parameter), "$" (the whole body or a result)
        self.where = where

    def __repr__(self) -> str:
        return f"<Validator {self.where} {self.path}>"

    def __call__(self, value: Any) -> Any:
        from pydantic import ValidationError

        try:
            return self.adapter.validate_python(value)
        except ValidationError as exc:
            details = []
            for err in exc.errors(include_url=False):
                loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"])
                path = self.path + loc
                details.append({"path": path, "reason": err["msg"]})
            first = details[0] if details else {"path": self.path, "reason": str(exc)}
            raise Invalid(f"invalid {self.where}: {first['reason']} at {first['path']}",
                          details=details) from None
