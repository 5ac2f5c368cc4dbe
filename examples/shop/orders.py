"""Orders: take stock through catalog, price it with catalog's prices, store it.

``POST /api/orders`` keeps the original contract (``user_id``,
``product_ids``, ``total_amount``) and also takes ``items: [{product_id,
qty}]``.  The server owns the price: a client total that disagrees is
rejected, and ``user_id``, when given, must be the caller's own.

``Idempotency-Key``: the first request with a key claims it (a row in the
orders database); a repeat with the same body gets the first order back, a
repeat with another body gets 422, and a repeat while the first is still
running gets 409.  A request that fails releases its key, so it can be
retried.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated

import msgspec
import sqlalchemy as sa

from amoeba import (
    Conflict,
    Counter,
    Database,
    Forbidden,
    Header,
    Histogram,
    Invalid,
    NotFound,
    Principal,
    Service,
    get,
    post,
)
from shop.catalog import Catalog, Line, PricedLine, ProductId
from shop.events import OrderPlaced
from shop.fields import NO_NUL, Page, PerPage, RowId
from shop.money import Money, from_cents, to_cents
from shop.timestamps import Timestamp

# The shop's own metrics (on /metrics, in the dashboard, in the generated Grafana board).
ORDERS_PLACED = Counter("shop_orders_placed", "Orders placed (a replayed Idempotency-Key counts once)")
CHECKOUT_VALUE = Histogram("shop_checkout_value", "Order totals, in the shop's currency",
                           buckets=(5, 10, 25, 50, 100, 250, 500, 1000))

metadata = sa.MetaData()
orders = sa.Table(
    "orders", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("user_id", sa.String(64), nullable=False, index=True),
    sa.Column("total_cents", sa.BigInteger, nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
)
order_items = sa.Table(
    "order_items", metadata,
    sa.Column("order_id", sa.Integer, sa.ForeignKey("orders.id"), primary_key=True),
    sa.Column("product_id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("qty", sa.Integer, nullable=False),
    sa.Column("unit_cents", sa.BigInteger, nullable=False),
)
idempotency = sa.Table(
    "idempotency_keys", metadata,
    sa.Column("user_id", sa.String(64), primary_key=True),
    sa.Column("idem_key", sa.String(200), primary_key=True),
    sa.Column("request_hash", sa.String(64), nullable=False),
    sa.Column("order_id", sa.Integer, nullable=True),
    sa.Column("created_at", Timestamp, nullable=False),
)

# The hot statements are built once (building one costs more than running it).
_user, _key, _oid = sa.bindparam("u"), sa.bindparam("k"), sa.bindparam("oid")
INSERT_ORDER = orders.insert()
INSERT_ITEMS = order_items.insert()
MARK_KEY = (idempotency.update().where(idempotency.c.user_id == _user, idempotency.c.idem_key == _key)
            .values(order_id=_oid))
GET_ORDER = sa.select(orders).where(orders.c.id == _oid, orders.c.user_id == _user)
GET_ITEMS = sa.select(order_items).where(order_items.c.order_id == _oid).order_by(
    order_items.c.product_id)

MAX_LINES = 100
# A claim older than this whose request never finished (its process died)
# may be taken over by a retry.
STALE_CLAIM = timedelta(seconds=60)


class OrderItem(msgspec.Struct):
    product_id: int
    name: str
    qty: int
    unit_price: Decimal
    line_total: Decimal


class Order(msgspec.Struct):
    id: int
    user_id: str
    items: list[OrderItem]
    product_ids: list[int]
    total_amount: Decimal
    status: str
    created_at: datetime


class OrderPage(msgspec.Struct):
    items: list[Order]
    page: int
    per_page: int
    total: int


class OrderNotFound(NotFound):
    """No order with this id belongs to the caller."""


class IdempotencyKeyInUse(Conflict):
    """A request with this Idempotency-Key is still being processed."""


class IdempotencyKeyReused(Conflict):
    """This Idempotency-Key was already used with a different request."""


class TotalMismatch(Conflict):
    """``total_amount`` disagrees with the catalog's current prices."""


