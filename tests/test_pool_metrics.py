"""Connection-pool use of every database resource, and cache round trips,
as ``/metrics`` reports them: measured against real pools, not asserted from
the settings."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
import servers
from prometheus_client import CollectorRegistry, generate_latest

from amoeba.data.cache import Cache
from amoeba.data.database import Database
from amoeba.data.sqlite import SQLite
from amoeba.errors import Unavailable
from amoeba.resource import ResourceContext


async def _wait_until(check, within: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + within
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.005)


async def _exercise_pool(db: Database, size: int) -> None:
    """Hold every connection, queue one more caller, let it time out."""
    assert db.pool_stats().in_use == 0 and db.pool_stats().waiting == 0
    held = asyncio.Event()
    release = asyncio.Event()

    async def hold() -> None:
        async with db.transaction() as conn:
            await conn.exec_driver_sql("SELECT 1")
            held.set()
            await release.wait()

    holders = [asyncio.create_task(hold()) for _ in range(size)]
    await _wait_until(lambda: db.pool_stats().in_use == size)
    waiter = asyncio.create_task(db.scalar("SELECT 1"))
    await _wait_until(lambda: db.pool_stats().waiting == 1)
    use = db.pool_stats()
    assert (use.size, use.in_use, use.idle, use.waiting) == (size, size, 0, 1)
    with pytest.raises(Unavailable):  # pool_timeout (0.3 s) passes
        await waiter
    assert db.pool_stats().timeouts == 1 and db.pool_stats().waiting == 0
    release.set()
    await asyncio.gather(*holders)
    use = db.pool_stats()
    assert use.in_use == 0 and use.idle == size and use.waiting == 0
    assert await db.scalar("SELECT 2") == 2


def test_sqlite_database_pool(tmp_path: Path) -> None:
    async def main() -> None:
        db = await Database.open(ResourceContext("pooled", None, tmp_path,
                                                 {"database": {"pool_timeout": 0.3}}))
        try:
            await _exercise_pool(db, 1)  # the sqlite+amoeba driver: one connection
        finally:
            await db.aclose()

    asyncio.run(main())


def test_postgres_database_pool(request: pytest.FixtureRequest) -> None:
    url = servers.fresh_postgres_database(request)

    async def main() -> None:
        db = await Database.open(ResourceContext(
            "pooled", url, Path("."), {"database": {"pool_size": 2, "pool_timeout": 0.3}}))
        try:
            await _exercise_pool(db, 2)
        finally:
            await db.aclose()

    asyncio.run(main())


def test_sqlite_resource_reports_its_one_connection(tmp_path: Path) -> None:
    async def main() -> None:
        db = await SQLite.open(ResourceContext("lite", None, tmp_path, {}))
        try:
            await db.execute("CREATE TABLE t (x INTEGER)")
            inside = asyncio.Event()
            release = asyncio.Event()

            async def tx() -> None:
                async with db.transaction() as t:
                    await t.execute("INSERT INTO t VALUES (1)")
                    inside.set()
                    await release.wait()

            first = asyncio.create_task(tx())
            await inside.wait()
            second = asyncio.create_task(tx())
            queued = asyncio.create_task(db.execute("INSERT INTO t VALUES (2)"))
            await _wait_until(lambda: db.pool_stats().waiting == 2)
            assert db.pool_stats()[:3] == (1, 1, 0)
            release.set()
            await asyncio.gather(first, second, queued)
            assert db.pool_stats()[:4] == (1, 0, 1, 0)
        finally:
            await db.aclose()

    asyncio.run(main())


def test_cache_round_trips_on_redis() -> None:
    base = servers.redis_url()
    prefix = f"i14-deploy-{uuid.uuid4().hex[:8]}:"

    async def main() -> None:
        cache = await Cache.open(ResourceContext("carts", f"{base}/0?prefix={prefix}", Path("."), {}))
        try:
            await cache.set("k", "v", ttl=30)
            assert await cache.get("k") == b"v"
            await cache.get("missing")
            await cache.incr("n", ttl=30)
            await cache.delete("k", "n")
            got = {op: (ok.count, err.count) for op, (ok, err) in cache.round_trips.items()}
            assert got == {"set": (1, 0), "get": (2, 0), "incr": (1, 0), "delete": (1, 0)}
            assert 0 < cache.round_trips["get"][0].sum < 5
        finally:
            await cache.aclose()

    asyncio.run(main())


class _Host:
    """What the collector reads of a host for resources (the rest unused here)."""

    def __init__(self, resources: list[tuple[str, object]]):
        self.resources = resources


def test_metrics_exposition_names_every_pool_and_cache(tmp_path: Path) -> None:
    from amoeba.observe.metrics import PrometheusCollector

    async def main() -> bytes:
        db = await Database.open(ResourceContext("orders", None, tmp_path, {}))
        cache = Cache("amoeba:orders:")
        try:
            await db.scalar("SELECT 1")
            collector = PrometheusCollector(_Host([("orders.db", db), ("orders.cache", cache)]))  # type: ignore[arg-type]
            registry = CollectorRegistry(auto_describe=False)

            class Only:
                def collect(self):  # type: ignore[no-untyped-def]
                    return collector._resources()

            registry.register(Only())  # type: ignore[arg-type]
            return generate_latest(registry)
        finally:
            await db.aclose()

    text = asyncio.run(main()).decode()
    for line in ('amoeba_db_pool_size{resource="db",service="orders"} 1.0',
                 'amoeba_db_pool_connections{resource="db",service="orders",state="in_use"} 0.0',
                 'amoeba_db_pool_connections{resource="db",service="orders",state="idle"} 1.0',
                 'amoeba_db_pool_waiting{resource="db",service="orders"} 0.0',
                 'amoeba_db_pool_timeouts_total{resource="db",service="orders"} 0.0'):
        assert line in text, text
