"""``App``: the list of an application's services.  The topology says where
they run; nothing else connects them."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from dataclasses import replace

from amoeba.service import Service
from amoeba.spec import ServiceSpec, implements, is_protocol, protocol_members, spec_of

__all__ = ["App"]


class App:
    def __init__(self, name: str, services: Iterable[type[Service]], *, title: str | None = None,
                 version: str = "0.1.0", live_paths: Iterable[str] = (),
                 ready_paths: Iterable[str] = (), bind: Mapping[type, type[Service]] | None = None):
        """``live_paths`` / ``ready_paths``: extra paths answering like
        ``/healthz`` / ``/readyz`` (for clients that expect their own names).
        ``bind``: ``{Protocol: ServiceClass}`` for a ``typing.Protocol`` that
        several services implement (one that only one implements binds itself)."""
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
        self.bindings: dict[type, str] = {}
        for proto, cls in (bind or {}).items():
            if not is_protocol(proto):
                raise ValueError(f"App {name!r}: bind={{{proto!r}: ...}}: the key must be a "
                                 f"typing.Protocol class")
            if cls.name not in self.specs or not implements(cls, proto):
                raise ValueError(f"App {name!r}: bind={{{proto.__qualname__}: "
                                 f"{cls.__qualname__}}}: {cls.__qualname__} is not a service of the "
                                 f"app implementing {proto.__qualname__}")
            self.bindings[proto] = cls.name
        # The app's own view of each spec: Protocol-typed attributes become
        # dependencies on the service bound to them, once, here.
        for sname, spec in list(self.specs.items()):
            if spec.protocols:
                bound = {attr: self._bind(proto, f"{spec.cls.__qualname__}.{attr}")
                         for attr, proto in spec.protocols.items()}
                self.specs[sname] = replace(spec, dependencies={**spec.dependencies, **bound})
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

    def _bind(self, proto: type, where: str) -> str:
        """The one service implementing ``proto`` (or the one ``bind=`` names)."""
        if proto in self.bindings:
            return self.bindings[proto]
        found = [s for s in self.specs.values() if implements(s.cls, proto)]
        if len(found) == 1:
            self.bindings[proto] = found[0].name
            return found[0].name
        wants = ", ".join(sorted(protocol_members(proto)))
        if not found:
            raise ValueError(f"App {self.name!r}: {where} is a {proto.__qualname__}, which no "
                             f"service of the app implements (it needs: {wants}); add the "
                             f"implementing service to App(..., services=[...])")
        names = ", ".join(s.cls.__qualname__ for s in found)
        raise ValueError(f"App {self.name!r}: {where} is a {proto.__qualname__}, which several "
                         f"services implement: {names}; choose one with "
                         f"App(..., bind={{{proto.__qualname__}: {found[0].cls.__qualname__}}})")

    def service_for(self, target: object) -> str:
        """The name of the service ``target`` stands for: a Service class, or a
        ``typing.Protocol`` bound to the one service implementing it."""
        if isinstance(target, type) and issubclass(target, Service):
            name = target.name
            if name not in self.specs or self.specs[name].cls is not target:
                raise LookupError(f"{target.__qualname__} is not a service of App {self.name!r}; "
                                  f"add it to App(..., services=[...])")
            return name
        if is_protocol(target):
            assert isinstance(target, type)
            return self._bind(target, f"provide({target.__qualname__})")
        raise TypeError(f"{target!r} is neither a Service class nor a typing.Protocol")
