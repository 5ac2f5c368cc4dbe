"""Which client library a resource URL needs, and which extra installs it: the one table.

Everything that turns a ``resources:`` URL into a connection asks this table
first: ``amoeba check`` and every process at start (``runtime/preflight.py``)
to report a missing library as one line with its fix, the database resource
to pick its asyncio driver, the event bus to pick its backend, the cache and
the rate limiter before importing redis-py::

    kind      URL scheme               library (import)     extra      events backend
    database  sqlite                   (standard library)   -
              postgresql, postgres     asyncpg              postgres
              mysql, mariadb           aiomysql             mysql
    cache     redis, rediss, unix      redis-py (redis)     redis
    events    memory                   -                    -          events/memory.py
              nats, tls                nats-py (nats)       nats       events/nats.py
              redis, rediss            redis-py (redis)     redis      events/redis.py
              kafka                    aiokafka             kafka      events/kafka.py

``pip install 'amoeba[distributed]'`` brings every library of the table.
A database URL naming its own driver (``postgresql+psycopg://``) is the
user's to install and is not looked up.  Nothing here imports a driver:
:func:`require` asks importlib whether it could.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = ["DRIVERS", "Driver", "MissingDriver", "UnsupportedURL", "driver_for", "extra_for_url",
           "load_backend", "require", "safe_url"]


@dataclass(frozen=True)
class Driver:
    kind: str  # the key under ``resources:``
    scheme: str
    module: str | None  # what is imported; None: nothing beyond amoeba
    package: str | None  # its name on PyPI, for messages
    extra: str | None  # ``pip install 'amoeba[extra]'`` installs it
    backend: str | None = None  # "module:Class" of amoeba serving this scheme (events)

    def __repr__(self) -> str:
        return f"<Driver {self.kind} {self.scheme}:// {self.module or '-'} [{self.extra or '-'}]>"

    def installed(self) -> bool:
        if self.module is None:
            return True
        try:
            return importlib.util.find_spec(self.module) is not None
        except (ImportError, ValueError):  # a parent package that fails, a broken __spec__
            return False

    def backend_present(self) -> bool:
        """Does this version of amoeba carry the backend module (None: none is needed)?"""
        if self.backend is None:
            return True
        return importlib.util.find_spec(self.backend.partition(":")[0]) is not None


def _entries(kind: str, schemes: tuple[str, ...], module: str | None, package: str | None,
             extra: str | None, backend: str | None = None) -> list[Driver]:
    return [Driver(kind, s, module, package, extra, backend) for s in schemes]


DRIVERS: dict[tuple[str, str], Driver] = {(d.kind, d.scheme): d for d in [
    *_entries("database", ("sqlite",), "sqlite3", None, None),
    *_entries("database", ("postgresql", "postgres"), "asyncpg", "asyncpg", "postgres"),
    *_entries("database", ("mysql", "mariadb"), "aiomysql", "aiomysql", "mysql"),
    *_entries("cache", ("redis", "rediss", "unix"), "redis", "redis", "redis"),
    *_entries("events", ("memory",), None, None, None, "amoeba.events.memory:MemoryBus"),
    *_entries("events", ("nats", "tls"), "nats", "nats-py", "nats", "amoeba.events.nats:NatsBus"),
    *_entries("events", ("redis", "rediss"), "redis", "redis", "redis",
              "amoeba.events.redis:RedisBus"),
    *_entries("events", ("kafka",), "aiokafka", "aiokafka", "kafka",
              "amoeba.events.kafka:KafkaBus"),
]}

# What a wrong URL of each kind is told to look like.
_EXAMPLES = {
    "database": "sqlite:///data/{service}.sqlite3, postgresql://user@host:5432/db or "
                "mysql://user@host:3306/db, or remove it for a SQLite file per service",
    "cache": "redis://127.0.0.1:6379/0, or remove it for an in-process cache",
    "events": "nats://127.0.0.1:4222, redis://127.0.0.1:6379/0, kafka://127.0.0.1:9092, "
              "or remove it for the in-process bus",
}


def safe_url(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


class UnsupportedURL(ValueError):
    """A resource URL whose scheme no backend serves."""

    def __init__(self, kind: str, url: str):
        self.kind, self.url = kind, url
        self.message = f"{safe_url(url)!r} is not a supported {kind} URL"
        self.fix = f"use {_EXAMPLES.get(kind, 'a URL amoeba supports')}"
        super().__init__(f"resources.{kind}: {self.message}; fix: {self.fix}")


class MissingDriver(ImportError):
    """A resource URL needs a library that is not installed.  ``str()`` is one
    line, the same at ``amoeba check`` and at process start."""

    def __init__(self, driver: Driver, url: str):
        self.driver, self.url = driver, url
        if not driver.installed():
            self.message = f"{safe_url(url)!r} needs {driver.package}, which is not installed"
            self.fix = (f"pip install 'amoeba[{driver.extra}]'" if driver.extra else
                        f"use a Python built with the {driver.module} module")
        else:
            self.message = (f"{safe_url(url)!r}: this version of amoeba has no "
                            f"{driver.scheme} {driver.kind} backend ({driver.backend})")
            self.fix = f"upgrade amoeba, or use {_EXAMPLES.get(driver.kind, 'another URL')}"
        super().__init__(f"resources.{driver.kind}: {self.message}; fix: {self.fix}")


def driver_for(kind: str, url: str) -> Driver | None:
    """The table's entry for ``url``; None for a kind the table does not know
    (a resource of the app's own), or a database URL naming its driver."""
    if kind not in _EXAMPLES:
        return None
    scheme = url.partition(":")[0].lower() if ":" in url else ""
    if kind == "database" and "+" in scheme:
        scheme = scheme.partition("+")[0]
        if ("database", scheme) not in DRIVERS:
            raise UnsupportedURL(kind, url)
        return None
    driver = DRIVERS.get((kind, scheme))
    if driver is None:
        raise UnsupportedURL(kind, url)
    return driver


def require(kind: str, url: str) -> Driver | None:
    """:func:`driver_for`, raising :class:`MissingDriver` when its library or
    its backend module is not installed."""
    driver = driver_for(kind, url)
    if driver is not None and not (driver.installed() and driver.backend_present()):
        raise MissingDriver(driver, url)
    return driver


def extra_for_url(url: str) -> str | None:
    """The extra that brings the library ``url`` needs, whatever the resource
    kind (``postgresql+asyncpg://`` -> ``postgres``); None when none does."""
    scheme = url.partition(":")[0].partition("+")[0].lower()
    return next((d.extra for d in DRIVERS.values() if d.scheme == scheme and d.extra), None)


def load_backend(driver: Driver) -> Any:
    """The class named by ``driver.backend`` (imported now)."""
    assert driver.backend is not None, driver
    module, _, name = driver.backend.partition(":")
    return getattr(importlib.import_module(module), name)
