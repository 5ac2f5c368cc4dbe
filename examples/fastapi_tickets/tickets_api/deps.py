from typing import Annotated

from fastapi import Depends, Request

from tickets_api.clients import VacancyClient
from tickets_api.stock import Stock


async def get_stock(request: Request) -> Stock:
    return request.app.state.stock  # type: ignore[no-any-return]


async def get_vacancy(request: Request) -> VacancyClient:
    return request.app.state.vacancy  # type: ignore[no-any-return]


StockDep = Annotated[Stock, Depends(get_stock)]
VacancyDep = Annotated[VacancyClient, Depends(get_vacancy)]