Lines = Annotated[list[Line], msgspec.Meta(min_length=1, max_length=MAX_LINES)]
ProductIds = Annotated[list[ProductId], msgspec.Meta(min_length=1, max_length=MAX_LINES)]
IdempotencyKey = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=NO_NUL)]
_ARRAY, _NULL = {"type": "array"}, {"type": "null"}
# What _lines enforces, for the OpenAPI document: items or product_ids, one of them.
ITEMS_OR_PRODUCT_IDS = {"anyOf": [
    {"required": ["items"], "properties": {"items": _ARRAY, "product_ids": _NULL}},
    {"required": ["product_ids"], "properties": {"product_ids": _ARRAY, "items": _NULL}},
]}


def _lines(items: list[Line] | None, product_ids: list[int] | None) -> list[Line]:
    if items and product_ids:
        raise Invalid("give either items or product_ids, not both",
                      details=[{"path": "$.items", "reason": "both items and product_ids given"}])
    if items:
        lines = items
    elif product_ids:
        if any(p < 1 for p in product_ids):
            raise Invalid("product ids are positive integers",
                          details=[{"path": "$.product_ids", "reason": "id below 1"}])
        lines = [Line(product_id=p, qty=1) for p in product_ids]
    else:
        raise Invalid("an order needs items: [{product_id, qty}] (or product_ids)",
                      details=[{"path": "$.items", "reason": "missing or empty"}])
    if len(lines) > MAX_LINES:
        raise Invalid(f"an order has at most {MAX_LINES} lines",
                      details=[{"path": "$.items", "reason": f"{len(lines)} lines"}])
    return lines


def _request_hash(lines: list[Line], total_cents: int | None) -> str:
    canon = sorted((ln.product_id, ln.qty) for ln in lines)
    return hashlib.sha256(msgspec.json.encode([canon, total_cents])).hexdigest()


def _utc(dt: datetime) -> datetime:
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


