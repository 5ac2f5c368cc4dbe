"""Apps whose lifespan startup fails, two ways."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from amoeba import App, Mount, Service


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    raise RuntimeError("cannot reach the warehouse")
    yield


app = FastAPI(lifespan=lifespan)


class Broken(Service):
    mounts = (Mount("mountapp.failing:app", "/broken"),)


class Missing(Service):
    mounts = (Mount("mountapp.nowhere:app", "/missing"),)


broken_app = App("broken", services=[Broken])
missing_app = App("missing", services=[Missing])


async def no_lifespan(scope, receive, send):  # type: ignore[no-untyped-def]
    """An app that ignores the lifespan scope (returns at once): served all the same."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"plain"})


class Plain(Service):
    mounts = (Mount("mountapp.failing:no_lifespan", "/plain"),)


plain_app = App("plain", services=[Plain])
