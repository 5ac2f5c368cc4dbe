"""A test app that exercises every wire type, error path and call feature."""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated

import msgspec

from amoeba import App, Conflict, NotFound, Service, context, delete, get, idempotent, patch, post, put


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Point(msgspec.Struct):
    x: int
    y: int
    tags: list[str] = []


@dataclass
class Box:
    name: str
    size: float


class OutOfCoffee(Conflict):
    """The machine is empty."""


class CallInfo(msgspec.Struct):
    trace_id: str
    remaining: float | None


class Store(Service):
    """Holds values; every method is a different wire type."""

    def __init__(self) -> None:
        self.items: list[Point] = []
        self.calls = 0

    async def echo_int(self, v: int) -> int:
        return v

    async def echo_none(self) -> None:
        return None

    async def echo_list(self, v: list[int]) -> list[int]:
        return v

    async def echo_dict(self, v: dict[str, float]) -> dict[str, float]:
        return v

    async def echo_tuple(self, v: tuple[int, str]) -> tuple[int, str]:
        return v

    async def echo_optional(self, v: int | None = None) -> int | None:
        return v

    async def echo_enum(self, v: Color) -> Color:
        return v

    async def echo_when(self, at: dt.datetime, day: dt.date) -> tuple[dt.datetime, dt.date]:
        return at, day

    async def echo_ids(self, u: uuid.UUID, d: Decimal) -> tuple[uuid.UUID, Decimal]:
        return u, d

    async def echo_struct(self, p: Point) -> Point:
        return p

    async def echo_box(self, b: Box) -> Box:
        return b

    async def keep(self, p: Point) -> int:
        # Stores the object it was given: in-process the caller's object, once
        # split a copy.  Strict mode must make the monolith behave like the latter.
        self.items.append(p)
        return len(self.items)

    async def mutate_first(self) -> None:
        self.items[0].tags.append("changed-by-store")

    async def fail(self) -> int:
        raise OutOfCoffee("no coffee left")

    async def crash(self) -> int:
        raise RuntimeError("secret internal detail")

    async def slow(self, seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds

    @post("/store/slow")
    async def slow_http(self, seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds

    @idempotent
    async def slow_lookup(self, seconds: float) -> int:
        self.calls += 1
        await asyncio.sleep(seconds)
        return self.calls

    @idempotent
    async def counted(self) -> int:
        self.calls += 1
        return self.calls

    async def info(self) -> CallInfo:
        dl = context.deadline.get()
        left = None if dl is None else dl - asyncio.get_running_loop().time()
        return CallInfo(trace_id=context.trace_id(), remaining=left)

    @get("/store/items/{index}")
    async def item(self, index: int, scale: int = 1) -> Point:
        p = self.items[index] if index < len(self.items) else Point(0, 0)
        return Point(p.x * scale, p.y * scale, p.tags)

    @post("/store/items", status=201)
    async def add(self, x: Annotated[int, msgspec.Meta(ge=0)], y: int, tags: list[str] = []) -> Point:  # noqa: B006
        p = Point(x, y, list(tags))
        self.items.append(p)
        return p


    @put("/store/items/{index}")
    async def replace(self, index: int, x: int, y: int) -> Point:
        self._at(index)
        self.items[index] = Point(x, y)
        return self.items[index]

    @patch("/store/items/{index}")
    async def move(self, index: int, x: int | None = None, y: int | None = None) -> Point:
        p = self._at(index)
        p.x = p.x if x is None else x
        p.y = p.y if y is None else y
        return p

    @delete("/store/items/{index}")
    async def remove(self, index: int, reason: str = "") -> int:
        self._at(index)
        del self.items[index]
        return len(self.items)

    def _at(self, index: int) -> Point:
        if not 0 <= index < len(self.items):
            raise NotFound(f"no item {index}")
        return self.items[index]


class Front(Service):
    store: Store

    async def share(self) -> list[str]:
        """Gives store an object, lets store mutate its copy, returns ours."""
        mine = Point(1, 2, ["original"])
        await self.store.keep(mine)
        await self.store.mutate_first()
        return mine.tags

    async def info_via(self) -> tuple[CallInfo, CallInfo]:
        """Our own view of the call context, and the store's."""
        dl = context.deadline.get()
        left = None if dl is None else dl - asyncio.get_running_loop().time()
        return CallInfo(context.trace_id(), left), await self.store.info()

    @post("/front/fail")
    async def front_fail(self) -> int:
        return await self.store.fail()

    @post("/front/crash")
    async def front_crash(self) -> int:
        return await self.store.crash()

    @get("/front/info")
    async def front_info(self) -> list[CallInfo]:
        mine, theirs = await self.info_via()
        return [mine, theirs]


app = App("demo", services=[Store, Front])
