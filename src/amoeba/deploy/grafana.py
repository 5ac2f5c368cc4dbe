"""``dashboard.json``: a Grafana dashboard of the topology, reading the series
``amoeba deploy prometheus`` records (same ``app`` / ``process`` labels).

Rows: HTTP (request rate, 5xx ratio, p99 per route against the deadline),
calls between services (local vs remote, p99 per caller -> callee), events
(consumer lag, dead letters, outbox rows), resources (database pool in use
vs size, callers waiting, timeouts; cache round-trip p99).  The Prometheus
data source is the variable ``datasource`` (pick it on import), ``process``
filters every panel.  Deterministic: ids and positions follow the order
below, no timestamps.
"""

from __future__ import annotations

import json
from typing import Any

from amoeba.deploy.plan import Plan
from amoeba.deploy.prometheus import job

__all__ = ["dashboard", "render"]

_DS = {"type": "prometheus", "uid": "${datasource}"}
_WIDTH = 24


def _panel(title: str, exprs: list[tuple[str, str]], unit: str, description: str,
           *, threshold: float | None = None) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": unit, "min": 0}
    if threshold is not None:
        defaults["thresholds"] = {"mode": "absolute", "steps": [
            {"color": "green", "value": None}, {"color": "red", "value": threshold}]}
        defaults["custom"] = {"thresholdsStyle": {"mode": "line"}}
    return {
        "type": "timeseries", "title": title, "description": description, "datasource": _DS,
        "targets": [{"refId": chr(ord("A") + i), "datasource": _DS, "expr": expr,
                     "legendFormat": legend, "range": True}
                    for i, (expr, legend) in enumerate(exprs)],
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
    }


def _rows(plan: Plan) -> list[tuple[str, list[dict[str, Any]]]]:
    p = 'process=~"$process"'
    a = f'app="{plan.base}"'
    deadline = plan.settings.deadline
    return [
        ("HTTP", [
            _panel("Requests per second", [(
                f"amoeba_process:http_requests:rate5m{{{a},{p}}}", "{{process}}")], "reqps",
                "Requests answered by each process's listeners (all replicas)."),
            _panel("5xx ratio", [(
                f"amoeba_process:http_error_ratio:rate5m{{{a},{p}}}", "{{process}}")], "percentunit",
                "Share of requests answered 5xx.", threshold=0.05),
            _panel("p99 latency per route", [(
                f"amoeba_route:http_latency_seconds:p99_5m{{{a},{p}}}",
                "{{process}} {{method}} {{route}}")], "s",
                f"99th percentile per route; the line is settings.deadline ({deadline:g}s).",
                threshold=deadline),
        ]),
        ("Calls between services", [
            _panel("Calls per second, local vs remote", [(
                f"sum by (kind) (amoeba_call:calls:rate5m{{{a}}})", "{{kind}}")], "ops",
                "local: an in-process await; remote: an RPC to another process."),
            _panel("Calls per second by caller -> callee", [(
                f"amoeba_call:calls:rate5m{{{a}}}", "{{caller}} -> {{callee}} ({{kind}})")], "ops",
                "Who calls whom, and whether the call crosses a process."),
            _panel("p99 call latency", [(
                f"amoeba_call:latency_seconds:p99_5m{{{a}}}", "{{caller}} -> {{callee}} ({{kind}})")],
                "s", "99th percentile of calls as the caller saw them."),
        ]),
        ("Events", [
            _panel("Consumer lag", [(
                f"amoeba_service:consumer_lag:max{{{a}}}", "{{service}}")], "short",
                "Events waiting in the broker for each consuming service."),
            _panel("Dead letters (per 10 min)", [(
                f"sum by (service, event) (increase(amoeba_events_dead_lettered_total{{{a},{p}}}[10m]))",
                "{{service}} {{event}}")], "short",
                "Deliveries a handler gave up on: amoeba events dead-letters lists them."),
            _panel("Outbox rows", [(
                f"max by (service) (amoeba_events_outbox_rows{{{a},{p}}})", "{{service}}")], "short",
                "Rows written with a business change, not yet handed to the broker."),
        ]),
        ("Resources", [
            _panel("Database pool in use / size", [
                (f"amoeba_resource:db_pool_saturation:ratio{{{a},{p}}}",
                 "{{service}}.{{resource}} ({{process}})")], "percentunit",
                "Connections in use over the pool's size (worst replica).", threshold=0.9),
            _panel("Callers waiting for a connection; timeouts", [
                (f"sum by (service, resource) (amoeba_db_pool_waiting{{{a},{p}}})",
                 "waiting {{service}}.{{resource}}"),
                (f"sum by (service, resource) (increase(amoeba_db_pool_timeouts_total{{{a},{p}}}[5m]))",
                 "timeouts/5m {{service}}.{{resource}}")], "short",
                "Waiting callers now, and waits that gave up (settings.database.pool_timeout)."),
            _panel("Cache round trip p99", [(
                f"histogram_quantile(0.99, sum by (service, op, le) "
                f"(rate(amoeba_cache_round_trip_seconds_bucket{{{a},{p}}}[5m])))",
                "{{service}} {{op}}")], "s", "Round trips to Redis per operation."),
        ]),
        *_app_rows(plan, a, p),
    ]


