"""The ``Database`` resource: SQLAlchemy 2 (asyncio) on SQLite, PostgreSQL or
MySQL/MariaDB, with Alembic migrations run on open.

**One schema per service, never shared tables.**  The topology gives one URL
(``resources.database``, ``{service}`` replaced); each service gets its own
namespace inside it::

    URL (resources.database)             what a service ``catalog`` gets
    (none)                               file {data_dir}/catalog.sqlite3
    sqlite:///data/{service}.sqlite3     file data/catalog.sqlite3
    sqlite:///data/app.sqlite3           file data/app_catalog.sqlite3
    postgresql://u:p@h/shop              schema ``catalog`` in database ``shop``;
                                         every connection's search_path is it
    mysql://u:p@h/shop                   database ``shop_catalog`` (utf8mb4)

Plain ``sqlite://``, ``postgresql://``, ``postgres://``, ``mysql://`` and
``mariadb://`` are rewritten to the asyncio drivers (``sqlite+amoeba``,
asyncpg, aiomysql); the last two are extras: ``pip install 'amoeba[postgres]'``
or ``'amoeba[mysql]'``.  ``sqlite+amoeba`` (``sqlite_driver.py``) runs
statements on the loop's thread, one connection per process.  A URL that
names its driver (``sqlite+aiosqlite://``) is used as given.  Service names
are ``[a-z0-9_]+``.

Settings (topology ``settings.database``, all optional)::

    database: {pool_size: 5, max_overflow: 0, pool_timeout: 10, migrate: true, echo: false}

``max_overflow`` is 0 by default: a request beyond ``pool_size`` waits for a
pooled connection rather than opening (and closing) one of its own, which
under load costs more than the wait and can exhaust the server's
connection limit when many processes share it.

API::

    db.engine                               # sqlalchemy AsyncEngine
    db.dialect                              # "sqlite" | "postgresql" | "mysql"
    db.created                              # this open() made the schema from nothing
    async with db.transaction() as conn:    # AsyncConnection inside BEGIN:
        await conn.execute(...)             #   commit on exit, rollback on exception
    await db.execute(stmt, params)          # one statement, its own transaction (.rowcount)
    await db.fetchone(stmt, params)         # Row | None
    await db.fetchall(stmt, params)         # list[Row]
    await db.scalar(stmt, params)           # first column of the first row, or None

``stmt`` is a SQLAlchemy Core statement or a ``str`` (``sqlalchemy.text``:
bind parameters as ``:name``, ``params`` a dict, or a list of dicts for
executemany).

Errors: failing to reach the server, an exhausted pool, a lock timeout or a
busy SQLite file become :class:`amoeba.Unavailable` (503) naming the service
and the URL without its password.  ``IntegrityError`` propagates: the caller
knows which constraint means ``Conflict``.

Pool use (``pool_stats()``, on ``/metrics`` as ``amoeba_db_pool_*``): the
pool's size, connections in use and idle, callers waiting for one (callers
inside a statement or transaction minus connections in use: two integer
additions per call, no lock), and checkouts that timed out
(``pool_timeout``).

Migrations: a service class declares ``migrations = "migrations/catalog"``
(relative to the file defining the class): a directory with Alembic revision
scripts in ``versions/`` and no ``env.py``.  ``open()`` upgrades to head
unless ``settings.database.migrate`` is false; see ``migrate.py``.  SQLite
connections run in WAL mode with foreign keys on and a busy timeout;
``transaction()`` on SQLite begins ``IMMEDIATE`` so a read-then-write cannot
fail on lock upgrade.
"""

from __future__ import annotations

import asyncio
import inspect
import re
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Row, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.util.concurrency import greenlet_spawn

from amoeba.data import sqlite_driver
from amoeba.data.pool import PoolUse
from amoeba.data.settings import DatabaseSettings
from amoeba.drivers import require
from amoeba.errors import Unavailable
from amoeba.resource import Resource, ResourceContext

sqlite_driver.register()

__all__ = ["Database", "DatabaseSettings"]

Statement = sa.Executable | str
Params = Mapping[str, Any] | Sequence[Mapping[str, Any]] | None

