"""Mounted ASGI apps: served in every mode, lifespan around the services,
streaming, the edge's policy applied, reaching services with ``provide``."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import httpx
import pytest
from mountapp import events
from mountapp.app import app
from mountapp.failing import broken_app, missing_app, plain_app
from test_auth import SETTINGS, bearer, claims, sign

from amoeba.gateway.asgi import LifespanError
from amoeba.runtime.host import Host
from amoeba.testing import InProcessHarness, app_fixture, free_port, monolith_topology, settings_from

GATEWAY = Path(__file__).parent / "mountapp" / "topologies" / "gateway.yaml"
client = app_fixture(app, topologies={"gateway": GATEWAY})


async def test_raw_app_sees_request_and_lifespan_state(client):
    r = await client.post("/raw/echo?x=1", content=b"hello", headers={"X-Request-Id": "rid-7"})
    assert r.status == 201
    assert r.headers["x-raw"] == "1" and r.headers["x-request-id"] == "rid-7"
    body = r.json()
    assert body["method"] == "POST" and body["path"] == "/raw/echo" and body["query"] == "x=1"
    assert body["body"] == "hello" and body["request_id"] == "rid-7"
    assert body["greeting"] == "hello from lifespan"
    assert body["principal"] is None


async def test_fastapi_app_reaches_a_service_through_provide(client):
    before = (await client.get("/native/count")).json()["total"]
    r = await client.post("/fast/add", json={"n": 2})
    assert r.status == 200, r.body
    assert r.json()["total"] == before + 2
    # The co-located instance (metered; strict: through the codec) or the remote stub.
    via = {"inprocess": "Local", "strict": "Local", "processes": "Remote", "gateway": "Remote"}
    assert via[client.mode] in r.json()["via"]
    assert (await client.get("/native/count")).json()["total"] == before + 2


async def test_second_prefix_and_misses(client):
    assert (await client.get("/other/ping")).json() == {"pong": "other prefix"}
    r = await client.get("/fast/nope")
    assert r.status == 404 and r.json() == {"detail": "Not Found"}  # the app's own 404
    r = await client.get("/elsewhere")
    assert r.status == 404 and r.json()["error"]["type"] == "NotFound"  # the edge's
    r = await client.get("/rawish")  # a prefix is matched by path segments
    assert r.status == 404 and r.json()["error"]["type"] == "NotFound"


async def test_openapi_merges_the_mounted_app(client):
    if client.mode == "processes":
        pytest.skip("requests for /openapi.json reach store's process there; the gateway mode "
                    "covers a merge across processes")
    doc = (await client.get("/openapi.json")).json()
    add = doc["paths"]["/fast/add"]["post"]
    body = add["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/AddRequest"}
    assert doc["components"]["schemas"]["AddRequest"]["properties"]["n"]["exclusiveMinimum"] == 0
    assert "/other/ping" in doc["paths"] and "/fast/events" in doc["paths"]
    assert "/native/add" in doc["paths"]
    page = await client.get("/docs")  # the docs page reads this document
    assert page.status == 200 and "openapi.json" in page.body.decode()


async def test_fastapi_validation_is_its_own(client):
    r = await client.post("/fast/add", json={"n": 0})
    assert r.status == 422
    assert r.json()["detail"][0]["loc"] == ["body", "n"]


async def test_streamed_answers(client):
    r = await client.get("/raw/stream?n=4")
    assert r.status == 200 and r.body == b"".join(b"chunk %d\n" % i for i in range(4))
    r = await client.get("/fast/events?n=3")
    assert r.status == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert r.body == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"


async def test_app_error_is_an_opaque_500(client, caplog):
    with caplog.at_level(logging.ERROR, logger="amoeba.asgi"):
        r = await client.get("/raw/boom")
    assert r.status == 500
    assert "the app failed" not in r.body.decode()


async def test_streaming_arrives_in_parts_over_a_socket(tmp_path):
    """Chunked on the wire, and the first part is read before the app is done."""
    port = free_port()
    topo = monolith_topology(app)
    lst = topo.processes["main"].listeners[0]
    import dataclasses

    topo = dataclasses.replace(topo, processes={"main": dataclasses.replace(
        topo.processes["main"], listeners=(dataclasses.replace(lst, port=port),))})
    host = Host(app, topo, "main", data=tmp_path)
    await host.start()
    try:
        async with httpx.AsyncClient() as http, \
                http.stream("GET", f"http://127.0.0.1:{port}/raw/stream?n=30") as r:
            assert r.headers["transfer-encoding"] == "chunked"
            assert "content-length" not in r.headers
            parts = [p async for p in r.aiter_raw()]
        assert len(parts) > 1  # 30 parts 10 ms apart do not arrive as one read
        assert b"".join(parts) == b"".join(b"chunk %d\n" % i for i in range(30))
        # the connection is reusable after a streamed answer
        async with httpx.AsyncClient() as http:
            r1 = await http.get(f"http://127.0.0.1:{port}/fast/events?n=2")
            r2 = await http.get(f"http://127.0.0.1:{port}/native/count")
        assert r1.text == "data: 0\n\ndata: 1\n\n" and r2.status_code == 200
    finally:
        await host.stop()


async def test_lifespan_runs_after_services_start_and_stops_before_them(tmp_path):
    events.EVENTS.clear()
    h = InProcessHarness(app, tmp_path / "data", strict=False, env={})
    await h.start()
    try:
        assert (await h.get("/raw/echo")).status == 200
        assert events.EVENTS == ["store start", "front start", "raw startup", "fast startup"]
    finally:
        await h.aclose()
    assert events.EVENTS[4:] == ["fast shutdown", "raw shutdown", "front stop", "store stop"]


async def test_shutdown_waits_for_the_drain(tmp_path):
    """A streamed answer in flight finishes before the app's lifespan shutdown."""
    events.EVENTS.clear()
    topo = monolith_topology(app, settings=settings_from({"drain_delay": 0, "grace": 10}))
    h = InProcessHarness(app, tmp_path / "data", strict=False, env={})
    h.host = Host(app, topo, "main", listen=False, data=tmp_path)
    await h.start()
    request = asyncio.get_running_loop().create_task(h.get("/raw/stream?n=20"))
    while not any(m.inflight for ms in h.host.mounted.values() for m in ms):  # noqa: ASYNC110
        await asyncio.sleep(0.005)
    await h.host.drain()
    r = await request
    assert r.body.count(b"chunk") == 20
    assert events.EVENTS[-5:] == ["raw streamed 20", "fast shutdown", "raw shutdown", "front stop",
                                  "store stop"]


