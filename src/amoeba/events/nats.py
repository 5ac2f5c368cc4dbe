"""``NatsBus``: NATS JetStream, durable consumers with explicit acks.

Layout on the broker, per app (``app`` namespaces everything, so several apps
and test runs share one server)::

    stream    AMOEBA_<app>         subjects amoeba.<app>.>   file storage
    subject   amoeba.<app>.<name>  one per event name, e.g. amoeba.shop.shop.order_placed
    consumer  <group>__<name>       durable pull consumer, filter = that subject

Names are escaped so the mapping stays one-to-one: characters outside
``[A-Za-z0-9_-]`` become ``=XX`` (their UTF-8 bytes in hex), keeping an event
name's dots as subject separators (so ``amoeba.shop.shop.>`` selects a
service's events).  In a consumer name the dots are escaped too, and so is the
group's ``_``: the first ``__`` then always ends the group, which lets
``pending`` find a group's consumers by prefix.

Why one consumer per (group, name): the server this targets (2.9) allows one
filter subject per consumer, and a consumer on ``amoeba.<app>.>`` that acks
names it does not handle would let a replica subscribed to fewer names ack
another replica's messages away.  Replicas of a group (in any process) bind
to the same durable consumers, and the server hands each message to one of
their pull requests.

Retention is *limits* (with ``max_age``, default 7 days), not *interest* or
*work queue*: an interest stream drops a message published while no consumer
exists yet, losing events for a service deployed after its producer, and a
work queue allows only one consumer per subject, not one per group.  A new
group's consumer starts at the oldest message the stream still holds.

``publish`` returns after JetStream's ack (the message is stored); it sends
``Nats-Msg-Id`` = the message's ``dedupe`` (default: its id), so a retried
publish within the duplicate window (2 min) is stored once.  The id travels in
``Amoeba-Id``, the key in ``Amoeba-Key``.

A delivery not acked within ``ack_wait`` (default 30 s; ``?ack_wait=`` in the
URL, applied when the consumer is created) is sent again: that is how a crashed
or closed subscriber's in-flight messages reach another replica.  So a handler
must finish (ack or nack) well within ``ack_wait``.

Ordering: a consumer delivers one name's messages in publish order, but each
subscriber runs up to ``CONCURRENCY`` handlers at once and replicas pull in
parallel, so handlers may run and finish out of order; the ``key`` is carried
but no order is kept by it.

nats-py reconnects by itself (forever, once ``start`` has connected); the fetch
loops ride through a server restart by logging a warning and backing off, never
by exiting.  A pull request lost with the old connection is given up after
``FETCH_WAIT`` (5 s), so deliveries resume at most that long after a reconnect.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from amoeba.events.bus import Delivery, EventBus, Handler, Message

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js.client import JetStreamContext

__all__ = ["NatsBus", "delete_stream"]

log = logging.getLogger("amoeba.events")
CONCURRENCY = 64  # handlers in flight per consumer, in each subscriber
MAX_ACK_PENDING = 1024  # unacked messages per consumer, across all replicas
DUPLICATE_WINDOW = 120.0  # s: a publish retried within it is stored once
# An idle loop asks for one message with a lingering pull request (FETCH_WAIT), so a
# message is handled as soon as it arrives; while messages flow it asks for as many
# as it has room for, waiting at most BATCH_WAIT: nats-py's fetch(n) holds what it
# got until n arrive or the wait ends, so a long wait there would delay them.
FETCH_WAIT = 5.0
BATCH_WAIT = 0.05
PUBLISH_WAIT = 5.0  # s: publish_many's wait for JetStream's acks, as nats-py's request
BACKOFF = (0.1, 5.0)  # s: first and longest pause after a fetch error
OPTIONS = {"ack_wait": 30.0, "max_age": 7 * 24 * 3600.0}  # URL query parameters, seconds

_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def _escape(text: str, safe: frozenset[str] = _SAFE) -> str:
    return "".join(c if c in safe else "".join(f"={b:02X}" for b in c.encode()) for c in text)


def stream_name(app: str) -> str:
    return f"AMOEBA_{_escape(app)}"


def subject(app: str, name: str) -> str:
    parts = name.split(".")
    if not all(parts):
        raise ValueError(f"event name {name!r} has an empty dot-separated part; "
                         f"fix: name events like 'shop.order_placed'")
    return f"amoeba.{_escape(app)}." + ".".join(_escape(p) for p in parts)


def consumer_name(group: str, name: str) -> str:
    return f"{_consumer_prefix(group)}{_escape(name)}"


def _consumer_prefix(group: str) -> str:
    return _escape(group, _SAFE - {"_"}) + "__"


def _import_nats() -> Any:
    try:
        import nats
    except ImportError as exc:
        raise ImportError("resources.events is a nats:// URL but nats-py is not installed; "
                          "fix: pip install 'amoeba[nats]'") from exc
    return nats


def _parse(url: str) -> tuple[str, dict[str, float]]:
    """The server URL without the query, and the options from the query."""
    parts = urlsplit(url)
    options = dict(OPTIONS)
    for key, value in parse_qsl(parts.query):
        if key not in options:
            raise ValueError(f"resources.events: unknown option {key!r} in {url!r}; "
                             f"known: {', '.join(sorted(OPTIONS))} (seconds)")
        try:
            options[key] = float(value)
        except ValueError:
            raise ValueError(f"resources.events: {key}={value!r} in {url!r} is not a number "
                             f"of seconds") from None
        if options[key] <= 0:
            raise ValueError(f"resources.events: {key} in {url!r} must be > 0 seconds")
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")), options


async def _connect(server: str, app: str) -> Client:
    """A connection that reconnects forever, logging why it is down."""
    nats = _import_nats()
    made: list[Client] = []

    def closing() -> bool:  # our own close() also reports a disconnection
        return bool(made) and made[0].is_closed

    async def on_error(exc: Exception) -> None:
        log.warning("NATS %s: %s", server, exc)

    async def on_disconnected() -> None:
        if not closing():
            log.warning("NATS %s: disconnected; reconnecting", server)

    async def on_reconnected() -> None:
        log.warning("NATS %s: reconnected", server)

    # nats-py applies max_reconnect_attempts to the first connect too: -1 would make
    # start() wait forever for a server that is not there.  So a few tries first
    # (start raises, as the ABC asks), then reconnect forever once connected.
    try:
        client: Client = await nats.connect(
            server, name=f"amoeba-{app}", max_reconnect_attempts=2, reconnect_time_wait=1,
            connect_timeout=2, error_cb=on_error, disconnected_cb=on_disconnected,
            reconnected_cb=on_reconnected)
    except Exception as exc:
        raise ConnectionError(f"resources.events: no NATS server at {server} ({exc!r}); fix: "
                              f"start one with JetStream on (nats-server -js) or correct the URL"
                              ) from exc
    client.options["max_reconnect_attempts"] = -1
    made.append(client)
    return client


class _Delivery(Delivery):
    __slots__ = ("_msg", "attempt", "message")

    def __init__(self, msg: Msg, name: str):
        headers = msg.headers or {}
        self._msg = msg
        self.message = Message(name=name, id=headers.get("Amoeba-Id", ""), payload=msg.data,
                               key=headers.get("Amoeba-Key"))
        self.attempt = msg.metadata.num_delivered

    async def ack(self) -> None:
        await self._msg.ack()

    async def nack(self, delay: float) -> None:
        await self._msg.nak(delay=delay)


class _Slots:
    """At most ``size`` handlers in flight for one fetch loop; it fetches only what fits."""

    def __init__(self, size: int):
        self.free = size
        self._changed = asyncio.Condition()

    async def wait(self) -> int:
        async with self._changed:
            await self._changed.wait_for(lambda: self.free > 0)
            return self.free

    async def release(self) -> None:
        async with self._changed:
            self.free += 1
            self._changed.notify_all()


class _Acks:
    """JetStream's answers to ``publish_many``'s messages, on one subscription
    of a private inbox: ``<inbox>.<n>`` answers the message sent with that
    reply subject."""

    def __init__(self, nc: Client):
        self.nc = nc
        self.prefix = nc.new_inbox()
        self.waiting: dict[str, asyncio.Future[None]] = {}
        self.seq = 0

    async def start(self) -> None:
        await self.nc.subscribe(self.prefix + ".*", cb=self._answered)

    def expect(self) -> tuple[str, asyncio.Future[None]]:
        self.seq += 1
        token = str(self.seq)
        answered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting[token] = answered
        return f"{self.prefix}.{token}", answered

    def forget(self, futures: list[asyncio.Future[None]]) -> None:
        """A batch is over: stop waiting for what did not answer."""
        stale = False
        for answered in futures:
            if not answered.done():
                answered.cancel()
                stale = True
            elif not answered.cancelled():
                answered.exception()  # seen: the batch raised its first error
        if stale:
            self.waiting = {t: f for t, f in self.waiting.items() if not f.done()}

    async def _answered(self, msg: Msg) -> None:
        answered = self.waiting.pop(msg.subject.rpartition(".")[2], None)
        if answered is None or answered.done():
            return  # given up on (timed out), or a repeat
        data = msg.data
        if data.startswith(b'{"stream"') and b'"error"' not in data:
            answered.set_result(None)
            return
        if not data:  # a status: 503, no stream takes the subject
            status = (msg.headers or {}).get("Status", "no answer")
            answered.set_exception(ConnectionError(
                f"NATS: no JetStream stream took {msg.subject} (status {status}); is the "
                f"stream there?"))
            return
        try:
            error = json.loads(data).get("error", data)
        except ValueError:
            error = data
        answered.set_exception(ConnectionError(f"NATS JetStream refused a publish: {error}"))


class NatsBus(EventBus):
    durable = True

    def __init__(self, url: str, *, app: str):
        _import_nats()  # fail at configuration time, with the install hint
        self._server, options = _parse(url)
        self.app = app
        self.ack_wait = options["ack_wait"]
        self.max_age = options["max_age"]
        self.stream = stream_name(app)
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # fetch loops and handlers
        self._acks: _Acks | None = None  # publish_many's answers, from the first one on

    def __repr__(self) -> str:
        return (f"<NatsBus {self._server} stream={self.stream} ack_wait={self.ack_wait:g}s "
                f"{'connected' if self._nc is not None else 'closed'}>")

    async def start(self) -> None:
        self._nc = await _connect(self._server, self.app)
        self._js = self._nc.jetstream()
        try:
            await self._ensure_stream(self._js)
        except BaseException:
            await self.aclose()
            raise

    async def _ensure_stream(self, js: JetStreamContext) -> None:
        import nats.errors
        from nats.js.api import RetentionPolicy, StorageType, StreamConfig
        from nats.js.errors import (
            BadRequestError,
            NoStreamResponseError,
            NotFoundError,
            ServiceUnavailableError,
        )

        config = StreamConfig(
            name=self.stream, subjects=[f"amoeba.{_escape(self.app)}.>"],
            retention=RetentionPolicy.LIMITS, storage=StorageType.FILE, max_age=self.max_age,
            duplicate_window=DUPLICATE_WINDOW)
        try:
            try:
                await js.stream_info(self.stream)
            except NotFoundError:
                try:
                    await js.add_stream(config)
                except BadRequestError:  # made meanwhile by another process: fine if it exists
                    await js.stream_info(self.stream)
        except (nats.errors.NoRespondersError, NoStreamResponseError, ServiceUnavailableError,
                nats.errors.TimeoutError) as exc:
            raise ConnectionError(f"resources.events: the NATS server at {self._server} does not "
                                  f"answer JetStream requests ({exc!r}); fix: run it with "
                                  f"JetStream on (nats-server -js)") from exc

    def _jetstream(self) -> JetStreamContext:
        if self._js is None:
            raise RuntimeError(f"{self!r}: call start() first (or it was closed)")
        return self._js

    async def publish(self, message: Message) -> None:
        headers = {"Nats-Msg-Id": message.dedupe or message.id, "Amoeba-Id": message.id}
        if message.key is not None:
            headers["Amoeba-Key"] = message.key
        await self._jetstream().publish(subject(self.app, message.name), message.payload,
                                        stream=self.stream, headers=headers)

    async def publish_many(self, messages: list[Message]) -> None:
        """All at once, in order on the one connection, each with a reply subject
        of this bus's own acks subscription; return once JetStream acked every
        one (raise if one was refused or none came within ``PUBLISH_WAIT``:
        the relay publishes the batch again, ``Nats-Msg-Id`` drops repeats).
        One subscription and a future per message, instead of nats-py's
        request (a timer, a task and a JSON parse per message)."""
        if len(messages) == 1:
            await self.publish(messages[0])
            return
        nc = self._nc
        if nc is None:
            raise RuntimeError(f"{self!r}: call start() first (or it was closed)")
        if self._acks is None:
            self._acks = _Acks(nc)
            await self._acks.start()
        acks = self._acks
        waiting = []
        try:
            for message in messages:
                headers = {"Nats-Msg-Id": message.dedupe or message.id,
                           "Amoeba-Id": message.id, "Nats-Expected-Stream": self.stream}
                if message.key is not None:
                    headers["Amoeba-Key"] = message.key
                reply, answered = acks.expect()
                waiting.append(answered)
                await nc.publish(subject(self.app, message.name), message.payload,
                                 reply=reply, headers=headers)
            async with asyncio.timeout(PUBLISH_WAIT):
                for answered in waiting:
                    await answered
        finally:
            acks.forget(waiting)

    async def subscribe(self, group: str, names: list[str], handler: Handler) -> None:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        js = self._jetstream()
        for name in names:
            durable = consumer_name(group, name)
            config = ConsumerConfig(
                durable_name=durable, ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL, ack_wait=self.ack_wait,
                max_ack_pending=MAX_ACK_PENDING, filter_subject=subject(self.app, name))
            sub = await js.pull_subscribe(subject(self.app, name), durable=durable,
                                          stream=self.stream, config=config)
            self._spawn(self._fetch(sub, name, handler))

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _fetch(self, sub: JetStreamContext.PullSubscription, name: str, handler: Handler) -> None:
        slots = _Slots(CONCURRENCY)
        pause, idle = BACKOFF[0], True
        me = asyncio.current_task()
        while True:
            if me is not None and me.cancelling():
                # nats-py's request path can swallow a cancel (and answer with a
                # TimeoutError): without this check the loop would outlive aclose().
                raise asyncio.CancelledError
            free = await slots.wait()
            try:
                if idle:
                    msgs = await sub.fetch(batch=1, timeout=FETCH_WAIT)
                else:
                    msgs = await sub.fetch(batch=free, timeout=BATCH_WAIT)
            except TimeoutError:
                # Nothing to fetch.  nats-py raises its own TimeoutError (a subclass)
                # or, from some paths of fetch(), the built-in one: both mean empty.
                idle = True
                continue
            except Exception as exc:  # connection lost, server restarting, ...: keep going
                log.warning("NATS fetch of %s for %s failed (%s: %s); retrying in %.1fs",
                            name, self.stream, type(exc).__name__, exc, pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, BACKOFF[1])
                continue
            pause, idle = BACKOFF[0], False
            for msg in msgs:
                slots.free -= 1
                self._spawn(self._handle(_Delivery(msg, name), handler, slots))

    async def _handle(self, delivery: _Delivery, handler: Handler, slots: _Slots) -> None:
        try:
            await handler(delivery)
        except Exception:  # the consumer acks or nacks; this is a bug in it
            log.exception("event handler failed without nacking %s", delivery.message.name)
            try:
                await delivery.nack(1.0)
            except Exception:
                log.warning("NATS nack of %s failed; it returns after ack_wait",
                            delivery.message.name)
        finally:
            await slots.release()

    async def pending(self, group: str) -> int:
        prefix = _consumer_prefix(group)
        js = self._jetstream()
        total, offset = 0, 0
        while True:  # the server lists 256 consumers per page
            page = await js.consumers_info(self.stream, offset=offset)
            for info in page:
                if (info.name or "").startswith(prefix):
                    total += (info.num_pending or 0) + (info.num_ack_pending or 0)
            if not page:
                return total
            offset += len(page)

    async def aclose(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        nc, self._nc, self._js, self._acks = self._nc, None, None, None
        if nc is None:
            return
        # Not drain(): it waits for the pull subscriptions' queues, which nobody
        # reads any more.  Messages left there are redelivered after ack_wait.
        try:
            await nc.flush(timeout=2)  # the acks handlers sent
        except Exception as exc:
            log.warning("NATS %s: could not flush acks before closing (%s); those "
                        "messages will be redelivered", self._server, exc)
        await nc.close()


async def delete_stream(url: str, *, app: str) -> bool:
    """Delete ``app``'s stream and its consumers (tests, or retiring an app).
    False if there was none."""
    from nats.js.errors import NotFoundError

    server, _ = _parse(url)
    nc = await _connect(server, app)
    try:
        return await nc.jetstream().delete_stream(stream_name(app))
    except NotFoundError:
        return False
    finally:
        await nc.close()