_SERVICE = re.compile(r"[a-z0-9_]+")
# scheme -> the asyncio driver it is rewritten to; which library that needs, and
# which extra installs it, is amoeba.drivers' table.
_ASYNC_DRIVERS = {
    "sqlite": "sqlite+amoeba",  # see sqlite_driver.py
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "mysql": "mysql+aiomysql",
    "mariadb": "mysql+aiomysql",
}
SQLITE_BUSY_MS = 5000
_RESULT, _ONE, _ALL, _SCALAR = range(4)
READY_TIMEOUT = 2.0
# SQLSTATEs (PostgreSQL) and error numbers (MySQL) meaning "try again later".
_PG_UNAVAILABLE = ("08", "53", "57P", "55P03", "57014")
_MYSQL_UNAVAILABLE = {1040, 1053, 1205, 2002, 2003, 2005, 2006, 2013, 2055}
_SQLITE_UNAVAILABLE = ("locked", "busy", "unable to open")


def async_url(url: str | URL) -> URL:
    """``url`` with its driver replaced by the asyncio one (checked installed:
    :class:`amoeba.drivers.MissingDriver` names the extra that brings it)."""
    parsed = make_url(url)
    driver = require("database", parsed.render_as_string(hide_password=False))
    if driver is None:  # the user named a driver: theirs to install
        return parsed
    return parsed.set(drivername=_ASYNC_DRIVERS[parsed.get_backend_name()])


def _sqlite_path(url: URL, service: str) -> Path:
    db = url.database or ""
    if db in ("", ":memory:") or url.query.get("mode") == "memory":
        raise ValueError(f"resources.database: {url.render_as_string()!r}: an in-memory SQLite "
                         f"database is not shared between connections; name a file")
    path = Path(db)
    if service not in path.name:  # one file per service, even from one shared URL
        path = path.with_name(f"{path.stem}_{service}{path.suffix}")
    return path


def is_unavailable(exc: BaseException) -> bool:
    """Does ``exc`` mean "the database cannot serve now" rather than a bug?"""
    if isinstance(exc, sa_exc.TimeoutError | OSError | asyncio.TimeoutError):
        return True
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        orig = exc.orig
        sqlstate = getattr(orig, "sqlstate", None)
        if isinstance(sqlstate, str):
            return sqlstate.startswith(_PG_UNAVAILABLE)
        args = getattr(orig, "args", ())
        if args and isinstance(args[0], int):
            return args[0] in _MYSQL_UNAVAILABLE
        if isinstance(exc, sa_exc.OperationalError):
            text = str(orig).lower()
            return any(word in text for word in _SQLITE_UNAVAILABLE)
        return isinstance(orig, OSError | asyncio.TimeoutError)
    return False


