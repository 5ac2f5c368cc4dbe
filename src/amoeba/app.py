"""``App``: the list of an application's services.  The topology says where
they run; nothing else connects them."""

from __future__ import annotations

import sys
from collections.abc import Iterable

from amoeba.service import Service
from amoeba.spec import ServiceSpec, spec_of

__all__ = ["App"]


class App:
    def __init__(self, name: str, services: Iterable[type[Service]], *, title: str | None = None,
                 version: str = "0.1.0", live_paths: Iterable[str] = (),
                 ready_paths: Iterable[str] = ()):
        """``live_paths`` / ``ready_paths``: extra paths answering like
        ``/healthz`` / ``/readyz`` (for clients that expect their own names)."""
        self.name = name
        self.title = title or name
        self.version = version
        self.live_paths = tuple(live_paths)
        self.ready_paths = tuple(ready_paths)
        self.specs: dict[str, ServiceSpec] = {}
        for cls in services:
            spec = spec_of(cls)
            if spec.name in self.specs:
                raise ValueError(f"App {name!r}: two services are named {spec.name!r} "
                                 f"({self.specs[spec.name].cls.__qualname__} and "
                                 f"{cls.__qualname__}); set `name = ...` on one of them")
            self.specs[spec.name] = spec
        for spec in self.specs.values():
            for attr, dep in spec.dependencies.items():
                if dep not in self.specs:
                    raise ValueError(f"App {name!r}: {spec.cls.__qualname__}.{attr} depends on "
                                     f"service {dep!r}, which is not in the app; add it to "
                                     f"App(..., services=[...])")
        # Where the app was defined, so child processes can import it again.
        self.module: str = sys._getframe(1).f_globals.get("__name__", "__main__")

    def __repr__(self) -> str:
        return f"<App {self.name!r} services={list(self.specs)}>"

    def service_for(self, target: object) -> str:
        """The name of the service ``target`` (a Service class) stands for."""
        if isinstance(target, type) and issubclass(target, Service):
            name = target.name
            if name not in self.specs or self.specs[name].cls is not target:
                raise LookupError(f"{target.__qualname__} is not a service of App {self.name!r}; "
                                  f"add it to App(..., services=[...])")
            return name
        raise TypeError(f"{target!r} is not a Service class")
