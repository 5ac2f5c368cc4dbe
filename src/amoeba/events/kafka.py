"""``KafkaBus``: Apache Kafka (or a Kafka-protocol broker), through aiokafka.

Layout on the broker, per app (``app`` namespaces everything)::

    topic     amoeba.<app>.<name>          one per event name, ``partitions`` partitions
    topic     amoeba-retry.<app>.<group>   a consuming service's retries (its nacks)
    group     amoeba.<app>.<group>          one consumer group per consuming service

Topics are created when first published to or subscribed to (``CreateTopics``,
``?partitions=`` (default 8) and ``?replication=`` (default 1)); on a cluster
where clients may not create topics, create them beforehand (docs/kafka.md).

Publishing.  ``publish`` returns once the broker acknowledged the record with
``acks=all``.  The producer is *not* idempotent: Tansu answers
``InitProducerId`` with an error, and an idempotent producer only removes the
duplicates of its own internal retries anyway.  A publish retried by the outbox
relay may therefore be stored twice; the consuming service's inbox drops the
repeat (``Message.dedupe`` is not used).  The record's key is the event's
``key`` (so one aggregate's events share a partition and keep their order),
else none (spread across partitions).  The id travels in header ``amoeba-id``.

Consuming.  ``subscribe`` starts one consumer of the service's group for the
event topics it handles and its retry topic, offsets committed by hand
(``enable.auto.commit`` off), a new group starting at the oldest record.  Up to
``concurrency`` (64) handlers run at once per subscriber; records of one key
are handled one after another, in partition order.  A partition's offset is
committed only up to the first record not yet acked (acked = the handler's
transaction committed), a few at a time: a crash redelivers from there, and the
consumer's inbox turns the already-handled ones into no-ops.  On a rebalance
the partitions going away wait (up to ``revoke_wait``) for their running
handlers, then commit, so a replica joining does not get records twice.

Retries without blocking a partition.  A partition cannot skip one record, so
a ``nack(delay)`` copies the record to the group's retry topic with its next
attempt number and due time, then acks the original: the partition moves on.
The retry topic's records are handled once due (a crash keeps the due time: it
travels in a header).  The runtime dead-letters after ``max_attempts``, as on
every backend.  Attempts are counted in the records, so a crash before an ack
redelivers a record with the same attempt number (Kafka keeps no delivery count).

Lag.  ``pending`` = per partition of the group's topics, the log end minus the
group's committed offset (or the log start, before a first commit).  The log
end is *not* taken from ``ListOffsets``: Tansu 0.6 answers it with the base
offset of the last record batch + 1, short of the real end whenever that batch
holds several records.  It is read from a fetch at that offset instead: the
fetch response's high watermark is right on Tansu and on Apache Kafka (where
``ListOffsets`` is right too, and the fetch returns just the last record).
Offsets are dense here (no transactions, no compaction), so the difference is
a count of records.

What Tansu 0.6 lacks that this module does not use: transactions, idempotent
producers, the admin ``ListConsumerGroupOffsets`` (``committed()`` is used).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from amoeba.events.bus import Delivery, EventBus, Handler, Message

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from aiokafka.structs import ConsumerRecord

__all__ = ["KafkaBus", "group_id", "retry_topic", "topic"]

log = logging.getLogger("amoeba.events")
OPTIONS: dict[str, float] = {"partitions": 8, "replication": 1, "concurrency": 64,
                             "revoke_wait": 10.0, "request_timeout": 30.0,
                             "session_timeout": 6.0}
FETCH_WAIT_MS = 1000  # a getmany with nothing to return ends after this
BACKOFF = (0.1, 5.0)  # s: first and longest pause after a failed fetch or commit
PROBE_WAIT = 5.0  # s: pending() gives up reading the log ends after this

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def _safe(text: str) -> str:
    """A topic-name part: letters, digits, '_' and '-' (others become '.xx.', hex)."""
    return _UNSAFE.sub(lambda m: "".join(f".{b:02x}." for b in m.group().encode()), text)


def topic(app: str, name: str) -> str:
    return f"amoeba.{_safe(app)}.{name}"  # event names are [A-Za-z0-9_.-] already


def retry_topic(app: str, group: str) -> str:
    return f"amoeba-retry.{_safe(app)}.{_safe(group)}"


def group_id(app: str, group: str) -> str:
    return f"amoeba.{_safe(app)}.{_safe(group)}"


def _import_aiokafka() -> Any:
    try:
        import aiokafka
    except ImportError as exc:
        raise ImportError("resources.events is a kafka:// URL but aiokafka is not installed; "
                          "fix: pip install 'amoeba[kafka]'") from exc
    return aiokafka


def _parse(url: str) -> tuple[str, dict[str, float]]:
    """``kafka://h1:9092,h2:9092?partitions=8`` -> ("h1:9092,h2:9092", options)."""
    parts = urlsplit(url)
    hosts = parts.netloc.rsplit("@", 1)[-1]
    if not hosts or any(not h.strip() for h in hosts.split(",")):
        raise ValueError(f"resources.events: {url!r} names no broker; fix: kafka://host:9092")
    options = dict(OPTIONS)
    for key, value in parse_qsl(parts.query):
        if key not in options:
            raise ValueError(f"resources.events: unknown option {key!r} in {url!r}; "
                             f"known: {', '.join(sorted(OPTIONS))}")
        try:
            options[key] = float(value)
        except ValueError:
            raise ValueError(f"resources.events: {key}={value!r} in {url!r} is not a number") from None
        whole = key in ("partitions", "replication", "concurrency")
        if options[key] <= 0 or (whole and options[key] != int(options[key])):
            raise ValueError(f"resources.events: {key} in {url!r} must be a positive "
                             f"{'whole number' if whole else 'number of seconds'}")
    return ",".join(h.strip() for h in hosts.split(",")), options


