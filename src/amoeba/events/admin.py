"""Dead letters, for ``amoeba events dead-letters | replay``.

A replay moves dead letters of a consuming service back into *that
service's* outbox, under a fresh broker dedupe id: its running relay
publishes them again (any backend, the in-process one too), the service's
handler gets another go, and every other subscriber's inbox recognises the
event id and does nothing.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from amoeba.events.outbox import dead_letters, outbox

if TYPE_CHECKING:
    from amoeba.data.database import Database

__all__ = ["list_dead_letters", "replay"]


async def _has_table(db: Database) -> bool:
    async with db.transaction() as conn:
        return bool(await conn.run_sync(
            lambda c: sa.inspect(c).has_table(dead_letters.name)))


async def list_dead_letters(db: Database) -> list[Any]:
    if not await _has_table(db):
        return []
    return await db.fetchall(dead_letters.select().order_by(dead_letters.c.failed_at))


async def replay(db: Database, ids: list[str] | None) -> int:
    """Move the dead letters ``ids`` (all when None) to the outbox; how many moved."""
    if not await _has_table(db):
        return 0
    async with db.transaction() as conn:
        query = dead_letters.select()
        if ids is not None:
            query = query.where(dead_letters.c.event_id.in_(ids))
        rows = (await conn.execute(query)).all()
        if not rows:
            return 0
        now = datetime.now(UTC)
        await conn.execute(outbox.delete().where(outbox.c.id.in_([r.event_id for r in rows])))
        await conn.execute(outbox.insert(), [
            {"id": r.event_id, "name": r.name, "event_key": None, "payload": r.payload,
             "dedupe": f"{r.event_id}.replay.{uuid.uuid4().hex[:12]}", "created_at": now}
            for r in rows])
        await conn.execute(dead_letters.delete().where(
            dead_letters.c.event_id.in_([r.event_id for r in rows])))
    return len(rows)
