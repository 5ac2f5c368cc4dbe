"""The dashboard's graph for every example topology, drawn in Chromium from
synthetic traffic on every declared call, routed request and event: no label
overlaps a node, a box or another label, and no edge crosses a box (or a node)
that is not its caller's or its callee's.  Measured on the drawn elements."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from snapshots import call, dashboard_server, snapshot
from test_dashboard import browser, wait_for  # noqa: F401  (the module's Chromium fixture)

from amoeba.observe.cluster import service_graph
from amoeba.observe.graph import static_graph
from amoeba.runtime.process import load_bound

ROOT = Path(__file__).resolve().parent.parent
TOPOLOGIES = sorted((ROOT / "examples").glob("*/topologies/*.yaml"))


def synthetic(path: Path, t0: float) -> Any:
    """A cluster snapshot source for ``path``: every declared call, routed
    request and event flowing, counts growing with time."""
    app, topo = load_bound(path)
    services = service_graph(app, topo)
    routed = [e for e in static_graph(app, topo).edges if e.kind == "http"]

    def at(now: float) -> dict[str, Any]:
        n = int((now - t0) * 50) + 1
        processes = []
        for proc in topo.processes.values():
            calls = [call(s, d, "m", "local" if services[d]["process"] == proc.name else "remote", n, 0.001)
                     for s in proc.services for d in services[s]["depends"]]
            calls += [call("http", e.target, e.labels[0],
                           "local" if services[e.target]["process"] == proc.name else "remote", n, 0.002)
                      for e in routed if e.source == f"edge:{proc.name}"]
            consumers = [{"service": s, "event": ev, "delivered": n, "acked": n, "retried": 0,
                          "dead_lettered": 0, "duplicates": 0, "lag": 0}
                         for s in proc.services for ev in services[s]["handles"]]
            events = {"published": {}, "consumers": consumers, "outbox": {}}
            instances = [snapshot(proc.name, list(proc.services), now=now, replica=i, pid=100 + i,
                                  calls=calls, events=events, public=not proc.private)
                         for i in range(proc.replicas)]
            processes.append({"name": proc.name, "services": list(proc.services),
                              "replicas": proc.replicas, "private": proc.private,
                              "instances": instances})
        return {"app": app.name, "topology": topo.name, "now": now, "services": services,
                "processes": processes}

    owner = {s: node["process"] for s, node in services.items()}
    owner.update({e.source: e.source.removeprefix("edge:") for e in routed})
    return at, owner


@pytest.fixture
def page(request: pytest.FixtureRequest) -> Iterator[tuple[str, dict[str, str]]]:
    at, owner = synthetic(request.param, time.time() - 5)
    with dashboard_server(lambda: at(time.time())) as url:
        yield url, owner


MEASURE = """
const box = (e) => { const b = e.getBBox(); return [b.x, b.y, b.x + b.width, b.y + b.height]; };
return {
  nodes: [...document.querySelectorAll('g[data-service]')]
    .map(g => [g.dataset.service, box(g.querySelector('rect'))]),
  boxes: [...document.querySelectorAll('g[data-process]')]
    .map(g => [g.dataset.process, box(g.querySelector('rect')), box(g.querySelector('text'))]),
  labels: [...document.querySelectorAll('text.edge-label')].map(t => [t.dataset.label, box(t)]),
  edges: [...document.querySelectorAll('g[data-edge]')].map(g => {
    const p = g.querySelector('path'), n = p.getTotalLength(), pts = [];
    for (let d = 0; d <= n; d += 2) { const q = p.getPointAtLength(d); pts.push([q.x, q.y]); }
    return [g.dataset.from, g.dataset.to, g.dataset.rate, pts];
  }),
};
"""


def overlap(a: list[float], b: list[float]) -> bool:
    return min(a[2], b[2]) - max(a[0], b[0]) > 0.5 and min(a[3], b[3]) - max(a[1], b[1]) > 0.5


def inside(p: list[float], r: list[float], margin: float = 1.0) -> bool:
    return r[0] + margin < p[0] < r[2] - margin and r[1] + margin < p[1] < r[3] - margin


@pytest.mark.parametrize("page", TOPOLOGIES, indirect=True,
                         ids=[f"{p.parent.parent.name}-{p.stem}" for p in TOPOLOGIES])
def test_the_graph_draws_nothing_over_anything(browser, page, tmp_path):  # noqa: F811
    url, owner = page
    browser.get(url)
    wait_for(browser, "document.querySelectorAll('g[data-edge]').length > 0 && "
                      "[...document.querySelectorAll('g[data-edge]')].some(g => g.dataset.rate > 0)")
    drawn = browser.execute_script(MEASURE)
    nodes, boxes, labels, edges = (drawn[k] for k in ("nodes", "boxes", "labels", "edges"))
    assert labels and len(labels) == len(edges)
    problems = []
    for i, (a, ra) in enumerate(labels):
        problems += [f"label {a} overlaps label {b}" for b, rb in labels[i + 1:] if overlap(ra, rb)]
        problems += [f"label {a} overlaps node {n}" for n, rn in nodes if overlap(ra, rn)]
        problems += [f"label {a} overlaps process {p}" for p, rp, _ in boxes if overlap(ra, rp)]
    for i, (a, ra) in enumerate(nodes):
        problems += [f"node {a} overlaps node {b}" for b, rb in nodes[i + 1:] if overlap(ra, rb)]
    for frm, to, _, points in edges:
        mine = {owner[frm], owner[to]}
        for proc, rect, _ in boxes:
            if proc not in mine and any(inside(p, rect) for p in points):
                problems.append(f"edge {frm}->{to} crosses process {proc}")
        for node, rect in nodes:
            if node not in (frm, to) and any(inside(p, rect) for p in points):
                problems.append(f"edge {frm}->{to} crosses node {node}")
    shot = tmp_path / f"{Path(url).name or 'dashboard'}.png"
    browser.save_screenshot(str(shot))
    print(f"screenshot: {shot} ({len(nodes)} nodes, {len(edges)} edges)")
    assert not problems, "\n".join(problems)
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe
