"""Rate limits at the edge: a token bucket per user and per client address.

Configured by ``settings.rate_limit`` (either part may be absent: unlimited)::

    rate_limit:
      user: {burst: 20, rate: 10}   # per authenticated subject; rate in requests/second
      ip:   {burst: 60, rate: 30}   # per client address

The buckets live in Redis when the topology's ``resources.cache`` is a
``redis://`` URL (so every gateway replica shares them: one atomic Lua
script per check, keys expire once full again), otherwise in this process.

With Redis, a gateway takes a *lease* of up to a tenth of a bucket's burst
at once (``LEASE_SHARE``) and spends it locally: one round trip per that
many requests of a client instead of one each.  The tolerance this buys:
no client is ever let through more than its bucket allows across all
replicas (every token spent was taken from Redis first), but it may be
refused early by the tokens other replicas hold unspent, at most
``lease - 1`` per replica, each lease lapsing ``lease / rate`` seconds after
it was taken; its unspent tokens go back to the bucket with the gateway's
next lease of that key (those of a gateway that stops are lost until the
bucket refills).  A bucket whose burst is under 20 gets no lease: every
request asks Redis, as before.

If Redis cannot be reached the request is **let through** (fail open), with
a warning logged at most once a minute: a rate limit protects capacity, and
refusing every request because the limiter's store is down would turn a
cache outage into a full outage.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

__all__ = ["Bucket", "BucketStore", "LimitConfigError", "MemoryBuckets", "RateLimiter",
           "RedisBuckets", "parse_rate_limit"]

log = logging.getLogger("amoeba.limits")


class LimitConfigError(ValueError):
    """``settings.rate_limit`` is wrong: names the key and the fix."""


@dataclass(frozen=True)
class Bucket:
    burst: int  # requests allowed at once
    rate: float  # requests refilled per second

    def __repr__(self) -> str:
        return f"<Bucket burst={self.burst} rate={self.rate:g}/s>"


def parse_rate_limit(raw: Any) -> dict[str, Bucket]:
    """``{"user": Bucket, "ip": Bucket}`` (absent parts left out)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise LimitConfigError("settings.rate_limit: must be a mapping; fix: rate_limit: "
                               "{ip: {burst: 60, rate: 30}}")
    out: dict[str, Bucket] = {}
    for scope, spec in raw.items():
        key = f"settings.rate_limit.{scope}"
        if scope not in ("user", "ip"):
            raise LimitConfigError(f"{key}: unknown scope; fix: use `user` and/or `ip`")
        if spec is None:
            continue
        if not isinstance(spec, dict) or set(spec) - {"burst", "rate"}:
            raise LimitConfigError(f"{key}: expected {{burst: N, rate: R}}; fix: "
                                   f"{scope}: {{burst: 20, rate: 10}}")
        burst, rate = spec.get("burst"), spec.get("rate")
        if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
            raise LimitConfigError(f"{key}.burst: {burst!r} is not a whole number >= 1; fix: burst: 20")
        if isinstance(rate, bool) or not isinstance(rate, int | float) or rate <= 0:
            raise LimitConfigError(f"{key}.rate: {rate!r} is not a number > 0 (requests per "
                                   f"second); fix: rate: 10")
        out[scope] = Bucket(burst, float(rate))
    return out


class BucketStore(ABC):
    """Where bucket levels live.  ``take`` spends one token: 0.0 when allowed,
    else the seconds until one is available."""

    @abstractmethod
    async def take(self, key: str, bucket: Bucket) -> float: ...

    @abstractmethod
    async def aclose(self) -> None: ...


class MemoryBuckets(BucketStore):
    """This process's buckets: a dict of ``key -> (tokens, last refill)``."""

    MAX_KEYS = 100_000

    def __init__(self, clock: Any = time.monotonic):
        self.clock = clock
        self.levels: dict[str, tuple[float, float]] = {}

    def __repr__(self) -> str:
        return f"<MemoryBuckets {len(self.levels)} keys>"

    def take_now(self, key: str, bucket: Bucket) -> float:
        now = self.clock()
        hit = self.levels.get(key)
        tokens = bucket.burst if hit is None else min(bucket.burst, hit[0] + (now - hit[1]) * bucket.rate)
        if tokens >= 1.0:
            if hit is None and len(self.levels) >= self.MAX_KEYS:
                self._prune(now, bucket)
            self.levels[key] = (tokens - 1.0, now)
            return 0.0
        self.levels[key] = (tokens, now)
        return (1.0 - tokens) / bucket.rate

    async def take(self, key: str, bucket: Bucket) -> float:
        return self.take_now(key, bucket)

    async def aclose(self) -> None:
        self.levels.clear()

    def _prune(self, now: float, bucket: Bucket) -> None:
        # A bucket full again is the same as no entry: drop those.
        full = bucket.burst / bucket.rate
        self.levels = {k: v for k, v in self.levels.items() if now - v[1] < full}


