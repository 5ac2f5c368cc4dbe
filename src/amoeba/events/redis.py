"""``RedisBus``: Redis Streams with consumer groups, chosen by ``resources.events: redis://...``.

Key layout (``?prefix=`` in the URL goes in front, as for the cache)::

    <prefix>amoeba:<app>:events:<name>     one stream per event name;
                                            entry fields: id, payload, key (if any)

Each amoeba group is a Redis consumer group on every stream it subscribes
to; each bus instance is one consumer (``host-pid-random``), so replicas
share a group's entries.  How the contract of ``bus.py`` maps onto Redis:

* ack is ``XACK``.  Redis has no delayed redelivery, so a nack leaves the
  entry pending (in the group's PEL) and this instance ``XCLAIM``\\ s it to
  itself once the delay is up, which bumps Redis's delivery counter.
* A crashed or closed consumer's pending entries (nacked ones included) are
  taken over by any live consumer of the group with ``XAUTOCLAIM`` once idle
  for ``claim_idle`` seconds (URL ``?claim_idle=30``).  While this instance
  holds an entry (handler running, or waiting out a nack's delay) it resets
  the entry's idle time every ``claim_idle / 3`` s, so ``claim_idle`` bounds
  the time to detect a dead consumer, not a handler's run time.
* ``Delivery.attempt`` is Redis's delivery counter (``XPENDING``), so it
  keeps counting across replicas and restarts.
* A group is created at the start of the stream (id ``0``), not at ``$``: a
  service deployed after events were published still gets every retained one.
* Order: per event name in ``XADD`` order only with one replica and
  ``?concurrency=1``; concurrency, replicas and redelivery reorder.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from amoeba.data.cache import redis_client, split_prefix
from amoeba.events.bus import Delivery, EventBus, Handler, Message

try:
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import ResponseError
    from redis.exceptions import TimeoutError as RedisTimeoutError
except ImportError:  # pragma: no cover - depends on the install
    raise ImportError("resources.events: redis:// needs redis-py: pip install 'amoeba[redis]' "
                      "(or 'redis>=5')") from None

__all__ = ["RedisBus"]

log = logging.getLogger("amoeba.events")

#: Redis errors worth waiting out (a restart, a failover, a network blip).
TRANSIENT = (RedisConnectionError, RedisTimeoutError, OSError)
BLOCK_MS = 1000  # XREADGROUP waits this long for new entries before looping
READ_COUNT = 64  # entries per XREADGROUP / XAUTOCLAIM call


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class _Backoff:
    """Sleeps between retries of a failing loop: 0.1 s doubling to 5 s, and
    one warning per outage rather than one per retry."""

    def __init__(self, what: str):
        self.what = what
        self.delay = 0.0

    async def failed(self, exc: BaseException) -> None:
        if self.delay == 0.0:
            log.warning("%s: %s: %s; retrying with backoff", self.what, type(exc).__name__, exc)
        self.delay = min(5.0, max(0.1, self.delay * 2))
        await asyncio.sleep(self.delay)

    def ok(self) -> None:
        if self.delay:
            log.warning("%s: working again", self.what)
        self.delay = 0.0


class _Delivery(Delivery):
    __slots__ = ("_entry", "_stream", "_sub", "attempt", "message", "settled")

    def __init__(self, sub: _Subscription, stream: str, entry: str, message: Message, attempt: int):
        self._sub = sub
        self._stream = stream
        self._entry = entry
        self.message = message
        self.attempt = attempt
        self.settled = False

    async def ack(self) -> None:
        self.settled = True
        await self._sub.ack(self._stream, self._entry)

    async def nack(self, delay: float) -> None:
        self.settled = True
        self._sub.retry_later(self._stream, self._entry, delay)


class _Subscription:
    """One ``subscribe`` call: reads new entries, reclaims idle ones, redelivers nacked ones."""

    def __init__(self, bus: RedisBus, group: str, streams: dict[str, str], handler: Handler):
        self.bus = bus
        self.redis = bus.redis
        self.group = group
        self.streams = streams  # stream key -> event name
        self.handler = handler
        self.consumer = bus.consumer
        self.slots = asyncio.Semaphore(bus.concurrency)
        # Entries this consumer holds: handler running, or waiting out a nack's delay.
        self.held: set[tuple[str, str]] = set()
        self.timers: dict[tuple[str, str], asyncio.TimerHandle] = {}
        self.tasks: set[asyncio.Task[None]] = set()  # handlers and redeliveries
        # Per stream, the acks gathering for the next XACK and its answer (see ``ack``).
        self.acking: dict[str, tuple[list[str], asyncio.Future[None]]] = {}
        self.ack_due = asyncio.Event()
        self.loops: list[asyncio.Task[None]] = []
        self.closed = False  # a late ack/nack then leaves the entry pending for others

    def __repr__(self) -> str:
        return f"<_Subscription group={self.group!r} names={sorted(self.streams.values())}>"

    async def create_groups(self) -> None:
        for stream in self.streams:
            try:
                await self.redis.xgroup_create(stream, self.group, id="0", mkstream=True)
            except ResponseError as exc:
                if not str(exc).startswith("BUSYGROUP"):
                    raise

    def start(self) -> None:
        self.loops = [asyncio.create_task(self._read()), asyncio.create_task(self._reclaim()),
                      asyncio.create_task(self._acks())]

    async def stop(self) -> None:
        self.closed = True
        for timer in self.timers.values():
            timer.cancel()
        self.timers.clear()
        tasks = [*self.loops, *self.tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.loops.clear()
        self.tasks.clear()
        # Forget this consumer only when it holds nothing: XGROUP DELCONSUMER
        # drops the consumer's pending entries, which must stay claimable.
        # Best effort, and quick when Redis is down: a stale consumer entry is harmless.
        try:
            async with asyncio.timeout(2.0):
                for stream in self.streams:
                    mine = await self.redis.xpending_range(stream, self.group, "-", "+", 1,
                                                           consumername=self.consumer)
                    if not mine:
                        await self.redis.xgroup_delconsumer(stream, self.group, self.consumer)
        except (*TRANSIENT, ResponseError, TimeoutError):
            pass

    # -- delivering ----------------------------------------------------------
    def _message(self, stream: str, fields: dict[bytes, bytes] | None) -> Message | None:
        if not fields or b"id" not in fields or b"payload" not in fields:
            return None
        key = fields.get(b"key")
        return Message(name=self.streams[stream], id=_text(fields[b"id"]), payload=bytes(fields[b"payload"]),
                       key=None if key is None else _text(key))

    async def _dispatch(self, stream: str, entry: str, fields: dict[bytes, bytes] | None,
                        attempt: int) -> None:
        message = self._message(stream, fields)
        if message is None:  # trimmed away meanwhile, or not written by amoeba
            log.warning("events: dropping entry %s of %s for group %r: no id/payload fields "
                        "(trimmed by MAXLEN, or not written by amoeba)", entry, stream, self.group)
            await self.ack(stream, entry)
            return
        await self.slots.acquire()
        self.held.add((stream, entry))
        delivery = _Delivery(self, stream, entry, message, attempt)
        task = asyncio.create_task(self._run(delivery))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, delivery: _Delivery) -> None:
        try:
            await self.handler(delivery)
        except Exception:  # the consumer acks or nacks; this is a bug in it
            log.exception("event handler failed without nacking %s", delivery.message.name)
            if not delivery.settled:
                await delivery.nack(1.0)
        finally:
            self.slots.release()
            if not delivery.settled:
                log.warning("event handler returned without ack or nack for %s (entry %s); it "
                            "will be redelivered after claim_idle", delivery.message.name,
                            delivery._entry)
                self.held.discard((delivery._stream, delivery._entry))

    async def ack(self, stream: str, entry: str) -> None:
        """XACK ``entry``, and return once Redis answered.  The acks are sent by
        one task (``_acks``): those made while an XACK is under way (a batch of
        deliveries settled together) leave in the next one."""
        self.held.discard((stream, entry))
        if self.closed:
            return
        if not self.acking:
            self.ack_due.set()
        entries, sent = self.acking.setdefault(
            stream, ([], asyncio.get_running_loop().create_future()))
        entries.append(entry)
        await asyncio.shield(sent)

    async def _acks(self) -> None:
        """Sends the acks gathered by ``ack``, one XACK per stream at a time."""
        while True:
            await self.ack_due.wait()
            self.ack_due.clear()
            acking, self.acking = self.acking, {}
            try:
                for stream, (entries, _sent) in acking.items():
                    try:
                        await self.redis.xack(stream, self.group, *entries)
                    except TRANSIENT as exc:
                        # Not raised: the entries stay pending, another consumer (or
                        # this one) reclaims them after claim_idle, and the
                        # consumer's inbox drops the repeat.
                        log.warning("events: XACK of %d entries of %s (first %s) for group %r "
                                    "failed (%s); they will be redelivered", len(entries),
                                    stream, entries[0], self.group, exc)
            finally:
                for _entries, sent in acking.values():
                    if not sent.done():
                        sent.set_result(None)

    def retry_later(self, stream: str, entry: str, delay: float) -> None:
        if self.closed:
            return
        loop = asyncio.get_running_loop()
        old = self.timers.pop((stream, entry), None)
        if old is not None:
            old.cancel()
        self.timers[(stream, entry)] = loop.call_later(max(0.0, delay), self._due, stream, entry)

    def _due(self, stream: str, entry: str) -> None:
        self.timers.pop((stream, entry), None)
        task = asyncio.create_task(self._redeliver(stream, entry))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _redeliver(self, stream: str, entry: str) -> None:
        self.held.discard((stream, entry))
        try:
            # Without JUSTID, XCLAIM bumps the delivery counter and returns the entry.
            claimed = await self.redis.xclaim(stream, self.group, self.consumer, 0, [entry])
            if not claimed:
                return  # acked or trimmed meanwhile
            attempts = await self._attempts(stream, [entry])
        except (*TRANSIENT, ResponseError) as exc:
            log.warning("events: redelivering %s %s for group %r failed (%s); any consumer of "
                        "the group will reclaim it after claim_idle", stream, entry, self.group, exc)
            return
        for entry_id, fields in claimed:
            await self._dispatch(stream, _text(entry_id), fields, attempts.get(_text(entry_id), 2))

    async def _attempts(self, stream: str, entries: list[str]) -> dict[str, int]:
        """Redis's delivery counter of each entry (XAUTOCLAIM does not return it)."""
        pipe = self.redis.pipeline(transaction=False)
        for entry in entries:
            pipe.xpending_range(stream, self.group, entry, entry, 1)
        out: dict[str, int] = {}
        for rows in await pipe.execute():
            for row in rows:
                out[_text(row["message_id"])] = int(row["times_delivered"])
        return out

    # -- loops ---------------------------------------------------------------
    async def _read(self) -> None:
        backoff = _Backoff(f"events: reading {sorted(self.streams.values())} for group {self.group!r}")
        wanted = dict.fromkeys(self.streams, ">")
        me = asyncio.current_task()
        while True:
            if me is not None and me.cancelling():  # a cancel the client swallowed
                raise asyncio.CancelledError
            try:
                reply = await self.redis.xreadgroup(self.group, self.consumer, wanted,
                                                    count=READ_COUNT, block=BLOCK_MS)
            except ResponseError as exc:
                if not str(exc).startswith("NOGROUP"):
                    await backoff.failed(exc)
                    continue
                # The stream vanished (a Redis restart without persistence, a
                # FLUSHDB): make the groups again, then read on.
                await backoff.failed(exc)
                try:
                    await self.create_groups()
                except (*TRANSIENT, ResponseError) as again:
                    log.warning("events: re-creating group %r failed: %s", self.group, again)
                continue
            except TRANSIENT as exc:
                await backoff.failed(exc)
                continue
            backoff.ok()
            for stream, entries in reply or ():
                for entry, fields in entries:
                    await self._dispatch(_text(stream), _text(entry), fields, 1)

    async def _reclaim(self) -> None:
        backoff = _Backoff(f"events: reclaiming for group {self.group!r}")
        period = max(0.05, self.bus.claim_idle / 3)
        idle_ms = max(1, int(self.bus.claim_idle * 1000))
        while True:
            await asyncio.sleep(period)
            try:
                await self._heartbeat()
                for stream in self.streams:
                    await self._autoclaim(stream, idle_ms)
            except (*TRANSIENT, ResponseError) as exc:  # NOGROUP is the reader's to repair
                await backoff.failed(exc)
                continue
            backoff.ok()

    async def _heartbeat(self) -> None:
        """Reset the idle time of held entries, so no other consumer takes them.
        (XCLAIM with JUSTID leaves the delivery counter alone.)"""
        by_stream: dict[str, list[str]] = {}
        for stream, entry in self.held:
            by_stream.setdefault(stream, []).append(entry)
        for stream, entries in by_stream.items():
            await self.redis.xclaim(stream, self.group, self.consumer, 0, entries, justid=True)

    async def _autoclaim(self, stream: str, idle_ms: int) -> None:
        """Take over entries idle for claim_idle: their consumer died, or was closed."""
        cursor: bytes | str = "0-0"
        while True:
            # Redis 7: [next cursor, claimed entries, ids deleted from the stream].
            reply = await self.redis.xautoclaim(stream, self.group, self.consumer, idle_ms,
                                                start_id=cursor, count=READ_COUNT)
            cursor, claimed = reply[0], reply[1]
            fresh = [(_text(e), f) for e, f in claimed if (stream, _text(e)) not in self.held]
            if fresh:
                attempts = await self._attempts(stream, [e for e, _ in fresh])
                for entry, fields in fresh:
                    await self._dispatch(stream, entry, fields, attempts.get(entry, 2))
            if _text(cursor) == "0-0":
                return


