"""Validate a topology against an app before anything starts.

``bind(topology, app)`` returns the topology with ``"*"`` expanded, or raises
``TopologyError`` listing every problem with its file, line, key and fix:
unknown keys of ``settings:`` and ``resources:`` (``schema.py``), placement,
ports, privacy, routes and dependency cycles.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING

from amoeba.topology.loader import _SETTING_KEYS
from amoeba.topology.model import Problem, Process, Topology, TopologyError
from amoeba.topology.schema import APP_SETTINGS, RESOURCES, SETTINGS, did_you_mean, unknown_keys

if TYPE_CHECKING:
    from amoeba.app import App

__all__ = ["bind", "find_cycle"]


def find_cycle(edges: dict[str, list[str]]) -> list[str] | None:
    """A dependency cycle as ``[a, b, a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in edges.get(node, []):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def _close(word: str, choices: Iterable[str]) -> str:
    close = did_you_mean(word, choices)
    return f"; did you mean {close!r}?" if close else ""


def bind(topo: Topology, app: App) -> Topology:
    problems: list[Problem] = []
    known = app.specs

    def add(key: str, message: str, fix: str) -> None:
        problems.append(Problem(topo.file, topo.lines.get(key), key, message, fix))

    # Keys of settings: and resources:, at every level; the app's own resource
    # kinds may be configured under both.
    kinds = {r.kind for spec in known.values() for r in spec.resources.values() if r.kind}
    settings_schema = {**dict.fromkeys(_SETTING_KEYS), **SETTINGS, APP_SETTINGS: None,
                       **dict.fromkeys(kinds - SETTINGS.keys())}
    for key, message, fix in unknown_keys(topo.settings.extra, settings_schema, "settings"):
        add(key, message, fix)
    resources_schema = dict.fromkeys({*RESOURCES, *kinds})
    for key, message, fix in unknown_keys(topo.resources, resources_schema, "resources"):
        add(key, message, fix)

    names = ", ".join(sorted(known))
    placed: dict[str, str] = {}
    processes: dict[str, Process] = {}
    star = [p.name for p in topo.processes.values() if "*" in p.services]
    if len(star) > 1:
        add(f"processes.{star[1]}.services", f"'*' is used by {' and '.join(star)}",
            "use '*' in one process only; list the services elsewhere")

    for proc in topo.processes.values():
        key = f"processes.{proc.name}.services"
        if "*" in proc.services:
            if len(proc.services) > 1:
                add(key, "'*' must stand alone", "services: '*'")
            elsewhere = {s for p in topo.processes.values() if p is not proc for s in p.services}
            services = tuple(s for s in known if s not in elsewhere)
        else:
            services = proc.services
        for i, s in enumerate(services):
            if s not in known:
                add(f"{key}[{i}]" if "*" not in proc.services else key,
                    f"unknown service {s!r}{_close(s, known)}", f"the app's services are: {names}")
            elif s in placed:
                add(f"{key}[{i}]", f"service {s!r} is placed twice (also in process {placed[s]!r})",
                    f"remove {s!r} from one of the two processes")
            else:
                placed[s] = proc.name
        processes[proc.name] = replace(proc, services=services)

    for s in known:
        if s not in placed:
            add("processes", f"service {s!r} is not placed in any process",
                f"add {s!r} to a process's services (or use services: '*')")

    # Ports: replicas on one host take consecutive ports from the listener's.
    seen: dict[int, str] = {}
    for proc in processes.values():
        for lst in proc.listeners:
            for rep in range(proc.replicas):
                port = lst.port_for(rep)
                if port == 0:
                    continue
                who = f"{lst.key} (replica {rep})" if proc.replicas > 1 else lst.key
                if port in seen:
                    add(f"{lst.key}.port", f"port {port} is used twice: {seen[port]} and {who}",
                        "give each listener its own port (replica N listens on port + N)")
                else:
                    seen[port] = who

    # A private process is reached only with the internal credential.  Its
    # routes may still be published, deliberately, by naming its services in
    # the ``routes:`` of a public listener elsewhere (a gateway): the edge
    # there calls them like any caller, with the credential.
    for proc in processes.values():
        for lst in proc.listeners:
            if proc.private and lst.public:
                add(f"{lst.key}.public",
                    f"process {proc.name!r} is private but this listener is public",
                    "remove `public: true` (a private process listens privately), or publish its "
                    "routes through a public listener of another process: routes: [...]")
    # Routes served by each listener must exist and not collide.
    for proc in processes.values():
        for lst in proc.listeners:
            served = proc.services if lst.routes is None else lst.routes
            owner: dict[tuple[str, str], str] = {}
            for s in served:
                if s not in known:
                    if lst.routes is not None:  # implicit routes: already reported above
                        add(f"{lst.key}.routes", f"unknown service {s!r}{_close(s, known)}",
                            f"the app's services are: {names}")
                    continue
                for m in known[s].methods.values():
                    if m.route is None:
                        continue
                    rk = (m.route.method, m.route.path)
                    if rk in owner and owner[rk] != m.qualname:
                        add(f"{lst.key}.routes",
                            f"{m.route.method} {m.route.path} is served by both {owner[rk]} and "
                            f"{m.qualname} on this listener",
                            "serve the two services on different listeners, or change one path")
                    owner[rk] = m.qualname
            mounted: dict[str, str] = {}  # a mounted ASGI app's prefix -> its service
            for s in served:
                for mount in (known[s].mounts if s in known else ()):
                    for prefix in mount.prefixes:
                        if mounted.setdefault(prefix, s) != s:
                            add(f"{lst.key}.routes",
                                f"path prefix {prefix} is mounted by both services "
                                f"{mounted[prefix]!r} and {s!r} on this listener",
                                "serve the two services on different listeners, or change one "
                                "Mount's prefix")

    # The in-process bus (no resources.events) delivers only inside the process
    # that published: an event whose handler runs elsewhere would be lost.  An
    # explicit ``events: memory://`` says so knowingly (the test harness's split mode).
    if not topo.resources.get("events"):
        handlers = {(ev.event_name, s) for s, spec in known.items() for ev in spec.handlers.values()}
        for pub, spec in sorted(known.items()):
            for ev in spec.publishes:
                for name, sub in sorted(handlers):
                    if name == ev.event_name and placed.get(sub) != placed.get(pub):
                        add("resources.events" if "events" in topo.resources else "resources",
                            f"event {name!r} is published by {pub} (process {placed.get(pub)!r}) and "
                            f"handled by {sub} (process {placed.get(sub)!r}), but without a broker "
                            f"events never leave the process that published them",
                            "set resources.events to a broker (nats://host:4222, redis://host:6379/0 "
                            "or kafka://host:9092), or place the two services in one process "
                            "(events: memory:// keeps each process's events to itself, knowingly)")
    cycle = find_cycle({s: list(spec.dependencies.values()) for s, spec in known.items()})
    if cycle:
        add("processes", f"dependency cycle {' -> '.join(cycle)}: no start order exists",
            "break the cycle: move the shared part into its own service, or publish an event "
            "instead of calling back")
    if problems:
        raise TopologyError(problems)
    return topo.with_processes(processes)
