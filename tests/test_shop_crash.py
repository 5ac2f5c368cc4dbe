"""The replicated shop (PostgreSQL, Redis, NATS; a database of its own) under a
bounded checkout load through its gateways while orders and catalog replicas
are SIGKILLed at random points, then:

* every 201 has exactly one order, and no order exists without its 201;
* stock taken equals units ordered once no hold is open any more;
* stock was never seen below zero (and the database refuses it: a CHECK);
* every key that had to be retried completed within seconds of its process
  dying or coming back.

It prints its counts.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import servers
from e2e import ROOT
from shop.app import app

from amoeba.testing import TopologyGroup

pytestmark = pytest.mark.e2e

TOPOLOGY = ROOT / "examples" / "shop" / "topologies" / "replicated.yaml"
ADMIN = ("admin@shop.test", "admin-password-1")
ENV = {"SHOP_ADMIN_EMAIL": ADMIN[0], "SHOP_ADMIN_PASSWORD": ADMIN[1],
       "SHOP_RATE_USER_BURST": "100000", "SHOP_RATE_USER_RATE": "100000",
       "SHOP_RATE_IP_BURST": "100000", "SHOP_RATE_IP_RATE": "100000"}
STOCK = 100_000
VICTIMS = ("orders", "catalog")
LOAD_S, KILLS = 24.0, 6
# A retried key completes this long after its process died or came back, at most:
# the owner is declared dead 4 s after its last heartbeat, plus retry back-off.
RETRY_BOUND = 8.0
RETRYABLE = {0, 409, 429, 502, 503, 504}


def children(group: TopologyGroup) -> dict[tuple[str, int], int]:
    """(process, replica) -> pid of each child of the supervisor."""
    assert group.proc is not None
    out: dict[tuple[str, int], int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid != group.proc.pid or b"--process" not in argv:
            continue
        i = argv.index(b"--process")
        out[(argv[i + 1].decode(), int(argv[argv.index(b"--replica") + 1]))] = int(entry.name)
    return out


@dataclass
class Kill:
    victim: tuple[str, int]
    pid: int
    at: float
    back_at: float = float("inf")  # when its restarted process answered /healthz


@dataclass
class Key:
    key: str
    qty: int
    started: float
    attempts: int = 0
    first_failure: float | None = None
    statuses: list[int] = field(default_factory=list)
    done: float | None = None
    order: int | None = None


@dataclass
class Run:
    url: str
    auth: dict[str, str]
    product: int
    keys: list[Key] = field(default_factory=list)
    kills: list[Kill] = field(default_factory=list)
    min_stock: int = STOCK
    out_of_stock: int = 0
    failures: list[str] = field(default_factory=list)

    async def poster(self, client: httpx.AsyncClient, stop: asyncio.Event) -> None:
        while not stop.is_set():
            k = Key(uuid.uuid4().hex, random.randint(1, 3), time.monotonic())
            self.keys.append(k)
            while k.attempts < 300:
                k.attempts += 1
                try:
                    r = await client.post(self.url + "/api/orders", headers={
                        **self.auth, "Idempotency-Key": k.key},
                        json={"items": [{"product_id": self.product, "qty": k.qty}]})
                    status = r.status_code
                except httpx.HTTPError:
                    status = 0
                k.statuses.append(status)
                if status == 201:
                    k.done, k.order = time.monotonic(), int(r.json()["id"])
                    break
                if status == 409 and r.json()["error"]["type"] == "OutOfStock":
                    self.out_of_stock += 1
                    break
                if status not in RETRYABLE:
                    self.failures.append(f"{k.key}: {status} {r.text[:200]}")
                    break
                if k.first_failure is None:
                    k.first_failure = time.monotonic()
                await asyncio.sleep(min(0.1 * k.attempts, 0.5))
            else:
                self.failures.append(f"{k.key}: no 201 after {k.attempts} attempts {k.statuses[-5:]}")

    async def watcher(self, client: httpx.AsyncClient, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                r = await client.get(f"{self.url}/api/products/{self.product}")
                if r.status_code == 200:
                    self.min_stock = min(self.min_stock, int(r.json()["stock"]))
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.05)


async def killer(group: TopologyGroup, run: Run) -> None:
    ports = {name: [lst.port_for(i) for i in range(p.replicas)]
             for name, p in group.topo.processes.items() for lst in p.listeners}
    rng = random.Random()
    async with httpx.AsyncClient(timeout=2) as client:
        for _ in range(KILLS):
            await asyncio.sleep(rng.uniform(1.5, 3.5))  # a random point of whatever is in flight
            pids = children(group)
            victim = rng.choice([(name, i) for name in VICTIMS for i in range(2)])
            kill = Kill(victim, pids[victim], time.monotonic())
            os.kill(kill.pid, signal.SIGKILL)
            run.kills.append(kill)
            port = ports[victim[0]][victim[1]]
            end = time.monotonic() + 60
            while time.monotonic() < end:
                await asyncio.sleep(0.1)
                if children(group).get(victim, kill.pid) == kill.pid:
                    continue
                try:
                    if (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                        kill.back_at = time.monotonic()
                        break
                except httpx.HTTPError:
                    pass
            assert kill.back_at < float("inf"), f"{victim} not back:\n{group.log.read_text()[-3000:]}"


async def prepare(url: str) -> tuple[dict[str, str], int]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        admin = (await c.post("/api/auth/login", json={"email": ADMIN[0], "password": ADMIN[1]})).json()
        product = await c.post("/api/products", json={"name": "crash", "price": "1.00", "stock": STOCK},
                               headers={"authorization": f"Bearer {admin['access_token']}"})
        assert product.status_code == 201, product.text
        email = f"crash-{uuid.uuid4().hex[:8]}@shop.test"
        assert (await c.post("/api/auth/register", json={"email": email, "password": "correct horse"})
                ).status_code == 202
        tokens = (await c.post("/api/auth/login", json={"email": email, "password": "correct horse"})).json()
    return {"authorization": f"Bearer {tokens['access_token']}"}, int(product.json()["id"])


async def settled(database: str, product: int) -> tuple[int, int, int, int]:
    """Once no hold is open in orders nor in catalog: (stock, open holds, units in orders,
    holds released)."""
    import asyncpg

    conn = await asyncpg.connect(database)
    try:
        end = time.monotonic() + 60
        while True:
            pending = await conn.fetchval("SELECT count(*) FROM orders.order_holds")
            held = await conn.fetchval("SELECT count(*) FROM catalog.holds WHERE state = 'held'")
            if (pending == 0 and held == 0) or time.monotonic() > end:
                break
            await asyncio.sleep(0.5)
        stock = await conn.fetchval("SELECT stock FROM catalog.products WHERE id = $1", product)
        units = await conn.fetchval("SELECT coalesce(sum(qty), 0) FROM orders.order_items "
                                    "WHERE product_id = $1", product)
        released = await conn.fetchval("SELECT count(*) FROM catalog.holds WHERE state = 'released'")
        return int(stock), int(pending + held), int(units), int(released)
    finally:
        await conn.close()


async def listed_orders(url: str, auth: dict[str, str]) -> list[int]:
    ids: list[int] = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        page = 1
        while True:
            r = (await c.get(f"/api/orders?per_page=100&page={page}", headers=auth)).json()
            ids += [o["id"] for o in r["items"]]
            if len(ids) >= r["total"] or not r["items"]:
                return ids
            page += 1


def test_sigkill_orders_and_catalog_replicas_under_checkout_load(request):
    env = {**ENV, **servers.distributed_env("replicated", request)}
    group = TopologyGroup(app, "replicated-crash", TOPOLOGY, env)
    group.start(timeout=120)
    try:
        run, listed, (stock, still_open, units, released) = asyncio.run(scenario(group))
    finally:
        group.stop()
    ok = [k for k in run.keys if k.order is not None]
    retried = [k for k in ok if k.first_failure is not None]
    lags = []
    for k in retried:
        assert k.first_failure is not None and k.done is not None
        # the latest kill before its first failure: how long after it (or after that
        # process came back, if that was sooner) the key completed
        before = [x for x in run.kills if x.at <= k.first_failure] or run.kills[:1]
        lags.append(k.done - min(before[-1].back_at, max(before[-1].at, k.first_failure)))
    print(f"\nreplicated crash: {len(run.kills)} SIGKILLs "
          f"{[f'{v[0]}.{v[1]}' for v in (x.victim for x in run.kills)]}, restarts after "
          f"{[round(x.back_at - x.at, 1) for x in run.kills]} s; {len(run.keys)} keys, "
          f"{len(ok)} with 201, {run.out_of_stock} out of stock, {len(retried)} retried "
          f"({sum(k.attempts - 1 for k in run.keys)} retries, statuses "
          f"{sorted({s for k in run.keys for s in k.statuses})}), slowest retried key "
          f"done {max(lags, default=0):.1f} s after the kill; {len(listed)} orders listed; "
          f"stock {STOCK} -> {stock}: {STOCK - stock} taken, {units} ordered; lowest stock seen "
          f"{run.min_stock}; holds released (no order) {released}, still open {still_open}")
    assert not run.failures, run.failures[:5]
    assert len(run.kills) == KILLS
    assert ok and len(ok) + run.out_of_stock == len(run.keys)
    orders = [k.order for k in ok]
    assert len(set(orders)) == len(orders)  # no two keys share an order
    assert sorted(listed) == sorted(orders)  # every 201 has exactly one order, none without
    assert units == sum(k.qty for k in ok)
    assert still_open == 0
    assert STOCK - stock == units  # nothing leaked, nothing oversold
    assert run.min_stock >= 0
    assert max(lags, default=0) <= RETRY_BOUND, sorted(lags)[-5:]


async def scenario(group: TopologyGroup) -> tuple[Run, list[int], tuple[int, int, int, int]]:
    url = group.url()
    auth, product = await prepare(url)
    run = Run(url, auth, product)
    stop = asyncio.Event()
    async with httpx.AsyncClient(timeout=20, limits=httpx.Limits(max_connections=8)) as client:
        workers = [asyncio.ensure_future(run.poster(client, stop)) for _ in range(4)]
        workers.append(asyncio.ensure_future(run.watcher(client, stop)))
        started = time.monotonic()
        await killer(group, run)
        await asyncio.sleep(max(0.0, LOAD_S - (time.monotonic() - started)))
        stop.set()
        await asyncio.gather(*workers)
    listed = await listed_orders(url, auth)
    return run, listed, await settled(group.env["DATABASE_URL"], product)