async def test_failed_startup_fails_the_process_and_opens_no_listener(tmp_path):
    port = free_port()
    import dataclasses

    topo = monolith_topology(broken_app)
    proc = topo.processes["main"]
    topo = dataclasses.replace(topo, processes={"main": dataclasses.replace(
        proc, listeners=(dataclasses.replace(proc.listeners[0], port=port),))})
    host = Host(broken_app, topo, "main", data=tmp_path)
    with pytest.raises(LifespanError, match=r"service 'broken', Mount\('mountapp.failing:app'\).*"
                                            r"startup failed.*cannot reach the warehouse"):
        await host.start()
    assert host.servers == []
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)  # /readyz is never served
    host2 = Host(missing_app, monolith_topology(missing_app), "main", listen=False, data=tmp_path)
    with pytest.raises(LifespanError, match=r"cannot import 'mountapp\.nowhere'.*pythonpath"):
        await host2.start()


async def test_an_app_without_lifespan_is_served(tmp_path):
    h = InProcessHarness(plain_app, tmp_path / "data", strict=False, env={})
    await h.start()
    try:
        r = await h.get("/plain/x")
        assert r.status == 200 and r.body == b"plain"
    finally:
        await h.aclose()


# -- the edge's policy --------------------------------------------------------------


async def _harness(tmp_path, **settings) -> InProcessHarness:
    h = InProcessHarness(app, tmp_path / "data", strict=False, env={},
                         settings={**SETTINGS, **settings})
    await h.start()
    return h


async def test_verified_principal_reaches_the_app(tmp_path):
    h = await _harness(tmp_path)
    try:
        r = await h.get("/raw/echo", headers=bearer(sign(claims(sub="carol"))))
        assert r.json()["principal"] == "carol" and r.json()["state_principal"] == "carol"
        r = await h.get("/fast/whoami", headers=bearer(sign(claims(sub="dave"))))
        assert r.json() == {"subject": "dave", "flavour": "fastapi"}
        # A token that does not verify is no principal (the app may still have its own auth).
        r = await h.get("/fast/whoami", headers=bearer(sign(claims(sub="eve", aud="other"))))
        assert r.json()["subject"] is None
    finally:
        await h.aclose()


async def test_body_cap_rate_limit_cors_access_log_and_metrics(tmp_path, caplog):
    h = await _harness(tmp_path, max_body=64, rate_limit={"ip": {"burst": 3, "rate": 0.01}},
                       cors={"origins": ["https://a.example"]},
                       observe={"metrics": True})
    try:
        assert (await h.post("/raw/echo", content=b"x" * 65)).status == 413
        with caplog.at_level(logging.INFO, logger="amoeba.access"):
            r = await h.get("/raw/echo", headers={"Origin": "https://a.example"})
        assert r.headers["access-control-allow-origin"] == "https://a.example"
        assert any("path=/raw/echo status=200" in rec.getMessage()
                   for rec in caplog.records if rec.name == "amoeba.access")
        await h.get("/fast/whoami")
        await h.get("/native/count")  # burst of 3 spent
        r = await h.get("/raw/echo")
        assert r.status == 429 and "retry-after" in r.headers
        metrics = h.host.metrics
        assert metrics is not None
        routes = {(m, r, s): hist.count for (m, r, s), hist in metrics.routes.items()}
        assert routes[("GET", "/raw/*", 200)] == 1 and routes[("GET", "/fast/*", 200)] == 1
    finally:
        await h.aclose()


async def test_trace_context_flows_into_the_app(tmp_path):
    h = await _harness(tmp_path)
    try:
        tp = "00-0123456789abcdef0123456789abcdef-0123456789abcdef-01"
        r = await h.get("/raw/echo", headers={"traceparent": tp})
        assert r.json()["traceparent"] == tp  # the app reads its own header
    finally:
        await h.aclose()