def _header(headers: Any, name: str) -> str | None:
    for key, value in headers or ():
        if key == name:
            return bytes(value).decode()
    return None


class _Partition:
    """The records of one assigned partition handed out and not yet committed."""

    __slots__ = ("commit_at", "committed", "entries", "gone")

    def __init__(self) -> None:
        self.entries: collections.deque[list[Any]] = collections.deque()  # [offset, settled]
        self.commit_at = -1  # the offset to commit next (first not settled)
        self.committed = -1
        self.gone = False  # revoked: late acks are ignored (the new owner redelivers)

    def add(self, offset: int) -> list[Any]:
        entry = [offset, False]
        self.entries.append(entry)
        return entry

    def settle(self, entry: list[Any]) -> bool:
        """Mark ``entry`` acked; True when the committable offset moved."""
        entry[1] = True
        moved = False
        while self.entries and self.entries[0][1]:
            self.commit_at = self.entries.popleft()[0] + 1
            moved = True
        return moved


class _Delivery(Delivery):
    __slots__ = ("_entry", "_part", "_sub", "attempt", "due", "message", "settled")

    def __init__(self, sub: _Subscription, part: _Partition, entry: list[Any], message: Message,
                 attempt: int, due: float):
        self._sub, self._part, self._entry = sub, part, entry
        self.message = message
        self.attempt = attempt
        self.due = due  # time.time() before which it is not handled (a retry)
        self.settled = False

    async def ack(self) -> None:
        self._sub.settle(self)

    async def nack(self, delay: float) -> None:
        await self._sub.retry_later(self, delay)


