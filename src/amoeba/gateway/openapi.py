"""The OpenAPI 3.1 document of a listener's routes, from the methods' type hints."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import msgspec

from amoeba.codec import MethodCodec

if TYPE_CHECKING:
    from amoeba.app import App

__all__ = ["openapi_document"]

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


def openapi_document(app: App, codecs: list[MethodCodec], *, bearer: bool = True) -> dict[str, Any]:
    """``bearer``: routes with a ``Principal`` parameter declare the bearer
    scheme (public listeners; a private one never verifies user tokens)."""
    types: list[Any] = []
    for c in codecs:
        types.append(c.spec.returns)
        if c.body_type is not None:
            types.append(c.body_type)
    schemas, components = msgspec.json.schema_components(types, ref_template=_REF)
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
                           "schema": schema})
        for n, header in route.header_params:
            (schema,), _ = msgspec.json.schema_components([by_name[n].annotation], ref_template=_REF)
            params.append({"name": header, "in": "header", "required": by_name[n].required,
                           "schema": schema})
        op: dict[str, Any] = {
            "operationId": c.spec.qualname.replace(".", "_"),
            "tags": list(route.tags) or [c.spec.service],
            "summary": route.summary or (c.spec.doc or c.spec.name).splitlines()[0],
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
