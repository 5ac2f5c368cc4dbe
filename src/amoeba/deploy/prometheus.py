"""Prometheus for a topology: scrape configurations, recording rules, alerts.

- ``prometheus.yml``: the topology on its hosts as written (``amoeba run``,
  systemd): static targets, one per replica, at the listener that serves
  ``/metrics`` (the private one, else the public one, which answers loopback
  peers: run Prometheus on the same host);
- ``prometheus-compose.yml``: compose's DNS, one ``dns_sd_configs`` job per
  process (every replica of a compose service is an A record of its name), at
  the private listener the container topology gives each process;
- ``prometheus-k8s.yml``: ``kubernetes_sd_configs`` (role ``pod``) in
  ``deploy.namespace``, keeping pods of the app annotated
  ``prometheus.io/scrape`` and scraping the annotated port;
- ``rules/<app>.rules.yml``: recording rules (request, error and call rates,
  p99 latencies, consumer lag, pool saturation) and alerts: replica down,
  error ratio, p99 over ``settings.deadline``, consumer lag growing, dead
  letters, outbox backlog, pool saturation and timeouts, replica ejections.

Every series carries ``app`` and ``process`` labels set here, so the rules
and the Grafana dashboard read the same names whatever the engine.
"""

from __future__ import annotations

from typing import Any

from amoeba.deploy.document import dump_yaml
from amoeba.deploy.plan import Plan
from amoeba.observe.snapshot import BUCKETS

__all__ = ["ALERTS", "RECORDS", "alerts", "records", "render"]

SCRAPE_INTERVAL = "15s"
# Thresholds of the alerts; documented in docs/deploy.md.
ERROR_RATIO = 0.05
OUTBOX_ROWS = 100
POOL_SATURATION = 0.9

RECORDS = ("http_requests", "http_errors", "http_error_ratio", "http_p99", "calls", "call_p99",
           "consumer_lag", "pool_saturation")
ALERTS = ("AmoebaReplicaDown", "AmoebaErrorRatioHigh", "AmoebaLatencyOverDeadline",
          "AmoebaConsumerLagGrowing", "AmoebaDeadLetters", "AmoebaOutboxBacklog",
          "AmoebaDbPoolSaturated", "AmoebaDbPoolTimeouts", "AmoebaReplicaEjected")


def job(plan: Plan) -> str:
    return f"amoeba-{plan.base}"


def records(plan: Plan) -> list[dict[str, Any]]:
    """Recording rules: name -> expression (``app`` kept in every ``by``)."""
    sel = f'app="{plan.base}"'
    http = "amoeba_http_request_duration_seconds"
    return [
        {"record": "amoeba_process:http_requests:rate5m",
         "expr": f"sum by (app, process) (rate({http}_count{{{sel}}}[5m]))"},
        {"record": "amoeba_process:http_errors:rate5m",
         "expr": f'sum by (app, process) (rate({http}_count{{{sel},status=~"5.."}}[5m]))'},
        {"record": "amoeba_process:http_error_ratio:rate5m",
         # No 5xx at all leaves no error series: count it as 0, not as missing.
         "expr": "(amoeba_process:http_errors:rate5m or amoeba_process:http_requests:rate5m * 0)"
                 " / amoeba_process:http_requests:rate5m"},
        {"record": "amoeba_route:http_latency_seconds:p99_5m",
         "expr": f"histogram_quantile(0.99, sum by (app, process, method, route, le) "
                 f"(rate({http}_bucket{{{sel}}}[5m])))"},
        {"record": "amoeba_call:calls:rate5m",
         "expr": f"sum by (app, caller, callee, kind) "
                 f"(rate(amoeba_call_duration_seconds_count{{{sel}}}[5m]))"},
        {"record": "amoeba_call:latency_seconds:p99_5m",
         "expr": f"histogram_quantile(0.99, sum by (app, caller, callee, kind, le) "
                 f"(rate(amoeba_call_duration_seconds_bucket{{{sel}}}[5m])))"},
        {"record": "amoeba_service:consumer_lag:max",
         "expr": f"max by (app, service) (amoeba_events_consumer_lag{{{sel}}})"},
        {"record": "amoeba_resource:db_pool_saturation:ratio",
         "expr": f'max by (app, process, service, resource) '
                 f'(amoeba_db_pool_connections{{{sel},state="in_use"}} '
                 f"/ ignoring (state) amoeba_db_pool_size{{{sel}}})"},
        *_app_records(plan, sel),
    ]


