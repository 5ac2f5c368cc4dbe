"""Plain FastAPI + httpx implementation of the ticket sale contract.

The comparison baseline for amoeba: the same service written the usual way,
with routers, pydantic models and an explicit client seam between the ticket
and vacancy components.

    python bench/fastapi_tickets.py monolith --port 8000
    python bench/fastapi_tickets.py vacancy --port 8001
    python bench/fastapi_tickets.py ticket --port 8002 --vacancy-url http://127.0.0.1:8001
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Literal, Protocol

import httpx
import uvicorn
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from pydantic import BaseModel, Field

Mode = Literal["monolith", "vacancy", "ticket"]


class QtyRequest(BaseModel):
    qty: int = Field(gt=0)


class AvailableResponse(BaseModel):
    qty: int


class OperationResponse(BaseModel):
    success: bool
    remaining: int
    message: str | None = None


class HealthResponse(BaseModel):
    status: Literal["healthy"] = "healthy"
    service: str


class Stock:
    """In-memory ticket stock; the lock keeps check-and-decrement atomic."""

    def __init__(self, initial: int) -> None:
        self._qty = initial
        self._lock = asyncio.Lock()

    async def available(self) -> int:
        return self._qty

    async def reserve(self, qty: int) -> OperationResponse:
        async with self._lock:
            if qty > self._qty:
                return OperationResponse(
                    success=False,
                    remaining=self._qty,
                    message=f"insufficient stock: requested {qty}, available {self._qty}",
                )
            self._qty -= qty
            return OperationResponse(success=True, remaining=self._qty)


class VacancyClient(Protocol):
    async def available(self) -> AvailableResponse: ...

    async def reserve(self, qty: int) -> OperationResponse: ...

    async def aclose(self) -> None: ...


class LocalVacancyClient:
    """Monolith: the ticket component calls the stock directly."""

    def __init__(self, stock: Stock) -> None:
        self._stock = stock

    async def available(self) -> AvailableResponse:
        return AvailableResponse(qty=await self._stock.available())

    async def reserve(self, qty: int) -> OperationResponse:
        return await self._stock.reserve(qty)

    async def aclose(self) -> None:
        return None


class RemoteVacancyClient:
    """Microservices: the ticket service talks to vacancy over pooled HTTP/1.1.

    The pool is small on purpose: httpcore rescans every pooled connection for
    every queued request on each pool change, so under 50 concurrent requests a
    10-connection pool is ~2.5x faster than a 50-100 one.
    """

    def __init__(self, base_url: str, max_connections: int = 10) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url,
            limits=httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max_connections,
            ),
            timeout=httpx.Timeout(10.0),
        )

    async def available(self) -> AvailableResponse:
        response = await self._send("GET", "/api/v1/available")
        return AvailableResponse.model_validate_json(response.content)

    async def reserve(self, qty: int) -> OperationResponse:
        response = await self._send("POST", "/api/v1/reserve", json={"qty": qty})
        return OperationResponse.model_validate_json(response.content)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, method: str, path: str, json: object = None) -> httpx.Response:
        try:
            response = await self._http.request(method, path, json=json)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise HTTPException(status_code=502, detail=f"vacancy service: {exc}") from exc
        return response


# Dependencies are `async def` on purpose: FastAPI runs plain `def` dependencies
# in a threadpool, which would cost more than the handlers themselves.
async def get_stock(request: Request) -> Stock:
    stock: Stock = request.app.state.stock
    return stock


async def get_vacancy(request: Request) -> VacancyClient:
    vacancy: VacancyClient = request.app.state.vacancy
    return vacancy


StockDep = Annotated[Stock, Depends(get_stock)]
VacancyDep = Annotated[VacancyClient, Depends(get_vacancy)]

vacancy_router = APIRouter(tags=["vacancy"])
ticket_router = APIRouter(tags=["ticket"])
# The standalone ticket service also answers GET /available (via vacancy) so
# that it serves the whole public contract on its own.
ticket_proxy_router = APIRouter(tags=["ticket"])


@vacancy_router.get("/available")
async def available(stock: StockDep) -> AvailableResponse:
    return AvailableResponse(qty=await stock.available())


@vacancy_router.post("/reserve")
async def reserve(body: QtyRequest, stock: StockDep) -> OperationResponse:
    return await stock.reserve(body.qty)


@ticket_proxy_router.get("/available")
async def ticket_available(vacancy: VacancyDep) -> AvailableResponse:
    return await vacancy.available()


@ticket_router.post("/purchase")
async def purchase(body: QtyRequest, vacancy: VacancyDep) -> OperationResponse:
    return await vacancy.reserve(body.qty)


def create_app(
    mode: Mode,
    *,
    initial_stock: int | None = None,
    vacancy_url: str = "http://127.0.0.1:8001",
    pool_size: int = 10,
) -> FastAPI:
    if initial_stock is None:
        initial_stock = int(os.environ.get("INITIAL_STOCK", "1000"))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if mode != "ticket":
            app.state.stock = Stock(initial_stock)
        if mode == "monolith":
            app.state.vacancy = LocalVacancyClient(app.state.stock)
        elif mode == "ticket":
            app.state.vacancy = RemoteVacancyClient(vacancy_url, pool_size)
        yield
        if mode != "vacancy":
            await app.state.vacancy.aclose()

    app = FastAPI(title=f"tickets-{mode}", lifespan=lifespan)
    api = APIRouter(prefix="/api/v1")
    if mode in ("monolith", "vacancy"):
        api.include_router(vacancy_router)
    if mode == "ticket":
        api.include_router(ticket_proxy_router)
    if mode in ("monolith", "ticket"):
        api.include_router(ticket_router)

    @api.get("/health")
    async def health() -> HealthResponse:
        return HealthResponse(service=mode)

    app.include_router(api)

    @app.get("/")
    async def root() -> dict[str, str]:
        return {
            "mode": "monolith" if mode == "monolith" else "microservices",
            "service": mode,
        }

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["monolith", "vacancy", "ticket"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--vacancy-url", default="http://127.0.0.1:8001")
    parser.add_argument("--pool-size", type=int, default=10, help="httpx max connections")
    args = parser.parse_args(argv)
    # anyio>=4.11 no longer pulls in sniffio, and without it httpcore retries a
    # failing `import sniffio` on every pool lock (encode/httpcore#1103), which
    # would make this baseline's remote calls needlessly slow.
    if args.mode == "ticket" and importlib.util.find_spec("sniffio") is None:
        print("warning: sniffio is not installed; httpx will be slower", file=sys.stderr)
    app = create_app(args.mode, vacancy_url=args.vacancy_url, pool_size=args.pool_size)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        workers=1,
    )


if __name__ == "__main__":
    main()
