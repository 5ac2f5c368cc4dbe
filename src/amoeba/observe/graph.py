"""The static dependency graph of an app, from its annotations alone: who
calls whom (a service attribute annotated with another service), who
publishes which event and who handles it; with a topology, which process
hosts each service, and the HTTP edge of each process with a public listener
(node ``edge:<process>``, as in ``amoeba advise``) with an edge to every
service whose routes it serves, wherever that service runs.  Rendered as
Mermaid or Graphviz DOT, deterministically (sorted), so the output can be
committed and diffed.

The methods on a call edge are read from the caller's source
(``self.<dependency>.<method>(``); when the source cannot be read the edge
has no label.  Nothing is imported or started beyond the app itself.
"""

from __future__ import annotations

import ast
import inspect
import re
import textwrap
from dataclasses import dataclass

from amoeba.app import App
from amoeba.observe.advise import edge_node
from amoeba.spec import ServiceSpec
from amoeba.topology import Process, Topology

__all__ = ["Graph", "static_graph", "to_dot", "to_mermaid"]


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    kind: str  # "call" | "event" | "http"
    labels: tuple[str, ...]  # methods called (routed, for "http"), or event names


@dataclass(frozen=True)
class Group:
    """A process of the topology and the services it hosts."""

    name: str
    services: tuple[str, ...]
    private: bool
    replicas: int
    edge: str | None = None  # its HTTP edge node when it has a public listener


@dataclass(frozen=True)
class Graph:
    app: str
    topology: str | None
    services: tuple[str, ...]
    edges: tuple[Edge, ...]
    groups: tuple[Group, ...]  # empty without a topology

    def __repr__(self) -> str:
        return f"<Graph {self.app!r} services={len(self.services)} edges={len(self.edges)}>"


def called_methods(spec: ServiceSpec, attr: str, callee: ServiceSpec) -> tuple[str, ...]:
    """The methods of ``callee`` that ``spec``'s source calls through
    ``self.<attr>``: an empty tuple when the source is unavailable."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(spec.cls)))
    except (OSError, TypeError, SyntaxError):
        return ()
    found = set()
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                and node.value.attr == attr and isinstance(node.value.value, ast.Name)
                and node.value.value.id == "self" and node.attr in callee.methods):
            found.add(node.attr)
    return tuple(sorted(found))


def static_graph(app: App, topology: Topology | None = None) -> Graph:
    edges: list[Edge] = []
    for name in sorted(app.specs):
        spec = app.specs[name]
        by_target: dict[str, set[str]] = {}
        for attr, dep in spec.dependencies.items():
            by_target.setdefault(dep, set()).update(called_methods(spec, attr, app.specs[dep]))
        edges += [Edge(name, dep, "call", tuple(sorted(m))) for dep, m in sorted(by_target.items())]
    handlers: dict[str, set[str]] = {}  # event name -> services handling it
    for name, spec in app.specs.items():
        for ev in spec.handlers.values():
            handlers.setdefault(ev.event_name, set()).add(name)
    event_edges: dict[tuple[str, str], set[str]] = {}
    for name, spec in app.specs.items():
        for ev in spec.publishes:
            for target in handlers.get(ev.event_name, ()):
                event_edges.setdefault((name, target), set()).add(ev.event_name)
    edges += [Edge(s, t, "event", tuple(sorted(evs))) for (s, t), evs in sorted(event_edges.items())]
    groups: tuple[Group, ...] = ()
    if topology is not None:
        groups = tuple(_group(app, p, edges) for p in topology.processes.values())
    return Graph(app.name, topology.name if topology else None, tuple(sorted(app.specs)),
                 tuple(edges), groups)


def _group(app: App, process: Process, edges: list[Edge]) -> Group:
    """``process`` as a group; appends its edge's routes to ``edges``."""
    routed: dict[str, tuple[str, ...]] = {}
    for lst in process.listeners:
        if not lst.public:
            continue
        for svc in (process.services if lst.routes is None else lst.routes):
            spec = app.specs.get(svc)
            methods = tuple(sorted(m for m, ms in spec.methods.items() if ms.route)) if spec else ()
            if methods:
                routed[svc] = methods
    node = edge_node(process.name) if routed else None
    if node is not None:
        edges += [Edge(node, svc, "http", methods) for svc, methods in sorted(routed.items())]
    return Group(process.name, tuple(s for s in app.specs if s in process.services), process.private,
                 process.replicas, node)


def _mermaid_id(name: str, prefix: str = "") -> str:
    return prefix + re.sub(r"[^A-Za-z0-9_]", "_", name)


def _group_title(g: Group) -> str:
    extra = [f"x{g.replicas}"] if g.replicas > 1 else []
    if g.private:
        extra.append("private")
    return g.name + (f" ({', '.join(extra)})" if extra else "")


def to_mermaid(graph: Graph) -> str:
    """A Mermaid ``flowchart``: processes as subgraphs, calls as solid arrows
    labelled with the methods, events as dotted arrows labelled with their name,
    a process's HTTP edge as a stadium node with thick arrows to the services it routes to."""
    lines = ["flowchart LR"]
    placed: set[str] = set()
    for g in graph.groups:
        lines.append(f'  subgraph {_mermaid_id(g.name, "process_")}["{_group_title(g)}"]')
        if g.edge is not None:
            lines.append(f'    {_mermaid_id(g.edge)}(["HTTP edge"])')
        lines += [f'    {_mermaid_id(s)}["{s}"]' for s in g.services]
        lines.append("  end")
        placed.update(g.services)
    lines += [f'  {_mermaid_id(s)}["{s}"]' for s in graph.services if s not in placed]
    for e in graph.edges:
        arrow = {"call": "-->", "event": "-.->", "http": "==>"}[e.kind]
        label = f'|"{", ".join(e.labels)}"|' if e.labels else ""
        lines.append(f"  {_mermaid_id(e.source)} {arrow}{label} {_mermaid_id(e.target)}")
    return "\n".join(lines) + "\n"


def _dot_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_dot(graph: Graph) -> str:
    """A Graphviz digraph: processes as ``cluster_`` subgraphs (private ones
    dashed), calls as solid edges, events as dashed edges, a process's HTTP
    edge as an oval with bold edges to the services it routes to."""
    lines = [f"digraph {_dot_quote(graph.app)} {{", "  rankdir=LR;",
             '  node [shape=box, style=rounded, fontname="Helvetica"];',
             '  edge [fontname="Helvetica", fontsize=10];']
    placed: set[str] = set()
    for g in graph.groups:
        lines.append(f"  subgraph {_dot_quote('cluster_' + g.name)} {{")
        lines.append(f"    label={_dot_quote(_group_title(g))};")
        if g.private:
            lines.append("    style=dashed;")
        if g.edge is not None:
            lines.append(f'    {_dot_quote(g.edge)} [label="HTTP edge", shape=oval];')
        lines += [f"    {_dot_quote(s)};" for s in g.services]
        lines.append("  }")
        placed.update(g.services)
    lines += [f"  {_dot_quote(s)};" for s in graph.services if s not in placed]
    for e in graph.edges:
        attrs = {"call": [], "event": ["style=dashed"], "http": ["style=bold"]}[e.kind]
        if e.labels:
            attrs.append(f"label={_dot_quote(', '.join(e.labels))}")
        suffix = f" [{', '.join(attrs)}]" if attrs else ""
        lines.append(f"  {_dot_quote(e.source)} -> {_dot_quote(e.target)}{suffix};")
    lines.append("}")
    return "\n".join(lines) + "\n"