class Database(Resource):
    kind = "database"

    def __init__(self, engine: AsyncEngine, *, service: str, schema: str | None = None,
                 path: Path | None = None, admin_url: URL | None = None,
                 migrations: Path | None = None, settings: DatabaseSettings | None = None):
        self.engine = engine
        self.service = service
        #: PostgreSQL: the service's schema; MySQL: its database; SQLite: None.
        self.schema = schema
        #: SQLite: the service's file.
        self.path = path
        # Where the schema/database is created from (it cannot be the service's
        # own MySQL database before that exists).
        self.admin_url = admin_url
        #: The service's Alembic script directory, if it declares one.
        self.migrations = migrations
        self.settings = settings or DatabaseSettings()
        self.created = False
        self._active = 0  # callers inside a statement or transaction (pool_stats)
        self.timeouts = 0
        # SQLite: BEGIN IMMEDIATE for transaction(), plain BEGIN elsewhere.
        self._writer = engine.execution_options(amoeba_begin="BEGIN IMMEDIATE")
        # PostgreSQL runs a lone statement atomically without BEGIN/COMMIT: two
        # round trips fewer.  (With aiomysql switching autocommit costs a round
        # trip of its own; SQLite's BEGIN costs nothing.)
        self._single: sa.Engine | None = (
            engine.sync_engine.execution_options(isolation_level="AUTOCOMMIT")
            if engine.dialect.name == "postgresql" else None)

    @property
    def dialect(self) -> str:
        return str(self.engine.dialect.name)

    @property
    def safe_url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    def __repr__(self) -> str:
        return f"<Database {self.dialect} {self.service} {self.safe_url}>"

    def pool_stats(self) -> PoolUse:
        pool: Any = self.engine.sync_engine.pool
        try:
            in_use, idle = int(pool.checkedout()), int(pool.checkedin())
            size = int(pool.size()) + max(0, int(getattr(pool, "_max_overflow", 0)))
        except AttributeError:  # a pool without a queue (NullPool, StaticPool)
            in_use, idle, size = min(self._active, 1), 0, 1
        return PoolUse(size, in_use, idle, max(0, self._active - in_use), self.timeouts)

    # -- lifecycle -------------------------------------------------------------
    @classmethod
    async def open(cls, ctx: ResourceContext) -> Database:
        db = cls.build(ctx)
        from amoeba.data import migrate

        try:
            async with db.guard():
                db.created = await migrate.prepare(db, run=db.settings.migrate)
        except BaseException as exc:
            await db.engine.dispose()
            if isinstance(exc, Exception) and not isinstance(exc, Unavailable):
                exc.add_note(f"while opening the database of service {db.service!r} "
                             f"({db.safe_url})")
            raise
        return db

    @classmethod
    def build(cls, ctx: ResourceContext) -> Database:
        """The resource for ``ctx``, not connected yet (``open`` also creates
        the schema and migrates)."""
        if not _SERVICE.fullmatch(ctx.service):
            raise ValueError(f"service {ctx.service!r}: a service with a Database must be named "
                             f"with a-z, 0-9 and _ only (it names its schema); set `name = ...`")
        settings = DatabaseSettings.from_settings(ctx.settings)
        url = async_url(ctx.url or f"sqlite:///{ctx.data_dir}/{ctx.service}.sqlite3")
        kw: dict[str, Any] = {
            "pool_size": settings.pool_size, "max_overflow": settings.max_overflow,
            "pool_timeout": settings.pool_timeout, "echo": settings.echo,
        }
        schema: str | None = None
        path: Path | None = None
        admin: URL | None = None
        backend = url.get_backend_name()
        if backend == "sqlite":
            path = _sqlite_path(url, ctx.service)
            url = url.set(database=str(path))
            if url.get_driver_name() == "amoeba":
                # One connection: statements run on the loop's one thread, so
                # more would only compete for the file's write lock.
                kw["pool_size"], kw["max_overflow"] = 1, 0
        elif backend == "postgresql":
            schema = ctx.service
            admin = url
            kw["connect_args"] = {"server_settings": {"search_path": schema}}
        else:
            schema = f"{url.database}_{ctx.service}" if url.database else ctx.service
            if len(schema) > 64:
                raise ValueError(f"resources.database: MySQL database name {schema!r} "
                                 f"is longer than 64 characters; shorten the URL's database")
            # (URL.set(database=None) means "unchanged"; _replace really clears it)
            admin = url._replace(database=None)  # the URL's database need not exist
            url = url.set(database=schema).update_query_dict({"charset": "utf8mb4"})
        engine = create_async_engine(url, **kw)
        if backend == "sqlite":
            _sqlite_events(engine)
        return cls(engine, service=ctx.service, schema=schema, path=path, admin_url=admin,
                   migrations=_migrations_of(ctx.owner), settings=settings)

    async def aclose(self) -> None:
        await self.engine.dispose()

    async def ready(self) -> bool:
        try:
            async with asyncio.timeout(READY_TIMEOUT), self.engine.connect() as conn:
                await conn.execute(sa.text("SELECT 1"))
        except (sa_exc.SQLAlchemyError, OSError, TimeoutError):
            return False
        return True

    # -- statements ------------------------------------------------------------
    @asynccontextmanager
    async def guard(self) -> AsyncIterator[None]:
        """Turn "cannot serve now" errors into :class:`Unavailable`."""
        try:
            yield
        except Exception as exc:
            if isinstance(exc, sa_exc.TimeoutError):  # no pooled connection within pool_timeout
                self.timeouts += 1
            if is_unavailable(exc):
                reason = getattr(exc, "orig", None) or exc
                raise Unavailable(f"database of service {self.service!r} unavailable "
                                  f"({self.safe_url}): {type(reason).__name__}: {reason}") from exc
            raise

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """A transaction: commit on exit, rollback on an exception.  Inside one,
        ``transaction()``, ``execute()`` and ``fetch*()`` of the same database join
        it (one connection, one commit), and ``publish()`` writes to its outbox."""
        outer = _ambient.get()
        if outer is not None and outer.db is self:
            yield outer.conn
            return
        self._active += 1
        try:
            async with self.guard(), self._writer.begin() as conn:
                tx = _Tx(self, conn)
                token = _ambient.set(tx)
                try:
                    yield conn
                finally:
                    _ambient.reset(token)
        finally:
            self._active -= 1
        for hook in tx.after_commit:
            hook()

    async def execute(self, stmt: Statement, params: Params = None) -> sa.CursorResult[Any]:
        return await self._run(_RESULT, stmt, params)  # type: ignore[no-any-return]

    async def fetchone(self, stmt: Statement, params: Params = None) -> Row[Any] | None:
        return await self._run(_ONE, stmt, params)  # type: ignore[no-any-return]

    async def fetchall(self, stmt: Statement, params: Params = None) -> list[Row[Any]]:
        return await self._run(_ALL, stmt, params)  # type: ignore[no-any-return]

    async def scalar(self, stmt: Statement, params: Params = None) -> Any:
        return await self._run(_SCALAR, stmt, params)

    async def _run(self, kind: int, stmt: Statement, params: Params) -> Any:
        outer = _ambient.get()
        if outer is not None and outer.db is self:  # inside transaction(): join it
            result = await outer.conn.execute(_statement(stmt), params)
            return _take(kind, result)
        # One trip into SQLAlchemy's sync core for checkout, BEGIN, the statement,
        # the rows, COMMIT and return, instead of one per step: a single statement
        # is the common case, and every async step costs greenlet switches.
        self._active += 1
        try:
            async with self.guard():
                return await greenlet_spawn(self._run_sync, kind, _statement(stmt), params)
        finally:
            self._active -= 1

    def _run_sync(self, kind: int, stmt: sa.Executable, params: Params) -> Any:
        many = isinstance(params, list)  # executemany: several statements, one transaction
        with (self._single.connect() if self._single is not None and not many
              else self.engine.sync_engine.begin()) as conn:
            return _take(kind, conn.execute(stmt, params))


