"""``Events``: one per process.  It publishes for the process's services,
relays their outboxes to the broker and runs their ``@on_event`` handlers.

Publishing.  Inside ``db.transaction()`` an event is one more row in the
service's ``amoeba_outbox``, written by the same transaction: a rollback
publishes nothing, a commit wakes the relay.  Outside a transaction a service
with a ``Database`` still goes through its outbox (a transaction of one row);
a service without one publishes to the broker directly.

The relay hands outbox rows to the broker in order and deletes them once the
broker holds them (the in-process bus: once every subscriber acked).  A broker
outage or a crash between commit and publish leaves the rows in place; the
relay retries with backoff and catches up.  A row can be published twice (a
relay killed after publishing, before deleting): brokers deduplicate on the
event id where they can (NATS ``Nats-Msg-Id``; not Redis, not Kafka) and
consumers' inboxes do the rest.  Replicas of a service each run a relay over the shared outbox: that is
correct (duplicates are dropped as above), merely redundant work.

Consuming.  Each ``@on_event`` method is subscribed with its service's name as
the group, so replicas share the events and every service gets each one.  A
delivery runs in a transaction of the service's ``Database``, shared with the
deliveries that arrived together (a batch, ``inbox.py``; each handler in a
savepoint of its own): if the event's id is in ``amoeba_inbox`` it was
handled already and is only acked; else the handler runs (its own
``self.db`` statements join the transaction) and the id is inserted, then
the transaction commits and the delivery is acked.  A crash anywhere before
the commit undoes the handler's writes and the event is redelivered; a crash
after the commit and before the ack is a redelivery the inbox turns into a
no-op.  A failing handler is retried with
exponential backoff up to ``settings.events.max_attempts``, then its event is
parked in ``amoeba_dead_letters``.  Without a ``Database`` a service's
handlers are at-least-once with no deduplication, and dead letters are only
logged.

Stopping (``aclose(grace)``, on SIGTERM): deliveries that arrive from then on
are not started (the broker delivers them again), running handlers get up to
``grace`` to commit and ack, then the bus closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec

from amoeba import context
from amoeba.events.bus import Delivery, EventBus, Message
from amoeba.events.event import Event

if TYPE_CHECKING:
    from amoeba.data.database import Database
    from amoeba.events.inbox import Inbox
    from amoeba.observe.tracing import Tracer
    from amoeba.service import Service
    from amoeba.spec import ServiceSpec

__all__ = ["EventSettings", "Events", "SubscriptionCounters"]

log = logging.getLogger("amoeba.events")
_encoder = msgspec.json.Encoder()
CLOSE_WAIT = 10.0  # s a broker client gets to close on stop
TRACE_KEY = "$trace"  # the publisher's W3C traceparent, added to an event's JSON
REQUEST_KEY = "$request"  # the request id of the request that published it


class _Trace(msgspec.Struct):
    trace: str = msgspec.field(default="", name=TRACE_KEY)
    request: str = msgspec.field(default="", name=REQUEST_KEY)


_trace_decoder = msgspec.json.Decoder(_Trace)


@dataclass(frozen=True)
class EventSettings:
    """``settings.events`` of the topology."""

    max_attempts: int = 5  # deliveries of one event to a failing handler before it is parked
    backoff: float = 0.5  # seconds before the second attempt; doubles each time
    max_backoff: float = 30.0
    relay_poll: float = 1.0  # seconds between outbox checks when nothing woke the relay
    batch: int = 100  # outbox rows relayed per round

    @classmethod
    def from_settings(cls, extra: dict[str, Any]) -> EventSettings:
        raw = extra.get("events") or {}
        if not isinstance(raw, dict):
            raise ValueError("settings.events: must be a mapping; fix: events: {max_attempts: 5}")
        unknown = sorted(set(raw) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"settings.events: unknown key(s) {unknown}; fix: use only "
                             f"{sorted(cls.__dataclass_fields__)}")
        kw: dict[str, Any] = {}
        for key, value in raw.items():
            want = type(getattr(cls(), key))
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"settings.events.{key}: {value!r} is not a positive number; "
                                 f"fix: {key}: {getattr(cls(), key)}")
            kw[key] = want(value)
        return cls(**kw)

    def delay(self, attempt: int) -> float:
        return float(min(self.backoff * 2 ** (attempt - 1), self.max_backoff))


@dataclass
class SubscriptionCounters:
    """What the metrics issue reads per (service, event): monotonic counts."""

    delivered: int = 0
    acked: int = 0
    retried: int = 0
    dead_lettered: int = 0
    duplicates: int = 0  # redeliveries the inbox turned into no-ops


@dataclass
class _Relay:
    service: str
    db: Database
    events: Events
    wake_event: asyncio.Event = field(default_factory=asyncio.Event)
    handed: int = 0  # the last outbox seq handed to an in-process bus
    settled: list[int] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    warned_at: float = 0.0

    def wake(self) -> None:
        self.wake_event.set()

    async def run(self) -> None:
        settings = self.events.settings
        delay = settings.relay_poll
        while True:
            # A timer, not asyncio.wait_for: on 3.11 a cancel that meets wait_for's
            # own timeout can be lost, and the relay would never stop.
            timer = asyncio.get_running_loop().call_later(delay, self.wake_event.set)
            try:
                await self.wake_event.wait()
            finally:
                timer.cancel()
            self.wake_event.clear()
            try:
                await self.drain()
                delay = settings.relay_poll
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # broker or database unavailable: keep the rows, retry
                delay = min(delay * 2, 30.0)
                now = time.monotonic()
                if now - self.warned_at > 30:
                    self.warned_at = now
                    log.warning("%s: outbox relay cannot publish (%s: %s); retrying every %.0fs "
                                "at most, nothing is lost", self.service, type(exc).__name__, exc,
                                delay)

    async def drain(self) -> None:
        from amoeba.events.memory import MemoryBus

        bus = self.events.bus
        limit = self.events.settings.batch
        while True:
            await self._forget_settled()
            if isinstance(bus, MemoryBus):
                # Rows handed over and not yet settled stay in the table; read past
                # them.  (Safe only here: one process, one connection, so rows are
                # committed in seq order.)
                rows = await self.db.fetchall(_next_rows(limit, after=True),
                                              {"after": self.handed})
            else:
                rows = await self.db.fetchall(_next_rows(limit))
            if not rows:
                return
            msgs = [Message(name=r.name, id=r.id, payload=r.payload.encode(), key=r.event_key,
                            dedupe=r.dedupe) for r in rows]
            if isinstance(bus, MemoryBus):
                for r, m in zip(rows, msgs, strict=True):
                    bus.publish_settled(m).add_done_callback(self._settler(r.seq))
                self.handed = rows[-1].seq
                continue
            await bus.publish_many(msgs)
            await self.db.execute(_delete_rows(), {"seqs": [r.seq for r in rows]})

    def _settler(self, seq: int) -> Callable[[asyncio.Future[None]], None]:
        def settle(_: asyncio.Future[None]) -> None:
            self.settled.append(seq)
            self.wake()

        return settle

    async def _forget_settled(self) -> None:

        if not self.settled:
            return
        done, self.settled = self.settled, []
        await self.db.execute(_delete_rows(), {"seqs": done})


# Statements built once, on first use (SQLAlchemy is imported only by processes
# with a database): a statement object keeps its cache key, so SQLAlchemy finds
# the compiled form without walking the statement on every execution.
_statements: dict[Any, Any] = {}


def _next_rows(limit: int, *, after: bool = False) -> Any:
    """``SELECT * FROM amoeba_outbox [WHERE seq > :after] ORDER BY seq LIMIT <limit>``."""
    query = _statements.get((limit, after))
    if query is None:
        import sqlalchemy as sa

        from amoeba.events.outbox import outbox

        query = outbox.select().order_by(outbox.c.seq).limit(limit)
        if after:
            query = query.where(outbox.c.seq > sa.bindparam("after"))
        _statements[(limit, after)] = query
    return query


def _delete_rows() -> Any:
    """``DELETE FROM amoeba_outbox WHERE seq IN (:seqs)``, the list expanded."""
    query = _statements.get("delete")
    if query is None:
        import sqlalchemy as sa

        from amoeba.events.outbox import outbox

        query = _statements["delete"] = outbox.delete().where(
            outbox.c.seq.in_(sa.bindparam("seqs", expanding=True)))
    return query


def _outbox_insert() -> Any:
    query = _statements.get("insert")
    if query is None:
        from amoeba.events.outbox import outbox

        query = _statements["insert"] = outbox.insert()
    return query


class Events:
    def __init__(self, bus: EventBus, settings: EventSettings):
        self.bus = bus
        self.settings = settings
        self.dbs: dict[str, Database] = {}
        self.specs: dict[str, ServiceSpec] = {}
        self.relays: dict[str, _Relay] = {}
        self.inboxes: dict[str, Inbox] = {}
        self.published: dict[str, int] = {}  # event name -> count published by this process
        self.counters: dict[tuple[str, str], SubscriptionCounters] = {}
        self.groups: list[str] = []
        self.tracer: Tracer | None = None  # set by the host when spans are exported
        self.inflight = 0  # deliveries being handled
        self.idle = asyncio.Event()  # set when the last of them finishes
        self.closing = False  # aclose() began: deliveries that arrive now are not started

    def __repr__(self) -> str:
        return f"<Events {self.bus!r} services={sorted(self.specs)}>"

    async def start(self) -> None:
        await self.bus.start()

    async def attach(self, spec: ServiceSpec, db: Database | None) -> None:
        """Before the service's ``start()``: its tables and its relay."""
        self.specs[spec.name] = spec
        if db is None:
            return
        from amoeba.events.outbox import metadata

        async with db.transaction() as conn:
            await conn.run_sync(metadata.create_all, checkfirst=True)
        from amoeba.events.inbox import Inbox

        self.dbs[spec.name] = db
        self.relays[spec.name] = _Relay(spec.name, db, self)
        self.inboxes[spec.name] = Inbox(db, closing=lambda: self.closing)

    def begin(self) -> None:
        """Once every subscription of the process is in place: relays start, with
        what a previous run left in the outboxes (an in-process bus delivers only
        to subscribers present when an event is relayed)."""
        for relay in self.relays.values():
            relay.task = asyncio.create_task(relay.run(), name=f"outbox relay of {relay.service}")
            relay.wake()

    # -- publishing --------------------------------------------------------
    async def publish(self, inst: Service, event: Any) -> None:
        from amoeba.data.database import current_transaction

        spec = self.specs.get(inst.name)
        if not isinstance(event, Event):
            raise TypeError(f"{type(inst).__qualname__}.publish({event!r}): publish an Event")
        if spec is None or type(event) not in spec.publishes:
            raise TypeError(f"{type(inst).__qualname__}.publish: {type(event).__name__} is not in "
                            f"{type(inst).__qualname__}.publishes; fix: publishes = "
                            f"({type(event).__name__}, ...)")
        name = type(event).event_name
        payload = _encoder.encode(event)
        trace = context.current_traceparent()
        if trace:  # the trace travels in the payload; consumers' decoders ignore the key
            payload = b"%s,\"%s\":\"%s\"}" % (payload[:-1], TRACE_KEY.encode(), trace.encode())
        rid = context.request_id.get()
        if rid:  # and the request id, so the handler's log lines name the request
            payload = b"%s,\"%s\":%s}" % (payload[:-1], REQUEST_KEY.encode(), _encoder.encode(rid))
        db = self.dbs.get(inst.name)
        if db is None:
            await self.bus.publish(Message(name=name, id=event.id, payload=payload))
        else:
            row = {"id": event.id, "name": name, "event_key": None, "payload": payload.decode(),
                   "dedupe": None, "created_at": datetime.now(UTC)}
            tx = current_transaction()
            relay = self.relays[inst.name]
            if tx is not None and tx.db is db:
                await tx.conn.execute(_outbox_insert(), row)
                tx.after_commit.append(relay.wake)
            else:
                await db.execute(_outbox_insert(), row)
                relay.wake()
        self.published[name] = self.published.get(name, 0) + 1

    # -- consuming ---------------------------------------------------------
    async def subscribe(self, spec: ServiceSpec, inst: Service) -> None:
        """After the service's ``start()``: deliveries begin."""
        if not spec.handlers:
            return
        routes: dict[str, Callable[[Delivery], Awaitable[None]]] = {}
        for attr, event_cls in spec.handlers.items():
            routes[event_cls.event_name] = self._consumer(spec.name, attr, getattr(inst, attr),
                                                          event_cls)

        async def dispatch(delivery: Delivery) -> None:
            handler = routes.get(delivery.message.name)
            if handler is None:  # not ours (a shared subscription): nothing to do
                await delivery.ack()
                return
            await handler(delivery)

        await self.bus.subscribe(spec.name, sorted(routes), dispatch)
        self.groups.append(spec.name)

    def _consumer(self, service: str, attr: str, fn: Callable[[Any], Awaitable[Any]],
                  event_cls: type[Event]) -> Callable[[Delivery], Awaitable[None]]:
        decoder = msgspec.json.Decoder(event_cls)
        counters = self.counters.setdefault((service, event_cls.event_name), SubscriptionCounters())
        where = f"{service}.{attr}"

        async def handle(delivery: Delivery) -> None:
            if self.closing:  # not started: left unacked, the broker delivers it again
                return
            self.inflight += 1
            try:
                await run(delivery)
            finally:
                self.inflight -= 1
                if not self.inflight:
                    self.idle.set()

        def carry(msg: Message) -> str:
            """Set the delivery's service and request id in this task's context;
            the publisher's traceparent ("" when the payload carries none)."""
            context.service.set(service)
            try:
                carried = _trace_decoder.decode(msg.payload)
            except msgspec.DecodeError:
                context.request_id.set("")
                return ""
            context.request_id.set(carried.request)
            return carried.trace

        def enter(msg: Message) -> Any:
            """The delivery's context for the handler's logs, calls and events: its
            service, request id and trace; and its span, if spans are exported."""
            parent = carry(msg)
            if self.tracer is None:
                context.traceparent.set(context.new_traceparent(parent))
                return None
            span, tp = self.tracer.start(f"{msg.name} process", parent, "consumer", {
                "messaging.operation": "process", "messaging.destination.name": msg.name,
                "messaging.message.id": msg.id, "messaging.consumer.group.name": service})
            context.traceparent.set(tp)
            return span

        async def call(delivery: Delivery, event: Any) -> None:
            """The handler, inside its batch's transaction (the inbox's task)."""
            span = enter(delivery.message)
            try:
                await fn(event)
            finally:
                if span is not None:
                    assert self.tracer is not None
                    self.tracer.end(span)

        async def alone(delivery: Delivery) -> None:
            """The delivery in a transaction of its own (or none, without a Database)."""
            span = enter(delivery.message)
            try:
                await self._handle(delivery, counters, self.dbs.get(service), fn, decoder,
                                   service, where)
            finally:
                if span is not None:
                    assert self.tracer is not None
                    self.tracer.end(span)

        from amoeba.events.inbox import DUPLICATE, NOT_STARTED, SINGLY, Job

        async def run(delivery: Delivery) -> None:
            counters.delivered += 1
            box = self.inboxes.get(service)
            if box is None:
                await alone(delivery)
                return
            msg = delivery.message
            # The handler runs in the inbox's task (call, with the same context
            # set there); this task logs the retries and dead letters.
            context.traceparent.set(context.new_traceparent(carry(msg)))
            try:
                event = decoder.decode(msg.payload)
            except msgspec.DecodeError as exc:
                await self._failed(delivery, counters, service, where, exc)
                return
            outcome = await box.handle(Job(delivery, event, call))
            if isinstance(outcome, Exception):
                await self._failed(delivery, counters, service, where, outcome)
            elif outcome == SINGLY:  # its batch failed as a whole: find out alone
                await alone(delivery)
            elif outcome != NOT_STARTED:  # (stopping: the broker delivers it again)
                if outcome == DUPLICATE:
                    counters.duplicates += 1
                await delivery.ack()
                counters.acked += 1

        return handle

    async def _handle(self, delivery: Delivery, counters: SubscriptionCounters,
                      db: Database | None, fn: Callable[[Any], Awaitable[Any]],
                      decoder: msgspec.json.Decoder[Any], service: str, where: str) -> None:
        from amoeba.events.inbox import INSERT, SEEN_ONE

        msg = delivery.message
        try:
            event = decoder.decode(msg.payload)
            if db is None:
                await fn(event)
            else:
                async with db.transaction() as conn:
                    seen = (await conn.execute(SEEN_ONE, {"id": msg.id})).first()
                    if seen is not None:
                        counters.duplicates += 1
                    else:
                        await fn(event)
                        await conn.execute(INSERT, {
                            "event_id": msg.id, "name": msg.name,
                            "handled_at": datetime.now(UTC)})
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._failed(delivery, counters, service, where, exc)
            return
        await delivery.ack()
        counters.acked += 1

    async def _failed(self, delivery: Delivery, counters: SubscriptionCounters, service: str,
                      where: str, exc: Exception) -> None:
        """The handler raised (or the event cannot be decoded): retry it later, or
        park it as a dead letter once out of attempts."""
        msg = delivery.message
        poison = isinstance(exc, msgspec.DecodeError)
        if poison or delivery.attempt >= self.settings.max_attempts:
            await self._dead_letter(service, where, msg, delivery.attempt, exc)
            counters.dead_lettered += 1
            await delivery.ack()
        else:
            counters.retried += 1
            delay = self.settings.delay(delivery.attempt)
            log.warning("%s failed on %s %s (attempt %d): %s: %s; retrying in %.1fs",
                        where, msg.name, msg.id, delivery.attempt, type(exc).__name__,
                        exc, delay)
            await delivery.nack(delay)

    async def _dead_letter(self, service: str, where: str, msg: Message, attempts: int,
                           exc: Exception) -> None:
        from amoeba.events.outbox import dead_letters

        log.error("%s gave up on %s %s after %d attempt(s): %s: %s; parked as a dead letter "
                  "(amoeba events dead-letters / replay)", where, msg.name, msg.id, attempts,
                  type(exc).__name__, exc)
        db = self.dbs.get(service)
        if db is None:
            return
        row = {"event_id": msg.id, "name": msg.name, "handler": where,
               "payload": msg.payload.decode(errors="replace"),
               "attempts": attempts, "error": f"{type(exc).__name__}: {exc}"[:4000],
               "failed_at": datetime.now(UTC)}
        async with db.transaction() as conn:
            await conn.execute(dead_letters.delete().where(dead_letters.c.event_id == msg.id))
            await conn.execute(dead_letters.insert(), row)

    # -- observing and stopping ----------------------------------------------
    async def lag(self) -> dict[str, int]:
        """Per consuming service here: events published but not yet acked."""
        return {g: await self.bus.pending(g) for g in self.groups}

    async def outbox_waiting(self) -> dict[str, int]:
        """Per publishing service here: outbox rows not yet handed to the broker."""
        import sqlalchemy as sa

        from amoeba.events.outbox import outbox

        query = sa.select(sa.func.count()).select_from(outbox)
        return {svc: int(await relay.db.scalar(query) or 0)
                for svc, relay in self.relays.items()}

    async def aclose(self, grace: float = 0.0) -> None:
        """Stop: deliveries not yet started are left to the broker (redelivered),
        those being handled get up to ``grace`` s to finish and ack, then the bus
        closes; a broker client that does not close within ``CLOSE_WAIT`` is left
        behind, so a process on SIGTERM always exits."""
        self.closing = True
        for relay in self.relays.values():
            if relay.task is not None:
                relay.task.cancel()
        await asyncio.gather(*(r.task for r in self.relays.values() if r.task),
                             return_exceptions=True)
        if self.inflight and grace > 0:
            self.idle.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    while self.inflight:
                        await self.idle.wait()
                        self.idle.clear()
        from amoeba.events.inbox import stop as stop_inboxes

        await stop_inboxes(list(self.inboxes.values()))
        if self.inflight:
            log.warning("events: %d delivery(ies) still running after %.1fs grace; stopping them "
                        "(not acked: the broker delivers them again)", self.inflight, grace)
        closing = asyncio.create_task(self.bus.aclose(), name=f"closing {self.bus!r}")
        done, _ = await asyncio.wait({closing}, timeout=CLOSE_WAIT)
        if not done:
            log.warning("events: %r did not close within %.0fs; leaving it", self.bus, CLOSE_WAIT)
        elif closing.exception() is not None:
            log.warning("events: closing %r failed: %r", self.bus, closing.exception())
