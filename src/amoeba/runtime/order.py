"""The order ``amoeba run`` starts a topology's processes in (pure data, no I/O).

A process *calls* another when one of its services depends on a service
placed there (a dependency annotation), or when one of its listeners serves
the routes of a service placed there (``routes:`` of a gateway).  A caller
starts once every process it calls answers ``/readyz``, so its first
requests find their callees listening and its RPC pool ejects nobody.

Processes that call each other in a cycle (possible across processes even
though services never depend on each other in a cycle) cannot wait for one
another: they start together, once the processes outside the cycle that any
of them calls are ready.  That condensation has no cycle, so some order
always exists.
"""

from __future__ import annotations

from amoeba.app import App
from amoeba.topology.model import Topology

__all__ = ["callees", "start_after", "start_waves"]


def callees(app: App, topo: Topology) -> dict[str, frozenset[str]]:
    """Each process -> the other processes it calls."""
    out: dict[str, frozenset[str]] = {}
    for proc in topo.processes.values():
        services: set[str] = set()
        for svc in proc.services:
            services.update(app.specs[svc].dependencies.values())
        for lst in proc.listeners:
            services.update(lst.routes or ())
        targets = {where.name for s in services
                   if (where := topo.process_of(s)) is not None and where.name != proc.name}
        out[proc.name] = frozenset(targets)
    return out


def _reach(graph: dict[str, frozenset[str]]) -> dict[str, frozenset[str]]:
    reach: dict[str, frozenset[str]] = {}
    for start in graph:
        seen: set[str] = set()
        todo = list(graph[start])
        while todo:
            p = todo.pop()
            if p not in seen:
                seen.add(p)
                todo.extend(graph.get(p, ()))
        reach[start] = frozenset(seen)
    return reach


def start_after(graph: dict[str, frozenset[str]]) -> dict[str, frozenset[str]]:
    """Each process -> the processes that must be ready before it starts: those
    its cycle calls (a process alone is a cycle of one), minus the cycle itself,
    which starts together."""
    reach = _reach(graph)
    out: dict[str, frozenset[str]] = {}
    for p in graph:
        cycle = {p} | {q for q in reach[p] if p in reach.get(q, frozenset())}
        called: set[str] = set()
        for m in cycle:
            called |= graph.get(m, frozenset())
        out[p] = frozenset(called - cycle)
    return out


def start_waves(after: dict[str, frozenset[str]]) -> list[list[str]]:
    """The processes grouped by how many readiness waits come before them
    (for the supervisor's first line; each process really starts as soon as
    its own callees are ready, not when a whole wave is)."""
    depth: dict[str, int] = {}

    def visit(p: str) -> int:
        if p not in depth:
            depth[p] = 0  # in a wait chain, never in a cycle: start_after cut those
            depth[p] = 1 + max((visit(q) for q in after[p]), default=-1)
        return depth[p]

    for p in after:
        visit(p)
    waves: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for p in after:  # topology order within a wave
        waves[depth[p]].append(p)
    return waves
