"""A writer that publishes ``Noted`` and a reader that keeps what it reads:
the events runtime's test app."""

from __future__ import annotations

import msgspec

from amoeba import App, Conflict, Database, Service, get, post
from amoeba.events import Event, on_event


class Noted(Event):
    event_name = "demo.noted"
    text: str


class Unlisted(Event):
    text: str


class Writer(Service):
    db: Database
    publishes = (Noted,)

    @post("/note")
    async def note(self, text: str, fail: bool = False, times: int = 1) -> None:
        async with self.db.transaction():
            event = Noted(text=text)
            for _ in range(times):  # the same event (same id) again: a redelivery
                await self.publish(event)
            if fail:
                raise Conflict("rolled back on purpose")

    @post("/notes")
    async def notes(self, texts: list[str]) -> None:
        """Several events in one transaction: they reach the reader together."""
        async with self.db.transaction():
            for text in texts:
                await self.publish(Noted(text=text))

    @post("/unlisted")
    async def unlisted(self) -> None:
        await self.publish(Unlisted(text="x"))


class Notes(msgspec.Struct):
    texts: list[str]


class Reader(Service):
    db: Database
    broken = False  # "bad ..." notes fail while this is set
    flaky: dict[str, int] = {}  # text -> failures left

    async def start(self) -> None:
        await self.db.execute("CREATE TABLE IF NOT EXISTS notes (event_id TEXT, text TEXT)")

    @on_event(Noted)
    async def noted(self, event: Noted) -> None:
        await self.db.execute("INSERT INTO notes (event_id, text) VALUES (:i, :t)",
                              {"i": event.id, "t": event.text})
        if event.text.startswith("bad") and type(self).broken:
            raise RuntimeError("cannot take bad notes now")
        left = self.flaky.get(event.text, 0)
        if left:
            self.flaky[event.text] = left - 1
            raise RuntimeError("flaky")

    @get("/notes")
    async def notes(self) -> Notes:
        rows = await self.db.fetchall("SELECT text FROM notes ORDER BY rowid")
        return Notes(texts=[r.text for r in rows])


app = App("evdemo", services=[Writer, Reader])
