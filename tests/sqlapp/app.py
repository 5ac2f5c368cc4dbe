"""A tiny app for the SQL Database tests: two services with Alembic migrations
that both define a table ``items`` (each in its own schema), and one service
without migrations."""

from __future__ import annotations

from amoeba import App, Database, Service, get


class Catalog(Service):
    migrations = "migrations/catalog"
    db: Database

    @get("/catalog/count")
    async def count(self) -> int:
        return int(await self.db.scalar("SELECT count(*) FROM items"))


class Orders(Service):
    migrations = "migrations/orders"
    db: Database

    @get("/orders/count")
    async def count(self) -> int:
        return int(await self.db.scalar("SELECT count(*) FROM items"))


class Scratch(Service):
    """A Database and no migrations: the service makes its own tables."""

    db: Database

    @get("/scratch/ping")
    async def ping(self) -> int:
        return int(await self.db.scalar("SELECT 1"))


app = App("sqlapp", services=[Catalog, Orders, Scratch])
