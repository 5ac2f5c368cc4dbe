"""pydantic models in service signatures: arguments and results over HTTP,
locally, through the codec (strict) and between processes; 422s with the
field path; Body(); OpenAPI from the models; pydantic imported lazily."""

from __future__ import annotations

import subprocess
import sys
from typing import Annotated

import pytest
from pydapp.app import Item, OperationResponse, Order, QtyRequest, app

from amoeba import Body, Invalid, Service, get, post
from amoeba.spec import SpecError, spec_of
from amoeba.testing import app_fixture

client = app_fixture(app)


async def test_model_parameter_and_result_over_http(client):
    r = await client.post("/orders", json={"order": {"items": [{"name": "a"}, {"name": "b",
                                                                              "tags": ["x"]}]},
                                           "priority": 1})
    assert r.status == 200, r.body
    assert r.json() == {"count": 3, "names": ["a", "b"], "echo": {
        "items": [{"name": "a", "tags": []}, {"name": "b", "tags": ["x"]}], "note": None}}


async def test_422_carries_the_field_path(client):
    r = await client.post("/orders", json={"order": {"items": [{"name": 5}]}})
    assert r.status == 422
    err = r.json()["error"]
    assert err["type"] == "Invalid"
    assert err["details"][0]["path"] == "$.order.items[0].name"
    assert "string" in err["details"][0]["reason"]
    r = await client.post("/orders", json={"order": {"items": [{"name": "a"}]}, "priority": "x"})
    assert r.status == 422 and r.json()["error"]["details"][0]["path"] == "$.priority"


async def test_body_marker_takes_the_whole_body(client):
    r = await client.post("/reserve", json={"qty": 2})
    assert r.status == 200 and r.json()["success"] is True
    r = await client.post("/reserve", json={"qty": 0})
    assert r.status == 422
    assert r.json()["error"]["details"][0]["path"] == "$.qty"
    assert "greater than 0" in r.json()["error"]["details"][0]["reason"]
    r = await client.post("/reserve", json={"req": {"qty": 1}})  # not the keyed form
    assert r.status == 422 and r.json()["error"]["details"][0]["path"] == "$.qty"


async def test_models_cross_between_services(client):
    r = await client.post("/via", json={"qty": 1})
    assert r.status == 200 and r.json()["success"] is True
    shop = client.service("shop")
    got = await shop.reserve(QtyRequest(qty=1))
    assert isinstance(got, OperationResponse) and got.success  # a real model, in every mode
    items = await shop.maybe(Order(items=[Item(name="z")]))
    assert items == [Item(name="z")] and isinstance(items[0], Item)
    assert await shop.maybe() == []
    assert await shop.plain(4) == 8


async def test_invalid_model_data_through_the_codec(client):
    if client.mode == "inprocess":
        pytest.skip("a plain local call is an ordinary await: nothing is encoded or validated")
    with pytest.raises(Invalid) as info:
        await client.service("shop").place({"items": [{"name": ["no"]}]})
    assert info.value.details[0]["path"] == "$.order.items[0].name"


async def test_openapi_describes_the_models(client):
    doc = (await client.get("/openapi.json")).json()
    if client.mode == "processes":
        return  # one service per listener there; the in-process documents cover both
    reserve = doc["paths"]["/reserve"]["post"]
    body = reserve["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["qty"] == {"exclusiveMinimum": 0, "maximum": 100, "title": "Qty",
                                         "type": "integer"}
    ok = reserve["responses"]["200"]["content"]["application/json"]["schema"]
    assert set(ok["properties"]) == {"success", "remaining", "message"}
    place = doc["paths"]["/orders"]["post"]
    order = place["requestBody"]["content"]["application/json"]["schema"]
    ref = order.get("$ref") or ""
    fields = doc["components"]["schemas"][ref.rsplit("/", 1)[-1]]["properties"] if ref else \
        order["properties"]
    assert fields["order"]["properties"]["items"]["items"] == {"$ref": "#/components/schemas/Item"}
    assert "Item" in doc["components"]["schemas"]


def test_body_marker_misuse_is_a_startup_error():
    class OnGet(Service):
        @get("/x")
        async def x(self, q: Annotated[QtyRequest, Body()]) -> int:
            return 1

    with pytest.raises(SpecError, match="GET has no body"):
        spec_of(OnGet)

    class Two(Service):
        @post("/x")
        async def x(self, q: Annotated[QtyRequest, Body()], other: int) -> int:
            return 1

    with pytest.raises(SpecError, match=r"'q' is the whole body .*'other' cannot come from it"):
        spec_of(Two)


def test_pydantic_is_not_imported_without_models():
    code = ("import sys; sys.path[:0] = ['examples']\n"
            "from tickets.app import app\n"
            "from amoeba.codec import codec_for\n"
            "from amoeba.gateway.openapi import openapi_document\n"
            "codecs = [codec_for(m) for s in app.specs.values() for m in s.methods.values()]\n"
            "openapi_document(app, [c for c in codecs if c.spec.route])\n"
            "assert all(c.models is None and c.result_model is None for c in codecs)\n"
            "print('pydantic' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(__import__("pathlib").Path(__file__).parent.parent))
    assert out.stdout.strip() == "False"
