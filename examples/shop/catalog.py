"""Catalog: products with a price and a stock.

Reading is public; creating and updating products needs the ``admin`` role.
Other services take stock with ``reserve`` (all lines or none, never below
zero, atomic across replicas because it is one conditional ``UPDATE`` per
line inside one transaction).

What ``reserve`` takes is a **hold**, named by the caller: a ``holds`` row
(``held``) and its lines, written in the same transaction as the stock
change.  A hold ends one way only, exactly once:

* ``confirm``: it became an order, the stock stays taken (orders confirms
  its placed holds in batches);
* ``release``: the stock goes back.  Releasing a hold that does not exist
  (yet) leaves a ``released`` tombstone, so a reservation still on its way
  for it fails instead of taking stock nobody will give back.

Who decides between them, and when a hold whose order never came is
released, is the caller's business: orders keeps the other half of the
record (see ``orders.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any

import msgspec
import sqlalchemy as sa

from amoeba import Conflict, Database, Forbidden, NotFound, Principal, Service, get, patch, post
from shop.fields import NO_NUL, Page, PerPage, RowId
from shop.money import Money, from_cents, to_cents
from shop.timestamps import Timestamp

metadata = sa.MetaData()
products = sa.Table(
    "products", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("description", sa.String(2000), nullable=False, server_default=""),
    sa.Column("price_cents", sa.BigInteger, nullable=False),
    sa.Column("stock", sa.Integer, nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
)
holds = sa.Table(
    "holds", metadata,
    sa.Column("hold_id", sa.String(64), primary_key=True),
    sa.Column("state", sa.String(10), nullable=False),  # held | confirmed | released
    sa.Column("created_at", Timestamp, nullable=False),
)
hold_lines = sa.Table(
    "hold_lines", metadata,
    sa.Column("hold_id", sa.String(64), primary_key=True),
    sa.Column("product_id", sa.Integer, primary_key=True),
    sa.Column("qty", sa.Integer, nullable=False),
)
HoldId = Annotated[str, msgspec.Meta(min_length=8, max_length=64)]
KEEP_ENDED = timedelta(hours=1)
PRUNE_EVERY = 60.0
log = logging.getLogger("shop.catalog")

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=NO_NUL)]
Description = Annotated[str, msgspec.Meta(max_length=2000, pattern=NO_NUL)]
Stock = Annotated[int, msgspec.Meta(ge=0, le=1_000_000_000)]
Qty = Annotated[int, msgspec.Meta(gt=0, le=1_000_000)]
ProductId = RowId

DEMO_PRODUCTS = [
    ("Mechanical keyboard", "Tenkeyless, brown switches", "89.90", 25),
    ("Wireless mouse", "Six buttons, USB-C charging", "34.50", 40),
    ("27\" monitor", "2560x1440, 144 Hz", "279.00", 10),
    ("USB-C hub", "7 ports, 100 W passthrough", "42.00", 60),
    ("Laptop stand", "Aluminium, adjustable", "29.99", 35),
]


class Product(msgspec.Struct):
    id: int
    name: str
    description: str
    price: Decimal
    stock: int


class ProductPage(msgspec.Struct):
    items: list[Product]
    page: int
    per_page: int
    total: int


class Line(msgspec.Struct):
    """A quantity of one product, as orders asks for it."""

    product_id: ProductId
    qty: Qty


class PricedLine(msgspec.Struct):
    """A reserved line with the catalog's name and price at reservation time."""

    product_id: int
    name: str
    qty: int
    unit_price: Decimal


class ProductNotFound(NotFound):
    """No product has this id."""


class OutOfStock(Conflict):
    """Not enough units left for the quantity asked."""


class HoldClosed(Conflict):
    """This hold was already released or confirmed: it cannot take stock again."""


def _product(row: sa.Row[tuple[int, str, str, int, int]]) -> Product:
    return Product(id=row.id, name=row.name, description=row.description,
                   price=from_cents(row.price_cents), stock=row.stock)


_COLUMNS = (products.c.id, products.c.name, products.c.description, products.c.price_cents,
            products.c.stock)
_PRICED = (products.c.id, products.c.name, products.c.price_cents)

# The hot statements are built once: building a SQLAlchemy statement costs
# more than running it on SQLite.
_pid, _qty = sa.bindparam("pid"), sa.bindparam("qty")
GET = sa.select(*_COLUMNS).where(products.c.id == _pid)
STOCK = sa.select(products.c.stock).where(products.c.id == _pid)
TAKE = (products.update().where(products.c.id == _pid, products.c.stock >= _qty)
        .values(stock=products.c.stock - _qty))
