"""The shop's two hot paths written the usual way: FastAPI + SQLAlchemy 2 (async) + PyJWT.

The comparison baseline for ``bench/shop.py``, written for it (not taken from
another project):

* browse ``GET /api/products/{id}``: the product as JSON (``price`` a decimal
  string), 404 when there is none;
* checkout ``POST /api/orders {"items": [{"product_id": id, "qty": n}]}`` with
  ``Authorization: Bearer <JWT>`` (HS256, verified with PyJWT on every
  request, no cache: what a typical FastAPI app does with a bearer
  dependency): stock taken by one conditional ``UPDATE ... WHERE stock >= qty``
  per line, then the order and its lines inserted, one transaction; 201 with
  the order, 409 when a line is out of stock, 404 for an unknown product.

Two shapes, like the shop's topologies:

    python bench/fastapi_shop.py monolith --port 8000 --database sqlite:///shop.sqlite3
    python bench/fastapi_shop.py catalog --port 8002 --database postgresql://postgres@127.0.0.1/db
    python bench/fastapi_shop.py orders  --port 8003 --database postgresql://postgres@127.0.0.1/db \\
        --catalog-url http://127.0.0.1:8002
    python bench/fastapi_shop.py gateway --port 8000 --catalog-url http://127.0.0.1:8002 \\
        --orders-url http://127.0.0.1:8003

* **monolith**: one process, SQLite through aiosqlite in WAL mode
  (``synchronous=NORMAL``, as the shop's own SQLite databases run);
* **microservices**: a gateway that verifies the JWT and calls catalog (browse)
  or orders (checkout) over a pooled, keep-alive ``httpx.AsyncClient``; orders
  reserves stock by calling catalog's ``POST /reserve`` over httpx, then writes
  the order in its own transaction (and gives the stock back through
  ``POST /release`` if that fails).  Catalog and orders each own a PostgreSQL
  schema (``catalog``, ``orders``) reached through asyncpg.

Database connections come from SQLAlchemy's default pool (5 plus 10 overflow;
``--db-pool N`` for a fixed N, say 1 to serialize SQLite's writers in the
process rather than in SQLite's busy handler).  Every process is uvicorn
with uvloop and httptools (what ``uvicorn[standard]`` installs), one worker,
no access log.  Tables are created at start-up;
``SHOP_PRODUCTS`` products (ids 1..N) with ``SHOP_STOCK`` units each are
seeded into an empty catalog.  Tokens are checked against ``SHOP_JWT_SECRET``,
issuer and audience ``fastapi-shop``; ``sub`` is the user id.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Literal

import httpx
import jwt
import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import BigInteger, DateTime, ForeignKey, Integer, String, event, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

Mode = Literal["monolith", "gateway", "catalog", "orders"]
ISSUER = AUDIENCE = "fastapi-shop"
CENT = Decimal("0.01")


# --- models ------------------------------------------------------------------


class Base(DeclarativeBase):
    pass


class Product(Base):
    __tablename__ = "products"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(String(2000), default="")
    price_cents: Mapped[int] = mapped_column(BigInteger)
    stock: Mapped[int] = mapped_column(Integer)

    @property
    def price(self) -> Decimal:
        return (Decimal(self.price_cents) / 100).quantize(CENT)


class Order(Base):
    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[str] = mapped_column(String(64), index=True)
    total_cents: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    items: Mapped[list[OrderItem]] = relationship(lazy="raise")


class OrderItem(Base):
    __tablename__ = "order_items"

    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), primary_key=True)
    product_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    qty: Mapped[int] = mapped_column(Integer)
    unit_cents: Mapped[int] = mapped_column(BigInteger)


CATALOG_TABLES = [Product.__table__]
ORDERS_TABLES = [Order.__table__, OrderItem.__table__]


# --- schemas -----------------------------------------------------------------


class ProductOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    description: str
    price: Decimal
    stock: int


class Line(BaseModel):
    product_id: int = Field(gt=0)
    qty: int = Field(gt=0, le=1_000_000)


class OrderIn(BaseModel):
    items: list[Line] = Field(min_length=1, max_length=100)


class PricedLine(BaseModel):
    product_id: int
    name: str
    qty: int
    unit_price: Decimal


class Reservation(BaseModel):
    lines: list[PricedLine]


class OrderItemOut(BaseModel):
    product_id: int
    name: str
    qty: int
    unit_price: Decimal
    line_total: Decimal


class OrderOut(BaseModel):
    id: int
    user_id: str
    items: list[OrderItemOut]
    total_amount: Decimal
    status: str
    created_at: datetime


# --- database ----------------------------------------------------------------


def make_engine(url: str, schema: str | None, pool: int = 0) -> AsyncEngine:
    """An async engine: aiosqlite in WAL mode for sqlite://, asyncpg with the
    service's schema first on the search_path for postgresql://.  ``pool``:
    the pool's size (0: SQLAlchemy's default, 5 plus 10 overflow)."""
    sizing = {"pool_size": pool, "max_overflow": 0} if pool else {}
    if url.startswith("sqlite://"):
        engine = create_async_engine(url.replace("sqlite://", "sqlite+aiosqlite://", 1), **sizing)

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_connection, _record):  # type: ignore[no-untyped-def]
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    if url.startswith(("postgresql://", "postgres://")):
        url = "postgresql+asyncpg://" + url.split("://", 1)[1]
        args = {"server_settings": {"search_path": schema}} if schema else {}
        return create_async_engine(url, connect_args=args, **sizing)
    raise SystemExit(f"--database {url!r}: use a sqlite:/// or postgresql:// URL")


async def create_tables(engine: AsyncEngine, schema: str | None, tables: list, seed: bool) -> None:  # type: ignore[type-arg]
    async with engine.begin() as conn:
        if schema:
            await conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        await conn.run_sync(lambda sync: Base.metadata.create_all(sync, tables=tables))
        if seed and (await conn.execute(select(func.count()).select_from(Product))).scalar_one() == 0:
            count, stock = int(os.environ.get("SHOP_PRODUCTS", "5")), int(os.environ.get("SHOP_STOCK", "100"))
            await conn.execute(Product.__table__.insert(), [
                {"id": i, "name": f"product {i}", "description": f"product number {i}",
                 "price_cents": 100, "stock": stock} for i in range(1, count + 1)])


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    async with request.app.state.sessions() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]


# --- auth --------------------------------------------------------------------

bearer = HTTPBearer()


async def current_user(credentials: Annotated[HTTPAuthorizationCredentials, Depends(bearer)]) -> str:
    """The verified token's subject; 401 for a missing, expired or forged token."""
    try:
        claims = jwt.decode(credentials.credentials, os.environ["SHOP_JWT_SECRET"],
                            algorithms=["HS256"], audience=AUDIENCE, issuer=ISSUER)
    except jwt.InvalidTokenError as exc:
        raise HTTPException(401, f"invalid token: {exc}",
                            headers={"WWW-Authenticate": "Bearer"}) from exc
    return str(claims["sub"])


