"""Crashes the event fault tests inject into a running process of ``eventapp``.

Each is switched on by an environment variable that the test's topology sets
for one process only (``processes.<name>.env``), and fires once: the process
that fires it first creates the marker file named by ``EVENTAPP_MARKER`` and
SIGKILLs itself, and the replacement the supervisor starts (same environment)
finds the marker and runs normally.  Nothing here is imported by amoeba or
by the example apps.

``EVENTAPP_KILL_BEFORE_ACK=1``
    a consumer dies after its delivery's transaction (handler rows + inbox
    id) committed, before ``delivery.ack()``: the window the inbox covers.
``EVENTAPP_KILL_AFTER_PUBLISHES=K``
    a relay dies once the broker confirmed K publishes (or more: the relay's
    ``publish_many`` is confirmed as a whole), in the middle of a batch whose
    outbox rows it has not deleted yet.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from amoeba.events.bus import Delivery, Message
from amoeba.events.runtime import Events

#: Publishes this process's bus got confirmed (with or without a fault armed).
published = 0


def _fire_once() -> None:
    """SIGKILL this process, unless an earlier process already fired."""
    marker = os.environ["EVENTAPP_MARKER"]
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    os.kill(os.getpid(), signal.SIGKILL)


class _KillOnAck(Delivery):
    def __init__(self, inner: Delivery):
        self.inner = inner
        self.message = inner.message
        self.attempt = inner.attempt

    async def ack(self) -> None:
        _fire_once()
        await self.inner.ack()

    async def nack(self, delay: float) -> None:
        await self.inner.nack(delay)


def install() -> None:
    kill_before_ack = os.environ.get("EVENTAPP_KILL_BEFORE_ACK") == "1"
    kill_after = int(os.environ.get("EVENTAPP_KILL_AFTER_PUBLISHES") or 0)
    original_init = Events.__init__
    original_consumer = Events._consumer

    def init(self: Events, bus: Any, settings: Any) -> None:
        original_init(self, bus, settings)
        publish, publish_many = bus.publish, bus.publish_many
        in_batch = [False]  # a backend's publish_many may call publish: count once

        def confirmed(n: int) -> None:
            global published
            published += n
            if kill_after and published >= kill_after:
                _fire_once()

        async def counted(message: Message) -> None:
            await publish(message)
            if not in_batch[0]:
                confirmed(1)

        async def counted_many(messages: list[Message]) -> None:
            in_batch[0] = True
            try:
                await publish_many(messages)
            finally:
                in_batch[0] = False
            confirmed(len(messages))

        bus.publish = counted
        bus.publish_many = counted_many

    def consumer(self: Events, *args: Any) -> Callable[[Delivery], Awaitable[None]]:
        handle = original_consumer(self, *args)
        if not kill_before_ack:
            return handle

        async def killing(delivery: Delivery) -> None:
            await handle(_KillOnAck(delivery))

        return killing

    Events.__init__ = init  # type: ignore[method-assign]
    Events._consumer = consumer  # type: ignore[method-assign]
