"""``Cache``: a small key/value store with expiry, kind ``cache``.

``resources.cache: redis://host:6379/0`` gives every service a Redis-backed
cache shared by all processes and replicas (``shared`` is True, and
``redis`` is the raw ``redis.asyncio.Redis`` client for anything more);
without a URL each process keeps an in-memory dict with TTLs.  Keys are
prefixed ``amoeba:{service}:`` so services never collide.

Round trips to Redis are timed per operation (``round_trips``: op ->
(ok, error) histograms; ``amoeba_cache_round_trip_seconds`` on ``/metrics``):
two clock reads and two additions per call.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from amoeba.drivers import require
from amoeba.observe.hist import Hist
from amoeba.resource import Resource, ResourceContext

_T = TypeVar("_T")

__all__ = ["Cache", "redis_client"]


def split_prefix(url: str) -> tuple[str, str]:
    """``redis://h:6379/0?prefix=staging:`` -> (the URL without it, ``"staging:"``).

    A key prefix in the URL lets several deployments (or test runs) share one
    Redis without sharing keys."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefix = "".join(v for k, v in query if k == "prefix")
    rest = urlencode([(k, v) for k, v in query if k != "prefix"])
    return urlunsplit(parts._replace(query=rest)), prefix


def redis_client(url: str, *, timeout: float | None = None, kind: str = "cache") -> Any:
    """A ``redis.asyncio.Redis`` for ``url`` (redis-py imported on demand;
    :class:`~amoeba.drivers.MissingDriver` under ``resources.{kind}`` without it)."""
    require(kind, url)
    url = split_prefix(url)[0]
    import redis.asyncio as aioredis

    return aioredis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout or 2.0)


# INCR, and set the expiry when this call created the key, or always when
# ARGV[2] is "1" (a sliding window); atomic.
_INCR = """
local v = redis.call('INCR', KEYS[1])
if v == 1 or ARGV[2] == '1' then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return v
"""


def _bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


class Cache(Resource):
    kind = "cache"

    def __init__(self, prefix: str, client: Any = None):
        self.prefix = prefix
        self.redis: Any = client  # redis.asyncio.Redis, or None for the in-memory store
        self.shared = client is not None
        self.round_trips: dict[str, tuple[Hist, Hist]] = {}
        # key -> (value, expiry on the monotonic clock or None)
        self._mem: dict[str, tuple[bytes, float | None]] = {}

    def __repr__(self) -> str:
        return f"<Cache {'redis' if self.shared else 'memory'} prefix={self.prefix!r}>"

    @classmethod
    async def open(cls, ctx: ResourceContext) -> Cache:
        prefix = f"amoeba:{ctx.service}:"
        if ctx.url is None:
            return cls(prefix)
        prefix = split_prefix(ctx.url)[1] + prefix
        return cls(prefix, redis_client(ctx.url))  # a URL that is not Redis's: UnsupportedURL

    async def ready(self) -> bool:
        if self.redis is None:
            return True
        try:
            return bool(await self.redis.ping())
        except Exception:
            return False

    async def aclose(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()
        self._mem.clear()

    async def _timed(self, op: str, call: Awaitable[_T]) -> _T:
        pair = self.round_trips.get(op)
        if pair is None:
            pair = self.round_trips[op] = (Hist(), Hist())
        started = time.perf_counter()
        try:
            result = await call
        except BaseException:
            pair[1].observe(time.perf_counter() - started)
            raise
        pair[0].observe(time.perf_counter() - started)
        return result

    # -- memory store --------------------------------------------------------
    def _live(self, key: str) -> tuple[bytes, float | None] | None:
        hit = self._mem.get(key)
        if hit is not None and hit[1] is not None and hit[1] <= time.monotonic():
            del self._mem[key]
            return None
        return hit

    # -- API -----------------------------------------------------------------
    async def get(self, key: str) -> bytes | None:
        k = self.prefix + key
        if self.redis is not None:
            value = await self._timed("get", self.redis.get(k))
            return None if value is None else bytes(value)
        hit = self._live(k)
        return None if hit is None else hit[0]

    async def set(self, key: str, value: bytes | str, ttl: float | None = None, *,
                  only_if_absent: bool = False) -> bool:
        """Store ``value``; with ``only_if_absent`` only when the key is not
        there yet.  True when it was stored."""
        if ttl is not None and ttl <= 0:
            raise ValueError(f"Cache.set({key!r}): ttl must be positive seconds, got {ttl!r}")
        k = self.prefix + key
        data = _bytes(value)
        if self.redis is not None:
            px = None if ttl is None else max(1, int(ttl * 1000))
            return bool(await self._timed("set", self.redis.set(k, data, px=px, nx=only_if_absent)))
        if only_if_absent and self._live(k) is not None:
            return False
        self._mem[k] = (data, None if ttl is None else time.monotonic() + ttl)
        return True

    async def delete(self, *keys: str) -> int:
        """How many of ``keys`` existed."""
        if not keys:
            return 0
        full = [self.prefix + k for k in keys]
        if self.redis is not None:
            return int(await self._timed("delete", self.redis.delete(*full)))
        n = 0
        for k in full:
            if self._live(k) is not None:
                del self._mem[k]
                n += 1
        return n

    async def incr(self, key: str, ttl: float | None = None, *, sliding: bool = False) -> int:
        """Add one and return the new value; ``ttl`` is set when the key is
        created, or on every call with ``sliding`` (the key then lives ``ttl``
        seconds past its last increment)."""
        k = self.prefix + key
        if self.redis is not None:
            if ttl is None:
                return int(await self._timed("incr", self.redis.incr(k)))
            return int(await self._timed("incr", self.redis.eval(
                _INCR, 1, k, max(1, int(ttl * 1000)), int(sliding))))
        hit = self._live(k)
        expires = None if ttl is None else time.monotonic() + ttl
        if hit is None:
            self._mem[k] = (b"1", expires)
            return 1
        value = int(hit[0]) + 1
        self._mem[k] = (str(value).encode(), expires if sliding else hit[1])
        return value