UserDep = Annotated[str, Depends(current_user)]


# --- catalog -----------------------------------------------------------------


def _merge(items: list[Line]) -> list[tuple[int, int]]:
    """Quantity per product in id order, so concurrent checkouts lock rows in
    the same order and cannot deadlock."""
    total: dict[int, int] = {}
    for line in items:
        total[line.product_id] = total.get(line.product_id, 0) + line.qty
    return sorted(total.items())


async def take_stock(session: AsyncSession, items: list[Line]) -> list[PricedLine]:
    """Take every line from stock inside the caller's transaction; HTTP 404/409
    (the transaction then rolls back) when a product is missing or short."""
    priced = []
    for product_id, qty in _merge(items):
        row = (await session.execute(
            update(Product).where(Product.id == product_id, Product.stock >= qty)
            .values(stock=Product.stock - qty)
            .returning(Product.name, Product.price_cents)
            .execution_options(synchronize_session=False))).first()
        if row is None:
            left = await session.scalar(select(Product.stock).where(Product.id == product_id))
            if left is None:
                raise HTTPException(404, f"no product {product_id}")
            raise HTTPException(409, f"product {product_id}: {qty} asked, {left} left")
        priced.append(PricedLine(product_id=product_id, name=row.name, qty=qty,
                                 unit_price=(Decimal(row.price_cents) / 100).quantize(CENT)))
    return priced


catalog_router = APIRouter()


@catalog_router.get("/api/products/{product_id}")
async def get_product(product_id: int, session: SessionDep) -> ProductOut:
    product = await session.get(Product, product_id)
    if product is None:
        raise HTTPException(404, f"no product {product_id}")
    return ProductOut.model_validate(product)


@catalog_router.post("/reserve")
async def reserve(body: OrderIn, session: SessionDep) -> Reservation:
    async with session.begin():
        return Reservation(lines=await take_stock(session, body.items))


@catalog_router.post("/release")
async def release(body: OrderIn, session: SessionDep) -> None:
    async with session.begin():
        for product_id, qty in _merge(body.items):
            await session.execute(update(Product).where(Product.id == product_id)
                                  .values(stock=Product.stock + qty)
                                  .execution_options(synchronize_session=False))


# --- orders ------------------------------------------------------------------


async def store_order(session: AsyncSession, user: str, priced: list[PricedLine]) -> OrderOut:
    """Add the order and its lines to the session's open transaction."""
    cents = [int(p.unit_price * 100) for p in priced]
    order = Order(user_id=user, total_cents=sum(c * p.qty for c, p in zip(cents, priced, strict=True)),
                  status="placed", created_at=datetime.now(UTC),
                  items=[OrderItem(product_id=p.product_id, name=p.name, qty=p.qty, unit_cents=c)
                         for c, p in zip(cents, priced, strict=True)])
    session.add(order)
    await session.flush()
    return OrderOut(id=order.id, user_id=user, status=order.status, created_at=order.created_at,
                    total_amount=(Decimal(order.total_cents) / 100).quantize(CENT),
                    items=[OrderItemOut(product_id=p.product_id, name=p.name, qty=p.qty,
                                        unit_price=p.unit_price, line_total=p.unit_price * p.qty)
                           for p in priced])