class Orders(Service):
    db: Database
    catalog: Catalog
    migrations = "migrations/orders"
    publishes = (OrderPlaced,)

    @post("/api/orders", status=201, tags=("orders",), body_schema=ITEMS_OR_PRODUCT_IDS)
    async def place_order(
        self,
        principal: Principal,
        items: Lines | None = None,
        product_ids: ProductIds | None = None,
        total_amount: Money | None = None,
        user_id: str | int | None = None,
        idempotency_key: Annotated[IdempotencyKey | None, Header("Idempotency-Key")] = None,
    ) -> Order:
        """Place an order for the caller.  ``total_amount``, when sent, must match
        the catalog's prices; ``Idempotency-Key`` makes a retry safe."""
        if user_id is not None and str(user_id) != principal.subject:
            raise Forbidden("user_id must be your own (or left out)")
        lines = _lines(items, product_ids)
        client_total = None if total_amount is None else to_cents(total_amount, "total_amount")
        if idempotency_key is not None:
            if not 1 <= len(idempotency_key) <= 200:
                raise Invalid("Idempotency-Key must be 1 to 200 characters",
                              details=[{"path": "header.Idempotency-Key", "reason": "length"}])
            earlier = await self._claim(principal.subject, idempotency_key,
                                        _request_hash(lines, client_total))
            if earlier is not None:
                return earlier
        try:
            return await self._place(principal.subject, lines, client_total, idempotency_key)
        except BaseException:
            if idempotency_key is not None:
                await self.db.execute(idempotency.delete().where(
                    idempotency.c.user_id == principal.subject,
                    idempotency.c.idem_key == idempotency_key,
                    idempotency.c.order_id.is_(None)))
            raise

    async def _claim(self, user: str, key: str, request_hash: str) -> Order | None:
        """Claim ``key`` for this request, or return the order it already made."""
        now = datetime.now(UTC)
        try:
            await self.db.execute(idempotency.insert().values(
                user_id=user, idem_key=key, request_hash=request_hash, order_id=None, created_at=now))
            return None
        except sa.exc.IntegrityError:
            pass
        row = await self.db.fetchone(sa.select(idempotency).where(
            idempotency.c.user_id == user, idempotency.c.idem_key == key))
        if row is None:  # the first request failed and let go of the key meanwhile
            return await self._claim(user, key, request_hash)
        if row.request_hash != request_hash:
            raise IdempotencyKeyReused("this Idempotency-Key was already used with a different "
                                       "request")
        if row.order_id is not None:
            return await self._load(user, row.order_id)
        if now - _utc(row.created_at) < STALE_CLAIM:
            raise IdempotencyKeyInUse("a request with this Idempotency-Key is still in progress; "
                                      "retry later")
        taken = await self.db.execute(idempotency.update().where(
            idempotency.c.user_id == user, idempotency.c.idem_key == key,
            idempotency.c.order_id.is_(None), idempotency.c.created_at == row.created_at,
        ).values(created_at=now))
        if taken.rowcount != 1:
            raise IdempotencyKeyInUse("a request with this Idempotency-Key is still in progress")
        return None

    async def _place(self, user: str, lines: list[Line], client_total: int | None,
                     key: str | None) -> Order:
        priced: list[PricedLine] = await self.catalog.reserve(lines)
        stored = False
        try:
            total = sum(to_cents(p.unit_price, "unit_price") * p.qty for p in priced)
            if client_total is not None and client_total != total:
                raise TotalMismatch(f"total_amount {from_cents(client_total)} does not match the "
                                    f"catalog's prices: {from_cents(total)}")
            now = datetime.now(UTC)
            async with self.db.transaction() as conn:
                result = await conn.execute(INSERT_ORDER, {
                    "user_id": user, "total_cents": total, "status": "placed", "created_at": now})
                order_id = int(result.inserted_primary_key[0])
                await conn.execute(INSERT_ITEMS, [
                    {"order_id": order_id, "product_id": p.product_id, "name": p.name, "qty": p.qty,
                     "unit_cents": to_cents(p.unit_price, "unit_price")} for p in priced])
                if key is not None:
                    await conn.execute(MARK_KEY, {"u": user, "k": key, "oid": order_id})
                await self.publish(OrderPlaced(order_id=order_id, user_id=user,
                                               total_amount=str(from_cents(total)),
                                               items=sum(p.qty for p in priced)))
            stored = True
        finally:
            if not stored:
                await self.catalog.release([Line(product_id=p.product_id, qty=p.qty) for p in priced])
        ORDERS_PLACED.inc()
        CHECKOUT_VALUE.observe(total / 100)
        return _order(order_id, user, total, "placed", now, priced)

    async def _load(self, user: str, order_id: int) -> Order:
        async with self.db.transaction() as conn:
            row = (await conn.execute(GET_ORDER, {"oid": order_id, "u": user})).one_or_none()
            if row is None:
                raise OrderNotFound(f"no order {order_id}")
            items = (await conn.execute(GET_ITEMS, {"oid": order_id})).all()
        return _order(row.id, row.user_id, row.total_cents, row.status, _utc(row.created_at), [
            PricedLine(product_id=i.product_id, name=i.name, qty=i.qty,
                       unit_price=from_cents(i.unit_cents)) for i in items])

    @get("/api/orders/{order_id}", tags=("orders",))
    async def get_order(self, principal: Principal, order_id: RowId) -> Order:
        """One of the caller's orders (another user's id answers 404)."""
        return await self._load(principal.subject, order_id)

    @get("/api/orders", tags=("orders",))
    async def list_orders(self, principal: Principal, page: Page = 1,
                          per_page: PerPage = 20) -> OrderPage:
        """The caller's orders, newest first."""
        mine = orders.c.user_id == principal.subject
        async with self.db.transaction() as conn:
            total = (await conn.execute(sa.select(sa.func.count()).select_from(orders)
                                        .where(mine))).scalar_one()
            rows = (await conn.execute(sa.select(orders).where(mine).order_by(orders.c.id.desc())
                                       .limit(per_page).offset((page - 1) * per_page))).all()
            ids = [r.id for r in rows]
            items = (await conn.execute(sa.select(order_items).where(
                order_items.c.order_id.in_(ids)).order_by(order_items.c.product_id))).all() if ids else []
        by_order: dict[int, list[PricedLine]] = {}
        for i in items:
            by_order.setdefault(i.order_id, []).append(PricedLine(
                product_id=i.product_id, name=i.name, qty=i.qty, unit_price=from_cents(i.unit_cents)))
        return OrderPage(items=[_order(r.id, r.user_id, r.total_cents, r.status, _utc(r.created_at),
                                       by_order.get(r.id, [])) for r in rows],
                         page=page, per_page=per_page, total=total)


def _order(order_id: int, user: str, total: int, status: str, created: datetime,
           lines: list[PricedLine]) -> Order:
    return Order(
        id=order_id, user_id=user, status=status, created_at=created,
        total_amount=from_cents(total),
        items=[OrderItem(product_id=p.product_id, name=p.name, qty=p.qty, unit_price=p.unit_price,
                         line_total=p.unit_price * p.qty) for p in lines],
        product_ids=[p.product_id for p in lines])
