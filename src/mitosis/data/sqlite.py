"""The ``Database`` resource on SQLite: one file per service under the data
directory unless the topology's ``resources.database`` names another.

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
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from mitosis.errors import Unavailable
from mitosis.resource import Resource, ResourceContext

__all__ = ["Database"]

Params = Iterable[Any] | dict[str, Any]


class Database(Resource):
    kind = "database"

    def __init__(self, path: Path, synchronous: str = "normal"):
        self.path = path
        self.created = not path.exists()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute(f"PRAGMA synchronous={synchronous}")
        self.conn.execute("PRAGMA busy_timeout=5000")
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"<Database sqlite {self.path}>"

    @classmethod
    async def open(cls, ctx: ResourceContext) -> Database:
        url = ctx.url or f"sqlite:///{ctx.data_dir}/{ctx.service}.db"
        parts = urlsplit(url)
        if parts.scheme != "sqlite":
            raise ValueError(f"resources.database: {url!r}: only sqlite:/// URLs are supported "
                             f"by this version of mitosis")
        # As SQLAlchemy spells them: sqlite:///relative.db, sqlite:////absolute.db
        path = Path(parts.netloc + parts.path) if parts.netloc else Path(parts.path[1:])
        sync = parse_qs(parts.query).get("synchronous", ["normal"])[0]
        return cls(path, sync)

    async def aclose(self) -> None:
        self.conn.close()

    async def ready(self) -> bool:
        try:
            self.conn.execute("SELECT 1").fetchone()
        except sqlite3.Error:
            return False
        return True

    # A statement outside transaction() runs alone and atomically (autocommit).
    async def execute(self, sql: str, params: Params = ()) -> int:
        try:
            return self.conn.execute(sql, params).rowcount  # type: ignore[arg-type]
        except sqlite3.OperationalError as exc:
            raise _unavailable(exc) from exc

    async def fetchone(self, sql: str, params: Params = ()) -> Any:
        try:
            return self.conn.execute(sql, params).fetchone()  # type: ignore[arg-type]
        except sqlite3.OperationalError as exc:
            raise _unavailable(exc) from exc

    async def fetchall(self, sql: str, params: Params = ()) -> list[Any]:
        try:
            return self.conn.execute(sql, params).fetchall()  # type: ignore[arg-type]
        except sqlite3.OperationalError as exc:
            raise _unavailable(exc) from exc

    async def executescript(self, sql: str) -> None:
        self.conn.executescript(sql)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Database]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error).  Other
        coroutines of this process wait for it; other processes wait on
        SQLite's write lock."""
        async with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")


def _unavailable(exc: sqlite3.OperationalError) -> Unavailable:
    return Unavailable(f"database busy or unavailable: {exc}")
