"""``amoeba status | advise | graph``: the observe subcommands.  ``add_parsers``
adds them to the main parser; each sets ``handler``, which ``amoeba.cli`` calls."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

from amoeba.app import App
from amoeba.observe.snapshot import ClusterSnapshot
from amoeba.topology import Problem, Topology, TopologyError

__all__ = ["add_parsers"]


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    status = sub.add_parser("status", help="processes, replicas, health and rates of a running topology")
    status.add_argument("topology")
    status.add_argument("--interval", type=float, default=1.0,
                        help="seconds between the two readings the rates come from (0: one reading)")
    status.add_argument("--json", action="store_true", help="print the raw data as JSON")
    status.set_defaults(handler=_status)
    advise = sub.add_parser("advise", help="which services to co-locate or split, from measured traffic")
    advise.add_argument("topology")
    advise.add_argument("--interval", type=float, default=5.0,
                        help="seconds of traffic to measure (default 5)")
    advise.add_argument("--json", action="store_true", help="print the advice as JSON")
    advise.set_defaults(handler=_advise)
    graph = sub.add_parser("graph", help="the static dependency graph (Mermaid or DOT)")
    graph.add_argument("target", help="a topology file, or module:attribute of an App")
    graph.add_argument("--format", choices=("mermaid", "dot"), default="mermaid")
    graph.add_argument("-o", "--output", help="write to this file instead of stdout")
    graph.set_defaults(handler=_graph)


def _load(path: str) -> tuple[App, Topology] | None:
    from amoeba.runtime.process import load_bound

    try:
        return load_bound(path)
    except TopologyError as exc:
        print(f"{path}: {len(exc.problems)} problem(s)\n{exc}", file=sys.stderr)
        return None


def _status(args: argparse.Namespace) -> int:
    from amoeba.observe import status
    from amoeba.observe.reader import read_cluster

    loaded = _load(args.topology)
    if loaded is None:
        return 1
    app, topo = loaded

    async def readings() -> tuple[ClusterSnapshot | None, ClusterSnapshot]:
        first = await read_cluster(app, topo)
        if args.interval <= 0:
            return None, first
        await asyncio.sleep(args.interval)
        return first, await read_cluster(app, topo)

    before, after = asyncio.run(readings())
    rows = status.replica_rows(after, before, topo)
    if all(r["pid"] is None for r in rows):
        print(f"amoeba status: no replica answered: is `amoeba run {args.topology}` running?",
              file=sys.stderr)
        for r in rows:
            print(f"  {r['process']}[{r['replica']}] {r['address']}: {r['health']}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"interval": args.interval, "replicas": rows, "cluster": after}, indent=2))
    else:
        print(status.render(rows, f"{topo.name} ({app.name}, {args.topology})"), end="")
    return 0 if all(r["health"] == "ready" for r in rows) else 1


def _advise(args: argparse.Namespace) -> int:
    from amoeba.observe import advise
    from amoeba.observe.reader import answered, fetch_cluster

    loaded = _load(args.topology)
    if loaded is None:
        return 1
    app, topo = loaded
    if args.interval <= 0:
        print("amoeba advise: --interval must be more than 0 seconds", file=sys.stderr)
        return 2

    async def readings() -> tuple[ClusterSnapshot, ClusterSnapshot]:
        first = await fetch_cluster(app, topo)
        await asyncio.sleep(args.interval)
        return first, await fetch_cluster(app, topo)

    before, after = asyncio.run(readings())
    if not answered(after):
        print(f"amoeba advise: no replica answered: is `amoeba run {args.topology}` running?",
              file=sys.stderr)
        return 1
    result = advise.advise(before, after)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(advise.render(result), end="")
    return 0


def _graph(args: argparse.Namespace) -> int:
    from amoeba.observe.graph import static_graph, to_dot, to_mermaid

    app: App
    topo: Topology | None = None
    if ":" in args.target and not os.path.exists(args.target):
        try:
            app = _import_app(args.target)
        except TopologyError as exc:
            print(f"amoeba graph: {exc.problems[0].message}; {exc.problems[0].fix}", file=sys.stderr)
            return 2
    else:
        loaded = _load(args.target)
        if loaded is None:
            return 1
        app, topo = loaded
    graph = static_graph(app, topo)
    text = to_dot(graph) if args.format == "dot" else to_mermaid(graph)
    if args.output:
        Path(args.output).write_text(text)
    else:
        print(text, end="")
    return 0


def _import_app(target: str) -> App:
    """``module:attribute`` of an App, importable from the current directory."""
    from amoeba.runtime.process import load_app
    from amoeba.topology import Settings

    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    where = Topology("graph", target, target, (), {}, {}, Settings())
    try:
        return load_app(where)
    except TopologyError:
        raise
    except Exception as exc:  # an import that fails for its own reasons
        raise TopologyError([Problem(target, None, "app", f"importing {target!r} failed: {exc}",
                                     "check the module path")]) from None
