"""Which processes of a service are alive: a heartbeat row per process.

Each process of orders writes ``owners(owner_id, seen_at)`` every ``BEAT``
seconds and deletes its row when it stops.  Work a process claimed (an
``Idempotency-Key``, a stock hold in flight) names it as owner; a process
that sees the owner's heartbeat older than ``DEAD_AFTER`` seconds may take
the work over (a SIGKILLed process never beats again).  A live process that
merely stalled that long loses its claims too, and finds out when its
conditional commit matches no row: nothing is done twice, the request fails
and is retried.  Clocks of the machines must agree to well under a second
(NTP).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from amoeba import Database
from shop.timestamps import Timestamp

log = logging.getLogger("shop.owners")

BEAT = 1.0
DEAD_AFTER = timedelta(seconds=4)

metadata = sa.MetaData()
owners = sa.Table(
    "owners", metadata,
    sa.Column("owner_id", sa.String(64), primary_key=True),
    sa.Column("seen_at", Timestamp, nullable=False),
)
_owner = sa.bindparam("owner")
BEAT_UPDATE = owners.update().where(owners.c.owner_id == _owner).values(seen_at=sa.bindparam("now"))
SEEN = sa.select(owners.c.seen_at).where(owners.c.owner_id == _owner)


def _utc(dt: datetime) -> datetime:
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


class Owners:
    def __init__(self, db: Database):
        self.db = db
        self.id = f"{socket.gethostname()[:30]}-{os.getpid()}-{secrets.token_hex(4)}"
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<Owners me={self.id} beat={BEAT:g}s dead after {DEAD_AFTER.total_seconds():g}s>"

    async def start(self) -> None:
        await self.db.execute(owners.insert().values(owner_id=self.id, seen_at=datetime.now(UTC)))
        self._task = asyncio.create_task(self._beat(), name=f"heartbeat {self.id}")

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(BEAT)
            try:
                await self.db.execute(BEAT_UPDATE, {"owner": self.id, "now": datetime.now(UTC)})
            except Exception as exc:  # the database is down: others will take our work over
                log.warning("heartbeat of %s not written: %s", self.id, exc)

    async def alive(self, owner: str | None) -> bool:
        """Whether ``owner`` beat within ``DEAD_AFTER`` (unknown owners are dead)."""
        if owner == self.id:
            return True
        if owner is None:
            return False
        row = await self.db.fetchone(SEEN, {"owner": owner})
        return row is not None and datetime.now(UTC) - _utc(row.seen_at) < DEAD_AFTER

    async def prune(self) -> None:
        """Forget processes dead for an hour (their claims were taken over long ago)."""
        await self.db.execute(owners.delete().where(
            owners.c.seen_at < datetime.now(UTC) - timedelta(hours=1)))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):  # a crash would not delete it either
            await self.db.execute(owners.delete().where(owners.c.owner_id == self.id))
