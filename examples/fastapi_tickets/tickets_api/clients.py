"""How the ticket side reaches vacancy: in process, or over HTTP."""

from typing import Protocol

import httpx

from tickets_api.models import AvailableResponse, OperationResponse
from tickets_api.stock import Stock


class VacancyClient(Protocol):
    async def available(self) -> AvailableResponse: ...

    async def reserve(self, qty: int) -> OperationResponse: ...


class LocalVacancyClient:
    def __init__(self, stock: Stock) -> None:
        self.stock = stock

    async def available(self) -> AvailableResponse:
        return AvailableResponse(qty=await self.stock.available())

    async def reserve(self, qty: int) -> OperationResponse:
        return await self.stock.reserve(qty)


class RemoteVacancyClient:
    def __init__(self, base_url: str) -> None:
        self.http = httpx.AsyncClient(base_url=base_url, timeout=10.0)

    async def available(self) -> AvailableResponse:
        r = await self.http.get("/api/v1/available")
        r.raise_for_status()
        return AvailableResponse.model_validate_json(r.content)

    async def reserve(self, qty: int) -> OperationResponse:
        r = await self.http.post("/api/v1/reserve", json={"qty": qty})
        r.raise_for_status()
        return OperationResponse.model_validate_json(r.content)

    async def aclose(self) -> None:
        await self.http.aclose()