@dataclass
class _Subscription:
    bus: KafkaBus
    group: str
    names: dict[str, str]  # topic -> event name
    handler: Handler
    consumer: AIOKafkaConsumer
    parts: dict[TopicPartition, _Partition] = field(default_factory=dict)
    running: int = 0  # handlers in flight
    room: asyncio.Event = field(default_factory=asyncio.Event)
    commit_wanted: asyncio.Event = field(default_factory=asyncio.Event)
    busy_keys: dict[str, collections.deque[_Delivery]] = field(default_factory=dict)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    timers: set[asyncio.TimerHandle] = field(default_factory=set)
    loops: list[asyncio.Task[None]] = field(default_factory=list)
    closed: bool = False

    def __repr__(self) -> str:
        return f"<_Subscription group={self.group!r} topics={sorted(self.names)}>"

    def start(self) -> None:
        self.loops = [asyncio.create_task(self._fetch(), name=f"kafka fetch of {self.group}"),
                      asyncio.create_task(self._commits(), name=f"kafka commits of {self.group}")]

    # -- delivering ------------------------------------------------------------
    async def _fetch(self) -> None:
        from aiokafka.errors import KafkaError

        pause = BACKOFF[0]
        concurrency = int(self.bus.options["concurrency"])
        me = asyncio.current_task()
        while True:
            if me is not None and me.cancelling():  # a cancel the client swallowed
                raise asyncio.CancelledError
            while self.running >= concurrency:
                self.room.clear()
                await self.room.wait()
            try:
                batches = await self.consumer.getmany(timeout_ms=FETCH_WAIT_MS,
                                                      max_records=concurrency - self.running)
            except KafkaError as exc:  # broker restarting, coordinator moving, ...: keep going
                log.warning("Kafka fetch for group %r failed (%s: %s); retrying in %.1fs",
                            self.group, type(exc).__name__, exc, pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, BACKOFF[1])
                continue
            pause = BACKOFF[0]
            for tp, records in batches.items():
                part = self.parts.get(tp)
                if part is None:
                    part = self.parts[tp] = _Partition()
                for record in records:
                    self._dispatch(part, record)

    def _dispatch(self, part: _Partition, record: ConsumerRecord[Any, Any]) -> None:
        headers = record.headers
        entry = part.add(record.offset)
        name = self.names.get(record.topic)
        attempt, due = 1, 0.0
        if name is None:  # the retry topic
            name = _header(headers, "amoeba-name") or ""
            attempt = int(_header(headers, "amoeba-attempt") or 2)
            due = float(_header(headers, "amoeba-due") or 0)
        key = None if record.key is None else bytes(record.key).decode()
        message = Message(name=name, id=_header(headers, "amoeba-id") or "",
                          payload=bytes(record.value or b""), key=key)
        delivery = _Delivery(self, part, entry, message, attempt, due)
        wait = due - time.time()
        if wait > 0:
            timer = asyncio.get_running_loop().call_later(wait, self._due, delivery)
            self.timers.add(timer)
            delivery._entry.append(timer)
            return
        self._queue(delivery)

    def _due(self, delivery: _Delivery) -> None:
        self.timers.discard(delivery._entry.pop())
        self._queue(delivery)

    def _queue(self, delivery: _Delivery) -> None:
        """Run it now, or after the running delivery of the same key."""
        if delivery._part.gone:  # revoked before its turn: the new owner has it
            return
        key = delivery.message.key
        if key is not None:
            waiting = self.busy_keys.get(key)
            if waiting is not None:
                waiting.append(delivery)
                return
            self.busy_keys[key] = collections.deque()
        self._run(delivery)

    def _run(self, delivery: _Delivery) -> None:
        self.running += 1
        task = asyncio.create_task(self._handle(delivery))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _handle(self, delivery: _Delivery) -> None:
        try:
            await self.handler(delivery)
        except Exception:  # the consumer acks or nacks; this is a bug in it
            log.exception("event handler failed without nacking %s", delivery.message.name)
            if not delivery.settled:
                await self.retry_later(delivery, 1.0)
        finally:
            self.running -= 1
            self.room.set()
            key = delivery.message.key
            if key is not None:
                waiting = self.busy_keys.get(key)
                while waiting and waiting[0]._part.gone:
                    waiting.popleft()
                if waiting:
                    self._run(waiting.popleft())
                else:
                    self.busy_keys.pop(key, None)

    # -- settling --------------------------------------------------------------
    def settle(self, delivery: _Delivery) -> None:
        if delivery.settled:
            return
        delivery.settled = True
        part = delivery._part
        if part.gone or self.closed:
            return  # revoked meanwhile: the partition's new owner has it again
        if part.settle(delivery._entry):
            self.commit_wanted.set()

    async def retry_later(self, delivery: _Delivery, delay: float) -> None:
        """Copy it to the group's retry topic, due in ``delay`` s; then the partition moves on."""
        if delivery.settled or self.closed:
            return
        msg = delivery.message
        headers = [("amoeba-id", msg.id.encode()), ("amoeba-name", msg.name.encode()),
                   ("amoeba-attempt", str(delivery.attempt + 1).encode()),
                   ("amoeba-due", f"{time.time() + delay:.3f}".encode())]
        target = retry_topic(self.bus.app, self.group)
        try:
            await self.bus.send(target, msg.payload, msg.key or msg.id, headers)
        except Exception as exc:  # broker unreachable: retry in memory, the offset stays held
            log.warning("Kafka: cannot write %s %s to %s (%s: %s); retrying it in memory, its "
                        "offset stays uncommitted", msg.name, msg.id, target, type(exc).__name__, exc)
            again = _Delivery(self, delivery._part, delivery._entry, msg, delivery.attempt + 1,
                              time.time() + delay)
            timer = asyncio.get_running_loop().call_later(delay, self._due, again)
            self.timers.add(timer)
            again._entry.append(timer)
            delivery.settled = True  # ``again`` settles the entry
            return
        self.settle(delivery)

    async def _commits(self) -> None:
        pause = BACKOFF[0]
        while True:
            await self.commit_wanted.wait()
            self.commit_wanted.clear()
            try:
                await self.commit()
                pause = BACKOFF[0]
            except Exception as exc:
                log.warning("Kafka: committing offsets of group %r failed (%s: %s); retrying in "
                            "%.1fs (a crash meanwhile redelivers, the inbox drops repeats)",
                            self.group, type(exc).__name__, exc, pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, BACKOFF[1])
                self.commit_wanted.set()

    async def commit(self, only: set[TopicPartition] | None = None) -> None:
        from aiokafka.errors import CommitFailedError, IllegalStateError

        todo = [(tp, p, p.commit_at) for tp, p in self.parts.items()
                if p.commit_at > p.committed and (only is None or tp in only) and not p.gone]
        if not todo:
            return
        try:
            await self.consumer.commit({tp: at for tp, _, at in todo})
        except (CommitFailedError, IllegalStateError) as exc:
            # Rebalanced meanwhile: these partitions are someone else's now, and
            # they redeliver from the last commit (the inbox drops the repeats).
            log.info("Kafka: commit of group %r refused (%s); its partitions moved", self.group, exc)
            return
        for _, p, at in todo:
            p.committed = max(p.committed, at)

    # -- rebalancing and stopping ------------------------------------------------
    async def revoke(self, revoked: set[TopicPartition]) -> None:
        """Partitions going to another member: let their handlers finish, commit."""
        if not self.closed:
            end = time.monotonic() + self.bus.options["revoke_wait"]
            def busy() -> bool:  # handlers running or queued (not retries waiting on a timer)
                return any(not e[1] and len(e) == 2 for tp in revoked
                           if (p := self.parts.get(tp)) for e in p.entries)

            while busy() and time.monotonic() < end:  # noqa: ASYNC110 (acks set no event)
                await asyncio.sleep(0.02)
        try:
            await self.commit(revoked)
        except Exception as exc:
            log.warning("Kafka: commit before a rebalance of group %r failed (%s: %s); the "
                        "partitions' new owner redelivers from the previous commit", self.group,
                        type(exc).__name__, exc)
        for tp in revoked:
            part = self.parts.pop(tp, None)
            if part is None:
                continue
            part.gone = True
            for entry in part.entries:
                if len(entry) == 3:  # a retry waiting its turn: the new owner has it
                    entry[2].cancel()
                    self.timers.discard(entry[2])

    async def stop(self) -> None:
        """Stop fetching; cancel running handlers (not acked: redelivered); commit what
        was acked; leave the group."""
        loops, self.loops = self.loops, []
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        self.closed = True
        for timer in self.timers:
            timer.cancel()
        self.timers.clear()
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.closed = False  # acks settled before the cancel still count
        try:
            async with asyncio.timeout(5.0):
                await self.commit()
        except Exception as exc:
            log.warning("Kafka: final commit of group %r failed (%s: %s); what it acked is "
                        "redelivered and dropped by the inbox", self.group, type(exc).__name__, exc)
        self.closed = True
        try:
            async with asyncio.timeout(10.0):
                await self.consumer.stop()
        except Exception as exc:
            log.warning("Kafka: leaving group %r failed (%s: %s)", self.group, type(exc).__name__, exc)


