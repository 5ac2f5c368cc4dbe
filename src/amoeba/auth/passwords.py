"""Password hashing: argon2id (``argon2-cffi``) with its recommended defaults.

Hashing takes tens of milliseconds of CPU and tens of MiB of memory by
design, so both calls run in a worker thread (the event loop keeps serving
other requests meanwhile) and **at most** ``AMOEBA_PASSWORD_HASHES`` of them
run at once per process (default: half the cores, at least one).  A call
that finds every slot taken waits up to ``AMOEBA_PASSWORD_WAIT`` seconds
(default 1) and then raises :class:`HashingBusy` (503 with ``Retry-After``):
a flood of logins costs at most that many cores, never the whole machine,
so the process keeps answering everything else.
"""

from __future__ import annotations

import asyncio
import os
import weakref
from typing import Any

from amoeba.errors import Unavailable

__all__ = ["HashingBusy", "hash_password", "needs_rehash", "verify_password"]

_hasher: Any = None


class HashingBusy(Unavailable):
    """Too many password checks at once in this process; retry in a moment."""


def _setting(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number; fix: {name}={default:g}") from None
    if value <= 0:
        raise ValueError(f"{name}={raw!r} must be above 0; fix: {name}={default:g}")
    return value


def max_concurrent() -> int:
    return int(_setting("AMOEBA_PASSWORD_HASHES", max(1, (os.cpu_count() or 2) // 2)))


# One semaphore per event loop (an asyncio primitive belongs to one loop);
# a process normally has one.
_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary())


def _ph() -> Any:
    global _hasher
    if _hasher is None:
        try:
            from argon2 import PasswordHasher
        except ImportError:  # pragma: no cover - declared dependency
            raise ImportError("password hashing needs argon2-cffi: pip install 'argon2-cffi>=23.1'"
                              ) from None
        _hasher = PasswordHasher()  # argon2id, RFC 9106 low-memory profile
    return _hasher


async def _in_slot(fn: Any, *args: Any) -> Any:
    loop = asyncio.get_running_loop()
    slots = _slots.get(loop)
    if slots is None:
        slots = _slots[loop] = asyncio.Semaphore(max_concurrent())
    wait = _setting("AMOEBA_PASSWORD_WAIT", 1.0)
    try:
        await asyncio.wait_for(slots.acquire(), wait)
    except TimeoutError:
        raise HashingBusy("too many password checks at once; retry in a moment",
                          retry_after=max(1.0, wait)) from None
    try:
        return await asyncio.to_thread(fn, *args)
    finally:
        slots.release()


async def hash_password(password: str) -> str:
    """An encoded argon2id hash (salt and parameters included)."""
    return str(await _in_slot(_ph().hash, password))


async def verify_password(hashed: str, password: str) -> bool:
    """True when ``password`` matches; False for a mismatch or a malformed hash."""
    from argon2.exceptions import InvalidHashError, VerificationError

    try:
        return bool(await _in_slot(_ph().verify, hashed, password))
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(hashed: str) -> bool:
    """True when ``hashed`` used older parameters: store a fresh hash after a
    successful login."""
    return bool(_ph().check_needs_rehash(hashed))
