"""Metrics, trace ids and logs of the runtime (issue 6's runtime side):
``/metrics`` through prometheus-client's own parser, ``/_amoeba/api/stats``,
trace ids across HTTP, RPC and events, spans exported over real OTLP/HTTP,
JSON log lines with the ids that join them."""

from __future__ import annotations

import asyncio
import http.server
import io
import itertools
import json
import logging
import threading
from pathlib import Path

import httpx
import pytest
from demo.app import OutOfCoffee
from demo.app import app as demo_app
from evdemo.app import Reader
from evdemo.app import app as evdemo_app
from prometheus_client.parser import text_string_to_metric_families
from require import import_or_missing
from tickets.app import app as tickets_app
from waiting import eventually

from amoeba import context
from amoeba.gateway.http import Request
from amoeba.runtime.host import Host
from amoeba.runtime.process import LogFormatter
from amoeba.testing import InProcessHarness, free_port
from amoeba.topology import bind, load_topology

ROOT = Path(__file__).resolve().parent.parent
TICKETS = ROOT / "examples" / "tickets" / "topologies"
TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TRACE = TP[3:35]


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a Prometheus text exposition, parsed by prometheus-client."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(parsed: dict, name: str, **labels: str) -> float:
    return parsed[(name, frozenset(labels.items()))]


@pytest.fixture
async def tickets(tmp_path, monkeypatch):
    monkeypatch.setenv("INITIAL_STOCK", "100")
    h = InProcessHarness(tickets_app, tmp_path / "data", strict=False, env={})
    await h.start()
    yield h
    await h.aclose()


async def test_metrics_count_routes_and_local_calls(tickets):
    for _ in range(5):
        assert (await tickets.post("/api/v1/purchase", json={"qty": 1})).status == 200
    sold_out = await tickets.post("/api/v1/purchase", json={"qty": 1000})
    assert sold_out.status == 200 and sold_out.json()["success"] is False
    assert (await tickets.post("/api/v1/purchase", json={"qty": "x"})).status == 422
    await tickets.get("/no/such/page")
    r = await tickets.get("/metrics")
    assert r.status == 200 and r.headers["content-type"].startswith("text/plain")
    m = samples(r.body.decode())
    route = {"method": "POST", "route": "/api/v1/purchase"}
    assert value(m, "amoeba_http_request_duration_seconds_count", **route, status="200") == 6
    assert value(m, "amoeba_http_request_duration_seconds_count", **route, status="422") == 1
    assert value(m, "amoeba_http_request_duration_seconds_count", method="GET",
                 route="<unmatched>", status="404") == 1
    call = {"caller": "ticket", "callee": "vacancy", "method": "reserve", "kind": "local"}
    assert value(m, "amoeba_call_duration_seconds_count", **call, outcome="ok") == 6
    edge = {"caller": "http", "callee": "ticket", "method": "purchase", "kind": "local"}
    assert value(m, "amoeba_call_duration_seconds_count", **edge, outcome="ok") == 6
    # The edge's calls are its routed requests: the 422 is an error outcome.
    assert value(m, "amoeba_call_duration_seconds_count", **edge, outcome="error") == 1
    # The histogram is consistent: +Inf bucket == count, buckets never decrease.
    buckets = sorted((float(dict(k[1])["le"]), v) for k, v in m.items()
                     if k[0] == "amoeba_call_duration_seconds_bucket"
                     and dict(k[1]).get("callee") == "vacancy" and dict(k[1])["outcome"] == "ok")
    assert buckets[-1] == (float("inf"), 6.0)
    assert all(a[1] <= b[1] for a, b in itertools.pairwise(buckets))
    # No raw paths or ids as label values: every route label is a template.
    routes = {dict(k[1])["route"] for k in m if k[0].startswith("amoeba_http_request")}
    assert "/no/such/page" not in routes
    assert value(m, "amoeba_http_inflight_requests") == 1  # the scrape itself

    assert value(m, "process_open_fds") > 0


