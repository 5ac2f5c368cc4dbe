"""Ticket: sells tickets by reserving them from vacancy."""

from __future__ import annotations

import msgspec

from amoeba import Service, post
from tickets.vacancy import Qty, Vacancy


class Purchase(msgspec.Struct):
    success: bool
    remaining: int
    message: str | None = None


class Ticket(Service):
    vacancy: Vacancy

    @post("/api/v1/purchase")
    async def purchase(self, qty: Qty) -> Purchase:
        """Buy `qty` tickets; `success` is false when not enough are left."""
        r = await self.vacancy.reserve(qty)  # a plain await or an RPC: same line
        if r.success:
            return Purchase(success=True, remaining=r.remaining, message=f"purchased {qty}")
        return Purchase(success=False, remaining=r.remaining, message=r.message)