monolith_orders = APIRouter()


@monolith_orders.post("/api/orders", status_code=201)
async def place_order(body: OrderIn, user: UserDep, session: SessionDep) -> OrderOut:
    async with session.begin():
        return await store_order(session, user, await take_stock(session, body.items))


orders_router = APIRouter()


@orders_router.post("/orders", status_code=201)
async def place_remote_order(body: OrderIn, request: Request, session: SessionDep,
                             x_user_id: Annotated[str, Header()]) -> OrderOut:
    catalog: httpx.AsyncClient = request.app.state.catalog
    payload = body.model_dump(mode="json")
    r = await catalog.post("/reserve", json=payload)
    if r.status_code != 200:
        raise HTTPException(r.status_code if r.status_code in (404, 409) else 502, r.json()["detail"])
    priced = Reservation.model_validate_json(r.content).lines
    try:
        async with session.begin():
            return await store_order(session, x_user_id, priced)
    except BaseException:
        await catalog.post("/release", json=payload)  # give the stock back
        raise


# --- gateway -----------------------------------------------------------------

gateway_router = APIRouter()


def _relay(r: httpx.Response) -> Response:
    return Response(r.content, status_code=r.status_code, media_type="application/json")


@gateway_router.get("/api/products/{product_id}")
async def gateway_product(product_id: int, request: Request) -> Response:
    return _relay(await request.app.state.catalog.get(f"/api/products/{product_id}"))


@gateway_router.post("/api/orders")
async def gateway_order(request: Request, user: UserDep) -> Response:
    return _relay(await request.app.state.orders.post(
        "/orders", content=await request.body(),
        headers={"Content-Type": "application/json", "X-User-Id": user}))


# --- assembly ----------------------------------------------------------------


def _client(base_url: str, pool: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(10.0),
                             limits=httpx.Limits(max_connections=pool, max_keepalive_connections=pool))


def create_app(mode: Mode, *, database: str = "", catalog_url: str = "", orders_url: str = "",
               pool: int = 10, db_pool: int = 0) -> FastAPI:
    schema = None if mode in ("monolith", "gateway") else mode
    tables = {"monolith": CATALOG_TABLES + ORDERS_TABLES, "catalog": CATALOG_TABLES,
              "orders": ORDERS_TABLES, "gateway": []}[mode]

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = None
        if tables:
            engine = make_engine(database, schema, db_pool)
            await create_tables(engine, schema, tables, seed=mode in ("monolith", "catalog"))
            app.state.sessions = async_sessionmaker(engine, expire_on_commit=False)
        clients = []
        if mode in ("orders", "gateway"):
            app.state.catalog = _client(catalog_url, pool)
            clients.append(app.state.catalog)
        if mode == "gateway":
            app.state.orders = _client(orders_url, pool)
            clients.append(app.state.orders)
        yield
        for client in clients:
            await client.aclose()
        if engine is not None:
            await engine.dispose()

    app = FastAPI(title=f"fastapi-shop-{mode}", lifespan=lifespan)
    routers = {"monolith": [catalog_router, monolith_orders], "catalog": [catalog_router],
               "orders": [orders_router], "gateway": [gateway_router]}[mode]
    for router in routers:
        app.include_router(router)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "healthy", "service": mode}

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["monolith", "gateway", "catalog", "orders"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--database", default="", help="sqlite:///FILE or postgresql://...")
    parser.add_argument("--catalog-url", default="http://127.0.0.1:8002")
    parser.add_argument("--orders-url", default="http://127.0.0.1:8003")
    parser.add_argument("--pool-size", type=int, default=10, help="httpx connections per upstream")
    parser.add_argument("--db-pool", type=int, default=0,
                        help="database connections (0: SQLAlchemy's default pool, 5 + 10 overflow)")
    args = parser.parse_args(argv)
    if args.mode in ("monolith", "catalog", "orders") and not args.database:
        parser.error(f"{args.mode} needs --database")
    if "SHOP_JWT_SECRET" not in os.environ and args.mode in ("monolith", "gateway"):
        parser.error("set SHOP_JWT_SECRET (the HS256 key tokens are signed with)")
    app = create_app(args.mode, database=args.database, catalog_url=args.catalog_url,
                     orders_url=args.orders_url, pool=args.pool_size, db_pool=args.db_pool)
    uvicorn.run(app, host=args.host, port=args.port, loop="uvloop", http="httptools",
                access_log=False, log_level="warning", workers=1)


if __name__ == "__main__":
    main()
