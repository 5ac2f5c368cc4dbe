"""The shop's API, in every topology: in-process (plain and strict) from the
monolith file, and microservices, hybrid and replicated started with
``amoeba run`` on PostgreSQL and Redis, and microservices once more on
MariaDB and once more with events on Kafka (a private Tansu)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import pytest
import servers
import sqlalchemy as sa
from e2e import ROOT
from shop.app import app
from shop.catalog import HoldClosed, Line
from shop.orders import Orders, _request_hash, idempotency, order_holds
from shop.owners import owners
from waiting import eventually

from amoeba import Database, ResourceContext, Service
from amoeba.testing import Harness, InProcessHarness, TopologyHarness, app_fixture

TOPOS = ROOT / "examples" / "shop" / "topologies"
ADMIN = ("admin@shop.test", "admin-password-1")
ENV = {
    "SHOP_ADMIN_EMAIL": ADMIN[0], "SHOP_ADMIN_PASSWORD": ADMIN[1],
    # The concurrency tests send hundreds of requests from a few users.
    "SHOP_RATE_USER_BURST": "100000", "SHOP_RATE_USER_RATE": "100000",
    "SHOP_RATE_IP_BURST": "100000", "SHOP_RATE_IP_RATE": "100000",
}

shop = app_fixture(
    app, modes=("inprocess", "strict"), topology=TOPOS / "monolith.yaml",
    topologies={**{n: TOPOS / f"{n}.yaml" for n in ("microservices", "hybrid", "replicated")},
                "microservices-mariadb": TOPOS / "microservices.yaml",
                "microservices-kafka": TOPOS / "microservices.yaml"},
    env=ENV, setup=servers.distributed_env)


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def login(h: Harness, email: str, password: str) -> dict[str, Any]:
    r = await h.post("/api/auth/login", json={"email": email, "password": password})
    assert r.status == 200, r.json()
    return r.json()


async def new_user(h: Harness) -> tuple[str, dict[str, str]]:
    """Register a fresh user; its id and Authorization header."""
    email = f"user-{uuid.uuid4().hex[:10]}@shop.test"
    r = await h.post("/api/auth/register", json={"email": email, "password": "correct horse"})
    assert r.status == 202, r.json()
    auth = bearer((await login(h, email, "correct horse"))["access_token"])
    me = await h.get("/api/auth/me", headers=auth)
    return me.json()["id"], auth


async def admin(h: Harness) -> dict[str, str]:
    return bearer((await login(h, *ADMIN))["access_token"])


async def new_product(h: Harness, stock: int, price: str = "12.50") -> dict[str, Any]:
    r = await h.post("/api/products", headers=await admin(h),
                     json={"name": f"thing {uuid.uuid4().hex[:6]}", "price": price, "stock": stock})
    assert r.status == 201, r.json()
    return r.json()


async def stock_of(h: Harness, pid: int) -> int:
    r = await h.get(f"/api/products/{pid}")
    assert r.status == 200
    return int(r.json()["stock"])


# -- catalog -------------------------------------------------------------------

async def test_demo_products_listed_and_paged(shop):
    r = await shop.get("/api/products?per_page=2")
    assert r.status == 200
    page = r.json()
    assert page["per_page"] == 2 and len(page["items"]) == 2 and page["total"] >= 5
    first = page["items"][0]
    assert isinstance(first["price"], str) and Decimal(first["price"]) > 0
    one = await shop.get(f"/api/products/{first['id']}")
    assert one.json() == first
    assert (await shop.get("/api/products/999999")).status == 404
    bad = await shop.get("/api/products?per_page=1000")
    assert bad.status == 422 and bad.json()["error"]["type"] == "Invalid"


async def test_only_admins_change_the_catalog(shop):
    body = {"name": "Cable", "price": "3.20", "stock": 5}
    assert (await shop.post("/api/products", json=body)).status == 401
    _, user = await new_user(shop)
    r = await shop.post("/api/products", json=body, headers=user)
    assert r.status == 403 and r.json()["error"]["type"] == "Forbidden"
    created = await new_product(shop, 5, price="3.20")
    assert created["price"] == "3.20" and created["stock"] == 5 and created["id"] > 0
    r = await shop.request("PATCH", f"/api/products/{created['id']}", headers=await admin(shop),
                           json={"price": "4.00", "id": 1})
    assert r.status == 200 and r.json()["price"] == "4.00" and r.json()["id"] == created["id"]
    r = await shop.request("PATCH", f"/api/products/{created['id']}", headers=user, json={"stock": 0})
    assert r.status == 403
    assert await stock_of(shop, created["id"]) == 5


@pytest.mark.parametrize("price", ["12.345", "-1", "NaN", "abc", "1e12"])
async def test_bad_prices_are_rejected(shop, price):
    r = await shop.post("/api/products", headers=await admin(shop),
                        json={"name": "x", "price": price, "stock": 1})
    assert r.status == 422, r.json()


# -- accounts ------------------------------------------------------------------

async def test_register_login_me(shop):
    email = f"me-{uuid.uuid4().hex[:8]}@shop.test"
    r = await shop.post("/api/auth/register", json={"email": email, "password": "long enough"})
    assert r.status == 202 and r.json()["accepted"] is True
    # A taken email gets the very same answer, and keeps its password.
    again = await shop.post("/api/auth/register",
                            json={"email": email.upper(), "password": "another password"})
    assert again.status == 202 and again.json() == r.json()
    assert (await shop.post("/api/auth/login", json={"email": email, "password": "another password"})
            ).status == 401
    assert (await shop.post("/api/auth/register",
                            json={"email": "not-an-email", "password": "long enough"})).status == 422
    assert (await shop.post("/api/auth/register",
                            json={"email": f"x{email}", "password": "short"})).status == 422
    bad = await shop.post("/api/auth/login", json={"email": email, "password": "wrong password"})
    nobody = await shop.post("/api/auth/login", json={"email": "no@shop.test", "password": "whatever1"})
    assert bad.status == nobody.status == 401
    assert bad.json()["error"]["message"] == nobody.json()["error"]["message"]
    tokens = await login(shop, email, "long enough")
    assert tokens["token_type"] == "bearer" and tokens["expires_in"] > 0
    me = await shop.get("/api/auth/me", headers=bearer(tokens["access_token"]))
    assert me.status == 200 and me.json()["email"] == email
    assert set(me.json()) == {"id", "email", "roles", "created_at"}  # never the hash
    assert (await shop.get("/api/auth/me")).status == 401


async def test_refresh_rotates_and_reuse_revokes(shop):
    email = f"rt-{uuid.uuid4().hex[:8]}@shop.test"
    await shop.post("/api/auth/register", json={"email": email, "password": "long enough"})
    first = await login(shop, email, "long enough")
    r = await shop.post("/api/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert r.status == 200
    second = r.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert (await shop.get("/api/auth/me", headers=bearer(second["access_token"]))).status == 200
    # The old refresh token again: refused, and the whole session goes with it.
    r = await shop.post("/api/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert r.status == 401
    r = await shop.post("/api/auth/refresh", json={"refresh_token": second["refresh_token"]})
    assert r.status == 401
    assert (await shop.get("/api/auth/me", headers=bearer(second["access_token"]))).status == 401
    # A refresh token is not an access token.
    assert (await shop.get("/api/auth/me", headers=bearer(second["refresh_token"]))).status == 401
    for junk in ["", "x", "a.b.c", "a.1.", "." * 100]:
        r = await shop.post("/api/auth/refresh", json={"refresh_token": junk})
        assert r.status == 401, junk


async def test_logout_revokes(shop):
    email = f"out-{uuid.uuid4().hex[:8]}@shop.test"
    await shop.post("/api/auth/register", json={"email": email, "password": "long enough"})
    t = await login(shop, email, "long enough")
    r = await shop.post("/api/auth/logout", headers=bearer(t["access_token"]))
    assert r.status == 200
    assert (await shop.post("/api/auth/refresh", json={"refresh_token": t["refresh_token"]})).status == 401
    assert (await shop.get("/api/auth/me", headers=bearer(t["access_token"]))).status == 401
    assert (await shop.post("/api/auth/logout")).status == 401


RECHECK = 2.0  # settings.auth.session_recheck's default: the bound on a revocation's reach


async def refused_everywhere(h: Harness, auth: dict[str, str], order_id: int) -> float:
    """Seconds until every authenticated route (orders, notifications, accounts)
    answers 401 to ``auth`` on every gateway replica, and stays so; fails
    after the stated bound."""
    start = loop_time()  # after the logout answered: every remembered answer is older
    routes = [("GET", "/api/orders", None), ("GET", f"/api/orders/{order_id}", None),
              ("POST", "/api/orders", {"items": [{"product_id": 999999, "qty": 1}]}),  # 404 if let in
              ("GET", "/api/notifications", None), ("GET", "/api/auth/me", None),
              ("POST", "/api/auth/logout", None)]
    while True:
        answers = []
        for m, p, b in routes * 2:  # twice each: the harness alternates between gateway replicas
            sent = loop_time() - start
            answers.append((round(sent, 2), m, p, (await h.request(m, p, headers=auth, json=b)).status))
        if all(status == 401 for *_, status in answers):
            return loop_time() - start
        # A process may let the token in while it trusts an answer it had before the
        # logout, for RECHECK at most: a request sent later than that must be refused,
        # however slow the machine (the server looks no sooner than it was sent).
        late = [a for a in answers if a[3] != 401 and a[0] >= RECHECK]
        assert not late, late
        assert all(a[3] in (200, 404, 401) for a in answers), answers
        await asyncio.sleep(0.1)


def loop_time() -> float:
    return asyncio.get_running_loop().time()


async def test_logout_ends_the_access_token_on_every_route(shop):
    _, auth = await new_user(shop)
    r = await shop.post("/api/orders", headers=auth, json={"items": [{"product_id": 1, "qty": 1}]})
    assert r.status == 201, r.json()
    oid = r.json()["id"]
    assert (await shop.post("/api/auth/logout", headers=auth)).status == 200
    took = await refused_everywhere(shop, auth, oid)
    print(f"{shop.mode}: logout refused everywhere after {took:.2f}s")
    # Another session of the same user is untouched.
    _, other = await new_user(shop)
    assert (await shop.get("/api/orders", headers=other)).status == 200


async def test_refresh_reuse_ends_the_access_tokens(shop):
    email = f"reuse-{uuid.uuid4().hex[:8]}@shop.test"
    await shop.post("/api/auth/register", json={"email": email, "password": "long enough"})
    first = await login(shop, email, "long enough")
    second = (await shop.post("/api/auth/refresh", json={"refresh_token": first["refresh_token"]})).json()
    auth = bearer(second["access_token"])
    r = await shop.post("/api/orders", headers=auth, json={"items": [{"product_id": 1, "qty": 1}]})
    assert r.status == 201, r.json()
    # The stolen first refresh token comes back: the whole session ends, access tokens too.
    assert (await shop.post("/api/auth/refresh", json={"refresh_token": first["refresh_token"]})
            ).status == 401
    await refused_everywhere(shop, auth, r.json()["id"])
    await refused_everywhere(shop, bearer(first["access_token"]), r.json()["id"])


async def test_password_change_ends_every_session(shop):
    email = f"pw-{uuid.uuid4().hex[:8]}@shop.test"
    await shop.post("/api/auth/register", json={"email": email, "password": "old password"})
    phone = bearer((await login(shop, email, "old password"))["access_token"])
    laptop = bearer((await login(shop, email, "old password"))["access_token"])
    r = await shop.post("/api/orders", headers=phone, json={"items": [{"product_id": 1, "qty": 1}]})
    oid = r.json()["id"]
    wrong = await shop.post("/api/auth/password", headers=laptop,
                            json={"current_password": "not it", "new_password": "new password"})
    assert wrong.status == 401
    r = await shop.post("/api/auth/password", headers=laptop,
                        json={"current_password": "old password", "new_password": "new password"})
    assert r.status == 200, r.json()
    fresh = bearer(r.json()["access_token"])
    await refused_everywhere(shop, phone, oid)
    await refused_everywhere(shop, laptop, oid)
    assert (await shop.get(f"/api/orders/{oid}", headers=fresh)).status == 200
    assert (await shop.post("/api/auth/login", json={"email": email, "password": "old password"})
            ).status == 401
    await login(shop, email, "new password")


async def test_failed_logins_lock_the_account_alike_for_unknown_emails(shop):
    email = f"guess-{uuid.uuid4().hex[:8]}@shop.test"
    await shop.post("/api/auth/register", json={"email": email, "password": "right password"})
    nobody = f"nobody-{uuid.uuid4().hex[:8]}@shop.test"
    locked = {}
    for target in (email, nobody):
        statuses = [(await shop.post("/api/auth/login", json={"email": target, "password": "wrong one"})
                     ).status for _ in range(6)]
        assert statuses == [401] * 6, statuses  # five free failures, the sixth locks
        r = await shop.post("/api/auth/login", json={"email": target, "password": "right password"})
        assert r.status == 429, r.json()  # locked: not even the right password gets in
        assert r.json()["error"]["type"] == "LoginLocked"
        assert 1 <= int(r.headers["retry-after"]) <= 2
        locked[target] = {k: v for k, v in r.json()["error"].items() if k not in ("request_id",
                                                                                  "retry_after")}
    assert locked[email] == locked[nobody]  # nothing tells a known account from an unknown one
    # Another account is not affected.
    _, other = await new_user(shop)
    assert (await shop.get("/api/auth/me", headers=other)).status == 200
    await asyncio.sleep(2.1)
    await login(shop, email, "right password")  # the lock ended; success forgets the failures
    statuses = [(await shop.post("/api/auth/login", json={"email": email, "password": "wrong one"})
                 ).status for _ in range(5)]
    assert statuses == [401] * 5, statuses


async def test_register_takes_as_long_for_a_taken_email(shop):
    if shop.mode not in ("inprocess", "microservices"):
        pytest.skip("timed once in-process and once over RPC")
    taken = f"taken-{uuid.uuid4().hex[:8]}@shop.test"
    await shop.post("/api/auth/register", json={"email": taken, "password": "long enough"})
    new, old = [], []
    for i in range(6):
        for email, times in ((f"fresh-{i}-{uuid.uuid4().hex[:8]}@shop.test", new), (taken, old)):
            t = loop_time()
            r = await shop.post("/api/auth/register", json={"email": email, "password": "long enough"})
            times.append(loop_time() - t)
            assert r.status == 202
    m_new, m_old = sorted(new)[3], sorted(old)[3]
    print(f"{shop.mode}: register median {m_new * 1e3:.0f} ms new email, {m_old * 1e3:.0f} ms taken")
    assert 0.5 < m_old / m_new < 2.0  # both are one argon2 hash plus a database write


# -- orders --------------------------------------------------------------------

async def test_order_priced_by_the_catalog(shop):
    uid, user = await new_user(shop)
    p = await new_product(shop, 10, price="2.50")
    r = await shop.post("/api/orders", headers=user, json={
        "items": [{"product_id": p["id"], "qty": 3, "price": "0.01"}],
        "status": "paid", "user_id": uid})
    assert r.status == 201, r.json()
    order = r.json()
    assert order["total_amount"] == "7.50" and order["status"] == "placed"
    assert order["user_id"] == uid and order["items"][0]["unit_price"] == "2.50"
    assert await stock_of(shop, p["id"]) == 7
    # The original contract: product_ids and a total that must match.
    r = await shop.post("/api/orders", headers=user, json={
        "user_id": uid, "product_ids": [p["id"], p["id"]], "total_amount": "5.00"})
    assert r.status == 201 and r.json()["total_amount"] == "5.00"
    r = await shop.post("/api/orders", headers=user, json={
        "product_ids": [p["id"]], "total_amount": "0.01"})
    # A total that disagrees with the current prices is a conflict with the catalog's state
    # (409), someone else's user_id is forbidden (403): neither is a malformed request.
    assert r.status == 409 and "total_amount" in r.json()["error"]["message"]
    r = await shop.post("/api/orders", headers=user, json={"product_ids": [p["id"]], "user_id": "u_other"})
    assert r.status == 403
    assert await stock_of(shop, p["id"]) == 5  # the refused orders took nothing
    r = await shop.post("/api/orders", headers=user, json={"items": [{"product_id": 999999, "qty": 1}]})
    assert r.status == 404
    r = await shop.post("/api/orders", headers=user, json={"items": [{"product_id": p["id"], "qty": 6}]})
    assert r.status == 409 and r.json()["error"]["type"] == "OutOfStock"
    assert (await shop.post("/api/orders", json={"product_ids": [p["id"]]})).status == 401


async def test_orders_are_private(shop):
    _, alice = await new_user(shop)
    _, bob = await new_user(shop)
    p = await new_product(shop, 5)
    r = await shop.post("/api/orders", headers=alice, json={"items": [{"product_id": p["id"], "qty": 1}]})
    oid = r.json()["id"]
    assert (await shop.get(f"/api/orders/{oid}", headers=alice)).status == 200
    r = await shop.get(f"/api/orders/{oid}", headers=bob)
    assert r.status == 404
    assert (await shop.get(f"/api/orders/{oid}")).status == 401
    mine = (await shop.get("/api/orders", headers=alice)).json()
    assert [o["id"] for o in mine["items"]] == [oid]
    assert (await shop.get("/api/orders", headers=bob)).json()["items"] == []


async def test_idempotency_key(shop):
    _, user = await new_user(shop)
    p = await new_product(shop, 100)
    body = {"items": [{"product_id": p["id"], "qty": 2}]}
    key = {**user, "idempotency-key": uuid.uuid4().hex}
    first = await shop.post("/api/orders", headers=key, json=body)
    again = await shop.post("/api/orders", headers=key, json=body)
    assert first.status == 201 and again.status == 201
    assert again.json() == first.json()
    assert await stock_of(shop, p["id"]) == 98
    other = await shop.post("/api/orders", headers=key, json={"items": [{"product_id": p["id"], "qty": 3}]})
    assert other.status == 409 and other.json()["error"]["type"] == "IdempotencyKeyReused"
    # Concurrent repeats: one order; the others see it, or 409 while it runs.
    key = {**user, "idempotency-key": uuid.uuid4().hex}
    rs = await asyncio.gather(*(shop.post("/api/orders", headers=key, json=body) for _ in range(10)))
    assert {r.status for r in rs} <= {201, 409}, [r.status for r in rs]
    assert len({r.json()["id"] for r in rs if r.status == 201}) == 1
    assert await stock_of(shop, p["id"]) == 96
    orders = (await shop.get("/api/orders?per_page=100", headers=user)).json()
    assert orders["total"] == 2


async def test_idempotent_repeat_while_running_is_409(shop):
    """Hold the product's row lock so the first request stays in flight."""
    _, user = await new_user(shop)
    p = await new_product(shop, 10)
    body = {"items": [{"product_id": p["id"], "qty": 1}]}
    key = {**user, "idempotency-key": uuid.uuid4().hex}
    async def claimed() -> bool:  # the first request's claim of the key is stored
        async with service_db(shop, Orders) as db:
            return await db.fetchone(sa.select(idempotency.c.idem_key).where(
                idempotency.c.idem_key == key["idempotency-key"])) is not None

    async with hold_product(shop, p["id"]):
        first = asyncio.ensure_future(shop.post("/api/orders", headers=key, json=body))
        await eventually(claimed, 30, "the first request claiming its Idempotency-Key")
        assert not first.done()
        repeat = await shop.post("/api/orders", headers=key, json=body)
        assert repeat.status == 409, repeat.json()
        assert repeat.json()["error"]["type"] == "IdempotencyKeyInUse"
    done = await first
    assert done.status == 201
    again = await shop.post("/api/orders", headers=key, json=body)
    assert again.status == 201 and again.json()["id"] == done.json()["id"]
    assert await stock_of(shop, p["id"]) == 9


