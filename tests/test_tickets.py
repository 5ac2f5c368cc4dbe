"""The tickets HTTP contract (DESIGN §4), in-process, strict and as processes."""

from __future__ import annotations

import asyncio

import pytest
from tickets.app import app

from amoeba.testing import app_fixture

tickets = app_fixture(app, env={"INITIAL_STOCK": "1000"})


async def available(t) -> int:
    r = await t.get("/api/v1/available")
    assert r.status == 200
    return r.json()["qty"]


async def test_purchase_takes_from_stock(tickets):
    before = await available(tickets)
    r = await tickets.post("/api/v1/purchase", json={"qty": 3})
    assert r.status == 200
    body = r.json()
    assert body["success"] is True and body["remaining"] == before - 3
    assert isinstance(body["message"], str)
    assert await available(tickets) == before - 3


async def test_reserve_contract(tickets):
    before = await available(tickets)
    r = await tickets.post("/api/v1/reserve", json={"qty": 2})
    assert r.status == 200
    assert r.json()["success"] is True and r.json()["remaining"] == before - 2


async def test_not_enough_stock_is_a_clean_refusal(tickets):
    before = await available(tickets)
    r = await tickets.post("/api/v1/purchase", json={"qty": before + 1})
    assert r.status == 200
    assert r.json()["success"] is False and r.json()["remaining"] == before
    assert await available(tickets) == before


async def test_index_health_ready(tickets):
    r = await tickets.get("/")
    assert r.status == 200 and "mode" in r.json()
    for path in ("/api/v1/health", "/healthz"):
        r = await tickets.get(path)
        assert r.status == 200 and r.json()["status"] == "healthy"
    for path in ("/api/v1/ready", "/readyz"):
        assert (await tickets.get(path)).status == 200


async def test_openapi_lists_the_routes(tickets):
    r = await tickets.get("/openapi.json")
    assert r.status == 200
    doc = r.json()
    assert doc["openapi"].startswith("3.")
    paths = set(doc["paths"])
    assert paths & {"/api/v1/purchase", "/api/v1/available"}
    r = await tickets.get("/docs")
    assert r.status == 200 and b"<html" in r.body and b"http://" not in r.body.split(b"<script")[0]


@pytest.mark.parametrize("body,status,path", [
    (b'{"qty": 1', 400, None),                   # malformed JSON
    (b'[1, 2]', 422, "$"),                       # not an object
    (b'{"qty": "one"}', 422, "$.qty"),           # wrong type
    (b'{}', 422, "$"),                           # missing field
    (b'', 422, "$"),                             # no body
    (b'{"qty": 0}', 422, "$.qty"),
    (b'{"qty": -5}', 422, "$.qty"),
    (b'{"qty": 1000000000000}', 422, "$.qty"),   # absurdly large
    (b'{"qty": 1.5}', 422, "$.qty"),
    (b'{"qty": true}', 422, "$.qty"),
])
async def test_bad_input_is_4xx_and_sells_nothing(tickets, body, status, path):
    before = await available(tickets)
    r = await tickets.post("/api/v1/purchase", content=body,
                           headers={"content-type": "application/json"})
    assert r.status == status, r.body
    err = r.json()["error"]
    assert set(err) >= {"type", "status", "message", "request_id"}
    assert err["status"] == status
    if path is not None:
        assert err["details"][0]["path"] == path
    assert await available(tickets) == before


async def test_wrong_content_type_unknown_route_wrong_method(tickets):
    r = await tickets.post("/api/v1/purchase", content=b"qty=1",
                           headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status == 415 and r.json()["error"]["type"] == "UnsupportedMediaType"
    r = await tickets.get("/api/v1/nothing-here")
    assert r.status == 404 and r.json()["error"]["type"] == "NotFound"
    r = await tickets.request("DELETE", "/api/v1/purchase")
    assert r.status == 405 and r.json()["error"]["type"] == "MethodNotAllowed"


async def test_body_over_the_limit_is_413(tickets):
    before = await available(tickets)
    big = b'{"qty": 1, "pad": "' + b"x" * (1 << 20) + b'"}'
    r = await tickets.post("/api/v1/purchase", content=big,
                           headers={"content-type": "application/json"})
    assert r.status == 413
    assert r.json()["error"]["type"] == "PayloadTooLarge"
    assert r.json()["error"]["request_id"] == r.headers["x-request-id"]
    assert await available(tickets) == before


# A limit of its own, in every mode: the edge (in memory) and the listener (over
# TCP) refuse one byte over it and take a body of exactly that size.  The harness
# has no body check of its own, so in memory this 413 can only be the edge's.
small = app_fixture(app, env={"INITIAL_STOCK": "1000"}, settings={"max_body": 512})


def _padded(size: int) -> bytes:
    head, tail = b'{"qty": 1, "pad": "', b'"}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


async def test_the_body_limit_is_the_settings_to_the_byte(small):
    json_type = {"content-type": "application/json"}
    before = await available(small)
    r = await small.post("/api/v1/purchase", content=_padded(512), headers=json_type)
    assert r.status == 200 and r.json()["remaining"] == before - 1, r.body
    r = await small.post("/api/v1/purchase", content=_padded(513), headers=json_type)
    assert r.status == 413, r.body
    err = r.json()["error"]
    assert err["type"] == "PayloadTooLarge"
    assert err["message"] == "request body exceeds the limit of 512 bytes"
    assert err["request_id"] == r.headers["x-request-id"]
    if small.mode == "processes":  # the listener's refusal, from Content-Length: body unread
        assert r.headers.get("connection") == "close", r.headers
    assert await available(small) == before - 1


async def test_500_concurrent_buyers_never_oversell(tickets):
    start = await available(tickets)
    qty = start // 250 + 1  # 500 buyers ask for about twice what is left
    results = await asyncio.gather(*(
        tickets.post("/api/v1/purchase", json={"qty": qty}) for _ in range(500)))
    assert all(r.status == 200 for r in results)
    sold = sum(qty for r in results if r.json()["success"])
    left = await available(tickets)
    print(f"[{tickets.mode}] stock {start}, 500 buyers x {qty}: sold {sold}, left {left}")
    assert left >= 0 and sold + left == start and left < qty
