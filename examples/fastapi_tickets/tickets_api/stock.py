import asyncio

from tickets_api.models import OperationResponse


class Stock:
    """The tickets left; the lock keeps check-and-take atomic."""

    def __init__(self, initial: int) -> None:
        self.qty = initial
        self.lock = asyncio.Lock()

    async def available(self) -> int:
        return self.qty

    async def reserve(self, qty: int) -> OperationResponse:
        async with self.lock:
            if qty > self.qty:
                return OperationResponse(success=False, remaining=self.qty,
                                         message=f"not enough tickets: {self.qty} left, {qty} asked")
            self.qty -= qty
            return OperationResponse(success=True, remaining=self.qty, message=f"reserved {qty}")