async def test_stats_snapshot_counts_and_samples_local_sizes(tickets):
    for _ in range(70):
        await tickets.post("/api/v1/purchase", json={"qty": 1})
    r = await tickets.get("/_amoeba/api/stats")
    snap = r.json()
    assert (snap["app"], snap["process"], snap["ready"], snap["draining"]) == (
        "tickets", "main", True, False)
    assert snap["http"]["requests"] == 70 and snap["http"]["errors"] == 0
    [reserve] = [c for c in snap["calls"] if c["callee"] == "vacancy" and c["method"] == "reserve"]
    assert reserve["kind"] == "local" and reserve["count"] == 70 and sum(reserve["hist"]) == 70
    assert len(reserve["hist"]) == len(snap["buckets"]) + 1
    # One local call in 64 goes through the codec to learn its size: calls 1 and 65.
    assert reserve["sampled"] == 2 and reserve["bytes_out"] > 0 and reserve["bytes_in"] > 0


async def test_public_listener_answers_observability_only_to_loopback(tickets):
    edge = tickets.host.edges[0]

    async def get(path: str, client: str, headers: dict[str, str] | None = None) -> int:
        resp = await edge.handle(Request("GET", path, "", headers or {}, b"", client), "rid")
        return resp.status

    assert await get("/metrics", "127.0.0.1") == 200
    assert await get("/metrics", "::1") == 200
    assert await get("/metrics", "10.1.2.3") == 404
    assert await get("/_amoeba/api/stats", "203.0.113.9") == 404
    token = tickets.host.signer.issue(tickets.host.process.name, "prometheus")
    assert await get("/metrics", "10.1.2.3", {"x-amoeba-token": token}) == 200
    assert await get("/metrics", "10.1.2.3", {"x-amoeba-token": token[:-2] + "xx"}) == 404


async def test_expose_never_and_metrics_off(tmp_path, monkeypatch):
    monkeypatch.setenv("INITIAL_STOCK", "10")
    never = InProcessHarness(tickets_app, tmp_path / "a", strict=False, env={},
                             settings={"observe": {"expose": "never"}})
    await never.start()
    try:
        assert (await never.get("/metrics")).status == 404
    finally:
        await never.aclose()
    monkeypatch.setenv("AMOEBA_OBSERVE", "off")
    off = InProcessHarness(tickets_app, tmp_path / "b", strict=False, env={})
    await off.start()
    try:
        assert off.host.metrics is None
        # The instance itself is wired: no metering between services.
        assert off.host.instances["ticket"].vacancy is off.host.instances["vacancy"]
        assert (await off.get("/metrics")).status == 404
        assert (await off.post("/api/v1/purchase", json={"qty": 1})).status == 200
    finally:
        await off.aclose()


def test_bad_observe_settings_name_the_key():
    from amoeba.observe.config import ObserveSettings

    with pytest.raises(ValueError, match=r"settings\.observe\.expose: 'lan'"):
        ObserveSettings.from_settings({"observe": {"expose": "lan"}})
    with pytest.raises(ValueError, match=r"settings\.observe\.metrcs: unknown key"):
        ObserveSettings.from_settings({"observe": {"metrcs": True}})
    with pytest.raises(ValueError, match=r"otlp_endpoint: 'collector:4318' is not an http"):
        ObserveSettings.from_settings({"observe": {"otlp_endpoint": "collector:4318"}})


