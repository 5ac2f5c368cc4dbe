"""The open connections of one listener: its cap, and the clock that closes
the ones that stall.

The table sweeps its connections (HTTP, or RPC once it said its magic) a few
times a second, calling ``tick(now)`` on each: a connection compares what it
is doing with what it was doing at the last sweep, and closes itself (or
answers 408) when it has been stuck in one state longer than that state
allows.  One sweep for all connections instead of a timer per request: the
hot path reads no clock and arms nothing; a timeout fires up to one sweep
interval (a quarter of the shortest timeout, at most 1 s) late.

Past ``max_connections`` a new connection makes room by shedding the oldest
*sheddable* one (idle keep-alive, or still sending a request head: what a
slow-loris holds), and is refused with a 503 when none is: accepted requests
in progress are never starved by newcomers, and the process never runs out
of file descriptors, which would stop it accepting anyone (nor can the
descriptors its database and logs need be taken by clients).
"""

from __future__ import annotations

import asyncio
import resource
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from amoeba.topology.model import Settings

__all__ = ["Connection", "ConnectionLimits", "ConnectionTable", "auto_max_connections"]

_RESERVED_FDS = 128  # for the database, logs, outgoing RPC: never handed to clients


def auto_max_connections(listeners: int) -> int:
    """``max_connections: auto``: the soft ``RLIMIT_NOFILE`` less a reserve,
    shared by the process's listeners."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(16, (min(soft, 1 << 20) - _RESERVED_FDS) // max(1, listeners))


@dataclass(frozen=True)
class ConnectionLimits:
    """What one listener allows a client; from :class:`~amoeba.topology.model.Settings`."""

    max_body: int = 1 << 20
    max_header_line: int = 8 << 10  # request line or one header line, bytes
    max_header_size: int = 64 << 10  # the whole head, bytes
    max_headers: int = 100
    header_timeout: float = 10.0  # from the first byte of a head (or connect) to its end
    body_timeout: float = 15.0  # longest pause in a body upload or in the client reading answers
    keepalive_timeout: float = 5.0  # idle between requests
    max_connections: int = 0  # 0: auto_max_connections()

    @classmethod
    def from_settings(cls, s: Settings, listeners: int = 1) -> ConnectionLimits:
        return cls(s.max_body, s.max_header_line, s.max_header_size, s.max_headers,
                   s.header_timeout, s.body_timeout, s.keepalive_timeout,
                   s.max_connections or auto_max_connections(listeners))

    def __repr__(self) -> str:
        return (f"<ConnectionLimits head {self.max_header_size}B/{self.max_headers} lines, "
                f"body {self.max_body}B, timeouts {self.header_timeout:g}/{self.body_timeout:g}/"
                f"{self.keepalive_timeout:g}s, {self.max_connections} connections>")


class Connection(Protocol):
    def tick(self, now: float) -> None:
        """A sweep: time out (answer 408, or close) if stuck for too long."""

    def sheddable(self) -> bool:
        """Nothing of value would be lost by closing it now."""

    def shed(self) -> None: ...


class ConnectionTable:
    def __init__(self, limits: ConnectionLimits):
        self.limits = limits
        # Insertion-ordered: the oldest connection is shed first.
        self.open: dict[Connection, None] = {}
        self.refused = 0
        self.shed = 0
        self._sweeper: asyncio.Task[None] | None = None
        self.every = max(0.05, min(1.0, limits.header_timeout / 4, limits.keepalive_timeout / 4,
                                   limits.body_timeout / 4))

    def __repr__(self) -> str:
        return f"<ConnectionTable {len(self.open)}/{self.limits.max_connections} open>"

    def admit(self, conn: Connection) -> bool:
        """Register ``conn``; False when the listener is full and nothing could be shed."""
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
        if len(self.open) >= self.limits.max_connections:
            victim = next((c for c in self.open if c.sheddable()), None)
            if victim is None:
                self.refused += 1
                return False
            self.shed += 1
            self.open.pop(victim, None)
            victim.shed()
        self.open[conn] = None
        return True

    def replace(self, old: Connection, new: Connection) -> None:
        """``old`` became ``new`` (an HTTP connection that turned out to be RPC)."""
        if self.open.pop(old, 0) is None:
            self.open[new] = None

    def discard(self, conn: Connection) -> None:
        self.open.pop(conn, None)

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.every)
            now = loop.time()
            for conn in list(self.open):
                conn.tick(now)

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

