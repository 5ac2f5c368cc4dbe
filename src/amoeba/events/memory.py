"""``MemoryBus``: in-process queues, the default of a one-process topology.

Each group has one queue; ``publish`` puts the message on the queue of every
group that subscribed to its name.  Nothing survives the process: durability
comes from the outbox, whose relay forgets an event only once every group
here has acked it (``settled``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

from amoeba.events.bus import Delivery, EventBus, Handler, Message

__all__ = ["MemoryBus"]

log = logging.getLogger("amoeba.events")
CONCURRENCY = 64  # deliveries in flight per group


class _Delivery(Delivery):
    __slots__ = ("_bus", "_group", "_settled", "attempt", "message")

    def __init__(self, bus: MemoryBus, group: str, message: Message, attempt: int,
                 settled: asyncio.Future[None] | None):
        self._bus = bus
        self._group = group
        self.message = message
        self.attempt = attempt
        self._settled = settled

    async def ack(self) -> None:
        self._bus._done(self._group, self.message.id)
        if self._settled is not None and not self._settled.done():
            self._settled.set_result(None)

    async def nack(self, delay: float) -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(delay, self._bus._enqueue, self._group, self.message, self.attempt + 1,
                        self._settled)


class MemoryBus(EventBus):
    durable = False

    def __init__(self) -> None:
        self._queues: dict[str, asyncio.Queue[_Delivery]] = {}
        self._names: dict[str, set[str]] = defaultdict(set)  # event name -> groups
        self._pending: dict[str, set[str]] = defaultdict(set)  # group -> message ids not acked
        self._workers: list[asyncio.Task[None]] = []

    def __repr__(self) -> str:
        return f"<MemoryBus groups={sorted(self._queues)}>"

    async def start(self) -> None:
        pass

    async def publish(self, message: Message) -> None:
        self.publish_settled(message)

    def publish_settled(self, message: Message) -> asyncio.Future[None]:
        """Publish; the future resolves once every subscribed group acked it."""
        loop = asyncio.get_running_loop()
        futures = []
        for group in sorted(self._names.get(message.name, ())):
            fut: asyncio.Future[None] = loop.create_future()
            futures.append(fut)
            self._enqueue(group, message, 1, fut)
        if not futures:
            done: asyncio.Future[None] = loop.create_future()
            done.set_result(None)
            return done
        if len(futures) == 1:  # one group: its ack settles it
            return futures[0]
        settled: asyncio.Future[None] = loop.create_future()
        remaining = [len(futures)]

        def one_done(_: asyncio.Future[None]) -> None:
            remaining[0] -= 1
            if remaining[0] == 0 and not settled.done():
                settled.set_result(None)

        for fut in futures:
            fut.add_done_callback(one_done)
        return settled

    def _enqueue(self, group: str, message: Message, attempt: int,
                 settled: asyncio.Future[None] | None) -> None:
        queue = self._queues.get(group)
        if queue is None:
            return  # closed meanwhile
        self._pending[group].add(message.id)
        queue.put_nowait(_Delivery(self, group, message, attempt, settled))

    def _done(self, group: str, message_id: str) -> None:
        self._pending[group].discard(message_id)

    async def subscribe(self, group: str, names: list[str], handler: Handler) -> None:
        queue = self._queues.setdefault(group, asyncio.Queue())
        for name in names:
            self._names[name].add(group)
        for _ in range(CONCURRENCY):
            self._workers.append(asyncio.create_task(self._work(queue, handler)))

    async def _work(self, queue: asyncio.Queue[_Delivery], handler: Handler) -> None:
        while True:
            delivery = await queue.get()
            try:
                await handler(delivery)
            except Exception:  # the consumer acks or nacks; this is a bug in it
                log.exception("event handler failed without nacking %s", delivery.message.name)
                await delivery.nack(1.0)

    async def pending(self, group: str) -> int:
        return len(self._pending.get(group, ()))

    async def aclose(self) -> None:
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers.clear()
        self._queues.clear()
