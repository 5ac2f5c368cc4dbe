from fastapi import APIRouter

from tickets_api.deps import StockDep, VacancyDep
from tickets_api.models import AvailableResponse, OperationResponse, QtyRequest

vacancy_router = APIRouter(tags=["vacancy"])
ticket_router = APIRouter(tags=["ticket"])


@vacancy_router.get("/available")
async def available(stock: StockDep) -> AvailableResponse:
    return AvailableResponse(qty=await stock.available())


@vacancy_router.post("/reserve")
async def reserve(body: QtyRequest, stock: StockDep) -> OperationResponse:
    return await stock.reserve(body.qty)


@ticket_router.post("/purchase")
async def purchase(body: QtyRequest, vacancy: VacancyDep) -> OperationResponse:
    r = await vacancy.reserve(body.qty)
    message = f"purchased {body.qty}" if r.success else r.message
    return OperationResponse(success=r.success, remaining=r.remaining, message=message)
