"""Notifications: what the shop has to tell each user, built from events.

It calls no other service: accounts and orders publish ``UserRegistered`` and
``OrderPlaced``, and each is turned into one stored notification.  Delivery
is at-least-once; the inbox the runtime keeps in this service's database
makes a redelivered event a no-op, so each event gives exactly one row.
"""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import sqlalchemy as sa

from amoeba import Database, Principal, Service, get
from amoeba.events import on_event
from shop.events import OrderPlaced, UserRegistered
from shop.fields import Page, PerPage
from shop.timestamps import Timestamp

metadata = sa.MetaData()
notifications = sa.Table(
    "notifications", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("user_id", sa.String(64), nullable=False, index=True),
    sa.Column("kind", sa.String(40), nullable=False),
    sa.Column("message", sa.String(500), nullable=False),
    sa.Column("event_id", sa.String(64), nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
)
STORE = notifications.insert()  # built once: it runs for every event


class Notification(msgspec.Struct):
    id: int
    kind: str
    message: str
    created_at: datetime


class NotificationPage(msgspec.Struct):
    items: list[Notification]
    page: int
    per_page: int
    total: int


class Notifications(Service):
    db: Database
    migrations = "migrations/notifications"

    async def _store(self, user_id: str, kind: str, message: str, event_id: str) -> None:
        await self.db.execute(STORE, {
            "user_id": user_id, "kind": kind, "message": message, "event_id": event_id,
            "created_at": datetime.now(UTC)})

    @on_event(UserRegistered)
    async def user_registered(self, event: UserRegistered) -> None:
        await self._store(event.user_id, "welcome", f"Welcome to the shop, {event.email}!",
                          event.id)

    @on_event(OrderPlaced)
    async def order_placed(self, event: OrderPlaced) -> None:
        await self._store(event.user_id, "order_placed",
                          f"Order {event.order_id} placed: {event.items} item(s), "
                          f"{event.total_amount} in total.", event.id)

    @get("/api/notifications", tags=("notifications",))
    async def list_notifications(self, principal: Principal,
                                 page: Page = 1, per_page: PerPage = 20,
                                 ) -> NotificationPage:
        """The caller's notifications, newest first."""
        mine = notifications.c.user_id == principal.subject
        async with self.db.transaction() as conn:
            total = (await conn.execute(sa.select(sa.func.count()).select_from(notifications)
                                        .where(mine))).scalar_one()
            rows = (await conn.execute(sa.select(notifications).where(mine)
                                       .order_by(notifications.c.id.desc())
                                       .limit(per_page).offset((page - 1) * per_page))).all()
        return NotificationPage(
            items=[Notification(id=r.id, kind=r.kind, message=r.message,
                                created_at=r.created_at if r.created_at.tzinfo
                                else r.created_at.replace(tzinfo=UTC)) for r in rows],
            page=page, per_page=per_page, total=total)
