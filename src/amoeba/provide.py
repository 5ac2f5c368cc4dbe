"""``provide``: reach services from inside a mounted ASGI app.

Kept apart from the ASGI bridge so that ``import amoeba`` stays light: this
module imports nothing but the standard library.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any, TypeVar

__all__ = ["current_mount", "provide"]

#: (resolver, calling service) of the mounted app being served, set by the
#: bridge for each request and the lifespan: what :func:`provide` reads.
current_mount: ContextVar[tuple[Callable[[Any, str], Any], str] | None] = ContextVar(
    "amoeba.mount", default=None)

S = TypeVar("S")


def provide(target: type[S]) -> Callable[[], Awaitable[S]]:
    """A dependency for a mounted app's handlers (FastAPI: ``Depends``) that
    yields ``target`` — a Service class, or a ``Protocol`` one service
    implements — as the co-located instance, or its remote stub when the
    service runs in another process::

        VacancyDep = Annotated[Vacancy, Depends(provide(Vacancy))]

    Decided once per process from the topology; valid while amoeba serves the
    request (or runs the app's lifespan)."""

    async def dependency() -> S:
        mounted = current_mount.get()
        if mounted is None:
            raise RuntimeError(f"provide({getattr(target, '__qualname__', target)}): called outside "
                               f"a request that amoeba serves; mount the app on a service "
                               f"(mounts = (Mount(...),)) and run it with amoeba")
        resolve, caller = mounted
        ref: S = resolve(target, caller)
        return ref

    dependency.__name__ = f"provide_{getattr(target, '__name__', 'service')}"
    return dependency


