"""amoeba: write a system of services once; run it as a monolith or as
microservices by configuration alone.

Layout (one noun per module):

    service.py   Service base, route decorators, @idempotent
    spec.py      frozen descriptions of services/methods from type hints
    errors.py    the error hierarchy (drawn in its docstring)
    codec.py     wire encoding of arguments, results, errors (msgspec)
    models.py    pydantic models in signatures (validated on arrival; pydantic never imported)
    provide.py   provide(): a mounted ASGI app's handlers reach services (FastAPI Depends)
    context.py   per-call deadline, trace and request id (ContextVars)
    resource.py  the Resource ABC; data/ holds the Database (SQLAlchemy) and
                 SQLite (raw, group commit) resources, and Cache
    drivers.py   URL scheme -> client library, pip extra, events backend (one table)
    app.py       App: the list of an application's services
    topology/    YAML model, loader, validation (no I/O but reading the file)
    transport/   RPC framing, credentials, client pool, server, stubs
    auth/        Principal, access tokens (JWT, key rotation), password hashing
    gateway/     HTTP protocol, router, edge binding, OpenAPI, docs page,
                 edge policy: token check, rate limits, CORS, access log,
                 mounted ASGI apps (asgi.py) and forwarding them across processes
    runtime/     Host (one process), process runner, supervisor
    observe/     metrics, tracing, logs, status, dashboard, advice; the
                 application's own Counter, Gauge, Histogram (instruments.py)
    testing.py   run one test body in every topology
    cli.py       `amoeba run | check | db`
"""

from typing import TYPE_CHECKING, Any

from amoeba.app import App
from amoeba.auth import Principal, Tokens
from amoeba.data import SQLite
from amoeba.data.cache import Cache
from amoeba.errors import (
    BadRequest,
    Conflict,
    DeadlineExceeded,
    Forbidden,
    Internal,
    Invalid,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ServiceError,
    TooManyRequests,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
)
from amoeba.observe.instruments import Counter, Gauge, Histogram
from amoeba.provide import provide
from amoeba.resource import Resource, ResourceContext
from amoeba.runtime.info import RuntimeInfo
from amoeba.service import Body, Header, Mount, Service, delete, get, idempotent, patch, post, put

__all__ = [
    "App",
    "BadRequest",
    "Body",
    "Cache",
    "Conflict",
    "Counter",
    "Database",
    "DeadlineExceeded",
    "Forbidden",
    "Gauge",
    "Header",
    "Histogram",
    "Internal",
    "Invalid",
    "MethodNotAllowed",
    "Mount",
    "NotFound",
    "PayloadTooLarge",
    "Principal",
    "Resource",
    "ResourceContext",
    "RuntimeInfo",
    "SQLite",
    "Service",
    "ServiceError",
    "Tokens",
    "TooManyRequests",
    "Unauthorized",
    "Unavailable",
    "UnsupportedMediaType",
    "delete",
    "get",
    "idempotent",
    "patch",
    "post",
    "provide",
    "put",
]

if TYPE_CHECKING:
    from amoeba.data.database import Database


def __getattr__(name: str) -> Any:
    if name == "Database":  # imported on first use: see amoeba.data
        from amoeba.data.database import Database

        return Database
    raise AttributeError(f"module 'amoeba' has no attribute {name!r}")
