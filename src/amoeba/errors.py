"""The error hierarchy.

Every error a service raises on purpose derives from :class:`ServiceError`.
It carries an HTTP status and crosses process boundaries by *name*: the
callee sends ``{"type": "SoldOut", "message": ...}`` and the caller raises
``SoldOut`` again, so ``except SoldOut`` works in every topology.

::

    ServiceError (500)
    ├── BadRequest (400)       malformed request (bad JSON, bad HTTP)
    ├── Invalid (422)          bad arguments; ``details`` lists field paths
    ├── Unauthorized (401)
    ├── Forbidden (403)
    ├── NotFound (404)
    ├── MethodNotAllowed (405)
    ├── Conflict (409)         e.g. sold out, duplicate
    ├── PayloadTooLarge (413)
    ├── UnsupportedMediaType (415)
    ├── TooManyRequests (429)
    ├── Internal (500)         what an unexpected exception becomes at the edge
    ├── Unavailable (503)      a callee cannot be reached
    └── DeadlineExceeded (504)

The documented error body (HTTP and RPC alike)::

    {"error": {"type": "SoldOut", "status": 409, "message": "...",
               "request_id": "...", "details": [{"path": "$.qty", "reason": "..."}]}}

``details`` appears only when there are some; ``retry_after`` (seconds) only
when the error was raised with one, and the edge then also answers a
``Retry-After`` header.  Any exception that is not a
``ServiceError`` becomes ``Internal`` with the message ``"internal error"``:
the traceback is logged in the process where it happened and never sent.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "BadRequest",
    "Conflict",
    "DeadlineExceeded",
    "Forbidden",
    "Internal",
    "Invalid",
    "MethodNotAllowed",
    "NotFound",
    "PayloadTooLarge",
    "ServiceError",
    "TooManyRequests",
    "Unauthorized",
    "Unavailable",
    "UnsupportedMediaType",
    "error_from_wire",
]

# Registry of error classes by name, filled by ``ServiceError.__init_subclass__``.
# A name defined twice (two apps in one test run, a reloaded module) keeps the
# latest class: the wire only carries the name.
_REGISTRY: dict[str, type[ServiceError]] = {}


class ServiceError(Exception):
    """Base of every error that may cross the wire.  Subclass to add domain errors."""

    status: ClassVar[int] = 500

    def __init__(self, message: str | None = None, *, details: list[dict[str, str]] | None = None,
                 retry_after: float | None = None):
        if message is None:
            message = (type(self).__doc__ or type(self).__name__).strip().splitlines()[0]
        super().__init__(message)
        self.message = message
        self.details = details or []
        # Seconds the client should wait before trying again: the edge answers
        # it as a ``Retry-After`` header (whole seconds, at least 1).
        self.retry_after = retry_after

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _REGISTRY[cls.__name__] = cls

    def to_wire(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": type(self).__name__,
            "status": self.status,
            "message": self.message,
        }
        if self.details:
            body["details"] = self.details
        if self.retry_after is not None:
            body["retry_after"] = self.retry_after
        return body

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class BadRequest(ServiceError):
    """The request is malformed."""

    status = 400


class Invalid(ServiceError):
    """The request is invalid."""

    status = 422


class Unauthorized(ServiceError):
    """Authentication is required."""

    status = 401


class Forbidden(ServiceError):
    """Not allowed."""

    status = 403


class NotFound(ServiceError):
    """Not found."""

    status = 404


class MethodNotAllowed(ServiceError):
    """Method not allowed."""

    status = 405


class Conflict(ServiceError):
    """The request conflicts with the current state."""

    status = 409


class PayloadTooLarge(ServiceError):
    """The request body is too large."""

    status = 413


class UnsupportedMediaType(ServiceError):
    """The request body must be JSON (Content-Type: application/json)."""

    status = 415


class TooManyRequests(ServiceError):
    """Too many requests."""

    status = 429


class Internal(ServiceError):
    """internal error"""

    status = 500


class Unavailable(ServiceError):
    """A service cannot be reached."""

    status = 503


class DeadlineExceeded(ServiceError):
    """The call's deadline passed."""

    status = 504


_REGISTRY["ServiceError"] = ServiceError


def error_from_wire(body: dict[str, Any]) -> ServiceError:
    """Rebuild the error a callee sent.  Unknown names keep their status via a
    generic class of the nearest known status, so nothing is lost."""
    name = str(body.get("type", "Internal"))
    message = str(body.get("message", ""))
    details = body.get("details") or None
    cls = _REGISTRY.get(name)
    if cls is None:
        status = int(body.get("status", 500))
        cls = next((c for c in _REGISTRY.values() if c.status == status), Internal)
    retry_after = body.get("retry_after")
    err = cls.__new__(cls)
    ServiceError.__init__(err, message, details=details,
                          retry_after=float(retry_after) if isinstance(retry_after, int | float) else None)
    return err
