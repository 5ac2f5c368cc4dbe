"""Waiting on a condition instead of sleeping for a guessed time: the bound is
generous (a loaded machine is slow, never early) and a failure says what was
awaited and what was seen last."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx

T = TypeVar("T")


async def eventually(probe: Callable[[], Awaitable[T | None]], within: float, what: str,
                     every: float = 0.1) -> T:
    """The first truthy result of ``probe``, polled every ``every`` seconds; a
    probe that cannot reach its process (restarting) counts as not yet."""
    end = time.monotonic() + within
    last: Any = None
    while time.monotonic() < end:
        try:
            last = await probe()
        except (httpx.TransportError, OSError) as exc:
            last = exc
        else:
            if last:
                return last
        await asyncio.sleep(every)
    raise AssertionError(f"{what}: not within {within:.0f}s (last: {last!r})")


def checked(fn: Callable[[], T]) -> Callable[[], Awaitable[T]]:
    """A plain function as a probe for :func:`eventually`."""
    async def call() -> T:
        return fn()

    return call
