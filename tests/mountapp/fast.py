"""A FastAPI app as one is written today: routers, pydantic, Depends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from amoeba import provide
from mountapp import events
from mountapp.services import Store

StoreDep = Annotated[Store, Depends(provide(Store))]


class AddRequest(BaseModel):
    n: int = Field(gt=0)


class AddResponse(BaseModel):
    total: int
    via: str


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, str]]:
    events.record("fast startup")
    yield {"flavour": "fastapi"}
    events.record("fast shutdown")


router = APIRouter(prefix="/fast")


@router.post("/add")
async def add(body: AddRequest, store: StoreDep) -> AddResponse:
    r = await store.add(body.n)
    return AddResponse(total=r.total, via=type(store).__name__)


@router.get("/whoami")
async def whoami(request: Request) -> dict[str, str | None]:
    p = request.state.principal
    return {"subject": p.subject if p else None, "flavour": request.state.flavour}


@router.get("/events")
async def sse(n: int = 3) -> StreamingResponse:
    async def gen() -> AsyncIterator[bytes]:
        for i in range(n):
            yield f"data: {i}\n\n".encode()
            await asyncio.sleep(0.01)

    return StreamingResponse(gen(), media_type="text/event-stream")


other = APIRouter(prefix="/other")


@other.get("/ping")
async def ping() -> dict[str, str]:
    return {"pong": "other prefix"}


app = FastAPI(title="mounted", lifespan=lifespan)
app.include_router(router)
app.include_router(other)
