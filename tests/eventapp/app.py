"""A tiny app for the event fault tests (test_events_faults.py): ``publisher``
writes ``Ping`` events to its outbox, ``consumer`` stores one row per event
it handles.  Both keep their tables in a ``Database``, so the outbox, the
inbox and their transactions are the real ones; ``faults`` crashes a process
at the moments the tests name."""

from __future__ import annotations

import os
from datetime import UTC, datetime

import msgspec
import sqlalchemy as sa

from amoeba import App, Database, Service, get, post
from amoeba.events import Event, on_event
from eventapp import faults

faults.install()


class Ping(Event):
    event_name = "eventapp.ping"
    n: int


metadata = sa.MetaData()
received = sa.Table(
    "received", metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    # Not unique on purpose: a delivery handled twice shows as two rows.
    sa.Column("event_id", sa.String(64), nullable=False),
    sa.Column("n", sa.Integer, nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
)


class Counts(msgspec.Struct):
    pid: int
    published: int  # publishes the broker confirmed to this process
    delivered: int = 0  # deliveries this process's consumer got
    duplicates: int = 0  # of which the inbox turned into no-ops
    acked: int = 0


class Publisher(Service):
    db: Database
    publishes = (Ping,)

    @post("/publish")
    async def publish_pings(self, n: int) -> list[str]:
        """``n`` events in one transaction."""
        pings = [Ping(n=i) for i in range(n)]
        async with self.db.transaction():
            for ping in pings:
                await self.publish(ping)
        return [p.id for p in pings]

    @get("/publisher/counts")
    async def counts(self) -> Counts:
        return Counts(os.getpid(), faults.published)


class Consumer(Service):
    db: Database

    async def start(self) -> None:
        async with self.db.transaction() as conn:
            await conn.run_sync(metadata.create_all, checkfirst=True)

    @on_event(Ping)
    async def ping(self, event: Ping) -> None:
        await self.db.execute(received.insert(), {
            "event_id": event.id, "n": event.n, "pid": os.getpid(),
            "received_at": datetime.now(UTC)})

    @get("/consumer/counts")
    async def counts(self) -> Counts:
        events = self._amoeba_events  # type: ignore[attr-defined]
        c = events.counters.get(("consumer", Ping.event_name))
        if c is None:
            return Counts(os.getpid(), faults.published)
        return Counts(os.getpid(), faults.published, c.delivered, c.duplicates, c.acked)


app = App("eventapp", services=[Publisher, Consumer])
