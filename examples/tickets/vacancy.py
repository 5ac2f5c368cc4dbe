"""Vacancy: the stock of tickets, durable in SQLite, reserved atomically."""

from __future__ import annotations

import os
from typing import Annotated

import msgspec

from amoeba import Service, SQLite, get, post

# A quantity a client may ask for: positive and not absurd.
Qty = Annotated[int, msgspec.Meta(gt=0, le=1_000_000)]


class Availability(msgspec.Struct):
    qty: int


class Reservation(msgspec.Struct):
    success: bool
    remaining: int
    message: str | None = None


class Vacancy(Service):
    db: SQLite

    async def start(self) -> None:
        await self.db.executescript(
            "CREATE TABLE IF NOT EXISTS stock (id INTEGER PRIMARY KEY CHECK (id = 1),"
            " qty INTEGER NOT NULL CHECK (qty >= 0))")
        # Seed only when the database is first created: restarts keep what was sold.
        initial = int(os.environ.get("INITIAL_STOCK", "1000"))
        await self.db.execute("INSERT OR IGNORE INTO stock (id, qty) VALUES (1, ?)", (initial,))

    @get("/api/v1/available")
    async def available(self) -> Availability:
        """How many tickets are left."""
        row = await self.db.fetchone("SELECT qty FROM stock WHERE id = 1")
        return Availability(qty=row[0])

    @post("/api/v1/reserve")
    async def reserve(self, qty: Qty) -> Reservation:
        """Take `qty` tickets from the stock, all or none."""
        # One statement: atomic within this process and across replicas
        # (SQLite's write lock), and it can never go below zero.
        row = await self.db.fetchone(
            "UPDATE stock SET qty = qty - ? WHERE id = 1 AND qty >= ? RETURNING qty", (qty, qty))
        if row is not None:
            return Reservation(success=True, remaining=row[0], message=f"reserved {qty}")
        left = await self.db.fetchone("SELECT qty FROM stock WHERE id = 1")
        return Reservation(success=False, remaining=left[0],
                           message=f"not enough tickets: {left[0]} left, {qty} asked")
