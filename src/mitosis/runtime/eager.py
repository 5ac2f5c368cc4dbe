"""Start a coroutine now, on the caller's stack; make a task only if it suspends.

Most requests never wait on anything (a monolith's call chain is plain
awaits, SQLite runs inline), so creating a task and waiting a loop turn for
each one is pure overhead.  This is what Python 3.12's eager task factory
does; it is spelled out here to run on 3.11.  The coroutine runs in a fresh
copy of the context, as it would in a task of its own.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Coroutine, Generator
from typing import Any

__all__ = ["start_eagerly"]


class _Resume:
    """Awaitable that continues a coroutine which already ran up to ``first``."""

    __slots__ = ("coro", "first")

    def __init__(self, coro: Coroutine[Any, Any, Any], first: Any):
        self.coro = coro
        self.first = first

    def __await__(self) -> Generator[Any, Any, Any]:
        coro = self.coro
        yielded = self.first
        while True:
            try:
                value = yield yielded
            except BaseException as exc:  # thrown in by the task (cancellation)
                try:
                    yielded = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
                continue
            try:
                yielded = coro.send(value)
            except StopIteration as stop:
                return stop.value


async def _finish(coro: Coroutine[Any, Any, Any], first: Any) -> Any:
    return await _Resume(coro, first)


def start_eagerly(coro: Coroutine[Any, Any, None]) -> asyncio.Task[Any] | None:
    """Run ``coro`` until it first suspends.  None if it finished (an exception
    it raised is re-raised here), else the task that carries on."""
    ctx = contextvars.copy_context()
    try:
        first = ctx.run(coro.send, None)
    except StopIteration:
        return None
    return asyncio.get_running_loop().create_task(_finish(coro, first), context=ctx)
