from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

from amoeba import App, Body, Service, get, post


class QtyRequest(BaseModel):
    qty: int = Field(gt=0, le=100)


class OperationResponse(BaseModel):
    success: bool
    remaining: int
    message: str | None = None


class Item(BaseModel):
    name: str
    tags: list[str] = []


class Order(BaseModel):
    items: list[Item]
    note: str | None = None


class OrderResult(BaseModel):
    count: int
    names: list[str]
    echo: Order


class Shop(Service):
    async def start(self) -> None:
        self.stock = 50

    @post("/orders")
    async def place(self, order: Order, priority: int = 0) -> OrderResult:
        return OrderResult(count=len(order.items) + priority, names=[i.name for i in order.items],
                           echo=order)

    @post("/reserve")
    async def reserve(self, req: Annotated[QtyRequest, Body()]) -> OperationResponse:
        assert isinstance(req, QtyRequest)
        if req.qty > self.stock:
            return OperationResponse(success=False, remaining=self.stock, message="sold out")
        self.stock -= req.qty
        return OperationResponse(success=True, remaining=self.stock)

    @get("/plain")
    async def plain(self, n: int) -> int:
        return n * 2

    async def maybe(self, order: Order | None = None) -> list[Item]:
        return order.items if order else []


class Caller(Service):
    shop: Shop

    @post("/via")
    async def via(self, qty: int) -> OperationResponse:
        r = await self.shop.reserve(QtyRequest(qty=qty))
        assert isinstance(r, OperationResponse), type(r)
        return r


app = App("pydapp", services=[Shop, Caller])
