"""``Inbox``: a service's deliveries handled in batches, one transaction each.

Every delivery of a service with a ``Database`` goes through the service's
inbox.  Deliveries that arrive while a batch runs wait for the next one; a
batch is one transaction of the service's database::

    BEGIN
    SELECT event_id FROM amoeba_inbox WHERE event_id IN (<the batch's ids>)
    for each event not found (nor handled earlier in this batch):
        SAVEPOINT; <the handler, its statements joining the transaction>; RELEASE
        (a handler that raises: ROLLBACK TO SAVEPOINT, its writes undone alone;
        a batch of one needs no savepoint: its failure rolls back the whole)
    INSERT INTO amoeba_inbox <the ids handled>          (one executemany)
    COMMIT

Only then does each delivery learn its outcome (handled, a duplicate, or the
handler's exception); the caller acks it, or retries or dead-letters it as
for a delivery of its own, so no ack precedes the commit.  When the batch's
transaction fails as a whole (the commit, the database going away, a
statement that leaves the transaction unusable), nothing of it committed:
its deliveries are handled again one transaction each, so a broken event is
told apart from its neighbours and retried on its own.

Handlers of one batch run one after another on the batch's connection; a
service runs as many batches at once as its connection pool holds.  Order
is the bus's: a delivery's handler call returns only after its batch
committed, so a bus that holds back a key's next delivery until then (Kafka)
keeps the key's order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from amoeba.events.bus import Delivery
from amoeba.events.outbox import inbox

if TYPE_CHECKING:
    from amoeba.data.database import Database

__all__ = ["DUPLICATE", "HANDLED", "INSERT", "NOT_STARTED", "SEEN", "SEEN_ONE", "SINGLY",
           "Inbox", "Job", "stop"]

log = logging.getLogger("amoeba.events")
MAX_BATCH = 128  # deliveries per transaction
# Outcomes besides a handler's exception.
HANDLED = "handled"
DUPLICATE = "duplicate"  # its id was in the inbox: handled before
NOT_STARTED = "not started"  # the process began stopping before its batch
SINGLY = "singly"  # the batch failed as a whole: handle it in a transaction of its own

# Built once: a statement object keeps its cache key, so SQLAlchemy finds the
# compiled form without walking the statement on every execution.
SEEN = sa.select(inbox.c.event_id).where(
    inbox.c.event_id.in_(sa.bindparam("ids", expanding=True)))
SEEN_ONE = sa.select(inbox.c.event_id).where(inbox.c.event_id == sa.bindparam("id"))
INSERT = inbox.insert()

Outcome = str | Exception


class Job:
    """One delivery waiting for (or in) a batch."""

    __slots__ = ("delivery", "event", "handler", "outcome")

    def __init__(self, delivery: Delivery, event: Any,
                 handler: Callable[[Delivery, Any], Awaitable[None]]):
        self.delivery = delivery
        self.event = event
        # Runs the service's method for the event, with the delivery's context
        # (service, request id, trace) set; it raises what the method raised.
        self.handler = handler
        self.outcome: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()


class Inbox:
    """The batches of one service's deliveries (see the module's docstring)."""

    def __init__(self, db: Database, *, closing: Callable[[], bool]):
        self.db = db
        self.closing = closing
        self.queue: list[Job] = []
        self.runners: set[asyncio.Task[None]] = set()
        # One batch per pooled connection (the inline SQLite driver has one).
        self.width = max(1, db.pool_stats().size)
        self.batches = 0  # transactions committed
        self.largest = 0  # deliveries in the largest of them

    def __repr__(self) -> str:
        return f"<Inbox {self.db.service} queued={len(self.queue)} batches={len(self.runners)}>"

    async def handle(self, job: Job) -> Outcome:
        """Queue ``job``; its outcome once its batch committed (or failed)."""
        self.queue.append(job)
        if len(self.runners) < self.width:
            self.runners.add(asyncio.create_task(self._run(),
                                                 name=f"inbox batches of {self.db.service}"))
        return await job.outcome

    async def _run(self) -> None:
        batch: list[Job] = []
        try:
            while self.queue:
                batch, self.queue = self.queue[:MAX_BATCH], self.queue[MAX_BATCH:]
                if self.closing():
                    _settle(batch, NOT_STARTED)
                    continue
                try:
                    outcomes = await self._batch(batch)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # nothing of the batch committed
                    if len(batch) > 1:
                        log.warning("%s: a batch of %d events failed as a whole (%s: %s); "
                                    "handling them one transaction each", self.db.service,
                                    len(batch), type(exc).__name__, exc)
                    _settle(batch, exc if len(batch) == 1 else SINGLY)
                    continue
                for job, outcome in zip(batch, outcomes, strict=True):
                    if not job.outcome.done():
                        job.outcome.set_result(outcome)
        except BaseException:
            # Cancelled (stopping): the running batch rolled back; it and the queue
            # are left to the broker.
            _settle(batch + self.queue, NOT_STARTED)
            self.queue = []
            raise
        finally:
            # Here, not in a done callback: between this runner's last look at the
            # queue and a callback, a job could be queued that no runner would take.
            self.runners.discard(asyncio.current_task())

    async def _batch(self, batch: list[Job]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        rows: list[dict[str, Any]] = []
        async with self.db.transaction() as conn:
            ids = [job.delivery.message.id for job in batch]
            seen = set((await conn.execute(SEEN, {"ids": ids})).scalars())
            for job in batch:
                msg = job.delivery.message
                if msg.id in seen:
                    outcomes.append(DUPLICATE)
                    continue
                if len(batch) == 1:
                    # Alone, the transaction is its savepoint: an exception rolls
                    # it all back and becomes the outcome (in _run).
                    await job.handler(job.delivery, job.event)
                else:
                    try:
                        async with conn.begin_nested():
                            await job.handler(job.delivery, job.event)
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:
                        outcomes.append(exc)
                        continue
                seen.add(msg.id)
                outcomes.append(HANDLED)
                rows.append({"event_id": msg.id, "name": msg.name,
                             "handled_at": datetime.now(UTC)})
            if rows:
                await conn.execute(INSERT, rows)
        self.batches += 1
        self.largest = max(self.largest, len(batch))
        return outcomes


def _settle(jobs: list[Job], outcome: Outcome) -> None:
    for job in jobs:
        if not job.outcome.done():
            job.outcome.set_result(outcome)


async def stop(inboxes: list[Inbox]) -> None:
    """Cancel running batches (their deliveries are not acked: redelivered)."""
    tasks = [t for i in inboxes for t in i.runners]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