def _app_rows(plan: Plan, a: str, p: str) -> list[tuple[str, list[dict[str, Any]]]]:
    """The application's own metrics, three panels a row, from the recording rules."""
    panels = []
    for m in plan.metrics:
        legend = "{{process}}" + "".join(f" {{{{{n}}}}}" for n in m.labels)
        if m.kind == "gauge":
            panels.append(_panel(m.name, [(f"sum by (process{''.join(', ' + n for n in m.labels)}) "
                                           f"({m.name}{{{a},{p}}})", legend)], "short", m.help))
        elif m.kind == "counter":
            panels.append(_panel(f"{m.name} per second", [(
                f"amoeba_app:{m.name}:rate5m{{{a},{p}}}", legend)], "ops", m.help))
        else:
            panels.append(_panel(f"{m.name}: per second and p99", [
                (f"amoeba_app:{m.name}:rate5m{{{a},{p}}}", "rate " + legend),
                (f"amoeba_app:{m.name}:p99_5m{{{a},{p}}}", "p99 " + legend)], "short", m.help))
    return [(f"Application metrics ({i // 3 + 1})" if len(panels) > 3 else "Application metrics",
             panels[i:i + 3]) for i in range(0, len(panels), 3)]


def dashboard(plan: Plan) -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    y = 0
    next_id = 1
    for title, row in _rows(plan):
        panels.append({"type": "row", "title": title, "id": next_id, "collapsed": False,
                       "gridPos": {"h": 1, "w": _WIDTH, "x": 0, "y": y}, "panels": []})
        next_id += 1
        y += 1
        width = _WIDTH // len(row)
        for i, panel in enumerate(row):
            panels.append({"id": next_id, "gridPos": {"h": 8, "w": width, "x": i * width, "y": y},
                           **panel})
            next_id += 1
        y += 8
    return {
        "title": f"amoeba {plan.app} ({plan.topology})",
        "uid": f"amoeba-{plan.base}"[:40],
        "description": plan.header("grafana").replace("# ", "").strip(),
        "tags": ["amoeba", plan.base],
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "annotations": {"list": []},
        "links": [],
        "templating": {"list": [
            {"name": "datasource", "label": "Prometheus", "type": "datasource",
             "query": "prometheus", "hide": 0, "refresh": 1, "includeAll": False, "multi": False,
             "options": [], "regex": "", "skipUrlSync": False},
            {"name": "process", "label": "Process", "type": "query", "datasource": _DS,
             "query": {"query": f'label_values(up{{job="{job(plan)}"}}, process)',
                       "refId": "process"},
             "hide": 0, "refresh": 2, "includeAll": True, "multi": True, "sort": 1,
             "current": {"text": ["All"], "value": ["$__all"]},
             "options": [], "regex": "", "skipUrlSync": False},
        ]},
        "panels": panels,
    }


def render(plan: Plan) -> dict[str, str]:
    # JSON has no comments: the generated-file header is the dashboard's description,
    # and a README next to it carries the usual header for --check.
    text = json.dumps(dashboard(plan), indent=2, sort_keys=False) + "\n"
    readme = (plan.header("grafana") + "# Import dashboard.json in Grafana (Dashboards > New > "
              "Import) and pick the Prometheus data source\n# that scrapes the files of "
              "amoeba deploy prometheus (its recording rules feed every panel).\n")
    return {"dashboard.json": text, "README": readme}
