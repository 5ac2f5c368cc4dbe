"""Two services: ``Store`` (native routes) and ``Front``, which mounts the apps."""

from __future__ import annotations

import msgspec

from amoeba import Mount, Service, get, post
from mountapp import events


class Count(msgspec.Struct):
    total: int
    where: str


class Store(Service):
    async def start(self) -> None:
        self.total = 0
        events.record(f"{self.name} start")

    async def stop(self) -> None:
        events.record(f"{self.name} stop")

    @get("/native/count")
    async def count(self) -> Count:
        return Count(self.total, self.runtime.process)

    @post("/native/add")
    async def add(self, n: int) -> Count:
        self.total += n
        return Count(self.total, self.runtime.process)


class Front(Service):
    store: Store
    mounts = (Mount("mountapp.raw:app", "/raw"), Mount("mountapp.fast:app", "/fast", "/other"))

    async def start(self) -> None:
        events.record(f"{self.name} start")

    async def stop(self) -> None:
        events.record(f"{self.name} stop")
