"""Failed-login throttling per account, counted in the accounts cache.

The cache is Redis when the topology gives ``resources.cache`` a Redis URL,
so every replica sees one count per account; in-process otherwise.

* The first ``FREE`` failures of an email cost nothing more than the 401.
* From then on each failure locks the email for ``2 ** (n - FREE)`` seconds
  (2, 4, 8, ... s), capped at ``LOCK`` (15 min: reached at the 15th
  failure).  While locked, login answers 429 with ``Retry-After`` before any
  password is hashed, so a locked account costs no CPU.
* Failures are forgotten ``WINDOW`` after the last one; a successful login
  forgets them at once.

The count is kept by email whether an account exists or not: an unknown
email is throttled exactly like a known one, so the answers (401, then 429
with the same ``Retry-After``) tell nothing about which emails have
accounts.  Keys are a hash of the email, never the email itself.
"""

from __future__ import annotations

import hashlib
import time

from amoeba import Cache, TooManyRequests

FREE = 5
LOCK = 15 * 60.0
WINDOW = 60 * 60.0


class LoginLocked(TooManyRequests):
    """Too many failed logins for this account: wait for Retry-After."""


def delay_after(failures: int) -> float:
    """Seconds an account is locked after its ``failures``-th failure in a row."""
    if failures <= FREE:
        return 0.0
    return min(2.0 ** (failures - FREE), LOCK)


class LoginThrottle:
    def __init__(self, cache: Cache):
        self.cache = cache

    def __repr__(self) -> str:
        return f"<LoginThrottle free={FREE} lock<={LOCK:g}s in {self.cache!r}>"

    @staticmethod
    def _key(email: str) -> str:
        return hashlib.sha256(email.encode()).hexdigest()[:32]

    async def check(self, email: str) -> None:
        """Raises ``LoginLocked`` (429, ``retry_after``) while ``email`` is locked."""
        raw = await self.cache.get("login-lock:" + self._key(email))
        if raw is None:
            return
        left = float(raw) - time.time()
        if left > 0:
            raise LoginLocked("too many failed logins for this account; retry later",
                              retry_after=left)

    async def failed(self, email: str) -> None:
        key = self._key(email)
        n = await self.cache.incr("login-fail:" + key, ttl=WINDOW, sliding=True)
        delay = delay_after(n)
        if delay:
            await self.cache.set("login-lock:" + key, repr(time.time() + delay), ttl=delay)

    async def succeeded(self, email: str) -> None:
        key = self._key(email)
        await self.cache.delete("login-fail:" + key, "login-lock:" + key)
