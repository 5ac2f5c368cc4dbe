"""Bad input is a 4xx with the usual error body, never a 500, and HTTP/1.1
semantics a client relies on, over raw sockets against the real listener."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest
import servers
from authapp.app import app as authapp
from listener import ROOT, exchange, get, parse_answers, serving
from shop.app import app as shop
from test_auth import SETTINGS as AUTH_SETTINGS
from tickets.app import app as tickets

SHOP = ROOT / "examples" / "shop" / "topologies" / "monolith.yaml"
SHOP_ENV = {"SHOP_ADMIN_EMAIL": "admin@shop.test", "SHOP_ADMIN_PASSWORD": "admin-password-1",
            "SHOP_RATE_IP_BURST": "100000", "SHOP_RATE_IP_RATE": "100000",
            "SHOP_RATE_USER_BURST": "100000", "SHOP_RATE_USER_RATE": "100000"}


def post(path: str, body: bytes, extra: str = "", ctype: str = "application/json") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nhost: t\r\ncontent-type: {ctype}\r\n"
            f"content-length: {len(body)}\r\n{extra}\r\n").encode() + body


async def one(port: int, raw: bytes) -> tuple[int, dict[str, object]]:
    (a,) = parse_answers(await exchange(port, raw + get("/healthz", "connection: close\r\n")))[:1]
    is_json = a.headers.get("content-type", "").startswith("application/json")
    return a.status, json.loads(a.body) if a.body and is_json else {}


# -- 500s from bad input ---------------------------------------------------------

async def test_out_of_range_integers_and_pages_are_422_on_sqlite(tmp_path: Path):
    async with serving(shop, tmp_path, topology=SHOP, env=SHOP_ENV) as (_, port):
        for path in (f"/api/products/{2**63}", f"/api/products/{2**31}",
                     f"/api/products?page={2**62}", f"/api/products?page={10**30}"):
            status, body = await one(port, get(path))
            assert status == 422, (path, body)
            assert body["error"]["status"] == 422  # type: ignore[index]
        login = json.dumps({"email": SHOP_ENV["SHOP_ADMIN_EMAIL"],
                            "password": SHOP_ENV["SHOP_ADMIN_PASSWORD"]}).encode()
        status, tokens = await one(port, post("/api/auth/login", login))
        auth = f"authorization: Bearer {tokens['access_token']}\r\n"
        for order in ({"product_ids": [2**63]}, {"items": [{"product_id": 2**40, "qty": 1}]}):
            status, body = await one(port, post("/api/orders", json.dumps(order).encode(), auth))
            assert status == 422, (order, body)
        status, _ = await one(port, get(f"/api/orders/{2**63}", auth))
        assert status == 422


@pytest.fixture
def postgres_db() -> object:
    base = servers.postgres_url()
    name = f"i12_listener_{uuid.uuid4().hex[:10]}"
    servers._run(servers._pg_admin, base, f'CREATE DATABASE "{name}"')
    yield f"{base}/{name}"
    servers._run(servers._pg_admin, base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_nul_in_strings_and_int32_ids_are_422_on_postgresql(tmp_path: Path, postgres_db):
    async with serving(shop, tmp_path, topology=SHOP, env=SHOP_ENV,
                       resources={"database": str(postgres_db)}) as (_, port):
        reg = json.dumps({"email": "nul\u0000@shop.test", "password": "correct horse"}).encode()
        status, body = await one(port, post("/api/auth/register", reg))
        assert status == 422, body
        status, body = await one(port, get(f"/api/products/{2**31}"))
        assert status == 422, body
        refresh = json.dumps({"refresh_token": "a\u0000.1.x"}).encode()
        status, body = await one(port, post("/api/auth/refresh", refresh))
        assert status in (401, 422), body


async def test_deeply_nested_json_is_400(tmp_path: Path):
    async with serving(tickets, tmp_path) as (_, port):
        body = b'{"qty": 1, "ignored": ' + b"[" * 1000 + b"]" * 1000 + b"}"
        status, err = await one(port, post("/api/v1/purchase", body))
        assert status == 400, err
        assert err["error"]["status"] == 400  # type: ignore[index]


# -- HTTP semantics --------------------------------------------------------------

async def test_head_is_served_wherever_get_is_without_a_body(tmp_path: Path):
    async with serving(tickets, tmp_path) as (_, port):
        raw = await exchange(port, b"HEAD /api/v1/available HTTP/1.1\r\nhost: t\r\n\r\n"
                             + b"HEAD /api/v1/purchase HTTP/1.1\r\nhost: t\r\n\r\n"
                             + get("/api/v1/available", "connection: close\r\n"))
        head, not_allowed, after = parse_answers(raw, head_only=(True, True))
        assert head.status == 200 and int(head.headers["content-length"]) > 0
        assert not_allowed.status == 405 and not_allowed.headers["allow"] == "POST"
        assert after.status == 200 and json.loads(after.body) == {"qty": 1000}


async def test_405_says_allow(tmp_path: Path):
    async with serving(tickets, tmp_path) as (_, port):
        (a,) = parse_answers(await exchange(port, get("/api/v1/purchase", "connection: close\r\n")))
        assert a.status == 405 and a.headers["allow"] == "POST"
        (a,) = parse_answers(await exchange(port, post("/api/v1/available", b"{}",
                                                       "connection: close\r\n")))
        assert a.status == 405 and a.headers["allow"] == "GET, HEAD"


async def test_parse_time_refusals_come_after_earlier_answers(tmp_path: Path):
    async with serving(tickets, tmp_path, max_body=1024) as (_, port):
        big = post("/api/v1/purchase", b"{" + b" " * 4000 + b"}")
        raw = await exchange(port, get("/api/v1/available") + get("/api/v1/available") + big)
        assert [a.status for a in parse_answers(raw)] == [200, 200, 413]
        raw = await exchange(port, get("/api/v1/available") + b"GET / HTTP/1.1\r\nbad header\r\n\r\n")
        answers = parse_answers(raw)
        assert [a.status for a in answers] == [200, 400]
        assert json.loads(answers[1].body)["error"]["status"] == 400


def chunked(path: str, *chunks: bytes) -> bytes:
    """A POST whose body comes in ``chunks`` (Transfer-Encoding: chunked, no length)."""
    head = (f"POST {path} HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n"
            f"transfer-encoding: chunked\r\n\r\n").encode()
    return head + b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"


async def test_a_chunked_body_is_read_whole_and_refused_as_it_grows_past_max_body(tmp_path: Path):
    async with serving(tickets, tmp_path, max_body=1024) as (_, port):
        whole = chunked("/api/v1/purchase", b'{"qty":', b" 2", b"}")
        pad = b" " * 600  # two chunks of 600: no Content-Length says 1200 beforehand
        big = chunked("/api/v1/purchase", b'{"qty": 1,' + pad, pad + b"}")
        raw = await exchange(port, whole + big + get("/api/v1/available"))
        answers = parse_answers(raw)
        assert [a.status for a in answers] == [200, 413], answers  # nothing after the refusal
        assert json.loads(answers[0].body)["remaining"] == 998
        err = json.loads(answers[1].body)["error"]
        assert err["message"] == "request body exceeds the limit of 1024 bytes"
        assert answers[1].headers["connection"] == "close"
        (a,) = parse_answers(await exchange(port, get("/api/v1/available", "connection: close\r\n")))
        assert json.loads(a.body) == {"qty": 998}  # the refused purchase took nothing


async def test_repeated_header_lines_are_one_comma_separated_value(tmp_path: Path):
    async with serving(tickets, tmp_path) as (_, port):
        once = get("/healthz", "x-request-id: req-1\r\n")
        twice = get("/healthz", "x-request-id: req-1\r\nx-request-id: req-2\r\nconnection: close\r\n")
        first, second = parse_answers(await exchange(port, once + twice))
        assert first.headers["x-request-id"] == "req-1"
        # "req-1, req-2" (RFC 9110 5.3) is not a valid id: a new one, not the first or last line's.
        assert second.headers["x-request-id"] not in ("req-1", "req-2", "req-1, req-2")
        raw = await exchange(port, b"GET / HTTP/1.1\r\nhost: t\r\nhost: u\r\n\r\n")
        (a,) = parse_answers(raw)
        assert a.status == 400 and "given twice" in json.loads(a.body)["error"]["message"]


async def test_connect_unknown_expectations_and_bad_targets_are_refused(tmp_path: Path):
    async with serving(tickets, tmp_path) as (_, port):
        (a,) = parse_answers(await exchange(port, b"CONNECT example.com:443 HTTP/1.1\r\n"
                                                  b"host: example.com:443\r\n\r\n"))
        assert a.status == 400, a  # no tunnels (its authority-form target is no path either)
        (a,) = parse_answers(await exchange(port, post("/api/v1/purchase", b'{"qty": 1}',
                                                       "expect: 200-ok\r\n")))
        assert a.status == 417 and a.headers["connection"] == "close"
        (a,) = parse_answers(await exchange(port, b"GET http://[bad HTTP/1.1\r\nhost: t\r\n\r\n"))
        assert a.status == 400


async def test_expect_100_continue(tmp_path: Path):
    async with serving(tickets, tmp_path) as (_, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /api/v1/purchase HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n"
                     b"content-length: 10\r\nexpect: 100-continue\r\n\r\n")
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b'{"qty": 1}')
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
        assert head.startswith(b"HTTP/1.1 200")
        writer.close()


async def test_host_header_is_required_once_on_http_1_1(tmp_path: Path):
    async with serving(tickets, tmp_path) as (_, port):
        (a,) = parse_answers(await exchange(port, b"GET /api/v1/available HTTP/1.1\r\n\r\n"))
        assert a.status == 400 and b"Host" in a.body
        (a,) = parse_answers(await exchange(
            port, b"GET /api/v1/available HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n"))
        assert a.status == 400
        (a,) = parse_answers(await exchange(port, b"GET /api/v1/available HTTP/1.0\r\n\r\n"))
        assert a.status == 200


async def test_two_authorization_headers_are_400(tmp_path: Path):
    async with serving(authapp, tmp_path, **AUTH_SETTINGS) as (_, port):
        raw = get("/api/hello", "authorization: Bearer a\r\nauthorization: Bearer b\r\n")
        (a,) = parse_answers(await exchange(port, raw))
        assert a.status == 400


async def test_percent_encoded_unreserved_characters_are_normalised(tmp_path: Path):
    async with serving(tickets, tmp_path) as (_, port):
        status, body = await one(port, get("/api/v1/%61vailable"))
        assert status == 200 and body == {"qty": 1000}
        status, _ = await one(port, get("/api%2Fv1/available"))  # a reserved one: not a slash
        assert status == 404


async def test_an_h2c_upgrade_offer_is_answered_as_http_1_1(tmp_path: Path):
    async with serving(tickets, tmp_path) as (_, port):
        raw = get("/api/v1/available", "connection: Upgrade, HTTP2-Settings\r\nupgrade: h2c\r\n"
                  "http2-settings: AAMAAABkAARAAAAAAAIAAAAA\r\n")
        answers = parse_answers(await exchange(port, raw + get("/", "connection: close\r\n")))
        assert [a.status for a in answers] == [200, 200]
        assert json.loads(answers[0].body) == {"qty": 1000}


async def test_json_is_recognised_by_media_type(tmp_path: Path):
    async with serving(tickets, tmp_path) as (_, port):
        body = b'{"qty": 1}'
        status, _ = await one(port, post("/api/v1/purchase", body, ctype="text/plain; charset=json"))
        assert status == 415
        for ctype in ("application/json; charset=utf-8", "application/merge-patch+json",
                      "Application/JSON"):
            status, err = await one(port, post("/api/v1/purchase", body, ctype=ctype))
            assert status == 200, (ctype, err)


async def test_missing_token_is_401_before_the_body_is_validated(tmp_path: Path):
    async with serving(authapp, tmp_path, **AUTH_SETTINGS) as (_, port):
        status, err = await one(port, post("/api/orders", b'{"qty": "not a number"}'))
        assert status == 401, err


# -- observability on a public listener -------------------------------------------

async def test_forwarded_requests_do_not_get_a_loopback_peers_rights(tmp_path: Path):
    async with serving(tickets, tmp_path / "a") as (_, port):
        assert (await one(port, get("/metrics")))[0] == 200  # a developer's curl localhost
        assert (await one(port, get("/metrics", "x-forwarded-for: 203.0.113.9\r\n")))[0] == 404
        assert (await one(port, get("/_amoeba/api/stats", "forwarded: for=203.0.113.9\r\n")))[0] == 404
        assert (await one(port, get("/metrics", "x-forwarded-for: 127.0.0.1\r\n")))[0] == 404
    async with serving(tickets, tmp_path / "b", trusted_proxies=["127.0.0.1"]) as (_, port):
        assert (await one(port, get("/metrics", "x-forwarded-for: 203.0.113.9\r\n")))[0] == 404
        assert (await one(port, get("/metrics", "x-forwarded-for: 127.0.0.1\r\n")))[0] == 200
        assert (await one(port, get("/metrics")))[0] == 200
