"""CORS for public listeners, from ``settings.cors``::

    cors:
      origins: ["https://app.example"]   # or ["*"]
      methods: [GET, POST, PUT, PATCH, DELETE]   # default
      headers: [Authorization, Content-Type]     # default: echo what the browser asks for
      max_age: 600
      credentials: false

Absent: no CORS headers at all (browsers then refuse cross-origin calls).
"""

from __future__ import annotations

from typing import Any

from amoeba.gateway.http import Request, Response

__all__ = ["Cors", "CorsConfigError"]

_DEFAULT_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


class CorsConfigError(ValueError):
    """``settings.cors`` is wrong: names the key and the fix."""


def _strings(raw: dict[str, Any], key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    v = raw.get(key)
    if v is None:
        return default
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
        raise CorsConfigError(f"settings.cors.{key}: {v!r} is not a list of strings; "
                              f"fix: {key}: [{', '.join(default) or '...'}]")
    return tuple(v)


class Cors:
    def __init__(self, origins: tuple[str, ...], methods: tuple[str, ...], headers: tuple[str, ...],
                 max_age: int, credentials: bool):
        self.any_origin = "*" in origins
        self.origins = frozenset(origins)
        self.methods = ", ".join(m.upper() for m in methods)
        self.headers = ", ".join(headers)
        self.max_age = str(max_age)
        self.credentials = credentials

    def __repr__(self) -> str:
        return f"<Cors origins={'*' if self.any_origin else sorted(self.origins)}>"

    @classmethod
    def from_settings(cls, raw: Any) -> Cors | None:
        if raw is None:
            return None
        if not isinstance(raw, dict):
            raise CorsConfigError("settings.cors: must be a mapping; fix: cors: {origins: "
                                  "[\"https://app.example\"]}")
        unknown = set(raw) - {"origins", "methods", "headers", "max_age", "credentials"}
        if unknown:
            raise CorsConfigError(f"settings.cors: unknown key(s) {sorted(unknown)}; fix: use "
                                  f"origins, methods, headers, max_age, credentials")
        origins = _strings(raw, "origins", ())
        if not origins:
            raise CorsConfigError("settings.cors.origins: missing; fix: origins: "
                                  "[\"https://app.example\"] (or [\"*\"])")
        max_age = raw.get("max_age", 600)
        if isinstance(max_age, bool) or not isinstance(max_age, int) or max_age < 0:
            raise CorsConfigError(f"settings.cors.max_age: {max_age!r} is not whole seconds; "
                                  f"fix: max_age: 600")
        credentials = raw.get("credentials", False)
        if not isinstance(credentials, bool):
            raise CorsConfigError(f"settings.cors.credentials: {credentials!r} is not true/false")
        if credentials and "*" in origins:
            # Echoing any origin with Allow-Credentials lets every web page make
            # credentialed calls as the visitor: browsers forbid "*" there for that reason.
            raise CorsConfigError("settings.cors: origins [\"*\"] with credentials: true would let "
                                  "any web page call the API with the visitor's cookies; fix: list "
                                  "the origins (origins: [\"https://app.example\"]) or set "
                                  "credentials: false")
        return cls(origins, _strings(raw, "methods", _DEFAULT_METHODS),
                   _strings(raw, "headers", ()), max_age, credentials)

    def allow(self, origin: str) -> str | None:
        """The Access-Control-Allow-Origin value for ``origin``, or None."""
        if origin in self.origins:
            return origin
        return "*" if self.any_origin else None  # "*" never comes with credentials

    def preflight(self, req: Request) -> Response | None:
        """The answer to a CORS preflight, or None when it is not one we allow."""
        origin = req.headers.get("origin")
        if origin is None or "access-control-request-method" not in req.headers:
            return None
        allowed = self.allow(origin)
        if allowed is None:
            return None
        headers = [("access-control-allow-origin", allowed),
                   ("access-control-allow-methods", self.methods),
                   ("access-control-max-age", self.max_age),
                   ("vary", "Origin")]
        asked = self.headers or req.headers.get("access-control-request-headers", "")
        if asked:
            headers.append(("access-control-allow-headers", asked))
        if self.credentials:
            headers.append(("access-control-allow-credentials", "true"))
        return Response(204, b"", headers=headers)

    def decorate(self, req: Request, resp: Response) -> None:
        """Add the CORS headers to an actual response for an allowed origin."""
        origin = req.headers.get("origin")
        if origin is None:
            return
        allowed = self.allow(origin)
        if allowed is None:
            return
        if resp.headers and any(k == "access-control-allow-origin" for k, _ in resp.headers):
            return  # a preflight answer has them already
        extra = [("access-control-allow-origin", allowed), ("vary", "Origin")]
        if self.credentials:
            extra.append(("access-control-allow-credentials", "true"))
        if resp.headers is None:
            resp.headers = extra
        else:
            resp.headers.extend(extra)