TAKE_RETURNING = TAKE.returning(*_PRICED)
GIVE_BACK = products.update().where(products.c.id == _pid).values(stock=products.c.stock + _qty)
_hold = sa.bindparam("hold")
HOLD_LINES = sa.select(hold_lines.c.product_id, hold_lines.c.qty).where(hold_lines.c.hold_id == _hold)
END_HOLD = (holds.update().where(holds.c.hold_id == _hold, holds.c.state == "held")
            .values(state=sa.bindparam("state")))
DROP_LINES = hold_lines.delete().where(hold_lines.c.hold_id == _hold)
OPEN_HOLD = holds.insert()
ADD_LINES = hold_lines.insert()
_holds = sa.bindparam("holds", expanding=True)
CONFIRM = (holds.update().where(holds.c.hold_id.in_(_holds), holds.c.state == "held")
           .values(state="confirmed"))
DROP_CONFIRMED = hold_lines.delete().where(hold_lines.c.hold_id.in_(_holds))


def _merge(lines: list[Line]) -> list[tuple[int, int]]:
    """Quantities per product, in id order: every transaction locks rows in
    the same order, so two reservations cannot deadlock each other."""
    total: dict[int, int] = {}
    for line in lines:
        total[line.product_id] = total.get(line.product_id, 0) + line.qty
    return sorted(total.items())


