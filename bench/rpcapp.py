"""The app bench/calls.py measures: a caller and an echo service."""

from __future__ import annotations

from amoeba import App, Service


class Echo(Service):
    async def ping(self, v: int) -> int:
        return v


class Caller(Service):
    echo: Echo

    async def loop(self, n: int) -> int:
        total = 0
        for i in range(n):
            total += await self.echo.ping(i)
        return total


app = App("calls", services=[Echo, Caller])
