from typing import Annotated

from fastapi import Depends

from amoeba import provide
from tickets_api.clients import Vacancy, VacancyClient
from tickets_api.stock import Stock


async def get_stock(vacancy: Annotated[Vacancy, Depends(provide(Vacancy))]) -> Stock:
    return vacancy.stock


StockDep = Annotated[Stock, Depends(get_stock)]
VacancyDep = Annotated[VacancyClient, Depends(provide(VacancyClient))]
