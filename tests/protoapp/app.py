from __future__ import annotations

from typing import Protocol

from amoeba import App, Service, get


class Clock(Protocol):
    async def now(self) -> int: ...


class Greeter(Protocol):
    async def greet(self, name: str) -> str: ...


class Ticker(Service):
    async def start(self) -> None:
        self.n = 0

    async def now(self) -> int:
        self.n += 1
        return self.n

    async def reset(self) -> None:  # not in the protocol: a caller never sees it remotely
        self.n = 0


class English(Service):
    async def greet(self, name: str) -> str:
        return f"hello {name}"


class French(Service):
    async def greet(self, name: str) -> str:
        return f"bonjour {name}"


class Front(Service):
    clock: Clock
    greeter: Greeter

    @get("/hello/{name}")
    async def hello(self, name: str) -> dict[str, str | int | bool]:
        return {"text": await self.greeter.greet(name), "tick": await self.clock.now(),
                "clock": type(self.clock).__name__,
                "has_reset": hasattr(self.clock, "reset")}


app = App("protoapp", services=[Ticker, English, French, Front], bind={Greeter: French})
