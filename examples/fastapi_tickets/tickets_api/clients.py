"""What the ticket side needs of vacancy, and the service that provides it."""

import os
from typing import Protocol

from amoeba import Mount, Service
from tickets_api.models import AvailableResponse, OperationResponse
from tickets_api.stock import Stock


class VacancyClient(Protocol):
    async def available(self) -> AvailableResponse: ...

    async def reserve(self, qty: int) -> OperationResponse: ...


class Vacancy(Service):
    mounts = (Mount("tickets_api.main:vacancy_app", "/api/v1/available", "/api/v1/reserve"),)

    async def start(self) -> None:
        self.stock = Stock(int(os.environ.get("INITIAL_STOCK", "1000")))

    async def available(self) -> AvailableResponse:
        return AvailableResponse(qty=await self.stock.available())

    async def reserve(self, qty: int) -> OperationResponse:
        return await self.stock.reserve(qty)