class Catalog(Service):
    db: Database
    migrations = "migrations/catalog"

    async def start(self) -> None:
        if self.db.created:
            now = datetime.now(UTC)
            await self.db.execute(products.insert(), [
                {"name": n, "description": d, "price_cents": to_cents(Decimal(p), "price"),
                 "stock": s, "created_at": now, "updated_at": now}
                for n, d, p, s in DEMO_PRODUCTS])
        self._pruner = asyncio.create_task(self._prune_forever(), name="catalog hold pruner")

    async def stop(self) -> None:
        self._pruner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._pruner

    async def _prune_forever(self) -> None:
        """Forget ended holds after ``KEEP_ENDED``: a tombstone only has to outlive
        a reservation still on its way, which the call deadline bounds."""
        while True:
            await asyncio.sleep(PRUNE_EVERY * random.uniform(0.5, 1.5))
            try:
                await self.db.execute(holds.delete().where(
                    holds.c.state != "held", holds.c.created_at < datetime.now(UTC) - KEEP_ENDED))
            except Exception as exc:  # the database is down: next time
                log.warning("pruning ended holds failed: %s", exc)

    @get("/api/products", tags=("catalog",))
    async def list_products(self, page: Page = 1, per_page: PerPage = 20) -> ProductPage:
        """Products in id order, one page at a time."""
        async with self.db.transaction() as conn:
            total = (await conn.execute(sa.select(sa.func.count()).select_from(products))).scalar_one()
            rows = (await conn.execute(sa.select(*_COLUMNS).order_by(products.c.id)
                                       .limit(per_page).offset((page - 1) * per_page))).all()
        return ProductPage(items=[_product(r) for r in rows], page=page, per_page=per_page,
                           total=total)

    @get("/api/products/{product_id}", tags=("catalog",))
    async def get_product(self, product_id: ProductId) -> Product:
        row = await self.db.fetchone(GET, {"pid": product_id})
        if row is None:
            raise ProductNotFound(f"no product {product_id}")
        return _product(row)

    @post("/api/products", status=201, tags=("catalog",))
    async def create_product(self, principal: Principal, name: Name, price: Money,
                             stock: Stock = 0, description: Description = "") -> Product:
        """Add a product (admins only).  ``price`` is a decimal string like "12.50"."""
        _admin(principal)
        now = datetime.now(UTC)
        cents = to_cents(price, "price")
        async with self.db.transaction() as conn:
            result = await conn.execute(products.insert().values(
                name=name, description=description, price_cents=cents, stock=stock,
                created_at=now, updated_at=now))
            new_id = result.inserted_primary_key[0]
        return Product(id=new_id, name=name, description=description, price=from_cents(cents),
                       stock=stock)

    @patch("/api/products/{product_id}", tags=("catalog",))
    async def update_product(self, principal: Principal, product_id: ProductId, name: Name | None = None,
                             price: Money | None = None, stock: Stock | None = None,
                             description: Description | None = None) -> Product:
        """Change some fields of a product (admins only); absent fields keep their value."""
        _admin(principal)
        values: dict[str, object] = {"updated_at": datetime.now(UTC)}
        if name is not None:
            values["name"] = name
        if description is not None:
            values["description"] = description
        if price is not None:
            values["price_cents"] = to_cents(price, "price")
        if stock is not None:
            values["stock"] = stock
        async with self.db.transaction() as conn:
            result = await conn.execute(
                products.update().where(products.c.id == product_id).values(**values))
            if result.rowcount == 0:
                raise ProductNotFound(f"no product {product_id}")
            row = (await conn.execute(sa.select(*_COLUMNS).where(products.c.id == product_id))).one()
        return _product(row)

    async def reserve(self, lines: list[Line], hold: HoldId) -> list[PricedLine]:
        """Take every line's quantity from stock, all or none, as hold ``hold``.

        Raises ``ProductNotFound`` or ``OutOfStock`` (nothing taken then), or
        ``HoldClosed`` when ``hold`` was released or confirmed already.  The
        same ``hold`` again (a retried call) takes nothing more and answers
        what the first call took."""
        wanted = _merge(lines)
        if not wanted:
            return []
        try:
            return await self._take(wanted, hold)
        except sa.exc.IntegrityError:
            pass  # the hold exists: a retry of this call, or released before it came
        async with self.db.transaction() as conn:
            state = (await conn.execute(sa.select(holds.c.state).where(holds.c.hold_id == hold))
                     ).scalar_one_or_none()
            if state != "held":
                raise HoldClosed(f"hold {hold} is {state or 'unknown'}; reserve with a new hold")
            taken = (await conn.execute(HOLD_LINES, {"hold": hold})).all()
            rows = (await conn.execute(sa.select(*_PRICED).where(
                products.c.id.in_([t.product_id for t in taken])))).all()
        by_id = {r.id: r for r in rows}
        return [PricedLine(product_id=t.product_id, name=by_id[t.product_id].name, qty=t.qty,
                           unit_price=from_cents(by_id[t.product_id].price_cents))
                for t in sorted(taken, key=lambda t: t.product_id)]

    async def _take(self, wanted: list[tuple[int, int]], hold: str) -> list[PricedLine]:
        # PostgreSQL and SQLite return the row from the UPDATE itself: one
        # statement fewer while the row is locked.  MySQL reads it after.
        returning = self.db.engine.dialect.update_returning
        info: dict[int, sa.Row[Any]] = {}
        async with self.db.transaction() as conn:
            # First, so that a concurrent release of the same hold (its tombstone)
            # and this reservation exclude each other on the primary key.
            await conn.execute(OPEN_HOLD, {"hold_id": hold, "state": "held",
                                           "created_at": datetime.now(UTC)})
            await conn.execute(ADD_LINES, [
                {"hold_id": hold, "product_id": pid, "qty": qty} for pid, qty in wanted])
            for pid, qty in wanted:
                args = {"pid": pid, "qty": qty}
                if returning:
                    row = (await conn.execute(TAKE_RETURNING, args)).first()
                    taken = row is not None
                    if row is not None:
                        info[pid] = row
                else:
                    taken = (await conn.execute(TAKE, args)).rowcount == 1
                if not taken:
                    left = (await conn.execute(STOCK, args)).scalar_one_or_none()
                    if left is None:
                        raise ProductNotFound(f"no product {pid}")
                    raise OutOfStock(f"product {pid}: {qty} asked, {left} left")
            if not returning:
                rows = (await conn.execute(sa.select(*_PRICED).where(
                    products.c.id.in_([pid for pid, _ in wanted])))).all()
                info = {r.id: r for r in rows}
        return [PricedLine(product_id=pid, name=info[pid].name, qty=qty,
                           unit_price=from_cents(info[pid].price_cents)) for pid, qty in wanted]

    async def release(self, hold: HoldId) -> bool:
        """Give back what hold ``hold`` took, once (safe to repeat, from any replica).
        A hold not seen yet is closed so that no reservation can take it later.
        True when this call gave stock back."""
        for _ in range(5):
            async with self.db.transaction() as conn:
                if (await conn.execute(END_HOLD, {"hold": hold, "state": "released"})).rowcount == 1:
                    for line in (await conn.execute(HOLD_LINES, {"hold": hold})).all():
                        await conn.execute(GIVE_BACK, {"pid": line.product_id, "qty": line.qty})
                    await conn.execute(DROP_LINES, {"hold": hold})
                    return True
            try:
                await self.db.execute(holds.insert().values(hold_id=hold, state="released",
                                                            created_at=datetime.now(UTC)))
                return False  # the tombstone: a late reserve of this hold fails
            except sa.exc.IntegrityError:
                pass  # it exists: already ended, or a reservation just committed it
            state = (await self.db.fetchone(sa.select(holds.c.state).where(holds.c.hold_id == hold)))
            if state is not None and state.state != "held":
                return False  # released or confirmed before: nothing to give back
        raise HoldClosed(f"hold {hold}: could not be released; retry")

    async def confirm(self, hold_ids: list[HoldId]) -> int:
        """These holds became orders: their stock stays taken (safe to repeat).
        How many were held until now."""
        if not hold_ids:
            return 0
        async with self.db.transaction() as conn:
            done = (await conn.execute(CONFIRM, {"holds": hold_ids})).rowcount
            await conn.execute(DROP_CONFIRMED, {"holds": hold_ids})
        return int(done)


def _admin(principal: Principal) -> None:
    if not principal.has_role("admin"):
        raise Forbidden("only admins may change the catalog")
