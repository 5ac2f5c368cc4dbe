"""``sqlite+amoeba://``: SQLAlchemy's async engine over the standard
``sqlite3`` module, statements run on the event loop's thread.

Why not aiosqlite: it hands every call (BEGIN, each statement, each fetch,
COMMIT) to a worker thread and back, and that hop costs far more than the
statement itself does on a local WAL file: the shop's product page ran at a
few hundred requests/s that way, with SQLite's busy handler sleeping whole
milliseconds whenever two pooled connections of one process wanted the write
lock.  Here a statement runs inline, and a locked database is waited for with
``asyncio.sleep`` (the connection is opened with no busy timeout), so
waiting never blocks the loop.

The ``Database`` resource gives this driver one connection per process: the
loop has one thread anyway, so more connections would only compete for the
file's write lock.  Transactions of one process therefore take turns; other
processes on the same file (replicas) are waited for as above.  A statement
that runs long blocks the loop while it runs: keep big scans off this path.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

from sqlalchemy import pool, util
from sqlalchemy.connectors.asyncio import AsyncAdapt_dbapi_module
from sqlalchemy.dialects.sqlite.aiosqlite import SQLiteDialect_aiosqlite
from sqlalchemy.engine.interfaces import AdaptedConnection
from sqlalchemy.engine.url import URL
from sqlalchemy.util.concurrency import await_

__all__ = ["SQLiteDialect_amoeba", "Shared"]

# How long a statement waits for another process's write lock before failing
# with "database is locked" (which the Database resource reports as 503).
BUSY_WAIT_S = 5.0


def locked(exc: sqlite3.OperationalError) -> bool:
    text = str(exc)
    return "locked" in text or "busy" in text


async def patiently(fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return fn(*args)
    except sqlite3.OperationalError as exc:
        if not locked(exc):
            raise
    deadline = time.monotonic() + BUSY_WAIT_S
    delay = 0.001
    while True:
        await asyncio.sleep(delay)
        try:
            return fn(*args)
        except sqlite3.OperationalError as exc:
            if not locked(exc) or time.monotonic() > deadline:
                raise
        delay = min(delay * 2, 0.05)


def _call(fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn`` at once; only when the file is locked, wait (in the event
    loop, through SQLAlchemy's greenlet bridge) and try again."""
    try:
        return fn(*args)
    except sqlite3.OperationalError as exc:
        if not locked(exc):
            raise
    return await_(patiently(fn, *args))


async def _noop() -> None:
    pass


class _Cursor:
    """A DBAPI cursor over ``sqlite3.Cursor``, called inline: no coroutine, no
    greenlet switch, unless it has to wait for a lock."""

    __slots__ = ("_c", "_rows")

    def __init__(self, cursor: sqlite3.Cursor):
        self._c = cursor
        # Rows are read at execute, as SQLAlchemy's async layer expects of a
        # cursor (it closes the cursor and keeps reading the results).
        self._rows: deque[Any] = deque()

    @property
    def description(self) -> Any:
        return self._c.description

    @property
    def rowcount(self) -> int:
        return self._c.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._c.lastrowid

    @property
    def arraysize(self) -> int:
        return self._c.arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._c.arraysize = value

    def execute(self, operation: str, parameters: Any = ()) -> _Cursor:
        _call(self._c.execute, operation, parameters if parameters is not None else ())
        if self._c.description is not None:
            self._rows = deque(self._c.fetchall())
        # SQLAlchemy's AsyncConnection.execute insists that a statement awaited
        # something (it takes silence for a sync driver by mistake): one no-op.
        await_(_noop())
        return self

    def executemany(self, operation: str, seq: Sequence[Any]) -> _Cursor:
        _call(self._c.executemany, operation, seq)
        await_(_noop())  # as in execute(): else AsyncConnection.execute(stmt, [rows]) fails
        return self

    def fetchone(self) -> Any:
        return self._rows.popleft() if self._rows else None

    def fetchmany(self, size: int | None = None) -> list[Any]:
        n = size if size is not None else self._c.arraysize
        return [self._rows.popleft() for _ in range(min(n, len(self._rows)))]

    def fetchall(self) -> list[Any]:
        rows = list(self._rows)
        self._rows.clear()
        return rows

    def close(self) -> None:
        self._rows.clear()
        self._c.close()

    async def _async_soft_close(self) -> None:
        """Called by SQLAlchemy's async layer; the rows are already read."""

    def __iter__(self) -> Iterator[Any]:
        while self._rows:
            yield self._rows.popleft()


