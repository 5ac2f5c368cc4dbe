"""``amoeba deploy prometheus`` and ``amoeba deploy grafana``: the real
``promtool`` checks the configurations and rules and runs unit tests of the
alerts; a real Prometheus scrapes a running topology through the generated
configuration; Grafana's own dashboard model (grafana-foundation-sdk) reads
the dashboard back."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from e2e import Run
from require import missing

from amoeba.deploy import cli as deploy_cli
from amoeba.deploy.document import dump_yaml
from amoeba.testing import free_port

ROOT = Path(__file__).resolve().parent.parent
TICKETS = "examples/tickets/topologies/microservices.yaml"
SHOP = "examples/shop/topologies/replicated.yaml"


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path:
        return path
    missing(f"{name} is not installed: apt-get install prometheus (it brings prometheus and promtool)")


def generate(target: str, topology: str, out: Path, env: dict[str, str] | None = None) -> Path:
    old = dict(os.environ)
    try:
        os.environ.update(env or {})
        files = deploy_cli.render(target, deploy_cli.plan_for(topology, out, cwd=ROOT))
    finally:
        os.environ.clear()
        os.environ.update(old)
    deploy_cli.write(files, out)
    return out


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_tool("promtool"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


# -- promtool: configurations and rules ------------------------------------------------------

@pytest.mark.parametrize("topology", [TICKETS, SHOP, "examples/shop/topologies/monolith.yaml"])
def test_promtool_accepts_configs_and_rules(topology: str, tmp_path: Path) -> None:
    out = generate("prometheus", topology, tmp_path / "p")
    for config in ("prometheus.yml", "prometheus-compose.yml"):
        r = promtool("check", "config", config, cwd=out)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "SUCCESS" in r.stdout
    rules = next((out / "rules").glob("*.rules.yml"))
    r = promtool("check", "rules", str(rules), cwd=out)
    plan = deploy_cli.plan_for(topology, out, cwd=ROOT)
    own = sum({"counter": 1, "histogram": 2}.get(m.kind, 0) for m in plan.metrics)  # the app's rates, p99
    assert r.returncode == 0 and f"SUCCESS: {17 + own} rules found" in r.stdout, r.stdout + r.stderr
    r = promtool("check", "config", "prometheus-k8s.yml", cwd=out)
    if r.returncode != 0 and "field kubernetes_sd_configs not found" in r.stdout + r.stderr:
        # Debian builds Prometheus without Kubernetes discovery: check the rest of the
        # file with promtool, and the discovery block by its documented shape.
        doc = yaml.safe_load((out / "prometheus-k8s.yml").read_text())
        job = doc["scrape_configs"][0]
        sd = job.pop("kubernetes_sd_configs")
        assert sd == [{"role": "pod", "namespaces": {"names": [sd[0]["namespaces"]["names"][0]]}}]
        job["static_configs"] = [{"targets": ["127.0.0.1:9"]}]
        (out / "k8s-without-sd.yml").write_text(dump_yaml(doc))
        r = promtool("check", "config", "k8s-without-sd.yml", cwd=out)
    assert r.returncode == 0, r.stdout + r.stderr


def test_promtool_check_can_fail(tmp_path: Path) -> None:
    out = generate("prometheus", TICKETS, tmp_path / "p")
    rules = out / "rules" / "tickets.rules.yml"
    rules.write_text(rules.read_text().replace("rate(", "rat(", 1))
    assert promtool("check", "rules", str(rules), cwd=out).returncode != 0


def _series(name: str, labels: dict[str, str], values: str) -> dict[str, str]:
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


def rule_tests() -> dict[str, Any]:
    """Unit tests of the tickets rules: each alert fires on the series that should
    raise it (labels and summary checked), and stays silent on healthy ones."""
    base = {"job": "amoeba-tickets", "app": "tickets", "instance": "127.0.0.1:8001"}
    vacancy = {**base, "process": "vacancy"}
    http = "amoeba_http_request_duration_seconds"
    route = {**vacancy, "method": "POST", "route": "/api/v1/reserve"}
    from amoeba.observe.snapshot import BUCKETS

    slow = [_series(f"{http}_bucket", {**route, "status": "200", "le": repr(b)}, "0+0x20")
            for b in BUCKETS]
    slow.append(_series(f"{http}_bucket", {**route, "status": "200", "le": "+Inf"}, "0+10x20"))
    slow.append(_series(f"{http}_count", {**route, "status": "200"}, "0+10x20"))
    return {
        "rule_files": ["rules/tickets.rules.yml"],
        "evaluation_interval": "1m",
        "tests": [
            {"interval": "1m",
             "input_series": [
                 _series("up", vacancy, "1 1 0 0 0 0"),
                 _series("up", {**base, "process": "ticket", "instance": "127.0.0.1:8002"}, "1x6"),
             ],
             "alert_rule_test": [
                 {"eval_time": "1m", "alertname": "AmoebaReplicaDown", "exp_alerts": []},
                 {"eval_time": "5m", "alertname": "AmoebaReplicaDown", "exp_alerts": [
                     {"exp_labels": {"severity": "critical", **vacancy},
                      "exp_annotations": {"summary": "vacancy replica 127.0.0.1:8001 is down"}}]},
             ]},
            {"interval": "1m",
             "input_series": [
                 _series(f"{http}_count", {**route, "status": "200"}, "0+60x20"),
                 _series(f"{http}_count", {**route, "status": "503"}, "0+6x20"),
                 _series(f"{http}_count", {**base, "process": "ticket", "method": "GET",
                                           "route": "/", "status": "200"}, "0+60x20"),
             ],
             "alert_rule_test": [
                 {"eval_time": "15m", "alertname": "AmoebaErrorRatioHigh", "exp_alerts": [
                     {"exp_labels": {"severity": "warning", "app": "tickets", "process": "vacancy"},
                      "exp_annotations": {
                          "summary": "vacancy: 9.091% of requests answer 5xx"}}]},
             ],
             "promql_expr_test": [
                 {"expr": 'amoeba_process:http_error_ratio:rate5m{process="ticket"}',
                  "eval_time": "15m",
                  "exp_samples": [{"labels": 'amoeba_process:http_error_ratio:rate5m'
                                             '{app="tickets",process="ticket"}', "value": 0}]},
             ]},
            {"interval": "1m", "input_series": slow,
             "alert_rule_test": [
                 {"eval_time": "15m", "alertname": "AmoebaLatencyOverDeadline", "exp_alerts": [
                     {"exp_labels": {"severity": "warning", "app": "tickets", "process": "vacancy",
                                     "method": "POST", "route": "/api/v1/reserve"},
                      "exp_annotations": {"summary": "POST /api/v1/reserve: p99 10s is over the "
                                                     "10s deadline"}}]},
             ]},
            {"interval": "1m",
             "input_series": [
                 _series("amoeba_events_consumer_lag", {**vacancy, "service": "vacancy"}, "0+5x30"),
                 _series("amoeba_events_consumer_lag", {**vacancy, "service": "steady"}, "7x30"),
                 _series("amoeba_events_dead_lettered_total",
                         {**vacancy, "service": "vacancy", "event": "Sold"}, "0 0 0 1 1 1"),
                 _series("amoeba_events_outbox_rows", {**vacancy, "service": "ticket"}, "500x30"),
             ],
             "alert_rule_test": [
                 {"eval_time": "25m", "alertname": "AmoebaConsumerLagGrowing", "exp_alerts": [
                     {"exp_labels": {"severity": "warning", **vacancy, "service": "vacancy"},
                      "exp_annotations": {"summary": "vacancy falls behind its events: lag 125 "
                                                     "and growing"}}]},
                 {"eval_time": "4m", "alertname": "AmoebaDeadLetters", "exp_alerts": [
                     {"exp_labels": {"severity": "warning", **vacancy, "service": "vacancy",
                                     "event": "Sold"},
                      "exp_annotations": {"summary": "vacancy gave up on Sold events: amoeba "
                                                     "events dead-letters lists them"}}]},
                 {"eval_time": "20m", "alertname": "AmoebaOutboxBacklog", "exp_alerts": [
                     {"exp_labels": {"severity": "warning", **vacancy, "service": "ticket"},
                      "exp_annotations": {"summary": "ticket: 500 outbox rows not handed to the "
                                                     "broker"}}]},
             ]},
            {"interval": "1m",
             "input_series": [
                 _series("amoeba_db_pool_connections",
                         {**vacancy, "service": "vacancy", "resource": "db", "state": "in_use"},
                         "5x20"),
                 _series("amoeba_db_pool_size", {**vacancy, "service": "vacancy", "resource": "db"},
                         "5x20"),
                 _series("amoeba_db_pool_timeouts_total",
                         {**vacancy, "service": "vacancy", "resource": "db"}, "0 0 2 2 2"),
                 _series("amoeba_pool_ejections_total",
                         {**base, "process": "ticket", "exported_process": "vacancy",
                          "address": "127.0.0.1:8001"}, "0 0 1 1 1"),
             ],
             "alert_rule_test": [
                 {"eval_time": "10m", "alertname": "AmoebaDbPoolSaturated", "exp_alerts": [
                     {"exp_labels": {"severity": "warning", "app": "tickets", "process": "vacancy",
                                     "service": "vacancy", "resource": "db"},
                      "exp_annotations": {"summary": "vacancy.db: database pool 100% in use"}}]},
                 {"eval_time": "3m", "alertname": "AmoebaDbPoolTimeouts", "exp_alerts": [
                     {"exp_labels": {"severity": "warning", **vacancy, "service": "vacancy",
                                     "resource": "db"},
                      "exp_annotations": {"summary": "vacancy.db: callers gave up waiting for a "
                                          "database connection (raise settings.database.pool_size)"}}]},
                 {"eval_time": "3m", "alertname": "AmoebaReplicaEjected", "exp_alerts": [
                     {"exp_labels": {"severity": "warning", **base, "process": "ticket",
                                     "exported_process": "vacancy", "address": "127.0.0.1:8001"},
                      "exp_annotations": {"summary": "ticket ejected 127.0.0.1:8001, a failing "
                                                     "replica of vacancy"}}]},
             ]},
        ],
    }


def test_alert_rules_pass_their_unit_tests(tmp_path: Path) -> None:
    from amoeba.deploy.prometheus import ALERTS

    out = generate("prometheus", TICKETS, tmp_path / "p")
    tests = rule_tests()
    tested = {t["alertname"] for group in tests["tests"] for t in group.get("alert_rule_test", [])}
    assert tested == set(ALERTS)  # every alert has a test
    (out / "tests.yml").write_text(yaml.safe_dump(tests, sort_keys=False))
    r = promtool("test", "rules", "tests.yml", cwd=out)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout
    # The same tests against a wrong expectation must fail: they are not vacuous.
    wrong = rule_tests()
    wrong["tests"][0]["alert_rule_test"][1]["exp_alerts"] = []
    (out / "wrong.yml").write_text(yaml.safe_dump(wrong, sort_keys=False))
    assert promtool("test", "rules", "wrong.yml", cwd=out).returncode != 0


# -- a real Prometheus on the generated configuration ---------------------------------------

def _query(base: str, expr: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{base}/api/v1/query", params={"query": expr}, timeout=10)
    r.raise_for_status()
    result: list[dict[str, Any]] = r.json()["data"]["result"]
    return result


def _until(what: str, fn, within: float = 60.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {within}s (last: {last!r})")


@pytest.mark.e2e
def test_prometheus_scrapes_a_running_topology(tmp_path: Path) -> None:
    """tickets as microservices under `amoeba run`; Prometheus (Debian's) on the
    generated prometheus.yml with a 1 s interval: every replica is an up target,
    the recording rules produce series, the pool metric of vacancy's SQLite is there."""
    prometheus = require_tool("prometheus")
    vp, tp = free_port(), free_port()
    while abs(vp - tp) < 2:
        tp = free_port()
    env = {"VACANCY_PORT": str(vp), "TICKET_PORT": str(tp),
           "AMOEBA_DATA_DIR": str(tmp_path / "data"), "INITIAL_STOCK": "100"}
    out = generate("prometheus", TICKETS, tmp_path / "prom", env)
    config = yaml.safe_load((out / "prometheus.yml").read_text())
    targets = {g["labels"]["process"]: g["targets"] for g in config["scrape_configs"][0]["static_configs"]}
    assert targets == {"vacancy": [f"127.0.0.1:{vp}"], "ticket": [f"127.0.0.1:{tp}"]}
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    (out / "prometheus.yml").write_text(dump_yaml(config))

    run = Run(ROOT / TICKETS, env, [vp, tp], tmp_path)
    port = free_port()
    log = tmp_path / "prometheus.log"
    with log.open("wb") as f:
        prom = subprocess.Popen([prometheus, f"--config.file={out / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                 f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=f, stderr=subprocess.STDOUT, cwd=out)
    base = f"http://127.0.0.1:{port}"
    try:
        def ready() -> bool:
            if prom.poll() is not None:
                raise AssertionError(f"prometheus exited: {log.read_text()}")
            try:
                return httpx.get(f"{base}/-/ready", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        _until("prometheus ready", ready)

        def all_up() -> list[dict[str, Any]] | None:
            active = httpx.get(f"{base}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
            return active if len(active) == 2 and all(t["health"] == "up" for t in active) else None

        active = _until("both targets up", all_up)
        assert {(t["labels"]["process"], t["labels"]["job"]) for t in active} == {
            ("vacancy", "amoeba-tickets"), ("ticket", "amoeba-tickets")}

        def buy_and_rate() -> list[dict[str, Any]]:
            # Traffic between scrapes, until the rule over two samples sees it.
            for _ in range(5):
                r = httpx.post(f"http://127.0.0.1:{tp}/api/v1/purchase", json={"qty": 1}, timeout=10)
                assert r.status_code == 200, r.text
            got = _query(base, 'amoeba_process:http_requests:rate5m{process="ticket"}')
            return got if got and float(got[0]["value"][1]) > 0 else []

        rate = _until("a recording rule's series above 0", buy_and_rate)
        assert rate[0]["metric"] == {"__name__": "amoeba_process:http_requests:rate5m",
                                     "app": "tickets", "process": "ticket"}
        assert float(rate[0]["value"][1]) > 0
        calls = _until("remote calls ticket -> vacancy", lambda: _query(
            base, 'amoeba_call:calls:rate5m{caller="ticket",callee="vacancy",kind="remote"}'))
        pool = _until("vacancy's SQLite pool", lambda: _query(
            base, 'amoeba_db_pool_size{process="vacancy"}'))
        assert pool[0]["metric"]["service"] == "vacancy" and pool[0]["value"][1] == "1"
        up = _query(base, 'up{job="amoeba-tickets"}')
        print(f"\nprometheus targets: {sorted((t['labels']['process'], t['scrapeUrl']) for t in active)}"
              f"\nup: {[(s['metric']['process'], s['value'][1]) for s in up]}"
              f"\namoeba_process:http_requests:rate5m{{process=\"ticket\"}} = {rate[0]['value'][1]}"
              f"\namoeba_call:calls:rate5m remote ticket->vacancy = {calls[0]['value'][1]}"
              f"\namoeba_db_pool_size{{process=\"vacancy\"}} = {pool[0]['value'][1]} "
              f"({pool[0]['metric']['resource']})")
    finally:
        prom.terminate()
        prom.wait(20)
        assert run.stop() == 0


# -- Grafana ---------------------------------------------------------------------------------

def _lost(ours: Any, back: Any, path: str = "") -> list[str]:
    """Keys and values of ``ours`` that ``back`` (after the model) does not keep."""
    if isinstance(ours, dict):
        if not isinstance(back, dict):
            return [path]
        return [p for k, v in ours.items()
                for p in ([f"{path}.{k}"] if k not in back else _lost(v, back[k], f"{path}.{k}"))]
    if isinstance(ours, list):
        if not isinstance(back, list) or len(back) != len(ours):
            return [path]
        return [p for i, (a, b) in enumerate(zip(ours, back, strict=True))
                for p in _lost(a, b, f"{path}[{i}]")]
    return [] if ours == back else [f"{path}: {ours!r} != {back!r}"]


@pytest.mark.parametrize("topology", [TICKETS, SHOP])
def test_grafana_dashboard_reads_back_through_grafanas_model(topology: str, tmp_path: Path) -> None:
    """grafana-foundation-sdk is generated by Grafana from its dashboard schema:
    every key and value we write survives its Dashboard model, panels decode as
    panels (rows as rows), and the data source is the variable on every query."""
    sdk = pytest.importorskip("grafana_foundation_sdk.models.dashboard",
                              reason="pip install grafana-foundation-sdk (the dev extra)")
    from grafana_foundation_sdk.cog.encoder import JSONEncoder

    out = generate("grafana", topology, tmp_path / "g")
    ours = json.loads((out / "dashboard.json").read_text())
    model = sdk.Dashboard.from_json(ours)
    back = json.loads(json.dumps(model, cls=JSONEncoder))
    assert _lost(ours, back) == []
    kinds = [type(p).__name__ for p in model.panels or []]
    own = deploy_cli.plan_for(topology, tmp_path / "p", cwd=ROOT).metrics  # the app's own metrics
    rows = 4 + (len(own) + 2) // 3
    assert kinds.count("RowPanel") == rows and kinds.count("Panel") == 12 + len(own), kinds
    variables = {v.name: v for v in model.templating.list_val or []}
    assert variables["datasource"].type_val == "datasource" and variables["datasource"].query == "prometheus"
    for panel in ours["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    # Every series a panel reads is one the prometheus rules record or /metrics exports.
    from amoeba.deploy.prometheus import records

    plan = deploy_cli.plan_for(topology, tmp_path / "g", cwd=ROOT)
    recorded = {r["record"] for r in records(plan)}
    import re

    names = {n for p in ours["panels"] for t in p.get("targets", [])
             for n in re.findall(r"\b(amoeba[a-z_:0-9]+)\{", t["expr"])}
    exported = {"amoeba_events_dead_lettered_total", "amoeba_events_outbox_rows",
                "amoeba_db_pool_waiting", "amoeba_db_pool_timeouts_total",
                "amoeba_cache_round_trip_seconds_bucket"}
    assert names <= recorded | exported, names - recorded - exported


def test_grafana_model_check_can_fail() -> None:
    sdk = pytest.importorskip("grafana_foundation_sdk.models.dashboard")
    from grafana_foundation_sdk.cog.encoder import JSONEncoder

    bad = {"title": "x", "panels": [{"type": "timeseries", "id": 1, "gridPoss": {"h": 1}}]}
    back = json.loads(json.dumps(sdk.Dashboard.from_json(bad), cls=JSONEncoder))
    assert _lost(bad, back)  # a misspelt key does not survive the model


def _outside_address() -> str | None:
    """An address of this host that is not loopback: a peer connecting from it is
    what the internet looks like to a listener."""
    import socket

    for probe in ("203.0.113.1", "10.255.255.1"):  # documentation / private: never contacted
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.connect((probe, 9))  # UDP: no packet is sent, the route picks the source
            except OSError:
                continue
            addr = str(s.getsockname()[0])
            if not addr.startswith("127."):
                return addr
    return None


@pytest.mark.e2e
def test_container_metrics_listener_answers_prometheus_not_the_public(tmp_path: Path) -> None:
    """The container topology runs as generated (ports made free): from a
    non-loopback peer, /metrics answers on the added private listener and is
    hidden on the public one, which still serves the app."""
    outside = _outside_address()
    if outside is None:
        pytest.skip("this host has no non-loopback IPv4 address to connect from")
    files = deploy_cli.render("compose", deploy_cli.plan_for(
        "examples/tickets/topologies/monolith.yaml", tmp_path / "c", cwd=ROOT))
    topo = yaml.safe_load(files["topology.yaml"])
    listeners = topo["processes"]["main"]["listeners"]
    assert [(x["public"], x["port"]) for x in listeners] == [(True, 8000), (False, 9464)]
    public, private = free_port(), free_port()
    while abs(public - private) < 2:
        private = free_port()
    listeners[0]["port"], listeners[1]["port"] = public, private
    topo["pythonpath"] = [str(ROOT / "examples")]
    path = tmp_path / "topology.yaml"
    path.write_text(dump_yaml(topo))
    run = Run(path, {"AMOEBA_DATA_DIR": str(tmp_path / "data")}, [public, private], tmp_path)
    try:
        with httpx.Client(transport=httpx.HTTPTransport(local_address=outside), timeout=10) as c:
            assert c.get(f"http://{outside}:{public}/api/v1/available").status_code == 200
            assert c.get(f"http://{outside}:{public}/metrics").status_code == 404
            r = c.get(f"http://{outside}:{private}/metrics")
            assert r.status_code == 200 and "amoeba_http_request_duration_seconds" in r.text
            assert c.get(f"http://{outside}:{private}/api/v1/available").status_code in (401, 403)
    finally:
        assert run.stop() == 0


def test_the_apps_own_metrics_reach_the_rules_and_the_dashboard(tmp_path: Path) -> None:
    """The shop declares shop_orders_placed (Counter) and shop_checkout_value
    (Histogram); metrics declared elsewhere in this process (other tests) do not
    belong to it and stay out."""
    from amoeba import Counter

    Counter(f"test_foreign_{os.getpid()}_{time.monotonic_ns()}", "not the shop's")
    plan = deploy_cli.plan_for(SHOP, tmp_path / "x", cwd=ROOT)
    assert [(m.name, m.kind) for m in plan.metrics] == [
        ("shop_checkout_value", "histogram"), ("shop_orders_placed", "counter")]
    rules = yaml.safe_load(next((generate("prometheus", SHOP, tmp_path / "p") / "rules")
                                .glob("*.rules.yml")).read_text())
    recorded = {r["record"]: r["expr"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    assert recorded["amoeba_app:shop_orders_placed:rate5m"] == (
        'sum by (app, process) (rate(shop_orders_placed_total{app="shop"}[5m]))')
    assert "shop_checkout_value_bucket" in recorded["amoeba_app:shop_checkout_value:p99_5m"]
    board = json.loads((generate("grafana", SHOP, tmp_path / "g") / "dashboard.json").read_text())
    titles = [p["title"] for p in board["panels"]]
    assert "Application metrics" in titles and "shop_orders_placed per second" in titles
