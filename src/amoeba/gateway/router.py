"""Match a method and path to a route.  Static paths are one dict lookup;
paths with ``{params}`` are tried in declaration order.  HEAD is served
wherever GET is (RFC 9110 9.3.2; the connection leaves the body out)."""

from __future__ import annotations

import re
from typing import Generic, TypeVar

from amoeba.errors import MethodNotAllowed, NotFound

__all__ = ["Router"]

T = TypeVar("T")
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class Router(Generic[T]):
    def __init__(self) -> None:
        self.static: dict[tuple[str, str], T] = {}
        self.static_paths: set[str] = set()
        self.dynamic: list[tuple[str, re.Pattern[str], T]] = []

    def __repr__(self) -> str:
        return f"<Router {len(self.static)} static, {len(self.dynamic)} dynamic routes>"

    def add(self, method: str, path: str, target: T) -> None:
        if _PARAM.search(path):
            pattern = "^" + _PARAM.sub(r"(?P<\1>[^/]+)", re.escape(path).replace(r"\{", "{")
                                       .replace(r"\}", "}")) + "$"
            self.dynamic.append((method, re.compile(pattern), target))
        else:
            self.static[(method, path)] = target
            self.static_paths.add(path)

    def match(self, method: str, path: str) -> tuple[T, dict[str, str]]:
        hit = self.static.get((method, path))
        if hit is not None:
            return hit, {}
        if method == "HEAD":
            hit = self.static.get(("GET", path))
            if hit is not None:
                return hit, {}
        allowed = path in self.static_paths
        for m, rx, target in self.dynamic:
            found = rx.match(path)
            if found:
                if m == method or (method == "HEAD" and m == "GET"):
                    return target, found.groupdict()
                allowed = True
        if allowed:
            raise MethodNotAllowed(f"{method} is not allowed on {path}")
        raise NotFound(f"no route for {method} {path}")

    def allowed(self, path: str) -> list[str]:
        """The methods ``path`` answers (the ``Allow`` header of a 405)."""
        methods = {m for m, p in self.static if p == path}
        methods.update(m for m, rx, _ in self.dynamic if rx.match(path))
        if "GET" in methods:
            methods.add("HEAD")
        return sorted(methods)