class Shared:
    """The one ``sqlite3`` connection of a ``Database`` (``connect_args``
    ``amoeba_shared``): SQLAlchemy's pool and the ``Database``'s own statement
    path (``lean.py``) use the same connection, so one transaction can mix
    both.  The ``Database`` closes it; SQLAlchemy's close leaves it open."""

    __slots__ = ("conn", "owned")

    def __init__(self) -> None:
        self.conn: sqlite3.Connection | None = None
        #: A transaction of the Database's own is open on ``conn``: SQLAlchemy's
        #: COMMIT and ROLLBACK (a connection closed inside it) leave it alone.
        self.owned = False

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class _AdaptedConnection(AdaptedConnection):
    __slots__ = ("dbapi", "shared")

    def __init__(self, dbapi: Any, conn: sqlite3.Connection, shared: Shared | None = None):
        self.dbapi = dbapi
        self.shared = shared
        self._connection = conn  # type: ignore[assignment]  # a sync one: see module doc

    @property
    def _db(self) -> sqlite3.Connection:
        return cast(sqlite3.Connection, self._connection)

    @property
    def isolation_level(self) -> str | None:
        return self._db.isolation_level

    @isolation_level.setter
    def isolation_level(self, value: str | None) -> None:
        self._db.isolation_level = value  # type: ignore[assignment]

    def create_function(self, *args: Any, **kw: Any) -> None:
        self._db.create_function(*args, **kw)

    def cursor(self, server_side: bool = False) -> _Cursor:
        return _Cursor(self._db.cursor())

    def execute(self, operation: str, parameters: Any = ()) -> _Cursor:
        return self.cursor().execute(operation, parameters)

    def commit(self) -> None:
        if not self._owned():
            _call(self._db.commit)

    def rollback(self) -> None:
        if not self._owned():
            self._db.rollback()

    def _owned(self) -> bool:
        return self.shared is not None and self.shared.owned

    def close(self) -> None:
        if self.shared is None:
            self._db.close()


class _DBAPI(AsyncAdapt_dbapi_module):
    def __init__(self) -> None:
        super().__init__(sqlite3, dbapi_module=sqlite3)
        self.sqlite = sqlite3
        self.paramstyle = "qmark"
        self.has_stop = False
        for name in ("DatabaseError", "Error", "IntegrityError", "NotSupportedError",
                     "OperationalError", "ProgrammingError", "InterfaceError", "sqlite_version",
                     "sqlite_version_info", "PARSE_COLNAMES", "PARSE_DECLTYPES", "Binary"):
            setattr(self, name, getattr(sqlite3, name))

    def connect(self, *args: Any, **kw: Any) -> _AdaptedConnection:
        kw.pop("async_creator_fn", None)
        shared: Shared | None = kw.pop("amoeba_shared", None)
        kw["timeout"] = 0  # never block the loop in SQLite's busy handler
        kw["check_same_thread"] = False
        if shared is None:
            return _AdaptedConnection(self, sqlite3.connect(*args, **kw))
        if shared.conn is None:
            shared.conn = sqlite3.connect(*args, **kw)
        return _AdaptedConnection(self, shared.conn, shared=shared)


class SQLiteDialect_amoeba(SQLiteDialect_aiosqlite):
    driver = "amoeba"
    supports_statement_cache = True
    supports_server_side_cursors = False
    has_terminate = False

    @classmethod
    def import_dbapi(cls) -> Any:
        return _DBAPI()

    def retrieve_dbapi_version(self, dbapi: Any) -> Any:
        return util.parse_version_string(sqlite3.sqlite_version)

    @classmethod
    def get_pool_class(cls, url: URL) -> type[pool.Pool]:
        return pool.AsyncAdaptedQueuePool

    def do_terminate(self, dbapi_connection: Any) -> None:
        dbapi_connection.close()


def register() -> None:
    from sqlalchemy.dialects import registry

    registry.register("sqlite.amoeba", "amoeba.data.sqlite_driver", "SQLiteDialect_amoeba")
