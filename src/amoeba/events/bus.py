"""The broker interface: small enough that a backend is one module.

A backend moves opaque messages (an event's name, id, optional ordering key
and JSON payload) from publishers to *groups*: each group (a consuming
service) gets every message once per group, handed to one of the group's
subscribers (its replicas).  Delivery is at-least-once: a message counts as
handled only when the subscriber acks it; a nack, a crash or a timeout sends
it again, later.  Retries, dead letters and deduplication are the consumer
side of amoeba (``runtime.py``, ``inbox.py``), not the backend's.

Backends, chosen once from the topology's ``resources.events`` URL through
the table in ``amoeba/drivers.py`` (which also names the library each needs)::

    (none) / memory://   MemoryBus   in-process queues (one process only)
    nats://host:4222     NatsBus     NATS JetStream: durable consumers, explicit acks
    redis://host:6379    RedisBus    Redis Streams: consumer groups, XACK, XAUTOCLAIM
    kafka://host:9092    KafkaBus    Kafka: a consumer group per service, manual commits,
                                     a retry topic per group

A RabbitMQ backend is one more module implementing ``EventBus`` (and one
more row of that table): ``publish`` that returns once the broker holds the
message, ``subscribe`` with a consumer group and manual acks, and redelivery
with a delay.
"""

from __future__ import annotations

import asyncio
import re
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from amoeba.drivers import load_backend, require

__all__ = ["Delivery", "EventBus", "Handler", "Message", "open_bus"]


@dataclass(frozen=True)
class Message:
    name: str  # the event's stable name, e.g. "shop.order_placed"
    id: str  # unique per event; brokers that can deduplicate on publish use it
    payload: bytes  # the event as JSON
    key: str | None = None  # ordering key, where the backend keeps an order
    # What a broker deduplicates publishes on (default: ``id``); a replay of a
    # dead letter sends the same event under a new one.
    dedupe: str | None = None


class Delivery(ABC):
    """One message handed to one subscriber; it must ``ack`` or ``nack`` it."""

    message: Message
    attempt: int  # 1 on first delivery

    @abstractmethod
    async def ack(self) -> None:
        """Handled: never deliver it to this group again."""

    @abstractmethod
    async def nack(self, delay: float) -> None:
        """Not handled: deliver it again (to any subscriber of the group) after ``delay`` s."""


Handler = Callable[[Delivery], Awaitable[None]]
PUBLISH_WINDOW = 16  # publishes in flight at once in the default publish_many


class EventBus(ABC):
    #: Does ``publish`` return only once the message survives a crash of this process?
    durable: bool = True

    @abstractmethod
    async def start(self) -> None:
        """Connect; create streams/consumers as needed.  Raise when unreachable."""

    @abstractmethod
    async def publish(self, message: Message) -> None:
        """Return once the broker holds ``message`` (raise if it could not)."""

    async def publish_many(self, messages: list[Message]) -> None:
        """Return once the broker holds every one of ``messages`` (the outbox relay's
        batch); raise if any could not be published (the others may have been).
        Messages of one key are published in the list's order.  This default
        publishes a few at a time; a backend that can pipeline does better."""
        for i in range(0, len(messages), PUBLISH_WINDOW):
            await asyncio.gather(*(self.publish(m) for m in messages[i:i + PUBLISH_WINDOW]))

    @abstractmethod
    async def subscribe(self, group: str, names: list[str], handler: Handler) -> None:
        """Start delivering messages named in ``names`` to ``handler``, as a member
        of ``group``.  The handler acks or nacks each delivery itself."""

    @abstractmethod
    async def pending(self, group: str) -> int:
        """Messages published but not yet acked by ``group`` (consumer lag)."""

    @abstractmethod
    async def aclose(self) -> None:
        """Stop delivering; in-flight deliveries not acked will be redelivered."""


def _namespace(url: str | None) -> tuple[str | None, str]:
    """``nats://h:4222?namespace=staging`` -> (the URL without it, ``"staging"``)."""
    if not url or "namespace=" not in url:
        return url, ""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    ns = "".join(v for k, v in query if k == "namespace")
    if not re.fullmatch(r"[A-Za-z0-9_-]*", ns):
        raise ValueError(f"resources.events: namespace={ns!r}: use letters, digits, '_' and '-'")
    rest = urlencode([(k, v) for k, v in query if k != "namespace"])
    return urlunsplit(parts._replace(query=rest)), ns


def open_bus(url: str | None, *, app: str) -> EventBus:
    """The backend for ``url`` (``None``: in-process).  ``app`` namespaces
    streams and subjects, so two apps can share one broker; ``?namespace=``
    in the URL adds to it, so two deployments of one app can too."""
    url, namespace = _namespace(url)
    if namespace:
        app = f"{app}_{namespace}"
    if not url:
        from amoeba.events.memory import MemoryBus

        return MemoryBus()
    driver = require("events", url)  # UnsupportedURL / MissingDriver: one line with the fix
    assert driver is not None
    backend = load_backend(driver)
    made: EventBus = backend() if driver.scheme == "memory" else backend(url, app=app)
    return made
