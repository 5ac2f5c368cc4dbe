"""What ``amoeba check`` reports and every process checks before it starts,
so ``amoeba run`` never gets further than ``check`` would.

After the topology is loaded and bound to the app (unknown keys, placement,
ports; a service class that cannot be described fails while the app is
imported), :func:`preflight` adds what a process would otherwise meet only
while starting:

* a client library missing for a URL of ``resources:`` (``amoeba/drivers.py``,
  the same table the database, the cache and the event bus choose from);
* a value of ``settings:`` its owner refuses (database, observe, events,
  auth; on a public listener the edge's rate limits, CORS, proxies);
* a listener whose routes' codecs or ``/openapi.json`` cannot be built.

Each comes back as a :class:`~amoeba.topology.Problem`: file, line, key, fix.

Exit codes of ``amoeba run`` (with or without ``--process``):

    0   stopped by a signal, after draining
    1   failed for a reason that may pass (a crash, a port in use), or
        ``amoeba run`` gave up on a child that failed to start twice the same way
    2   bad command line: no such process, replica out of range
    78  EX_CONFIG (sysexits.h): the topology, the app or the installation is
        wrong (the problems above, a driver found missing when connecting);
        starting it again cannot help, so a supervisor
        must not restart it (``amoeba run`` gives up at once)
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

from amoeba.drivers import MissingDriver, UnsupportedURL, require
from amoeba.topology.model import Problem, Topology, TopologyError

if TYPE_CHECKING:
    from amoeba.app import App

__all__ = ["EX_CONFIG", "preflight"]

EX_CONFIG = 78


def preflight(topo: Topology, app: App, data_dir: Path) -> list[Problem]:
    """Every problem a process of ``topo`` would meet while starting (empty: none)."""
    drivers = _drivers(topo)
    return drivers + _settings(topo, app, data_dir, drivers_ok=not drivers) + _codecs(topo, app)


def _line(topo: Topology, key: str) -> int | None:
    """The line of ``key``, or of the nearest enclosing key that has one."""
    while key:
        if key in topo.lines:
            return topo.lines[key]
        key = key.rpartition(".")[0]
    return None


def _drivers(topo: Topology) -> list[Problem]:
    problems = []
    for kind, url in topo.resources.items():
        key = f"resources.{kind}"
        try:
            require(kind, url)
        except (MissingDriver, UnsupportedURL) as exc:
            problems.append(Problem(topo.file, _line(topo, key), key, exc.message, exc.fix))
    return problems


def _from_message(topo: Topology, exc: Exception) -> Problem:
    """A settings error raised as ``"settings.x.y: what; fix: how"`` as a Problem."""
    text = str(exc)
    key, _, rest = text.partition(": ")
    if not key.startswith(("settings", "resources")) or " " in key:
        key, rest = "settings", text
    message, _, fix = rest.partition("; fix: ")
    return Problem(topo.file, _line(topo, key), key, message,
                   fix or "see the settings in README.md (Topology files)")


def _settings(topo: Topology, app: App, data_dir: Path, *, drivers_ok: bool) -> list[Problem]:
    from amoeba.auth.tokens import AuthConfig
    from amoeba.data.settings import DatabaseSettings
    from amoeba.events.runtime import EventSettings
    from amoeba.observe.config import ObserveSettings

    extra = dict(topo.settings.extra)
    problems: list[Problem] = []
    for validate in (lambda: DatabaseSettings.from_settings(extra),
                     lambda: ObserveSettings.from_settings(extra),
                     lambda: EventSettings.from_settings(extra),
                     lambda: AuthConfig.from_settings(extra, app.name, data_dir)):
        try:
            validate()
        except ValueError as exc:
            problems.append(_from_message(topo, exc))
    public = any(lst.public for p in topo.processes.values() for lst in p.listeners)
    # The edge's stores need the cache's driver: reported above when missing.
    if public and drivers_ok:
        from amoeba.gateway.policy import EdgePolicy

        try:
            policy = EdgePolicy.from_topology(topo, app.name, data_dir)
        except TopologyError as exc:
            problems.extend(exc.problems)
        except ValueError as exc:
            problems.append(_from_message(topo, exc))
        else:
            asyncio.run(policy.aclose())
    # The edge reads settings.auth again: say each problem once.
    return list({(p.key, p.message): p for p in problems}.values())


def _codecs(topo: Topology, app: App) -> list[Problem]:
    """Build what the listeners serve: every method's codec, and each listener's
    OpenAPI document (what ``/openapi.json`` and ``/docs`` answer)."""
    from amoeba.codec import MethodCodec, codec_for
    from amoeba.gateway.openapi import openapi_document

    problems: list[Problem] = []
    codecs: dict[str, list[MethodCodec]] = {}
    for name, spec in app.specs.items():
        codecs[name] = []
        for method in spec.methods.values():
            try:
                codecs[name].append(codec_for(method))
            except (TypeError, ValueError) as exc:
                problems.append(Problem(topo.file, None, method.qualname,
                                        f"its wire codec cannot be built: {exc}",
                                        "give each parameter a type msgspec can encode "
                                        "(a Struct, a dataclass, built-in types)"))
    if problems:
        return problems
    for proc in topo.processes.values():
        for lst in proc.listeners:
            served = proc.services if lst.routes is None else lst.routes
            routed = [c for s in served for c in codecs.get(s, []) if c.spec.route is not None]
            try:
                openapi_document(app, routed)
            except (TypeError, ValueError) as exc:
                problems.append(Problem(topo.file, lst.line, lst.key,
                                        f"its /openapi.json cannot be built: {exc}",
                                        "give the routes' parameters and results types msgspec can "
                                        "describe (a Struct, a dataclass, built-in types)"))
    return problems