# -- remote: two hosts over real sockets --------------------------------------------------------
async def test_remote_calls_bytes_served_time_and_replicas_add_up(tmp_path, monkeypatch):
    from test_remote import split, start, two_free_ports  # the two-process demo topology

    monkeypatch.setenv("AMOEBA_SECRET", "test-secret")
    base = two_free_ports()
    topo = split([base], replicas=2, eject_for=0.2)
    r0 = await start(topo, "store", tmp_path, 0)
    r1 = await start(topo, "store", tmp_path, 1)
    front = await start(topo, "front", tmp_path)
    try:
        stub = front.instances["front"].store
        for _ in range(40):
            await stub.counted()
        with pytest.raises(OutOfCoffee):
            await stub.fail()
        stats = front.metrics
        assert stats is not None
        assert stats.calls[("front", "store", "fail", "remote")].err.count == 1
        call = stats.calls[("front", "store", "counted", "remote")]
        assert call.ok.count == 40 and call.sampled == 40
        assert call.bytes_out > 40 * 20 and call.bytes_in > 0
        # Every call the caller counted was served by exactly one replica.
        served = [h.metrics.rpc[("store", "counted")].count  # type: ignore[union-attr]
                  for h in (r0, r1)]
        assert sum(served) == 40 and all(served)
        # The cluster view: every replica's own snapshot, read over HTTP.
        from amoeba.observe.cluster import collect_cluster

        cluster = await collect_cluster(demo_app, topo, signer=front.signer, caller="front")
        [store] = [p for p in cluster["processes"] if p["name"] == "store"]
        counts = [sum(s["count"] for s in inst["served"] if s["method"] == "counted")  # type: ignore[typeddict-item]
                  for inst in store["instances"]]
        assert counts == served
        assert cluster["services"]["front"]["depends"] == ["store"]
        # A replica goes away: the pool ejects it and the metrics say so.
        await r1.stop()
        for _ in range(10):
            await stub.counted()
        dead = {"process": "store", "address": f"127.0.0.1:{base + 1}"}

        async def ejected() -> dict[tuple[str, frozenset[tuple[str, str]]], float] | None:
            # the pool probes the lost replica, fails, ejects it
            text = (await front.edges[0].handle(
                Request("GET", "/metrics", "", {}, b"", "127.0.0.1"), "rid")).body.decode()
            m = samples(text)
            return m if m.get(("amoeba_pool_replica_ejected", frozenset(dead.items()))) == 1 else None

        m = await eventually(ejected, 30, "the lost replica ejected", every=0.05)
        assert value(m, "amoeba_pool_ejections_total", **dead) >= 1
        assert value(m, "amoeba_pool_replica_ejected", **dead) == 1
        assert value(m, "amoeba_pool_connections", process="store",
                     address=f"127.0.0.1:{base}") == 2
        cluster = await collect_cluster(demo_app, topo, signer=front.signer, caller="front")
        [store] = [p for p in cluster["processes"] if p["name"] == "store"]
        assert "error" in store["instances"][1] and "pid" in store["instances"][0]
    finally:
        await front.stop()
        await r0.stop()
        await r1.stop()


# -- trace ids ------------------------------------------------------------------------------------
async def test_trace_id_travels_through_an_event(tmp_path):
    seen: list[tuple[str, str]] = []
    original = Reader.noted

    async def noted(self, event):  # type: ignore[no-untyped-def]
        seen.append((context.trace_id(), context.service.get()))
        await original(self, event)

    h = InProcessHarness(evdemo_app, tmp_path / "data", strict=False, env={})
    Reader.noted = noted  # type: ignore[method-assign]
    try:
        await h.start()
        r = await h.post("/note", json={"text": "traced"}, headers={"traceparent": TP})
        assert r.status == 204 or r.status == 200
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.02)
        assert seen == [(TRACE, "reader")]
    finally:
        Reader.noted = original  # type: ignore[method-assign]
        await h.aclose()


