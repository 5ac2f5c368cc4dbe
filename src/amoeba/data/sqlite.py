"""The ``SQLite`` resource: raw SQLite, one file per service under the data
directory unless the topology's ``resources.sqlite`` names another.  (The
SQLAlchemy-based, multi-dialect resource is ``Database`` in ``database.py``.)

**Group commit.**  ``execute`` / ``fetchone`` / ``fetchall`` are single
statements, each atomic on its own.  Statements submitted during one turn of
the event loop run together in one transaction and are committed once; no
caller is answered before that commit.  Under load this shares the cost of
a commit (locks, a WAL write) among every request of the turn; alone, a
statement waits one loop turn.  A statement that fails (a constraint, say)
fails for its caller only; a commit that fails fails every statement of
the batch.  Multi-statement atomicity is ``transaction()``.

Statements run on the event loop's thread.  That is deliberate: on a local
file in WAL mode a short statement takes microseconds, less than the hop to
a worker thread would.  Long scans do not belong on this path.

Durability: WAL with ``synchronous=NORMAL`` survives a process crash or
restart; add ``?synchronous=full`` to the URL to survive power loss too.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from amoeba.data.pool import PoolUse
from amoeba.errors import Unavailable
from amoeba.resource import Resource, ResourceContext

__all__ = ["SQLite", "Transaction"]

Params = Iterable[Any] | dict[str, Any]
_ROWCOUNT, _ONE, _ALL = 0, 1, 2


def _run(conn: sqlite3.Connection, kind: int, sql: str, params: Params) -> Any:
    cur = conn.execute(sql, params)  # type: ignore[arg-type]
    if kind == _ONE:
        return cur.fetchone()
    if kind == _ALL:
        return cur.fetchall()
    return cur.rowcount


def _error(exc: sqlite3.Error) -> Exception:
    if isinstance(exc, sqlite3.OperationalError):
        return Unavailable(f"database busy or unavailable: {exc}")
    return exc


class Transaction:
    """The handle ``transaction()`` yields: statements run at once, inside it."""

    def __init__(self, conn: sqlite3.Connection):
        self._conn = conn

    def __repr__(self) -> str:
        return "<Transaction>"

    async def execute(self, sql: str, params: Params = ()) -> int:
        return int(self._call(_ROWCOUNT, sql, params))

    async def fetchone(self, sql: str, params: Params = ()) -> Any:
        return self._call(_ONE, sql, params)

    async def fetchall(self, sql: str, params: Params = ()) -> list[Any]:
        return list(self._call(_ALL, sql, params))

    def _call(self, kind: int, sql: str, params: Params) -> Any:
        try:
            return _run(self._conn, kind, sql, params)
        except sqlite3.Error as exc:
            raise _error(exc) from exc


class SQLite(Resource):
    kind = "sqlite"

    def __init__(self, path: Path, synchronous: str = "normal"):
        self.path = path
        self.created = not path.exists()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute(f"PRAGMA synchronous={synchronous}")
        self.conn.execute("PRAGMA busy_timeout=5000")
        self._queue: list[tuple[int, str, Params, asyncio.Future[Any]]] = []
        self._scheduled = False
        self._in_tx = False
        self._tx_lock = asyncio.Lock()
        self._tx_waiting = 0
        self.timeouts = 0  # statements that found the file busy past busy_timeout

    def __repr__(self) -> str:
        return f"<SQLite {self.path}>"

    def pool_stats(self) -> PoolUse:
        """One connection: in use during a transaction; waiting are the queued
        statements and the transactions behind the current one."""
        busy = 1 if self._in_tx else 0
        return PoolUse(1, busy, 1 - busy, len(self._queue) + self._tx_waiting, self.timeouts)

    @classmethod
    async def open(cls, ctx: ResourceContext) -> SQLite:
        url = ctx.url or f"sqlite:///{ctx.data_dir}/{ctx.service}.db"
        parts = urlsplit(url)
        if parts.scheme != "sqlite":
            raise ValueError(f"resources.sqlite: {url!r}: only sqlite:/// URLs are supported "
                             f"by this version of amoeba")
        # As SQLAlchemy spells them: sqlite:///relative.db, sqlite:////absolute.db
        path = Path(parts.netloc + parts.path) if parts.netloc else Path(parts.path[1:])
        sync = parse_qs(parts.query).get("synchronous", ["normal"])[0]
        return cls(path, sync)

    async def aclose(self) -> None:
        if self._queue:
            self._flush()
        self.conn.close()

    async def ready(self) -> bool:
        try:
            self.conn.execute("SELECT 1").fetchone()
        except sqlite3.Error:
            return False
        return True

    # -- single statements, group-committed ---------------------------------
    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run one statement; its row count."""
        return int(await self._submit(_ROWCOUNT, sql, params))

    async def fetchone(self, sql: str, params: Params = ()) -> Any:
        return await self._submit(_ONE, sql, params)

    async def fetchall(self, sql: str, params: Params = ()) -> list[Any]:
        return list(await self._submit(_ALL, sql, params))

    async def executescript(self, sql: str) -> None:
        """Schema setup (several statements, committed at once)."""
        if self._queue:
            self._flush()
        self.conn.executescript(sql)

    def _submit(self, kind: int, sql: str, params: Params) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._queue.append((kind, sql, params, fut))
        if not self._scheduled and not self._in_tx:
            self._scheduled = True
            loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        self._scheduled = False
        if self._in_tx or not self._queue:
            return  # transaction() flushes when it ends
        batch, self._queue = self._queue, []
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            for *_, fut in batch:
                if not fut.done():
                    fut.set_exception(self._err(exc))
            return
        done: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        for kind, sql, params, fut in batch:
            try:
                done.append((fut, _run(conn, kind, sql, params), None))
            except sqlite3.Error as exc:
                done.append((fut, None, self._err(exc)))
                if not conn.in_transaction:  # SQLite rolled the whole batch back
                    self._fail(batch, exc)
                    return
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            self._fail(batch, exc)
            return
        for fut, value, err in done:
            if fut.done():
                continue
            if err is None:
                fut.set_result(value)
            else:
                fut.set_exception(err)

    def _fail(self, batch: list[tuple[int, str, Params, asyncio.Future[Any]]],
              exc: sqlite3.Error) -> None:
        for *_, fut in batch:
            if not fut.done():
                fut.set_exception(self._err(exc))

    def _err(self, exc: sqlite3.Error) -> Exception:
        if isinstance(exc, sqlite3.OperationalError) and ("locked" in str(exc) or "busy" in str(exc)):
            self.timeouts += 1  # waited busy_timeout for another process's write lock
        return _error(exc)

    # -- explicit transactions ---------------------------------------------
    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error).  Use the
        handle it yields for the statements inside.  Other coroutines of this
        process wait for it; other processes wait on SQLite's write lock."""
        self._tx_waiting += 1
        try:
            await self._tx_lock.acquire()
        finally:
            self._tx_waiting -= 1
        try:
            if self._queue:
                self._flush()
            self._in_tx = True
            try:
                try:
                    self.conn.execute("BEGIN IMMEDIATE")
                except sqlite3.Error as exc:
                    raise self._err(exc) from exc
                try:
                    yield Transaction(self.conn)
                except BaseException:
                    self.conn.execute("ROLLBACK")
                    raise
                self.conn.execute("COMMIT")
            finally:
                self._in_tx = False
                if self._queue and not self._scheduled:
                    self._scheduled = True
                    asyncio.get_running_loop().call_soon(self._flush)
        finally:
            self._tx_lock.release()