def _take(kind: int, result: sa.CursorResult[Any]) -> Any:
    if kind == _ONE:
        return result.first()
    if kind == _ALL:
        return result.all()
    if kind == _SCALAR:
        return result.scalar()
    # Rows are read before the connection goes back to the pool.
    return result.freeze()() if result.returns_rows else result


class _Tx:
    """The transaction a task is inside, and what to do once it committed."""

    __slots__ = ("after_commit", "conn", "db")

    def __init__(self, db: Database, conn: AsyncConnection):
        self.db = db
        self.conn = conn
        self.after_commit: list[Callable[[], None]] = []


_ambient: ContextVar[_Tx | None] = ContextVar("amoeba_transaction", default=None)


def current_transaction() -> _Tx | None:
    """The ``Database.transaction()`` the calling task is inside, if any."""
    return _ambient.get()


def _statement(stmt: Statement) -> sa.Executable:
    return sa.text(stmt) if isinstance(stmt, str) else stmt


def _migrations_of(owner: type | None) -> Path | None:
    rel = getattr(owner, "migrations", None) if owner is not None else None
    if rel is None:
        return None
    assert owner is not None
    where = f"{owner.__module__}.{owner.__qualname__}.migrations"
    if not isinstance(rel, str | Path):
        raise TypeError(f"{where}: must be a path (str), got {rel!r}")
    directory = Path(inspect.getfile(owner)).resolve().parent / rel
    if not (directory / "versions").is_dir():
        raise ValueError(f"{where} = {str(rel)!r}: {directory}/versions is not a directory; "
                         f"put the Alembic revision scripts there")
    return directory


def _sqlite_events(engine: AsyncEngine) -> None:
    # The driver's own transaction handling defers BEGIN and never makes DDL
    # transactional; take it over (SQLAlchemy's documented recipe).
    @sa.event.listens_for(engine.sync_engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        pragmas = ["journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON"]
        if engine.dialect.driver != "amoeba":  # it waits for locks without blocking the loop
            pragmas.append(f"busy_timeout={SQLITE_BUSY_MS}")
        for pragma in pragmas:
            cur.execute(f"PRAGMA {pragma}")
        cur.close()

    @sa.event.listens_for(engine.sync_engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql(conn.get_execution_options().get("amoeba_begin", "BEGIN"))
