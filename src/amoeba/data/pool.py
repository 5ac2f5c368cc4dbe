"""``PoolUse``: a database resource's connection pool at one instant, what
``/metrics`` reports for every ``Database`` and ``SQLite`` resource."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["PoolUse"]


class PoolUse(NamedTuple):
    size: int  # connections it may hold (pool_size + max_overflow)
    in_use: int
    idle: int
    waiting: int  # callers waiting for a connection now
    timeouts: int  # waits that gave up, since the process started