class _Collector(http.server.ThreadingHTTPServer):
    """A real OTLP/HTTP endpoint: keeps every ExportTraceServiceRequest posted."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.paths: list[str] = []  # checked by the test: an assert in this thread would be lost
        super().__init__(("127.0.0.1", 0), _OtlpHandler)


class _OtlpHandler(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        self.server.paths.append(self.path)  # type: ignore[attr-defined]
        self.server.bodies.append(body)  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


async def test_spans_are_exported_over_otlp_as_one_trace(tmp_path, monkeypatch):
    import_or_missing("opentelemetry.sdk", "pip install 'amoeba[otel]'")
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    collector = _Collector()
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{collector.server_port}")
    monkeypatch.setenv("AMOEBA_SECRET", "test-secret")
    monkeypatch.setenv("INITIAL_STOCK", "10")
    port, vport = free_port(), free_port()
    topo = bind(load_topology(TICKETS / "hybrid.yaml",
                              {"PORT": str(port), "VACANCY_PORT": str(vport)}), tickets_app)
    internal = Host(tickets_app, topo, "internal", data=tmp_path)
    public = Host(tickets_app, topo, "public", data=tmp_path)
    await internal.start()
    await public.start()
    try:
        async with httpx.AsyncClient() as client:
            r = await client.post(f"http://127.0.0.1:{port}/api/v1/purchase", json={"qty": 1},
                                  headers={"traceparent": TP})
        assert r.status_code == 200
    finally:
        await public.stop()  # stopping flushes the exporters
        await internal.stop()
        collector.shutdown()
        collector.server_close()
    assert collector.paths and set(collector.paths) == {"/v1/traces"}, collector.paths
    spans = {}
    for body in collector.bodies:
        req = ExportTraceServiceRequest()
        req.ParseFromString(body)
        for rs in req.resource_spans:
            name = next(a.value.string_value for a in rs.resource.attributes
                        if a.key == "service.name")
            for ss in rs.scope_spans:
                for span in ss.spans:
                    spans[(name, span.name)] = span
    edge = spans[("tickets.public", "POST /api/v1/purchase")]
    client_span = spans[("tickets.public", "vacancy.reserve")]
    served = spans[("tickets.internal", "vacancy.reserve")]
    assert {s.trace_id.hex() for s in (edge, client_span, served)} == {TRACE}
    assert edge.parent_span_id.hex() == TP[36:52]  # the caller's span, from the header
    assert client_span.parent_span_id == edge.span_id
    assert served.parent_span_id == client_span.span_id
    assert (edge.kind, client_span.kind, served.kind) == (2, 3, 2)  # SERVER, CLIENT, SERVER


# -- logs -----------------------------------------------------------------------------------------
def test_json_log_lines_carry_service_request_and_trace_ids():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(LogFormatter("json", {"process": "ticket", "replica": 0}))
    logger = logging.getLogger("amoeba.test.json")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        tokens = (context.service.set("vacancy"), context.request_id.set("r-42"),
                  context.traceparent.set(TP))
        logger.warning("low stock")
        for var, tok in zip((context.service, context.request_id, context.traceparent), tokens,
                            strict=True):
            var.reset(tok)  # type: ignore[attr-defined]
        logger.warning("outside a request")
    finally:
        logger.removeHandler(handler)
    inside, outside = (json.loads(line) for line in stream.getvalue().splitlines())
    assert {k: inside[k] for k in ("level", "process", "replica", "service", "request_id",
                                   "trace_id", "message")} == {
        "level": "WARNING", "process": "ticket", "replica": 0, "service": "vacancy",
        "request_id": "r-42", "trace_id": TRACE, "message": "low stock"}
    assert inside["time"].endswith("Z")
    assert "trace_id" not in outside and "service" not in outside


def test_log_style_is_text_on_a_terminal_and_json_otherwise(monkeypatch):
    import sys

    from amoeba.runtime.process import log_style

    monkeypatch.delenv("AMOEBA_LOG_FORMAT", raising=False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert log_style() == "text"
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    assert log_style() == "json"
    monkeypatch.setenv("AMOEBA_LOG_FORMAT", "text")
    assert log_style() == "text"


async def test_edge_calls_into_a_remote_service_are_counted_once_with_bytes(tmp_path, monkeypatch):
    from dataclasses import replace

    from test_remote import split, start

    monkeypatch.setenv("AMOEBA_SECRET", "test-secret")
    topo = split([free_port()])
    front_proc = topo.processes["front"]
    # The front process's public listener also publishes the store's routes.
    published = replace(front_proc.listeners[0], routes=("front", "store"))
    topo = topo.with_processes({**topo.processes,
                                "front": replace(front_proc, listeners=(published,))})
    store = await start(topo, "store", tmp_path)
    front = await start(topo, "front", tmp_path)
    try:
        async with httpx.AsyncClient() as client:
            url = f"http://127.0.0.1:{front.bound_ports()[0]}/store/items/0"
            for _ in range(5):
                assert (await client.get(url)).status_code == 200
        assert front.metrics is not None
        calls = front.metrics.all_calls()
        [key] = [k for k, c in calls.items() if k[0] == "http" and c.ok.count + c.err.count]
        assert key == ("http", "store", "item", "remote")
        stat = calls[key]
        assert (stat.ok.count, stat.err.count, stat.sampled) == (5, 0, 5)
        assert stat.bytes_out > 0 and stat.bytes_in > 0
    finally:
        await front.stop()
        await store.stop()