class RedisBus(EventBus):
    """Events on Redis Streams.

    ``publish`` returns once ``XADD`` succeeded: the entry is in Redis's
    memory, and survives a Redis crash only as far as Redis's own persistence
    (``appendonly``/``appendfsync``, replicas) makes it.  Redis cannot
    deduplicate on publish; a repeated publish (the outbox relay retrying) is
    a second entry, dropped by the consumer's inbox.

    Streams are trimmed to about ``maxlen`` entries (``?maxlen=``, default
    100000; 0: never) with ``MAXLEN ~``, since Redis keeps acked entries
    until trimmed and an untrimmed stream grows forever.  Redis 7 cannot trim
    only what every group has acked: a group lagging by more than ``maxlen``
    loses its oldest entries (logged when met), so size it above the backlog
    you expect during the longest outage of a consumer.
    """

    durable = True

    def __init__(self, url: str, *, app: str):
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        try:
            self.claim_idle = float(query.pop("claim_idle", "30"))
            self.maxlen = int(query.pop("maxlen", "100000"))
            self.concurrency = int(query.pop("concurrency", "64"))
        except ValueError as exc:
            raise ValueError(f"resources.events: {url!r}: {exc}; fix: claim_idle is seconds (30), "
                             f"maxlen and concurrency whole numbers") from None
        if self.claim_idle <= 0 or self.maxlen < 0 or self.concurrency < 1:
            raise ValueError(f"resources.events: {url!r}: need claim_idle > 0, maxlen >= 0 and "
                             f"concurrency >= 1")
        redis_url = urlunsplit(parts._replace(query=urlencode(list(query.items()))))
        self._where = split_prefix(redis_url)[0].split("@")[-1]
        self.base = f"{split_prefix(redis_url)[1]}amoeba:{app}:events:"
        self.consumer = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        self.redis: Any = redis_client(redis_url, kind="events")  # redis.asyncio.Redis
        self._subs: list[_Subscription] = []

    def __repr__(self) -> str:
        return (f"<RedisBus {self._where} streams={self.base!r} consumer={self.consumer!r} "
                f"claim_idle={self.claim_idle} maxlen={self.maxlen}>")

    def stream(self, name: str) -> str:
        return self.base + name

    async def start(self) -> None:
        try:
            await self.redis.ping()
        except TRANSIENT as exc:
            raise ConnectionError(f"resources.events: Redis at {self._where} is not reachable ({exc}); "
                                  f"start it or fix the URL") from exc

    async def publish(self, message: Message) -> None:
        fields: dict[str, str | bytes] = {"id": message.id, "payload": message.payload}
        if message.key is not None:
            fields["key"] = message.key
        await self.redis.xadd(self.stream(message.name), fields, maxlen=self.maxlen or None,
                              approximate=True)

    async def publish_many(self, messages: list[Message]) -> None:
        # One round trip: the XADDs pipelined, in order (no MULTI: a failed
        # one does not undo the others, and the relay publishes them again).
        pipe = self.redis.pipeline(transaction=False)
        for message in messages:
            fields: dict[str, str | bytes] = {"id": message.id, "payload": message.payload}
            if message.key is not None:
                fields["key"] = message.key
            pipe.xadd(self.stream(message.name), fields, maxlen=self.maxlen or None,
                      approximate=True)
        await pipe.execute()

    async def subscribe(self, group: str, names: list[str], handler: Handler) -> None:
        sub = _Subscription(self, group, {self.stream(n): n for n in names}, handler)
        await sub.create_groups()
        self._subs.append(sub)
        sub.start()

    async def pending(self, group: str) -> int:
        streams = {s for sub in self._subs if sub.group == group for s in sub.streams}
        if not streams:  # a group subscribed elsewhere: look at every stream of this app
            streams = {_text(k) async for k in self.redis.scan_iter(
                match=_glob_escape(self.base) + "*", _type="STREAM")}
        total = 0
        for stream in sorted(streams):
            try:
                groups = await self.redis.xinfo_groups(stream)
            except ResponseError:  # no such stream
                continue
            for info in groups:
                if _text(info["name"]) == group:
                    total += int(info["pending"]) + await self._lag(stream, info)
        return total

    async def _lag(self, stream: str, info: dict[str, Any]) -> int:
        """Entries not yet delivered to the group.  Redis 7 reports ``lag``
        unless entries were deleted in between; then count them."""
        if info.get("lag") is not None:
            return int(info["lag"])
        after = b"(" + bytes(info["last-delivered-id"])
        n = 0
        while True:
            rows = await self.redis.xrange(stream, min=after, count=1000)
            n += len(rows)
            if len(rows) < 1000:
                return n
            after = b"(" + bytes(rows[-1][0])

    async def aclose(self) -> None:
        for sub in self._subs:
            await sub.stop()
        self._subs.clear()
        await self.redis.aclose()
