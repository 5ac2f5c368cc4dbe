"""Every wire type and error path, run in-process, strict and as processes."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

import pytest
from demo.app import Box, Color, OutOfCoffee, Point, app

from amoeba import Conflict, Internal
from amoeba.testing import app_fixture

demo = app_fixture(app)


async def test_primitives_and_containers(demo):
    s = demo.service("store")
    assert await s.echo_int(7) == 7
    assert await s.echo_none() is None
    assert await s.echo_list([1, 2, 3]) == [1, 2, 3]
    assert await s.echo_dict({"a": 1.5}) == {"a": 1.5}
    assert await s.echo_tuple((1, "x")) == (1, "x")
    assert await s.echo_optional() is None
    assert await s.echo_optional(v=4) == 4
    assert await s.echo_enum(Color.BLUE) is Color.BLUE


async def test_rich_types_come_back_typed(demo):
    s = demo.service("store")
    at = dt.datetime(2026, 11, 21, 12, 30, tzinfo=dt.UTC)
    assert await s.echo_when(at, dt.date(2026, 1, 2)) == (at, dt.date(2026, 1, 2))
    u = uuid.uuid4()
    got_u, got_d = await s.echo_ids(u, Decimal("12.50"))
    assert got_u == u and isinstance(got_u, uuid.UUID)
    assert got_d == Decimal("12.50") and isinstance(got_d, Decimal)
    p = await s.echo_struct(Point(1, 2, ["a"]))
    assert p == Point(1, 2, ["a"]) and isinstance(p, Point)
    b = await s.echo_box(Box("crate", 2.5))
    assert b == Box("crate", 2.5) and isinstance(b, Box)


async def test_domain_error_keeps_its_class_and_message(demo):
    with pytest.raises(OutOfCoffee, match="no coffee left") as info:
        await demo.service("store").fail()
    assert isinstance(info.value, Conflict)


async def test_unexpected_error_is_opaque_across_the_wire(demo):
    # A plain in-process await propagates the real exception, as Python does;
    # once the call crosses the codec the caller only learns "internal error".
    expected = RuntimeError if demo.mode == "inprocess" else Internal
    with pytest.raises(expected) as info:
        await demo.service("store").crash()
    assert ("secret" in str(info.value)) == (demo.mode == "inprocess")


async def test_http_error_bodies(demo):
    r = await demo.post("/front/fail")
    assert r.status == 409
    err = r.json()["error"]
    assert err["type"] == "OutOfCoffee" and err["message"] == "no coffee left"
    assert err["request_id"] == r.headers["x-request-id"]
    r = await demo.post("/front/crash")
    assert r.status == 500
    err = r.json()["error"]
    assert err == {"type": "Internal", "status": 500, "message": "internal error",
                   "request_id": r.headers["x-request-id"]}


async def test_http_binding_path_query_body(demo):
    r = await demo.post("/store/items", json={"x": 3, "y": 4, "tags": ["t"]})
    assert r.status == 201, r.body
    assert r.json() == {"x": 3, "y": 4, "tags": ["t"]}
    r = await demo.post("/store/items", json={"x": -1, "y": 4})
    assert r.status == 422
    assert r.json()["error"]["details"][0]["path"] == "$.x"
    r = await demo.get("/store/items/abc")
    assert r.status == 422
    r = await demo.get("/store/items/999?scale=3")
    assert r.status == 200 and r.json()["x"] == 0
    r = await demo.get("/store/items/999?scale=notanumber")
    assert r.status == 422 and r.json()["error"]["details"][0]["path"] == "$.scale"


async def test_trace_and_deadline_travel(demo):
    r = await demo.get("/front/info", headers={
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"})
    assert r.status == 200
    mine, theirs = r.json()
    assert mine["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert theirs["trace_id"] == mine["trace_id"]
    assert 0 < theirs["remaining"] <= mine["remaining"] <= 10.0


async def test_shared_objects(demo):
    """In a plain monolith the store mutates the caller's object; strict mode
    and real processes do not, and strict mode is how a test finds out."""
    tags = await demo.service("front").share()
    if demo.mode == "inprocess":
        assert tags == ["original", "changed-by-store"]
    else:
        assert tags == ["original"]


async def test_wrong_arguments_are_rejected_by_the_callee(demo):
    if demo.mode == "inprocess":
        pytest.skip("a plain await does no validation, as in Python")
    from amoeba import Invalid

    with pytest.raises(Invalid, match=r"\$\[0\]"):
        await demo.service("store").echo_int("not an int")


async def test_put_patch_delete(demo):
    idx = await demo.service("store").keep(Point(1, 1)) - 1  # the new item's index
    r = await demo.request("PUT", f"/store/items/{idx}", json={"x": 5, "y": 6})
    assert r.status == 200 and (r.json()["x"], r.json()["y"]) == (5, 6)
    r = await demo.request("PATCH", f"/store/items/{idx}", json={"y": 9})
    assert r.status == 200 and (r.json()["x"], r.json()["y"]) == (5, 9)
    r = await demo.request("PUT", f"/store/items/{idx}", json={"x": 5})
    assert r.status == 422 and r.json()["error"]["details"][0]["path"] == "$"
    r = await demo.request("PATCH", "/store/items/99999", json={})
    assert r.status == 404 and r.json()["error"]["message"] == "no item 99999"
    r = await demo.request("DELETE", f"/store/items/{idx}?reason=cleanup")
    assert r.status == 200 and r.json() == idx  # items left
