"""Revoked login sessions, checked at the edge on every authenticated request.

An access token names its session (``sid``).  Ending a session (logout, a
refresh token presented twice, a password change) must end its access
tokens too, not only its refresh token, and on every replica.  The service
that ends it calls ``Tokens.revoke_session(sid)``; the edge refuses every
token of a revoked session with the generic 401.

Where the marks live, chosen once from the topology's ``resources.cache``:

* a Redis URL: one key per revoked session, ``<url prefix>amoeba:<issuer>:
  revoked:<sid>``, expiring when the last token of the session would have
  expired anyway (``access_ttl`` + ``leeway``).  Each process remembers an
  answer for ``settings.auth.session_recheck`` seconds (default 2), so a
  session costs one Redis ``GET`` per process per that interval, and a
  revocation is enforced by every replica at most that long after it was
  made (at once in the process that made it).
* no cache URL: a table in this process, shared by the edge and the
  ``Tokens`` resource of the same process (a monolith).  Revocation then
  holds only within the process: a topology with several processes needs
  Redis for it.

If Redis cannot be reached the last known answer stands (a session never
seen is taken as not revoked), with a warning at most once a minute: as
with rate limits, an outage of the cache should not become an outage of
every authenticated route.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

__all__ = ["SessionRevocations"]

log = logging.getLogger("amoeba.auth")

# Process-wide tables of revoked sessions by issuer, for topologies without
# Redis: the edge and the Tokens resource of one process share one.
_LOCAL: dict[str, dict[str, float]] = {}


class SessionRevocations:
    """``revoke(sid)`` and ``is_revoked(sid)`` over Redis or this process."""

    REMEMBERED = 100_000  # sessions whose answer a process keeps (oldest dropped)
    WARN_EVERY = 60.0

    def __init__(self, issuer: str, lifetime: float, recheck: float = 2.0,
                 client: Any = None, prefix: str = ""):
        self.issuer = issuer
        self.lifetime = max(1.0, lifetime)  # how long a mark must outlive the revocation
        self.recheck = recheck
        self.client = client  # redis.asyncio.Redis, or None: this process only
        self.key = f"{prefix}amoeba:{issuer}:revoked:"
        self.local = _LOCAL.setdefault(issuer, {}) if client is None else {}
        # sid -> (revoked?, monotonic time of the answer): Redis answers reused for `recheck` s
        self.seen: dict[str, tuple[bool, float]] = {}
        self._warned = -math.inf

    def __repr__(self) -> str:
        where = f"redis {self.key}*" if self.client is not None else "this process"
        return f"<SessionRevocations {where} recheck={self.recheck:g}s>"

    @classmethod
    def for_cache(cls, url: str | None, issuer: str, lifetime: float,
                  recheck: float = 2.0) -> SessionRevocations:
        """Redis when ``url`` (the topology's ``resources.cache``) is one, else local."""
        if url and url.startswith(("redis://", "rediss://", "unix://")):
            from amoeba.data.cache import redis_client, split_prefix

            return cls(issuer, lifetime, recheck, redis_client(url, timeout=0.5),
                       split_prefix(url)[1])
        return cls(issuer, lifetime, recheck)

    async def revoke(self, sid: str) -> None:
        """Mark ``sid`` revoked (raises if Redis cannot be reached: the caller's
        request then fails, so the client knows the logout did not happen)."""
        if self.client is None:
            now = time.time()
            if len(self.local) >= self.REMEMBERED:
                self.local = _LOCAL[self.issuer] = {
                    k: v for k, v in self.local.items() if v > now}
            self.local[sid] = now + self.lifetime
            return
        await self.client.set(self.key + sid, b"1", px=int(self.lifetime * 1000))
        self.seen[sid] = (True, time.monotonic())

    async def is_revoked(self, sid: str) -> bool:
        if self.client is None:
            until = self.local.get(sid)
            return until is not None and until > time.time()
        now = time.monotonic()
        hit = self.seen.get(sid)
        if hit is not None and (hit[0] or now - hit[1] < self.recheck):
            return hit[0]  # a revoked session stays revoked: never asked again
        try:
            revoked = bool(await self.client.exists(self.key + sid))
        except Exception as exc:  # redis.RedisError, OSError, timeouts
            if now - self._warned >= self.WARN_EVERY:
                self._warned = now
                log.warning("session revocations not checked: Redis unreachable (%s); using the "
                            "last known answers (logged at most once a minute)", exc)
            return hit is not None and hit[0]
        if hit is None and len(self.seen) >= self.REMEMBERED:
            del self.seen[next(iter(self.seen))]  # the oldest answer
        self.seen[sid] = (revoked, now)
        return revoked

    async def aclose(self) -> None:
        if self.client is not None:
            await self.client.aclose()