def _listener(sub: _Subscription) -> Any:
    from aiokafka.abc import ConsumerRebalanceListener

    class Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
        async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
            await sub.revoke(set(revoked))

        async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
            pass

    return Rebalance()


class KafkaBus(EventBus):
    durable = True

    def __init__(self, url: str, *, app: str):
        _import_aiokafka()  # fail at configuration time, with the install hint
        self.servers, self.options = _parse(url)
        self.app = app
        self._producer: AIOKafkaProducer | None = None
        self._admin: Any = None
        self._known: set[str] = set()  # topics that exist
        self._subs: list[_Subscription] = []
        self._probes: dict[str, AIOKafkaConsumer] = {}  # group -> consumer reading offsets

    def __repr__(self) -> str:
        return (f"<KafkaBus {self.servers} app={self.app!r} partitions="
                f"{int(self.options['partitions'])} {'started' if self._producer else 'closed'}>")

    def _common(self) -> dict[str, Any]:
        return {"bootstrap_servers": self.servers.split(","),
                "request_timeout_ms": int(self.options["request_timeout"] * 1000),
                "client_id": f"amoeba-{self.app}"}

    async def start(self) -> None:
        aiokafka = _import_aiokafka()
        from aiokafka.admin import AIOKafkaAdminClient
        from aiokafka.errors import KafkaError

        producer = aiokafka.AIOKafkaProducer(acks="all", enable_idempotence=False,
                                             **self._common())
        admin = AIOKafkaAdminClient(**self._common())
        try:
            await producer.start()
            await admin.start()
        except KafkaError as exc:
            await producer.stop()
            await admin.close()
            raise ConnectionError(f"resources.events: no Kafka broker answers at {self.servers} "
                                  f"({exc!r}); fix: start one or correct the URL") from exc
        self._producer, self._admin = producer, admin

    def _started(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise RuntimeError(f"{self!r}: call start() first (or it was closed)")
        return self._producer

    async def ensure_topics(self, topics: list[str]) -> None:
        from aiokafka.admin import NewTopic
        from aiokafka.errors import TopicAlreadyExistsError

        missing = [t for t in topics if t not in self._known]
        if not missing:
            return
        self._started()
        new = [NewTopic(t, int(self.options["partitions"]), int(self.options["replication"]))
               for t in missing]
        reply = await self._admin.create_topics(new)
        for name, code, *rest in reply.topic_errors:
            if code not in (0, TopicAlreadyExistsError.errno):
                raise ConnectionError(f"resources.events: Kafka at {self.servers} refused to "
                                      f"create topic {name!r} (error {code}: {rest[0] if rest else ''}); "
                                      f"fix: create it beforehand (docs/kafka.md) or grant CREATE")
        self._known.update(missing)

    async def send(self, target: str, payload: bytes, key: str | None,
                   headers: list[tuple[str, bytes]]) -> None:
        producer = self._started()
        await self.ensure_topics([target])
        await producer.send_and_wait(target, payload, key=None if key is None else key.encode(),
                                     headers=headers)

    async def publish(self, message: Message) -> None:
        await self.send(topic(self.app, message.name), message.payload, message.key,
                        [("amoeba-id", message.id.encode())])

    async def subscribe(self, group: str, names: list[str], handler: Handler) -> None:
        aiokafka = _import_aiokafka()
        self._started()
        topics = {topic(self.app, n): n for n in names}
        retries = retry_topic(self.app, group)
        await self.ensure_topics([*topics, retries])
        # A short session (Kafka's smallest default minimum, 6 s): a dead replica's
        # partitions move within it, and Tansu holds a JoinGroup for half of it.
        session = int(self.options["session_timeout"] * 1000)
        consumer = aiokafka.AIOKafkaConsumer(
            group_id=group_id(self.app, group), enable_auto_commit=False,
            auto_offset_reset="earliest", session_timeout_ms=session,
            heartbeat_interval_ms=max(100, session // 3), **self._common())
        sub = _Subscription(self, group, topics, handler, consumer)
        consumer.subscribe([*topics, retries], listener=_listener(sub))
        await consumer.start()
        self._subs.append(sub)
        sub.start()

    async def pending(self, group: str) -> int:
        aiokafka = _import_aiokafka()
        from aiokafka import TopicPartition

        probe = self._probes.get(group)
        if probe is None:
            probe = aiokafka.AIOKafkaConsumer(group_id=group_id(self.app, group),
                                              enable_auto_commit=False, **self._common())
            await probe.start()
            self._probes[group] = probe
        mine = [s for s in self._subs if s.group == group]
        if mine:  # made by subscribe()
            topics = {t for s in mine for t in s.names} | {retry_topic(self.app, group)}
        else:  # a group subscribed elsewhere: every event topic of the app, and its retries
            every = set(await self._admin.list_topics())
            prefix = topic(self.app, "")
            topics = {t for t in every if t.startswith(prefix)} | (
                {retry_topic(self.app, group)} & every)
        # Partitions from a fresh Metadata request (a consumer's cached metadata may
        # predate a topic); only existing topics are asked for: Tansu would create others.
        described = await self._admin.describe_topics(sorted(topics)) if topics else []
        tps = sorted(TopicPartition(d["topic"], p["partition"])
                     for d in described for p in d["partitions"])
        if not tps:
            return 0
        starts = await probe.beginning_offsets(tps)
        ends = await probe.end_offsets(tps)
        done = dict(zip(tps, await asyncio.gather(*(probe.committed(tp) for tp in tps)),
                        strict=True))
        # Log ends from a fetch's high watermark (see the module docstring).
        live = [tp for tp in tps if ends[tp] > starts[tp]]
        if live:
            probe.assign(live)
            for tp in live:
                probe.seek(tp, ends[tp] - 1)
            deadline = time.monotonic() + PROBE_WAIT
            while any(probe.highwater(tp) is None for tp in live):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self!r}: no high watermark for "
                                       f"{[tp for tp in live if probe.highwater(tp) is None]}")
                await probe.getmany(*live, timeout_ms=200)
        total = 0
        for tp in live:
            end = max(probe.highwater(tp) or 0, ends[tp])
            total += max(0, end - max(done[tp] or 0, starts[tp]))
        return total

    async def aclose(self) -> None:
        subs, self._subs = self._subs, []
        for sub in subs:
            await sub.stop()
        probes, self._probes = self._probes, {}
        for probe in probes.values():
            await probe.stop()
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()
        admin, self._admin = self._admin, None
        if admin is not None:
            await admin.close()