@contextlib.asynccontextmanager
async def service_db(shop: Harness, service: type[Service]) -> AsyncIterator[Database]:
    """The service's own database, opened from outside the app (as an operator would)."""
    if isinstance(shop, InProcessHarness):
        url, data = None, shop.host.data_dir
    else:
        assert isinstance(shop, TopologyHarness)
        url, data = shop.group.env["DATABASE_URL"], shop.group.dir / "data"
    db = await Database.open(ResourceContext(service.name, url, data, {}, owner=service))
    try:
        yield db
    finally:
        await db.aclose()


async def test_a_dead_processes_hold_goes_back_to_stock(shop):
    """orders recorded a hold and catalog took its stock, then the process died
    before the order was stored: the sweeper gives the stock back, once."""
    p = await new_product(shop, 10)
    hold = uuid.uuid4().hex
    async with service_db(shop, Orders) as db:
        live = (await db.fetchall(sa.select(owners.c.owner_id)))[0].owner_id  # a running replica
        await db.execute(order_holds.insert().values(
            hold_id=hold, owner=live, state="pending",
            created_at=datetime.now(UTC) - timedelta(seconds=2)))
        catalog = shop.service("catalog")
        await catalog.reserve([Line(product_id=p["id"], qty=4)], hold)
        again = await catalog.reserve([Line(product_id=p["id"], qty=4)], hold)  # a retried call
        assert [(x.product_id, x.qty) for x in again] == [(p["id"], 4)]
        assert await stock_of(shop, p["id"]) == 6  # a live owner's hold younger than 30 s stays
        # Now its owner is a process that died (no heartbeat), as after a SIGKILL:
        await db.execute(order_holds.update().where(order_holds.c.hold_id == hold).values(
            owner="a-process-that-died"))
    start = loop_time()
    while await stock_of(shop, p["id"]) != 10:
        assert loop_time() - start < 10, "the dead process's hold was not released"
        await asyncio.sleep(0.1)
    print(f"{shop.mode}: hold of a dead process released after {loop_time() - start:.1f}s")
    with pytest.raises(HoldClosed):  # a late reservation of it cannot take stock again
        await catalog.reserve([Line(product_id=p["id"], qty=4)], hold)
    assert not await catalog.release(hold)  # and releasing again gives nothing more
    # A release that comes before its reservation closes the hold for good.
    early = uuid.uuid4().hex
    assert not await catalog.release(early)
    with pytest.raises(HoldClosed):
        await catalog.reserve([Line(product_id=p["id"], qty=1)], early)
    assert await stock_of(shop, p["id"]) == 10


