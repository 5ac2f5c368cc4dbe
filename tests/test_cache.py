"""The Cache resource, on both backends: the same body runs against each."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from test_limits import redis_url

from amoeba import Cache, ResourceContext


async def open_cache(backend: str, service: str) -> Cache:
    url = f"{redis_url()}/0" if backend == "redis" else None
    return await Cache.open(ResourceContext(service, url, Path("."), {}))


@pytest.fixture(params=["memory", "redis"])
async def caches(request) -> AsyncIterator[tuple[Cache, Cache]]:
    """Two services' caches on one backend, with unique names (keys are deleted after)."""
    tag = secrets.token_hex(6)
    a = await open_cache(request.param, f"test-a-{tag}")
    b = await open_cache(request.param, f"test-b-{tag}")
    try:
        yield a, b
    finally:
        for c in (a, b):
            if c.redis is not None:
                keys = [k async for k in c.redis.scan_iter(match=c.prefix + "*")]
                if keys:
                    await c.redis.delete(*keys)
            await c.aclose()


async def test_get_set_delete(caches):
    c, _ = caches
    assert await c.get("k") is None
    assert await c.set("k", "v1")
    assert await c.get("k") == b"v1"
    assert await c.set("k", b"v2")
    assert await c.get("k") == b"v2"
    assert await c.delete("k", "missing") == 1
    assert await c.get("k") is None
    assert await c.delete() == 0
    assert await c.ready()


async def test_only_if_absent(caches):
    c, _ = caches
    assert await c.set("lock", "first", only_if_absent=True)
    assert not await c.set("lock", "second", only_if_absent=True)
    assert await c.get("lock") == b"first"


async def test_ttl_expiry_and_incr(caches):
    c, _ = caches
    assert await c.set("short", "x", ttl=0.15)
    assert await c.get("short") == b"x"
    assert [await c.incr("n", ttl=0.15) for _ in range(3)] == [1, 2, 3]
    await asyncio.sleep(0.3)
    assert await c.get("short") is None
    assert await c.set("short", "again", only_if_absent=True)  # expired means absent
    assert await c.incr("n", ttl=10) == 1
    assert await c.incr("forever") == 1
    with pytest.raises(ValueError, match="ttl"):
        await c.set("k", "v", ttl=0)


async def test_sliding_incr_lives_past_its_last_increment(caches):
    c, _ = caches
    assert await c.incr("fixed", ttl=0.4) == 1
    assert await c.incr("slide", ttl=0.4, sliding=True) == 1
    for n in (2, 3):
        await asyncio.sleep(0.25)
        await c.incr("slide", ttl=0.4, sliding=True)
        assert await c.get("slide") == str(n).encode()
    # 0.5 s after its creation the fixed window is gone; the sliding one is 0.25 s old.
    assert await c.get("fixed") is None
    assert await c.get("slide") == b"3"


async def test_prefixes_isolate_services(caches):
    a, b = caches
    assert a.prefix.startswith("amoeba:test-a-") and a.prefix.endswith(":")
    await a.set("same", "from a")
    await b.set("same", "from b")
    assert await a.get("same") == b"from a"
    assert await b.get("same") == b"from b"
    if a.redis is not None:
        assert a.shared
        assert await a.redis.get(a.prefix + "same") == b"from a"
    else:
        assert not a.shared


async def test_unreachable_redis_is_not_ready():
    c = await Cache.open(ResourceContext("svc", "redis://127.0.0.1:1/0", Path("."), {}))
    try:
        assert not await c.ready()
    finally:
        await c.aclose()


async def test_non_redis_url_is_a_clear_error():
    with pytest.raises(ValueError, match=r"resources\.cache.*redis://"):
        await Cache.open(ResourceContext("svc", "memcached://x", Path("."), {}))
