"""The OpenAPI 3.1 document of a listener's routes, from the methods' type hints."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import msgspec

from amoeba.codec import MethodCodec
from amoeba.models import model_components, schema_hook
from amoeba.spec import header_of

if TYPE_CHECKING:
    from amoeba.app import App

__all__ = ["merge_mounted", "mounted_paths", "openapi_document"]

_ERROR_SCHEMA = {
    "type": "object",
    "properties": {"error": {"type": "object", "properties": {
        "type": {"type": "string"}, "status": {"type": "integer"},
        "message": {"type": "string"}, "request_id": {"type": "string"},
        "details": {"type": "array", "items": {"type": "object", "properties": {
            "path": {"type": "string"}, "reason": {"type": "string"}}}},
    }, "required": ["type", "status", "message"]}},
    "required": ["error"],
}
_REF = "#/components/schemas/{name}"


def _clean(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def summary_of(doc: str | None, name: str) -> str:
    """The operation's one-line summary: the docstring's first paragraph, whole
    (a docstring wraps its first sentence over lines), as plain text; or the
    method's name in words when it has no docstring."""
    if not doc:
        return name.replace("_", " ").strip().capitalize()
    first = " ".join(line.strip() for line in doc.strip().split("\n\n")[0].splitlines())
    return re.sub(r"``(.+?)``", r"\1", first)


def _with_default(schema: dict[str, Any], default: Any) -> dict[str, Any]:
    """A parameter's schema with its Python default, when JSON can say it
    (the docs page shows it and fills it in; clients learn it)."""
    if isinstance(default, bool | int | float | str) and "$ref" not in schema:
        return {**schema, "default": default}
    return schema
def _models_in(types: list[Any]) -> list[Any]:
    """The pydantic models named by ``types`` (nested in Structs' fields too)."""
    import typing

    out: list[Any] = []
    todo = list(types)
    while todo:
        t = todo.pop()
        if hasattr(t, "model_json_schema"):
            out.append(t)
        elif isinstance(t, type) and issubclass(t, msgspec.Struct):
            todo.extend(typing.get_type_hints(t, include_extras=True).values())
        else:
            todo.extend(typing.get_args(t))
    return out


def openapi_document(app: App, codecs: list[MethodCodec], *, bearer: bool = True) -> dict[str, Any]:
    """``bearer``: routes with a ``Principal`` parameter declare the bearer
    scheme (public listeners; a private one never verifies user tokens)."""
    types: list[Any] = []
    for c in codecs:
        types.append(c.spec.returns)
        if c.body_type is not None:
            types.append(c.body_schema_type)
    # schema_hook: a pydantic model's own schema (a type msgspec does not know)
    schemas, components = msgspec.json.schema_components(types, ref_template=_REF,
                                                         schema_hook=schema_hook)
    if any(c.models or c.result_model for c in codecs):
        components = {**model_components(_models_in(types)), **components}
    by_type = iter(schemas)
    paths: dict[str, dict[str, Any]] = {}
    secured = False
    for c in codecs:
        route = c.spec.route
        assert route is not None
        ret = next(by_type)
        body_schema = next(by_type) if c.body_type is not None else None
        by_name = {p.name: p for p in c.spec.params}
        params = []
        for n in route.path_params + route.query_params:
            (schema,), _ = msgspec.json.schema_components([by_name[n].annotation], ref_template=_REF)
            params.append({"name": n, "in": "path" if n in route.path_params else "query",
                           "required": n in route.path_params or by_name[n].required,
                           "schema": _with_default(schema, by_name[n].default)})
        for n, header in route.header_params:
            (schema,), _ = msgspec.json.schema_components([by_name[n].annotation], ref_template=_REF)
            declared = header_of(by_name[n].annotation)  # its name as written: Idempotency-Key
            params.append({"name": declared.name if declared else header, "in": "header",
                           "required": by_name[n].required, "schema": schema})
        op: dict[str, Any] = {
            "operationId": c.spec.qualname.replace(".", "_"),
            "tags": list(route.tags) or [c.spec.service],
            "summary": route.summary or summary_of(c.spec.doc, c.spec.name),
            "responses": {
                str(route.status): {"description": "success",
                                    "content": {"application/json": {"schema": ret}}},
                "default": {"description": "error",
                            "content": {"application/json": {"schema": _ERROR_SCHEMA}}},
            },
        }
        if c.spec.doc:
            op["description"] = c.spec.doc
        if route.principal_params and bearer:
            required = any(req for _, req in route.principal_params)
            # An optional principal also accepts anonymous calls: the empty requirement.
            op["security"] = [{"bearer": []}] if required else [{"bearer": []}, {}]
            secured = True
        if params:
            op["parameters"] = params
        if body_schema is not None:
            if route.body_schema:
                body_schema = {"allOf": [body_schema, route.body_schema]}
            # Optional when every body parameter has a default (an empty body is {})
            # and no rule across fields asks for some of them.
            required = bool(route.body_schema) or any(by_name[n].required
                                                      for n in route.body_params)
            op["requestBody"] = {"required": required, "content": {"application/json": {
                "schema": body_schema}}}
        paths.setdefault(route.path, {})[route.method.lower()] = op
    comp: dict[str, Any] = {"schemas": {_clean(k): v for k, v in components.items()}}
    if secured:
        comp["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer",
                                              "bearerFormat": "JWT"}}
    return {
        "openapi": "3.1.0",
        "info": {"title": app.title, "version": app.version},
        "paths": paths,
        "components": comp,
    }


def _under(path: str, prefixes: tuple[str, ...]) -> bool:
    return any(p == "/" or path == p or path.startswith(p.rstrip("/") + "/") for p in prefixes)


def mounted_paths(doc: dict[str, Any], prefixes: tuple[str, ...]) -> dict[str, Any]:
    """The part of a mounted app's own OpenAPI document under its prefixes
    (operations and the schemas they use; other paths are not served here)."""
    return {"paths": {p: op for p, op in (doc.get("paths") or {}).items() if _under(p, prefixes)},
            "schemas": dict((doc.get("components") or {}).get("schemas") or {})}


def merge_mounted(doc: dict[str, Any], part: dict[str, Any]) -> None:
    """Add a mounted app's operations to the listener's document.  A native
    route's operation and a component of the same name win (as at the edge)."""
    paths = doc.setdefault("paths", {})
    for path, ops in part.get("paths", {}).items():
        mine = paths.setdefault(path, {})
        for method, op in ops.items():
            mine.setdefault(method, op)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for name, schema in part.get("schemas", {}).items():
        schemas.setdefault(name, schema)