async def test_a_dead_processes_idempotency_claim_is_taken_over_at_once(shop):
    uid, user = await new_user(shop)
    p = await new_product(shop, 10)
    lines = [Line(product_id=p["id"], qty=1)]
    dead, live = uuid.uuid4().hex, uuid.uuid4().hex
    async with service_db(shop, Orders) as db:
        me = (await db.fetchall(sa.select(owners.c.owner_id)))[0].owner_id  # a live replica
        for key, owner in ((dead, "a-process-that-died"), (live, me)):
            await db.execute(idempotency.insert().values(
                user_id=uid, idem_key=key, request_hash=_request_hash(lines, None), order_id=None,
                created_at=datetime.now(UTC), owner=owner))
    body = {"items": [{"product_id": p["id"], "qty": 1}]}
    r = await shop.post("/api/orders", headers={**user, "idempotency-key": dead}, json=body)
    assert r.status == 201, r.json()  # at once, not after 60 s
    again = await shop.post("/api/orders", headers={**user, "idempotency-key": dead}, json=body)
    assert again.status == 201 and again.json()["id"] == r.json()["id"]
    r = await shop.post("/api/orders", headers={**user, "idempotency-key": live}, json=body)
    assert r.status == 409 and r.json()["error"]["type"] == "IdempotencyKeyInUse"
    assert r.headers["retry-after"] == "1"
    assert await stock_of(shop, p["id"]) == 9