def _app_records(plan: Plan, sel: str) -> list[dict[str, Any]]:
    """The application's own metrics: counters and histogram counts as rates per
    process (and their labels), histograms' p99 too; gauges are read as they are."""
    out: list[dict[str, Any]] = []
    for m in plan.metrics:
        by = ", ".join(("app", "process", *m.labels))
        if m.kind == "counter":
            out.append({"record": f"amoeba_app:{m.name}:rate5m",
                        "expr": f"sum by ({by}) (rate({m.name}_total{{{sel}}}[5m]))"})
        elif m.kind == "histogram":
            out.append({"record": f"amoeba_app:{m.name}:rate5m",
                        "expr": f"sum by ({by}) (rate({m.name}_count{{{sel}}}[5m]))"})
            out.append({"record": f"amoeba_app:{m.name}:p99_5m",
                        "expr": f"histogram_quantile(0.99, sum by ({by}, le) "
                                f"(rate({m.name}_bucket{{{sel}}}[5m])))"})
    return out


def alerts(plan: Plan) -> list[dict[str, Any]]:
    sel = f'app="{plan.base}"'
    deadline = plan.settings.deadline
    # histogram_quantile answers at most the largest finite bucket (10 s) when the
    # quantile falls beyond it, so the threshold is the deadline capped there, and
    # reached (>=), not passed: a request cut at the deadline took the deadline.
    over = min(deadline, BUCKETS[-1])

    def alert(name: str, expr: str, wait: str, severity: str, summary: str) -> dict[str, Any]:
        return {"alert": name, "expr": expr, "for": wait, "labels": {"severity": severity},
                "annotations": {"summary": summary}}

    return [
        alert("AmoebaReplicaDown", f'up{{job="{job(plan)}"}} == 0', "1m", "critical",
              "{{ $labels.process }} replica {{ $labels.instance }} is down"),
        alert("AmoebaErrorRatioHigh",
              f"amoeba_process:http_error_ratio:rate5m{{{sel}}} > {ERROR_RATIO}", "5m", "warning",
              "{{ $labels.process }}: {{ $value | humanizePercentage }} of requests answer 5xx"),
        alert("AmoebaLatencyOverDeadline",
              f"amoeba_route:http_latency_seconds:p99_5m{{{sel}}} >= {over:g}", "5m", "warning",
              f"{{{{ $labels.method }}}} {{{{ $labels.route }}}}: p99 {{{{ $value }}}}s is over "
              f"the {deadline:g}s deadline"),
        alert("AmoebaConsumerLagGrowing",
              f"amoeba_events_consumer_lag{{{sel}}} > 0 "
              f"and deriv(amoeba_events_consumer_lag{{{sel}}}[10m]) > 0", "10m", "warning",
              "{{ $labels.service }} falls behind its events: lag {{ $value }} and growing"),
        alert("AmoebaDeadLetters",
              f"increase(amoeba_events_dead_lettered_total{{{sel}}}[10m]) > 0", "0m", "warning",
              "{{ $labels.service }} gave up on {{ $labels.event }} events: "
              "amoeba events dead-letters lists them"),
        alert("AmoebaOutboxBacklog",
              f"amoeba_events_outbox_rows{{{sel}}} > {OUTBOX_ROWS}", "10m", "warning",
              "{{ $labels.service }}: {{ $value }} outbox rows not handed to the broker"),
        alert("AmoebaDbPoolSaturated",
              f"amoeba_resource:db_pool_saturation:ratio{{{sel}}} >= {POOL_SATURATION}", "5m",
              "warning", "{{ $labels.service }}.{{ $labels.resource }}: database pool "
              "{{ $value | humanizePercentage }} in use"),
        alert("AmoebaDbPoolTimeouts",
              f"increase(amoeba_db_pool_timeouts_total{{{sel}}}[5m]) > 0", "0m", "warning",
              "{{ $labels.service }}.{{ $labels.resource }}: callers gave up waiting for a "
              "database connection (raise settings.database.pool_size)"),
        alert("AmoebaReplicaEjected",
              f"increase(amoeba_pool_ejections_total{{{sel}}}[5m]) > 0", "0m", "warning",
              # The metric's own "process" (the callee) becomes exported_process beside
              # the target's.
              "{{ $labels.process }} ejected {{ $labels.address }}, a failing replica of "
              "{{ $labels.exported_process }}"),
    ]