# KEYS[1]: the bucket; ARGV: burst, rate.  Server time, so gateway replicas with
# skewed clocks share one timeline.  Returns {allowed, seconds to wait (string:
# Lua numbers become integers on the way out)}.
_TAKE = """
local burst = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local refund = tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil then tokens = burst; ts = now end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate + refund)
local wait = 0
local granted = math.min(want, math.floor(tokens))
if granted >= 1 then tokens = tokens - granted else granted = 0; wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return tostring(granted) .. ' ' .. tostring(wait)
"""

#: Of a bucket's burst, what a gateway takes from Redis at once (see the module's doc).
LEASE_SHARE = 0.1
MAX_LEASES = 100_000


class RedisBuckets(BucketStore):
    """Buckets shared through Redis; fails open when Redis is unreachable."""

    WARN_EVERY = 60.0

    def __init__(self, url: str, prefix: str, client: Any = None):
        if client is None:
            from amoeba.data.cache import redis_client

            client = redis_client(url, timeout=0.5)
        self.client = client
        self.prefix = prefix
        self.script = client.register_script(_TAKE)
        self._warned = -math.inf
        # key -> (tokens taken from Redis and not yet spent, monotonic time they lapse)
        self.leases: dict[str, tuple[float, float]] = {}
        self.asking: dict[str, asyncio.Future[None]] = {}  # a lease under way, by key

    def __repr__(self) -> str:
        return f"<RedisBuckets prefix={self.prefix!r}>"

    def _spend(self, key: str, now: float) -> bool:
        """A token of this gateway's lease of ``key``, if it holds one (a lapsed
        lease's unspent tokens are then given back with the next lease)."""
        lease = self.leases.get(key)
        if lease is None:
            return False
        left, lapses = lease
        if left >= 1.0 and now < lapses:
            self.leases[key] = (left - 1.0, lapses)
            return True
        return False

    async def take(self, key: str, bucket: Bucket) -> float:
        now = time.monotonic()
        if self._spend(key, now):
            return 0.0
        # One lease of a key asked for at a time: concurrent requests wait for it
        # rather than each taking a lease of their own from the shared bucket.
        while (asking := self.asking.get(key)) is not None:
            await asyncio.shield(asking)
            now = time.monotonic()
            if self._spend(key, now):
                return 0.0
        asking = self.asking[key] = asyncio.get_running_loop().create_future()
        try:
            return await self._lease(key, bucket, now)
        finally:
            del self.asking[key]
            asking.set_result(None)

    async def _lease(self, key: str, bucket: Bucket, now: float) -> float:
        want = max(1, int(bucket.burst * LEASE_SHARE))
        # What is left of the lapsed lease goes back to the shared bucket with
        # this call: leases cost the bucket only the tokens spent.
        old = self.leases.pop(key, None)
        refund = int(old[0]) if old is not None else 0
        try:
            reply = await self.script(keys=[self.prefix + key],
                                      args=[bucket.burst, bucket.rate, want, refund])
        except Exception as exc:  # redis.RedisError, OSError, timeouts: the store is down
            if now - self._warned >= self.WARN_EVERY:
                self._warned = now
                log.warning("rate limits not enforced: Redis unreachable (%s); letting requests "
                            "through (logged at most once a minute)", exc)
            return 0.0
        granted, wait = (float(v) for v in _text(reply).split())
        if granted < 1.0:
            return wait
        if granted > 1.0:
            if len(self.leases) >= MAX_LEASES:
                self.leases = {k: v for k, v in self.leases.items() if v[1] > now}
                if len(self.leases) >= MAX_LEASES:
                    self.leases.clear()
            self.leases[key] = (granted - 1.0, now + granted / bucket.rate)
        return 0.0

    async def aclose(self) -> None:
        await self.client.aclose()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RateLimiter:
    """The edge's limiter: which buckets apply to a request, in one store."""

    def __init__(self, buckets: dict[str, Bucket], store: BucketStore):
        self.user = buckets.get("user")
        self.ip = buckets.get("ip")
        self.store = store

    def __repr__(self) -> str:
        return f"<RateLimiter user={self.user!r} ip={self.ip!r} store={self.store!r}>"

    async def check(self, user: str | None, ip: str) -> float:
        """0.0 when the request may proceed, else seconds to wait."""
        if self.ip is not None:
            wait = await self.store.take("ip:" + ip, self.ip)
            if wait:
                return wait
        if self.user is not None and user is not None:
            return await self.store.take("user:" + user, self.user)
        return 0.0

    async def aclose(self) -> None:
        await self.store.aclose()
