"""The shop behind real nginx and HAProxy, configured by ``amoeba deploy``:
three gateway replicas under ``amoeba run`` on PostgreSQL, Redis and NATS
(tests/topologies/shop-lb.yaml), load through the balancer, and then

* ``SIGKILL`` of one gateway replica mid-run: no GET fails, every order key
  ends with exactly one order, and the restarted replica is back in rotation;
* a rolling restart of every replica (``SIGHUP`` to ``amoeba run``) under
  the same load: no request fails.

Each test prints its counts.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import servers
from balancers import Balancer, Load
from e2e import ROOT
from shop.app import app
from waiting import checked, eventually

from amoeba.testing import TopologyGroup

pytestmark = pytest.mark.e2e

TOPOLOGY = ROOT / "tests" / "topologies" / "shop-lb.yaml"
ADMIN = ("admin@shop.test", "admin-password-1")
ENV = {"SHOP_ADMIN_EMAIL": ADMIN[0], "SHOP_ADMIN_PASSWORD": ADMIN[1],
       "SHOP_RATE_USER_BURST": "100000", "SHOP_RATE_USER_RATE": "100000",
       "SHOP_RATE_IP_BURST": "100000", "SHOP_RATE_IP_RATE": "100000"}


@pytest.fixture(params=["nginx", "haproxy"])
def shop_behind(request: pytest.FixtureRequest,
                tmp_path: Path) -> Iterator[tuple[TopologyGroup, Balancer]]:
    """The shop started with ``amoeba run``, and a balancer in front of it."""
    from balancers import require_binary

    require_binary(request.param)
    group = TopologyGroup(app, "shop-lb", TOPOLOGY, {**ENV, **servers.distributed_env("lb", request)})
    balancer = Balancer(request.param, group.file, group.env, tmp_path)
    group.start()
    try:
        balancer.start()
        yield group, balancer
    finally:
        balancer.stop()
        group.stop()


def gateway_ports(group: TopologyGroup) -> list[int]:
    return list(group.entry)


async def prepare(url: str) -> tuple[dict[str, str], int]:
    """A customer's Authorization header and a product with stock for every order."""
    async with httpx.AsyncClient(base_url=url, timeout=20) as c:
        admin = (await c.post("/api/auth/login", json={"email": ADMIN[0], "password": ADMIN[1]})).json()
        product = await c.post("/api/products", headers={"authorization": f"Bearer {admin['access_token']}"},
                               json={"name": "load", "price": "1.00", "stock": 1_000_000})
        assert product.status_code == 201, product.text
        email = f"lb-{uuid.uuid4().hex[:8]}@shop.test"
        assert (await c.post("/api/auth/register", json={"email": email, "password": "correct horse"})
                ).status_code == 202
        tokens = (await c.post("/api/auth/login", json={"email": email, "password": "correct horse"})).json()
    return {"authorization": f"Bearer {tokens['access_token']}"}, int(product.json()["id"])


async def orders_of(url: str, auth: dict[str, str]) -> list[int]:
    ids: list[int] = []
    async with httpx.AsyncClient(base_url=url, timeout=20) as c:
        page = 1
        while True:
            r = (await c.get(f"/api/orders?per_page=100&page={page}", headers=auth)).json()
            ids += [o["id"] for o in r["items"]]
            if len(ids) >= r["total"] or not r["items"]:
                return ids
            page += 1


def assert_every_key_one_order(load: Load, listed: list[int]) -> None:
    assert not load.post_failures, load.post_failures[:5]
    assert len(load.orders) == load.posts  # every key got its order
    assert len(set(load.orders.values())) == len(load.orders)  # no two keys share one
    assert sorted(listed) == sorted(load.orders.values())  # and no order without a key: none doubled


def test_sigkill_a_gateway_replica_under_load(shop_behind):
    group, lb = shop_behind
    ports = gateway_ports(group)
    victim = httpx.get(f"http://127.0.0.1:{ports[1]}/", timeout=5).json()["pid"]

    async def scenario() -> tuple[Load, list[int], dict[str, int]]:
        auth, product = await prepare(lb.url)
        load = Load(lb.url, auth, product)

        async def kill() -> None:  # once the victim has served some of the load (not after 2 s)
            await eventually(checked(lambda: load.hits[(1, victim)] >= 3), 60,
                             f"replica 1 (pid {victim}) serving through {lb.kind}")
            os.kill(victim, signal.SIGKILL)

        await load.run(6.0, during=kill())
        # The supervisor restarts the replica; the balancer sends to it again.
        after: Counter[str] = Counter()
        end = time.monotonic() + 30
        async with httpx.AsyncClient(timeout=5) as c:
            while after["1 (restarted)"] < 3:
                assert time.monotonic() < end, (f"replica 1 not back behind {lb.kind}:\n"
                                                f"{group.log.read_text()[-3000:]}")
                await asyncio.sleep(0.05)
                try:
                    body = (await c.get(lb.url + "/")).json()
                except httpx.HTTPError:
                    continue
                restarted = body["replica"] == 1 and body["pid"] != victim
                after[f"{body['replica']}{' (restarted)' if restarted else ''}"] += 1
        return load, await orders_of(lb.url, auth), dict(after)

    load, listed, after = asyncio.run(scenario())
    during = {f"{r}/{p}": n for (r, p), n in sorted(load.hits.items())}
    print(f"\n{lb.kind} SIGKILL gateway.1 (pid {victim}): {load.summary()}; orders listed "
          f"{len(listed)}; GET / hits by replica/pid during the run {during}; "
          f"until the restarted replica answered 3 times {after}")
    assert not load.get_failures, load.get_failures[:5]
    assert_every_key_one_order(load, listed)
    assert any(r == 1 and p == victim for r, p in load.hits)  # it did serve before the kill


def test_rolling_restart_under_load_fails_nothing(shop_behind):
    group, lb = shop_behind
    assert group.proc is not None

    async def scenario() -> tuple[Load, list[int], float]:
        auth, product = await prepare(lb.url)
        load = Load(lb.url, auth, product)
        started = time.monotonic()

        async def roll() -> None:
            await asyncio.sleep(1.0)
            assert group.proc is not None
            group.proc.send_signal(signal.SIGHUP)
            while "rolling restart done" not in group.log.read_text():
                assert time.monotonic() - started < 90, group.log.read_text()[-3000:]
                await asyncio.sleep(0.2)
            await asyncio.sleep(1.0)

        await load.run(0.0, during=roll())
        return load, await orders_of(lb.url, auth), time.monotonic() - started

    load, listed, took = asyncio.run(scenario())
    pids = {}
    for port in gateway_ports(group):
        pids[port] = httpx.get(f"http://127.0.0.1:{port}/", timeout=5).json()["pid"]
    print(f"\n{lb.kind} rolling restart of 5 processes in {took:.1f}s: {load.summary()}; "
          f"hits (replica, pid) {dict(load.hits)}")
    assert not load.get_failures, load.get_failures[:5]
    # A POST retried with its Idempotency-Key is the client doing its job (a loaded machine
    # may see a connection reset mid-roll); what must hold is one order per key, below.
    assert_every_key_one_order(load, listed)
    # every gateway replica answered with two pids: the old and the new process
    for replica in range(3):
        assert len({p for r, p in load.hits if r == replica}) == 2, load.hits
