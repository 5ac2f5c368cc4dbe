"""Password hashing: argon2id (``argon2-cffi``) with its recommended defaults.

Hashing takes tens of milliseconds of CPU by design, so both calls run in a
worker thread: the event loop keeps serving other requests meanwhile.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["hash_password", "needs_rehash", "verify_password"]

_hasher: Any = None


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


async def hash_password(password: str) -> str:
    """An encoded argon2id hash (salt and parameters included)."""
    ph = _ph()
    return str(await asyncio.to_thread(ph.hash, password))


async def verify_password(hashed: str, password: str) -> bool:
    """True when ``password`` matches; False for a mismatch or a malformed hash."""
    from argon2.exceptions import InvalidHashError, VerificationError

    ph = _ph()
    try:
        return bool(await asyncio.to_thread(ph.verify, hashed, password))
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(hashed: str) -> bool:
    """True when ``hashed`` used older parameters: store a fresh hash after a
    successful login."""
    return bool(_ph().check_needs_rehash(hashed))
