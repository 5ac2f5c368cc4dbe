"""The Cache resource, on both backends: the same body runs against each."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from test_limits import redis_url

from amoeba import Cache, ResourceContext

TTL = 1.5  # seconds: the expiries these tests wait for


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


async def gone(c: Cache, key: str, within: float = 15.0) -> float:
    """Seconds until ``key`` is gone, polled (its expiry is the backend's business)."""
    start = time.monotonic()
    while await c.get(key) is not None:
        assert time.monotonic() - start < within, f"{key!r} still there after {within:g}s"
        await asyncio.sleep(0.05)
    return time.monotonic() - start


async def test_ttl_expiry_and_incr(caches):
    c, _ = caches
    # A ttl far longer than the few calls before the first checks take, even on
    # a loaded machine; then the wait is for the expiry itself.
    set_at = time.monotonic()
    assert await c.set("short", "x", ttl=TTL)
    assert await c.get("short") == b"x"
    assert [await c.incr("n", ttl=TTL) for _ in range(3)] == [1, 2, 3]
    assert time.monotonic() - set_at < TTL, "the checks above took longer than the ttl"
    await gone(c, "short")
    assert time.monotonic() - set_at >= TTL - 0.05  # not before its ttl (the backend's clock)
    await gone(c, "n")
    assert await c.set("short", "again", only_if_absent=True)  # expired means absent
    assert await c.incr("n", ttl=10) == 1
    assert await c.incr("forever") == 1
    with pytest.raises(ValueError, match="ttl"):
        await c.set("k", "v", ttl=0)


async def test_sliding_incr_lives_past_its_last_increment(caches):
    c, _ = caches
    created = time.monotonic()
    assert await c.incr("fixed", ttl=TTL) == 1
    assert await c.incr("slide", ttl=TTL, sliding=True) == 1
    for n in (2, 3):  # each increment well inside the ttl of the one before
        await asyncio.sleep(TTL / 3)
        await c.incr("slide", ttl=TTL, sliding=True)
        assert await c.get("slide") == str(n).encode()
    last = time.monotonic()
    # The fixed window ends TTL after its creation; the sliding one TTL after its
    # last increment, which came 2/3 TTL later: it is still there then.
    await gone(c, "fixed")
    assert time.monotonic() - last < TTL, "the test was too slow to see the sliding key outlive it"
    assert await c.get("slide") == b"3"
    assert time.monotonic() - created >= TTL - 0.05


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