def _config(plan: Plan, scrape: list[dict[str, Any]]) -> str:
    doc = {"global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
           "rule_files": [f"rules/{plan.base}.rules.yml"], "scrape_configs": scrape}
    return plan.header("prometheus") + dump_yaml(doc)


def _static(plan: Plan) -> list[dict[str, Any]]:
    groups = [{"targets": [f"{h}:{p}" for h, p in u.local_targets],
               "labels": {"app": plan.base, "process": u.process}} for u in plan.units]
    return [{"job_name": job(plan), "metrics_path": "/metrics", "static_configs": groups}]


def _compose(plan: Plan) -> list[dict[str, Any]]:
    # One job per process (a dns_sd_config cannot label its targets), all
    # relabelled into one job name so up{job=...} covers them.
    return [{"job_name": f"{job(plan)}-{u.process.replace('_', '-')}", "metrics_path": "/metrics",
             "dns_sd_configs": [{"names": [u.name], "type": "A", "port": u.rpc_port}],
             "relabel_configs": [{"target_label": "job", "replacement": job(plan)},
                                 {"target_label": "app", "replacement": plan.base},
                                 {"target_label": "process", "replacement": u.process}]}
            for u in plan.units]


def _k8s(plan: Plan) -> list[dict[str, Any]]:
    return [{
        "job_name": job(plan),
        "kubernetes_sd_configs": [{"role": "pod", "namespaces": {"names": [plan.namespace]}}],
        "relabel_configs": [
            {"source_labels": ["__meta_kubernetes_pod_label_app_kubernetes_io_part_of",
                               "__meta_kubernetes_pod_annotation_prometheus_io_scrape"],
             "regex": f"{plan.app};true", "action": "keep"},
            {"source_labels": ["__meta_kubernetes_pod_ip",
                               "__meta_kubernetes_pod_annotation_prometheus_io_port"],
             "regex": "(.+);(.+)", "replacement": "$1:$2", "target_label": "__address__"},
            {"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_path"],
             "regex": "(.+)", "target_label": "__metrics_path__"},
            {"target_label": "app", "replacement": plan.base},
            {"source_labels": ["__meta_kubernetes_pod_label_app_kubernetes_io_component"],
             "target_label": "process"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        ],
    }]


def render(plan: Plan) -> dict[str, str]:
    rules = {"groups": [
        {"name": f"{plan.base}-recording", "rules": records(plan)},
        {"name": f"{plan.base}-alerts", "rules": alerts(plan)},
    ]}
    return {
        "prometheus.yml": _config(plan, _static(plan)),
        "prometheus-compose.yml": _config(plan, _compose(plan)),
        "prometheus-k8s.yml": _config(plan, _k8s(plan)),
        f"rules/{plan.base}.rules.yml": plan.header("prometheus") + dump_yaml(rules),
    }
