"""``Event``: a typed record with a stable name and a unique id, and
``on_event``, which marks a service method as the handler of one event type.

::

    class OrderPlaced(Event):
        event_name = "shop.order_placed"     # stable across renames of the class
        order_id: int
        user_id: str

    class Orders(Service):
        publishes = (OrderPlaced,)            # what this service may publish

        async def place(...):
            async with self.db.transaction():
                ...                             # the order row, and:
                await self.publish(OrderPlaced(order_id=..., user_id=...))

    class Notifications(Service):
        @on_event(OrderPlaced)
        async def order_placed(self, event: OrderPlaced) -> None: ...
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from random import getrandbits as _bits
from typing import Any, ClassVar, TypeVar

import msgspec

from amoeba.service import snake_name

__all__ = ["ON_EVENT_ATTR", "Event", "event_name", "on_event"]

ON_EVENT_ATTR = "__amoeba_on_event__"
F = TypeVar("F", bound=Callable[..., Any])


def _new_id() -> str:
    # 128 bits from the PRNG (seeded from the OS, and again in a forked
    # child), not a getrandom() syscall per event as uuid4(): ids need to be
    # unique, not secret.  Formatted as uuid4().hex is: 32 hex digits, the
    # version and variant bits set.
    return f"{_bits(128) & _CLEAR | _UUID4:032x}"


_CLEAR = ~((0xF << 76) | (0x3 << 62))
_UUID4 = (0x4 << 76) | (0x2 << 62)


def _now() -> datetime:
    return datetime.now(UTC)


class Event(msgspec.Struct, kw_only=True):
    """Base of every event: ``id`` (unique, the key of deduplication) and
    ``occurred_at`` are filled in; subclasses add their own fields."""

    #: The name the event travels under.  Default: the class name in snake_case,
    #: acronyms kept whole, as for service names (``HTTPHit`` -> ``http_hit``).
    event_name: ClassVar[str]

    id: str = msgspec.field(default_factory=_new_id)
    occurred_at: datetime = msgspec.field(default_factory=_now)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "event_name" not in cls.__dict__:
            cls.event_name = snake_name(cls.__name__)  # the rule service names follow
        if not re.fullmatch(r"[A-Za-z0-9_.\-]{1,200}", cls.event_name):
            raise TypeError(f"{cls.__qualname__}.event_name {cls.event_name!r}: use letters, "
                            f"digits, '_', '.', '-' only")


def event_name(cls: type[Event]) -> str:
    return cls.event_name


def on_event(event: type[Event]) -> Callable[[F], F]:
    """Make the method the handler of ``event`` for its service (at least once;
    a redelivered event is skipped when the service has a ``Database``)."""
    if not (isinstance(event, type) and issubclass(event, Event)):
        raise TypeError(f"@on_event({event!r}): pass an Event subclass")

    def decorate(func: F) -> F:
        setattr(func, ON_EVENT_ATTR, event)
        return func

    return decorate
