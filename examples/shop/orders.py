"""Orders: take stock through catalog, price it with catalog's prices, store it.

``POST /api/orders`` keeps the original contract (``user_id``,
``product_ids``, ``total_amount``) and also takes ``items: [{product_id,
qty}]``.  The server owns the price: a client total that disagrees is
rejected, and ``user_id``, when given, must be the caller's own.

``Idempotency-Key``: the first request with a key claims it (a row in the
orders database, naming this process as owner); a repeat with the same body
gets the first order back, a repeat with another body gets 422, and a repeat
while the first is still running gets 409.  A request that fails releases
its key, so it can be retried.  When the owner died (its heartbeat in
``owners.py`` is older than 4 s) a repeat takes the claim over at once; a
claim of a live owner is taken over after 60 s.

Stock that cannot leak: an order's stock is a catalog **hold**, recorded
here first, as ``order_holds`` (``pending``, with its owner), before the
catalog is asked.  Then exactly one of these ends it:

* the order's transaction turns the ``pending`` row ``placed`` (or fails,
  when it is no longer pending) together with writing the order and its
  ``OrderPlaced`` event (the outbox); the sweeper confirms ``placed`` holds
  in the catalog in batches, one call a second, and forgets them;
* a request that fails marks it ``void`` and releases it in the catalog;
* the sweeper of any orders replica (every second) voids and releases a
  ``pending`` hold whose owner is dead, or that is older than ``HOLD_TTL``
  (30 s, three times the call deadline), and finishes the release of a
  ``void`` one whose releaser died.

A ``pending`` row is deleted or voided by one conditional statement, so an
order and a release can never both happen; a catalog release that arrives
before its reservation leaves a tombstone there, so the late reservation
fails.  Whatever process dies at whatever point, stock comes back within
``DEAD_AFTER`` + 1 s of its death (``HOLD_TTL`` for a live owner stuck in
a call), or belongs to an order.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
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
    Unavailable,
    get,
    post,
)
from shop.catalog import Catalog, Line, PricedLine, ProductId
from shop.events import OrderPlaced
from shop.fields import NO_NUL, Page, PerPage, RowId
from shop.money import Money, from_cents, to_cents
from shop.owners import Owners
from shop.timestamps import Timestamp

log = logging.getLogger("shop.orders")
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
    sa.Column("owner", sa.String(64), nullable=True),
)
order_holds = sa.Table(
    "order_holds", metadata,
    sa.Column("hold_id", sa.String(64), primary_key=True),
    sa.Column("owner", sa.String(64), nullable=False),
    sa.Column("state", sa.String(10), nullable=False),  # pending | placed | void
    sa.Column("created_at", Timestamp, nullable=False),
)

# The hot statements are built once (building one costs more than running it).
_user, _key, _oid = sa.bindparam("u"), sa.bindparam("k"), sa.bindparam("oid")
INSERT_ORDER = orders.insert()
INSERT_ITEMS = order_items.insert()
_me, _hold = sa.bindparam("me"), sa.bindparam("hold")
# The claim is still this request's: same owner and the claim time it wrote
# (a takeover, even by a request of the same process, changes it).
MARK_KEY = (idempotency.update().where(idempotency.c.user_id == _user, idempotency.c.idem_key == _key,
                                       idempotency.c.owner == _me,
                                       idempotency.c.created_at == sa.bindparam("claimed"))
            .values(order_id=_oid))
OPEN_HOLD = order_holds.insert()
CLOSE_HOLD = (order_holds.update().where(order_holds.c.hold_id == _hold,
                                         order_holds.c.state == "pending").values(state="placed"))
VOID_HOLD = (order_holds.update().where(order_holds.c.hold_id == _hold,
                                        order_holds.c.state == "pending").values(state="void"))
DROP_VOID = order_holds.delete().where(order_holds.c.hold_id == _hold, order_holds.c.state == "void")
GET_ORDER = sa.select(orders).where(orders.c.id == _oid, orders.c.user_id == _user)
GET_ITEMS = sa.select(order_items).where(order_items.c.order_id == _oid).order_by(
    order_items.c.product_id)

MAX_LINES = 100
# A claim older than this whose request never finished may be taken over by
# a retry even when its owner still beats (a request stuck that long is lost).
STALE_CLAIM = timedelta(seconds=60)
# A pending hold of a live owner older than this is released (3x the deadline).
HOLD_TTL = timedelta(seconds=30)
SWEEP = 1.0  # seconds between sweeps, per replica


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


class HoldLapsed(Unavailable):
    """The stock hold of this order was released before the order was stored; retry."""


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

    async def start(self) -> None:
        self.owners = Owners(self.db)
        await self.owners.start()
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="orders hold sweeper")

    async def stop(self) -> None:
        self._sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._sweeper
        await self.owners.stop()

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
            if isinstance(earlier, Order):
                return earlier
            claim = (idempotency_key, earlier)
        else:
            claim = None
        try:
            return await self._place(principal.subject, lines, client_total, claim)
        except BaseException:
            if claim is not None:
                await self.db.execute(idempotency.delete().where(
                    idempotency.c.user_id == principal.subject, idempotency.c.idem_key == claim[0],
                    idempotency.c.order_id.is_(None), idempotency.c.owner == self.owners.id,
                    idempotency.c.created_at == claim[1]))
            raise

    async def _claim(self, user: str, key: str, request_hash: str) -> Order | datetime:
        """Claim ``key`` for this request (the claim's time), or return the order
        it already made."""
        now = datetime.now(UTC)
        try:
            await self.db.execute(idempotency.insert().values(
                user_id=user, idem_key=key, request_hash=request_hash, order_id=None, created_at=now,
                owner=self.owners.id))
            return now
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
        if now - _utc(row.created_at) < STALE_CLAIM and await self.owners.alive(row.owner):
            raise IdempotencyKeyInUse("a request with this Idempotency-Key is still in progress; "
                                      "retry later", retry_after=1)
        # Its owner died (or is stuck): take the claim over.  The owner's commit,
        # should it still come, is conditional on owning the claim and fails.
        owned = (idempotency.c.owner.is_(None) if row.owner is None
                 else idempotency.c.owner == row.owner)
        taken = await self.db.execute(idempotency.update().where(
            idempotency.c.user_id == user, idempotency.c.idem_key == key,
            idempotency.c.order_id.is_(None), idempotency.c.created_at == row.created_at, owned,
        ).values(created_at=now, owner=self.owners.id))
        if taken.rowcount != 1:
            raise IdempotencyKeyInUse("a request with this Idempotency-Key is still in progress")
        return now

    async def _place(self, user: str, lines: list[Line], client_total: int | None,
                     claim: tuple[str, datetime] | None) -> Order:
        # Unique, not secret (only orders and catalog see it): 128 bits of the
        # PRNG, seeded from the OS, instead of a getrandom() call per order.
        hold = f"{random.getrandbits(128):032x}"
        await self.db.execute(OPEN_HOLD, {"hold_id": hold, "owner": self.owners.id,
                                          "state": "pending", "created_at": datetime.now(UTC)})
        try:
            priced: list[PricedLine] = await self.catalog.reserve(lines, hold)
            total = sum(to_cents(p.unit_price, "unit_price") * p.qty for p in priced)
            if client_total is not None and client_total != total:
                raise TotalMismatch(f"total_amount {from_cents(client_total)} does not match the "
                                    f"catalog's prices: {from_cents(total)}")
            now = datetime.now(UTC)
            async with self.db.transaction() as conn:
                if (await conn.execute(CLOSE_HOLD, {"hold": hold})).rowcount != 1:
                    raise HoldLapsed("the stock held for this order was released meanwhile; retry",
                                     retry_after=1)
                result = await conn.execute(INSERT_ORDER, {
                    "user_id": user, "total_cents": total, "status": "placed", "created_at": now})
                order_id = int(result.inserted_primary_key[0])
                await conn.execute(INSERT_ITEMS, [
                    {"order_id": order_id, "product_id": p.product_id, "name": p.name, "qty": p.qty,
                     "unit_cents": to_cents(p.unit_price, "unit_price")} for p in priced])
                if claim is not None and (await conn.execute(MARK_KEY, {
                        "u": user, "k": claim[0], "oid": order_id, "me": self.owners.id,
                        "claimed": claim[1]})).rowcount != 1:
                    raise IdempotencyKeyInUse("this Idempotency-Key was taken over by a retry",
                                              retry_after=1)
                await self.publish(OrderPlaced(order_id=order_id, user_id=user,
                                               total_amount=str(from_cents(total)),
                                               items=sum(p.qty for p in priced), hold=hold))
        except BaseException:
            await self._abandon(hold)
            raise
        ORDERS_PLACED.inc()
        CHECKOUT_VALUE.observe(total / 100)
        return _order(order_id, user, total, "placed", now, priced)

    async def _abandon(self, hold: str) -> None:
        """Give back the stock of a hold whose order was not stored.  Shielded from
        cancellation; whatever does not finish here, the sweeper finishes."""
        async def run() -> None:
            if (await self.db.execute(VOID_HOLD, {"hold": hold})).rowcount != 1:
                return  # the order was stored after all, or the sweeper has it
            await self._release(hold)

        try:
            await asyncio.shield(run())
        except Exception as exc:
            log.warning("hold %s not released yet (%s); the sweeper will", hold, exc)

    async def _release(self, hold: str) -> None:
        """Release a ``void`` hold in the catalog, then forget it (both repeatable)."""
        await self.catalog.release(hold)
        await self.db.execute(DROP_VOID, {"hold": hold})

    async def _sweep_forever(self) -> None:
        n = 0
        while True:
            await asyncio.sleep(SWEEP * random.uniform(0.5, 1.5))  # replicas drift apart
            n += 1
            try:
                await self.sweep()
                if n % 60 == 0:
                    await self.owners.prune()
            except Exception as exc:  # the database or catalog is down: next time
                log.warning("hold sweep failed: %s", exc)

    async def sweep(self) -> int:
        """Release every hold that can no longer become an order.  How many."""
        now = datetime.now(UTC)
        placed = [r.hold_id for r in await self.db.fetchall(
            sa.select(order_holds.c.hold_id).where(order_holds.c.state == "placed").limit(500))]
        if placed:
            # Stock of placed orders stays taken: one catalog call and one delete
            # for all of them (per order, it would double a checkout's writes).
            await self.catalog.confirm(placed)
            await self.db.execute(order_holds.delete().where(
                order_holds.c.hold_id.in_(placed), order_holds.c.state == "placed"))
        rows = await self.db.fetchall(sa.select(order_holds).where(sa.or_(
            order_holds.c.state == "void",
            sa.and_(order_holds.c.state == "pending",
                    order_holds.c.created_at < now - timedelta(seconds=1)),
        )).order_by(order_holds.c.created_at).limit(200))
        alive: dict[str, bool] = {}
        released = 0
        for row in rows:
            if row.state == "pending":
                if row.owner not in alive:
                    alive[row.owner] = await self.owners.alive(row.owner)
                if alive[row.owner] and now - _utc(row.created_at) < HOLD_TTL:
                    continue
                if (await self.db.execute(VOID_HOLD, {"hold": row.hold_id})).rowcount != 1:
                    continue  # became an order, or another replica has it
                log.info("releasing hold %s of %s owner %s", row.hold_id,
                         "live" if alive[row.owner] else "dead", row.owner)
            await self._release(row.hold_id)
            released += 1
        return released

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
