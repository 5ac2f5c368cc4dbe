"""``amoeba graph``: the static graph of the example apps, exact text."""

from __future__ import annotations

from pathlib import Path

from amoeba.cli import main
from amoeba.observe.graph import static_graph, to_dot, to_mermaid
from amoeba.runtime.process import load_bound

ROOT = Path(__file__).resolve().parent.parent
TICKETS = ROOT / "examples" / "tickets" / "topologies"
SHOP = ROOT / "examples" / "shop" / "topologies"


def test_tickets_hybrid_mermaid_and_dot():
    g = static_graph(*load_bound(TICKETS / "hybrid.yaml"))
    assert to_mermaid(g) == (
        "flowchart LR\n"
        '  subgraph process_public["public"]\n'
        '    edge_public(["HTTP edge"])\n'
        '    ticket["ticket"]\n'
        "  end\n"
        '  subgraph process_internal["internal (private)"]\n'
        '    vacancy["vacancy"]\n'
        "  end\n"
        '  ticket -->|"reserve"| vacancy\n'
        '  edge_public ==>|"purchase"| ticket\n')
    assert to_dot(g) == (
        'digraph "tickets" {\n'
        "  rankdir=LR;\n"
        '  node [shape=box, style=rounded, fontname="Helvetica"];\n'
        '  edge [fontname="Helvetica", fontsize=10];\n'
        '  subgraph "cluster_public" {\n'
        '    label="public";\n'
        '    "edge:public" [label="HTTP edge", shape=oval];\n'
        '    "ticket";\n'
        "  }\n"
        '  subgraph "cluster_internal" {\n'
        '    label="internal (private)";\n'
        "    style=dashed;\n"
        '    "vacancy";\n'
        "  }\n"
        '  "ticket" -> "vacancy" [label="reserve"];\n'
        '  "edge:public" -> "ticket" [style=bold, label="purchase"];\n'
        "}\n")


def test_the_gateway_edge_reaches_every_service_it_routes_to():
    """The shop's hybrid topology: only the gateway process is public, and its
    listener routes to every service; private listeners draw no edge."""
    g = static_graph(*load_bound(SHOP / "hybrid.yaml"))
    http = {(e.source, e.target) for e in g.edges if e.kind == "http"}
    assert http == {("edge:gateway", s) for s in ("accounts", "catalog", "gateway", "notifications",
                                                   "orders")}
    assert [grp.edge for grp in g.groups] == ["edge:gateway", None, None, None, None]
    mermaid = to_mermaid(g).splitlines()
    assert mermaid[1:3] == ['  subgraph process_gateway["gateway"]', '    edge_gateway(["HTTP edge"])']
    assert '  edge_gateway ==>|"get_order, list_orders, place_order"| orders' in mermaid


def test_shop_calls_and_events_in_a_monolith():
    app, topo = load_bound(SHOP / "monolith.yaml")
    mermaid = to_mermaid(static_graph(app, topo)).splitlines()
    assert mermaid[1] == '  subgraph process_shop["shop"]'
    assert '  orders -->|"confirm, release, reserve"| catalog' in mermaid
    assert '  orders -.->|"shop.order_placed"| notifications' in mermaid
    assert '  accounts -.->|"shop.user_registered"| notifications' in mermaid
    dot = to_dot(static_graph(app, topo)).splitlines()
    assert '  "orders" -> "catalog" [label="confirm, release, reserve"];' in dot
    assert '  "orders" -> "notifications" [style=dashed, label="shop.order_placed"];' in dot
    # Without a topology: the services alone, sorted.
    bare = to_mermaid(static_graph(app))
    assert bare.splitlines()[1:6] == [f'  {s}["{s}"]' for s in
                                     ["accounts", "catalog", "gateway", "notifications", "orders"]]


def test_dot_is_balanced_and_deterministic():
    app, topo = load_bound(SHOP / "hybrid.yaml")
    dot = to_dot(static_graph(app, topo))
    assert dot == to_dot(static_graph(app, topo))
    assert dot.count("{") == dot.count("}") and dot.count('"') % 2 == 0
    for line in dot.splitlines()[1:-1]:
        assert line.endswith((";", "{", "}")), line


def test_cli_graph_from_a_topology_or_an_app(tmp_path, capsys):
    assert main(["graph", str(TICKETS / "microservices.yaml")]) == 0
    assert '  ticket -->|"reserve"| vacancy' in capsys.readouterr().out
    out = tmp_path / "g.dot"
    assert main(["graph", "tickets.app:app", "--format", "dot", "-o", str(out)]) == 0
    assert '  "ticket" -> "vacancy" [label="reserve"];' in out.read_text()
    assert main(["graph", "tickets.app:nothing"]) == 2
    assert "not an amoeba.App" in capsys.readouterr().err