@contextlib.asynccontextmanager
async def hold_product(shop: Harness, pid: int):
    """Lock one catalog row from outside the app, the way a long transaction would."""
    if isinstance(shop, InProcessHarness):
        conn = sqlite3.connect(shop.host.data_dir / "catalog.sqlite3", isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")  # SQLite locks the whole file for writing
        try:
            yield
        finally:
            conn.execute("ROLLBACK")
            conn.close()
        return
    assert isinstance(shop, TopologyHarness)
    url = shop.group.env["DATABASE_URL"]
    if url.startswith("mysql"):
        import aiomysql

        parts = urlsplit(url)
        my = await aiomysql.connect(host=parts.hostname, port=parts.port, user=parts.username,
                                    password=parts.password or "", db=parts.path[1:] + "_catalog",
                                    autocommit=False)
        try:
            async with my.cursor() as cur:
                await cur.execute("SELECT stock FROM products WHERE id = %s FOR UPDATE", (pid,))
                yield
            await my.rollback()
        finally:
            my.close()
        return
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        tx = conn.transaction()
        await tx.start()
        await conn.execute("SELECT stock FROM catalog.products WHERE id = $1 FOR UPDATE", pid)
        yield
        await tx.rollback()
    finally:
        await conn.close()


async def test_last_units_sell_exactly_once(shop):
    """200 concurrent orders for the last 20 units: 20 succeed, 180 get 409."""
    users = [(await new_user(shop))[1] for _ in range(4)]
    p = await new_product(shop, 20)
    body = {"items": [{"product_id": p["id"], "qty": 1}]}
    rs = await asyncio.gather(*(shop.post("/api/orders", headers=users[i % 4], json=body)
                                for i in range(200)))
    statuses = [r.status for r in rs]
    print(f"{shop.mode}: {statuses.count(201)} placed, {statuses.count(409)} refused")
    assert statuses.count(201) == 20 and statuses.count(409) == 180, sorted(set(statuses))
    assert await stock_of(shop, p["id"]) == 0


# -- bad input -----------------------------------------------------------------

async def test_bad_bodies_are_4xx(shop):
    _, user = await new_user(shop)
    cases = [
        (b"{not json", {"content-type": "application/json"}, 400),
        (b"[1, 2]", {"content-type": "application/json"}, 422),
        (b"", {"content-type": "application/json"}, 422),
        (b'{"items": "many"}', {"content-type": "application/json"}, 422),
        (b'{"items": [{"product_id": 1, "qty": -1}]}', {"content-type": "application/json"}, 422),
        (b'{"product_ids": [1]}', {"content-type": "text/plain"}, 415),
        (b'{"product_ids": [' + b"1," * 40000 + b"1]}", {"content-type": "application/json"}, 413),
    ]
    for content, headers, status in cases:
        r = await shop.request("POST", "/api/orders", content=content, headers={**user, **headers})
        assert r.status == status, (content[:40], r.status, r.body[:200])
        assert r.json()["error"]["request_id"]


async def test_gateway_index(shop):
    r = await shop.get("/api")
    assert r.status == 200 and r.json()["you"] is None
    uid, user = await new_user(shop)
    assert (await shop.get("/api", headers=user)).json()["you"] == uid
    assert (await shop.get("/api", headers=bearer("garbage"))).status == 401


# The topology's default limits, as a person meets them (no overrides).
limited = app_fixture(app, modes=("inprocess",), topology=TOPOS / "monolith.yaml",
                      env={"SHOP_ADMIN_EMAIL": ADMIN[0], "SHOP_ADMIN_PASSWORD": ADMIN[1]})


async def test_default_rate_limit_is_a_burst_of_20_per_user(limited):
    _, user = await new_user(limited)
    statuses = [(await limited.get("/api/auth/me", headers=user)).status for _ in range(25)]
    assert statuses[:18] == [200] * 18 and 429 in statuses, statuses
    r = await limited.get("/api/auth/me", headers=user)
    assert r.status == 429 and int(r.headers["retry-after"]) >= 1
    assert r.json()["error"]["type"] == "TooManyRequests"
    _, other = await new_user(limited)  # another user has a bucket of their own
    assert (await limited.get("/api/auth/me", headers=other)).status == 200


# -- events ----------------------------------------------------------------------

async def notifications_of(h: Harness, user: dict[str, str], n: int) -> list[dict[str, Any]]:
    """The user's notifications once there are ``n`` (events arrive asynchronously)."""
    for _ in range(200):
        r = await h.get("/api/notifications", headers=user)
        assert r.status == 200, r.json()
        if r.json()["total"] >= n:
            return list(r.json()["items"])
        await asyncio.sleep(0.05)
    raise AssertionError(f"{h.mode}: fewer than {n} notifications after 10 s: {r.json()}")


class _Unsettled:
    """Not settled yet (falsy), and what is still on its way, for the failure message."""

    def __init__(self, left: dict[str, Any]):
        self.left = left

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return ", ".join(f"{k}: {v}" for k, v in self.left.items())


async def events_settled(h: Harness, within: float = 30.0) -> None:
    """Wait until no event is on its way anywhere (every outbox empty, every
    consumer group's lag 0): nothing can arrive, or arrive again, after this."""
    async def quiet() -> bool | _Unsettled:
        if isinstance(h, InProcessHarness):
            events = h.host.events
            assert events is not None
            lag, waiting = await events.lag(), await events.outbox_waiting()
            left = {f"lag of {k}": n for k, n in lag.items() if n}
            left |= {f"outbox of {k}": n for k, n in waiting.items() if n}
            return _Unsettled(left) if left else True
        cluster = (await h.get("/_amoeba/api/cluster")).json()
        snaps = [i for p in cluster["processes"] for i in p["instances"]]
        errors = {f"error of {s.get('process')}": s["error"] for s in snaps if "error" in s}
        if errors:
            return _Unsettled(errors)
        stats = [(s.get("process"), s["events"]) for s in snaps if s.get("events")]
        if not stats:
            return _Unsettled({"events": "no process reports events"})
        # -1: unknown, not settled
        left = {f"lag of {c['service']} on {c['event']} in {p}": c["lag"]
                for p, e in stats for c in e["consumers"] if c["lag"] != 0}
        left |= {f"outbox of {svc} in {p}": n for p, e in stats for svc, n in e["outbox"].items()
                 if n != 0}
        return _Unsettled(left) if left else True

    await eventually(quiet, within, "events settled (no lag, outboxes empty)")


async def test_events_become_notifications(shop):
    _, user = await new_user(shop)
    p = await new_product(shop, 5)
    r = await shop.post("/api/orders", headers=user, json={"items": [{"product_id": p["id"], "qty": 2}]})
    assert r.status == 201
    got = await notifications_of(shop, user, 2)
    await events_settled(shop)  # nothing on its way: a duplicate would be here by now
    again = (await shop.get("/api/notifications", headers=user)).json()
    assert again["total"] == 2, again
    kinds = sorted(n["kind"] for n in got)
    assert kinds == ["order_placed", "welcome"]
    assert f"Order {r.json()['id']} placed" in next(n["message"] for n in got if n["kind"] == "order_placed")
    _, other = await new_user(shop)
    mine = await notifications_of(shop, other, 1)
    assert [n["kind"] for n in mine] == ["welcome"]  # only the caller's own
    assert (await shop.get("/api/notifications")).status == 401


async def _shop_metric(h: Harness, name: str) -> tuple[float, float]:
    """(value, sum) of the app metric ``name`` over every replica of the shop."""
    if isinstance(h, InProcessHarness):
        snaps = [(await h.get("/_amoeba/api/stats")).json()]
    else:
        cluster = (await h.get("/_amoeba/api/cluster")).json()
        snaps = [i for p in cluster["processes"] for i in p["instances"]]
        assert all("error" not in s for s in snaps), snaps
    value = total = 0.0
    for snap in snaps:
        for m in snap.get("metrics", []):
            if m["name"] == name:
                value += sum(s["value"] for s in m["series"])
                total += sum(s.get("sum", 0.0) for s in m["series"])
    return value, total


async def test_orders_placed_and_checkout_value_are_the_shops_own_metrics(shop):
    _, user = await new_user(shop)
    p = await new_product(shop, 10, price="2.50")
    placed, _ = await _shop_metric(shop, "shop_orders_placed")
    count, value = await _shop_metric(shop, "shop_checkout_value")
    r = await shop.post("/api/orders", headers=user, json={"items": [{"product_id": p["id"], "qty": 3}]})
    assert r.status == 201, r.json()
    r = await shop.post("/api/orders", headers=user, json={"items": [{"product_id": p["id"], "qty": 99}]})
    assert r.status == 409  # refused: not counted
    assert (await _shop_metric(shop, "shop_orders_placed"))[0] == placed + 1
    assert await _shop_metric(shop, "shop_checkout_value") == (count + 1, pytest.approx(value + 7.5))
