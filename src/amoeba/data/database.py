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

**How statements run.**  SQLAlchemy builds, compiles and caches every
statement; on ``sqlite+amoeba`` and on PostgreSQL with asyncpg a statement
whose compiled form needs no execution context then runs on the driver's
connection without SQLAlchemy's per-call machinery (``lean.py``): on SQLite
inline with no greenlet, on PostgreSQL on SQLAlchemy's asyncpg adapter (its
prepared-statement cache).  Rows are SQLAlchemy ``Row`` objects either way.
On SQLite, units of work (lone writes, transactions) finishing in one turn of
the event loop share one COMMIT (group commit, see ``_SQLiteLean``), and
``transaction()`` yields a :class:`LeanConnection` with the statement methods
of ``AsyncConnection`` (``execute``, ``scalar``, ``scalars``,
``exec_driver_sql``, ``run_sync``, ``begin_nested``); on PostgreSQL a
:class:`PGConnection`, a pooled connection whose BEGIN goes with its first
statement and whose COMMIT and checkin need no greenlet (an
``AsyncConnection`` over it is made only for what ``lean`` does not take).

API::

    db.engine                               # sqlalchemy AsyncEngine
    db.dialect                              # "sqlite" | "postgresql" | "mysql"
    db.created                              # this open() made the schema from nothing
    async with db.transaction() as conn:    # a Connection inside BEGIN:
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
import contextlib
import inspect
import re
import sqlite3
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Row, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.util.concurrency import await_, greenlet_spawn

from amoeba.data import lean, sqlite_driver
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
                 migrations: Path | None = None, settings: DatabaseSettings | None = None,
                 shared: sqlite_driver.Shared | None = None):
        self.engine = engine
        self._shared = shared
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
        #: sqlite+amoeba: statements run on the one sqlite3 connection without
        #: SQLAlchemy's execution machinery (lean.py); None elsewhere.
        self._lean: _SQLiteLean | None = None
        if shared is not None and lean.supported(engine.dialect):
            self._lean = _SQLiteLean(self, shared)
        #: PostgreSQL on asyncpg: statements on SQLAlchemy's adapter of the
        #: connection without its execution machinery (lean.asyncpg_execute).
        self._pg_lean = engine.dialect.driver == "asyncpg" and lean.supported(engine.dialect)
        self._cache = engine.sync_engine._compiled_cache

    @property
    def dialect(self) -> str:
        return str(self.engine.dialect.name)

    @property
    def safe_url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    def __repr__(self) -> str:
        return f"<Database {self.dialect} {self.service} {self.safe_url}>"

    def pool_stats(self) -> PoolUse:
        if self._lean is not None:  # one connection, taken in turns (not SQLAlchemy's pool)
            in_use = int(self._lean.turn.locked())
            return PoolUse(1, in_use, 1 - in_use, self._lean.queued, self.timeouts)
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
        shared: sqlite_driver.Shared | None = None
        backend = url.get_backend_name()
        if backend == "sqlite":
            path = _sqlite_path(url, ctx.service)
            url = url.set(database=str(path))
            if url.get_driver_name() == "amoeba":
                # One connection: statements run on the loop's one thread, so
                # more would only compete for the file's write lock.
                kw["pool_size"], kw["max_overflow"] = 1, 0
                shared = sqlite_driver.Shared()
                kw["connect_args"] = {"amoeba_shared": shared}
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
                   migrations=_migrations_of(ctx.owner), settings=settings, shared=shared)

    async def aclose(self) -> None:
        await self.engine.dispose()
        if self._shared is not None:
            self._shared.close()

    async def ready(self) -> bool:
        if self._lean is not None:
            try:
                async with asyncio.timeout(READY_TIMEOUT), self._lean.holding():
                    self._lean.connection().execute("SELECT 1")
            except (sqlite3.Error, TimeoutError):
                return False
            return True
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
            self._unavailable(exc)
            raise

    def _unavailable(self, exc: Exception) -> None:
        """Raise :class:`Unavailable` (from ``exc``) when ``exc`` says the
        database cannot serve now; else return, and the caller re-raises ``exc``."""
        if isinstance(exc, sa_exc.TimeoutError):  # no pooled connection within pool_timeout
            self.timeouts += 1
        if is_unavailable(exc):
            reason = getattr(exc, "orig", None) or exc
            raise Unavailable(f"database of service {self.service!r} unavailable "
                              f"({self.safe_url}): {type(reason).__name__}: {reason}") from exc

    def transaction(self) -> _Transaction:
        """A transaction: commit on exit, rollback on an exception.  Inside one,
        ``transaction()``, ``execute()`` and ``fetch*()`` of the same database join
        it (one connection, one commit), and ``publish()`` writes to its outbox."""
        return _Transaction(self)

    async def _pg_open(self) -> PGConnection:
        """A transaction on PostgreSQL with asyncpg: one greenlet for the pool's
        checkout; BEGIN goes with the first statement, COMMIT and the checkin
        run without one (an AsyncConnection's begin, commit and close would
        take three more)."""
        try:
            fairy = await greenlet_spawn(self.engine.sync_engine.raw_connection)
        except self.engine.dialect.loaded_dbapi.Error as exc:
            raise sa_exc.DBAPIError.instance(None, None, exc,
                                             self.engine.dialect.loaded_dbapi.Error,
                                             dialect=self.engine.dialect) from exc
        return PGConnection(self, fairy)

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
            if self._lean is not None:
                return await self._lean.run(kind, _statement(stmt), params)
            if self._pg_lean:
                bound = lean.bind(_statement(stmt), params, self.engine.dialect, self._cache)
                if bound is not None:
                    return await greenlet_spawn(self._run_asyncpg, kind, bound)
            return await greenlet_spawn(self._run_sync, kind, _statement(stmt), params)
        except Exception as exc:  # as guard(), without a context manager per statement
            self._unavailable(exc)
            raise
        finally:
            self._active -= 1

    def _run_asyncpg(self, kind: int, bound: lean.Bound) -> Any:
        # A lone statement is atomic without BEGIN/COMMIT (asyncpg outside a
        # transaction); several parameter sets get one transaction.
        fairy = self.engine.sync_engine.raw_connection()
        try:
            adapted = fairy.dbapi_connection
            if not bound.many:
                return _take(kind, await_(lean.asyncpg_execute(adapted, bound, begin=False)))
            result = await_(lean.asyncpg_execute(adapted, bound, begin=True))
            fairy.commit()
            return _take(kind, result)
        except BaseException as exc:
            dialect = self.engine.dialect
            if isinstance(exc, Exception) and dialect.is_disconnect(exc, fairy, None):  # type: ignore[arg-type]
                fairy.invalidate(exc)
                raise _dbapi_error(dialect, bound, exc, invalidated=True) from exc
            fairy.rollback()
            if isinstance(exc, Exception) and not isinstance(exc, sa_exc.SQLAlchemyError):
                raise _dbapi_error(dialect, bound, exc) from exc
            raise
        finally:
            fairy.close()

    def _run_sync(self, kind: int, stmt: sa.Executable, params: Params) -> Any:
        many = isinstance(params, list)  # executemany: several statements, one transaction
        with (self._single.connect() if self._single is not None and not many
              else self.engine.sync_engine.begin()) as conn:
            return _take(kind, conn.execute(stmt, params))


class Connection(Protocol):
    """What ``Database.transaction()`` yields: SQLAlchemy's ``AsyncConnection``,
    or on ``sqlite+amoeba`` a :class:`LeanConnection` with the same methods
    for statements (``execute``, ``scalar``, ``scalars``, ``exec_driver_sql``,
    ``run_sync``, ``begin_nested``)."""

    async def execute(self, statement: Any, parameters: Any = None, *,
                      execution_options: Any = None) -> Any: ...

    async def scalar(self, statement: Any, parameters: Any = None) -> Any: ...

    async def scalars(self, statement: Any, parameters: Any = None) -> Any: ...

    async def exec_driver_sql(self, statement: str, parameters: Any = None) -> Any: ...

    async def run_sync(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any: ...

    def begin_nested(self) -> Any: ...


def _take(kind: int, result: Any) -> Any:
    if kind == _ONE:
        return result.first()
    if kind == _ALL:
        return result.all()
    if kind == _SCALAR:
        return result.scalar()
    # Rows are read before the connection goes back to the pool.
    return result.freeze()() if result.returns_rows else result


class _Transaction:
    """``Database.transaction()``: one object instead of a generator-based
    context manager per layer (joining, guarding, beginning): a transaction
    is entered for every unit of work, so its own cost counts.  On
    ``sqlite+amoeba`` it is a unit of the connection's group commit, on
    PostgreSQL with asyncpg a :class:`PGConnection`, elsewhere SQLAlchemy's
    ``AsyncConnection.begin()``."""

    __slots__ = ("begun", "conn", "db", "token", "tx")

    def __init__(self, db: Database):
        self.db = db
        self.tx: _Tx | None = None
        self.conn: Any = None
        self.begun: contextlib.AbstractAsyncContextManager[Any] | None = None

    async def __aenter__(self) -> Connection:
        db = self.db
        outer = _ambient.get()
        if outer is not None and outer.db is db:  # join it
            joined: Connection = outer.conn
            return joined
        db._active += 1
        try:
            if db._lean is not None:
                conn: Connection = await db._lean.open()
            elif db._pg_lean:
                conn = await db._pg_open()
            else:
                self.begun = db._writer.begin()
                conn = await self.begun.__aenter__()
        except BaseException as exc:
            db._active -= 1
            if isinstance(exc, Exception):
                db._unavailable(exc)
            raise
        self.conn = conn
        self.tx = _Tx(db, conn)
        self.token = _ambient.set(self.tx)
        return conn

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: Any) -> None:
        tx = self.tx
        if tx is None:  # joined: the outer transaction ends it
            return
        db = self.db
        _ambient.reset(self.token)
        try:
            if self.begun is not None:  # (it re-raises ``exc``, never swallows it)
                await self.begun.__aexit__(kind, exc, tb)
            elif db._lean is not None:
                await db._lean.close(self.conn, ok=exc is None)
            elif exc is None:
                await self.conn.finish(commit=True)
            else:
                await asyncio.shield(self.conn.finish(commit=False))
        except Exception as raised:
            db._unavailable(raised)
            raise
        finally:
            db._active -= 1
        if exc is not None:
            if isinstance(exc, Exception):
                db._unavailable(exc)
            return
        for hook in tx.after_commit:
            hook()


class _Tx:
    """The transaction a task is inside, and what to do once it committed."""

    __slots__ = ("after_commit", "conn", "db")

    def __init__(self, db: Database, conn: Any):
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
        begin = conn.get_execution_options().get("amoeba_begin", "BEGIN")
        if begin:  # "": a LeanConnection's, inside the transaction it began itself
            conn.exec_driver_sql(begin)


def _dbapi_error(dialect: sa.Dialect, bound: lean.Bound, exc: Exception, *,
                 invalidated: bool = False) -> BaseException:
    """A driver's error as SQLAlchemy raises it (``IntegrityError``, ...)."""
    dbapi = dialect.loaded_dbapi
    if not isinstance(exc, dbapi.Error):
        return exc
    return sa_exc.DBAPIError.instance(bound.sql, bound.args, exc, dbapi.Error, dialect=dialect,
                                      ismulti=bound.many, connection_invalidated=invalidated)


class PGConnection:
    """What ``Database.transaction()`` yields on PostgreSQL with asyncpg: a
    pooled connection whose statements run on SQLAlchemy's asyncpg adapter
    without its execution machinery or a greenlet when ``lean`` takes them.
    Everything else (``run_sync``, ``begin_nested``, a statement ``lean`` does
    not take, any other ``AsyncConnection`` attribute) goes to an
    ``AsyncConnection`` made on first use over the same connection, inside
    the same transaction: the adapter's one asyncpg transaction, begun by
    whichever runs a statement first."""

    def __init__(self, db: Database, fairy: Any):
        self._db = db
        self._fairy = fairy
        self._adapted: Any = fairy.dbapi_connection
        self._sa: AsyncConnection | None = None
        self._savepoints = 0
        # Savepoints begun inside which nothing has run yet (as LeanConnection's).
        self.pending: list[PGSavepoint] = []

    async def sync(self) -> None:
        """Send the savepoints begun and not yet sent, outermost first."""
        for savepoint in self.pending:
            await self.sql(f"SAVEPOINT {savepoint.name}")
            savepoint.sent = True
        self.pending.clear()

    async def sql(self, text: str) -> None:
        """``text`` (no parameters, no rows) on the connection, inside the
        transaction (begun here if nothing began it yet)."""
        adapted = self._adapted
        try:
            async with adapted._execute_mutex:
                if adapted._transaction is None:
                    await adapted._start_transaction()
                try:
                    await adapted._connection.execute(text)
                except Exception as error:
                    adapted._handle_exception(error)  # raises the adapter's error
        except Exception as exc:
            raise self._error(text, exc) from exc

    def _error(self, text: str, exc: Exception) -> Exception:
        """A driver's error as SQLAlchemy raises it; a disconnect invalidates."""
        if isinstance(exc, sa_exc.SQLAlchemyError):
            return exc
        dialect = self._db.engine.dialect
        invalidated = dialect.is_disconnect(exc, self._adapted, None)  # type: ignore[arg-type]
        if invalidated:
            self._fairy.invalidate(exc)
        dbapi = dialect.loaded_dbapi
        if not isinstance(exc, dbapi.Error):
            return exc
        return sa_exc.DBAPIError.instance(text, None, exc, dbapi.Error, dialect=dialect,
                                          connection_invalidated=invalidated)

    def sqlalchemy(self) -> AsyncConnection:
        """The ``AsyncConnection`` of this transaction (made without I/O)."""
        if self._sa is None:
            sync = sa.Connection(self._db.engine.sync_engine, connection=self._fairy)
            self._sa = AsyncConnection(self._db.engine, sync)
        return self._sa

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sqlalchemy(), name)

    async def execute(self, statement: sa.Executable, parameters: Params = None, *,
                      execution_options: Mapping[str, Any] | None = None) -> Any:
        if self.pending:
            await self.sync()
        if not execution_options:
            db = self._db
            bound = lean.bind(statement, parameters, db.engine.dialect, db._cache)
            if bound is not None:
                try:
                    return await lean.asyncpg_execute(self._adapted, bound, begin=True)
                except Exception as exc:
                    if isinstance(exc, sa_exc.SQLAlchemyError):
                        raise
                    dialect = db.engine.dialect
                    if dialect.is_disconnect(exc, self._adapted, None):  # type: ignore[arg-type]
                        self._fairy.invalidate(exc)
                        raise _dbapi_error(dialect, bound, exc, invalidated=True) from exc
                    raise _dbapi_error(dialect, bound, exc) from exc
        return await self.sqlalchemy().execute(statement, parameters,
                                               execution_options=execution_options or {})

    async def scalar(self, statement: sa.Executable, parameters: Params = None) -> Any:
        return (await self.execute(statement, parameters)).scalar()

    async def scalars(self, statement: sa.Executable, parameters: Params = None) -> Any:
        return (await self.execute(statement, parameters)).scalars()

    async def exec_driver_sql(self, statement: str, parameters: Any = None) -> Any:
        if self.pending:
            await self.sync()
        return await self.sqlalchemy().exec_driver_sql(statement, parameters)

    async def run_sync(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        if self.pending:
            await self.sync()
        return await self.sqlalchemy().run_sync(fn, *args, **kw)

    def begin_nested(self) -> PGSavepoint:
        self._savepoints += 1
        return PGSavepoint(self, f"amoeba_sp_{self._savepoints}")

    async def finish(self, *, commit: bool) -> None:
        """COMMIT (or ROLLBACK) and give the connection back to the pool."""
        adapted, sa_conn = self._adapted, self._sa
        try:
            if sa_conn is not None:  # its transaction, if SQLAlchemy began one
                await (sa_conn.commit() if commit else sa_conn.rollback())
            transaction = adapted._transaction
            if transaction is not None:  # begun by a lean statement
                try:
                    await adapted._call_and_discard(
                        transaction.commit if commit else transaction.rollback)
                except Exception as error:
                    adapted._handle_exception(error)  # raises the adapter's error
        except Exception as exc:
            wrapped = self._error("COMMIT" if commit else "ROLLBACK", exc)
            if wrapped is exc:
                raise
            raise wrapped from exc
        finally:
            if sa_conn is not None:
                await sa_conn.close()  # gives the connection back
            elif adapted._transaction is None:
                self._fairy.close()  # nothing left to roll back: no I/O
            else:  # the COMMIT or ROLLBACK failed: the pool's reset talks to the server
                await greenlet_spawn(self._fairy.close)


class _SQLiteLean:
    """Statements of a ``sqlite+amoeba`` database on its one sqlite3
    connection, without SQLAlchemy's execution machinery (``lean.py``) and
    without a greenlet: the driver runs inline anyway.

    ``turn`` is who has the connection: a lone statement, a transaction, or
    SQLAlchemy (a statement ``lean`` does not take, ``run_sync``, ...).
    Another process holding the file's write lock is waited for with
    ``asyncio.sleep``.

    **Group commit.**  Units of work (a lone statement, a transaction) take
    turns on the connection.  When others are waiting for it as one finishes,
    its COMMIT is left to the last of them: the units run one after another
    inside one SQLite transaction (``BEGIN IMMEDIATE``; each transaction in a
    savepoint, so a failing one undoes only its own work) and are committed
    once, at most ``MAX_GROUP`` of them.  No unit returns before the COMMIT
    that holds its work; a COMMIT that fails fails every unit of its group.
    A unit that finds nobody waiting commits at once; a lone statement that
    finds nothing open runs in SQLite's autocommit (no BEGIN, no COMMIT)."""

    MAX_GROUP = 64

    def __init__(self, db: Database, shared: sqlite_driver.Shared):
        self.db = db
        self.shared = shared
        self.turn = asyncio.Lock()
        self.queued = 0  # tasks waiting for the turn
        self.flushing = False  # a COMMIT of the open group is scheduled
        # The open group: futures of the units done in it, waiting for its
        # COMMIT; None while no transaction is open on the connection.
        self.group: list[asyncio.Future[None]] | None = None
        self.dialect = db.engine.dialect
        self.cache = db.engine.sync_engine._compiled_cache

    def connection(self) -> sqlite3.Connection:
        conn = self.shared.conn
        if conn is None:  # closed, or never opened: Database.open connects first
            raise sa_exc.InvalidRequestError(f"database of service {self.db.service!r} is closed")
        return conn

    def bind(self, stmt: sa.Executable, params: Params) -> lean.Bound | None:
        return lean.bind(stmt, params, self.dialect, self.cache)

    async def acquire(self) -> None:
        """Take the connection, waiting at most ``pool_timeout`` as for a
        pooled one (then ``sqlalchemy.exc.TimeoutError``: 503)."""
        if not self.turn.locked() and not self.queued:
            await self.turn.acquire()
            return
        self.queued += 1
        try:
            async with asyncio.timeout(self.db.settings.pool_timeout):
                await self.turn.acquire()
        except TimeoutError:
            raise sa_exc.TimeoutError(
                f"the connection of {self.db.service!r} stayed busy for pool_timeout "
                f"({self.db.settings.pool_timeout} s)") from None
        finally:
            self.queued -= 1
            if not self.turn.locked():  # gave up waiting: an open group still needs its COMMIT
                self._kick()

    @asynccontextmanager
    async def holding(self) -> AsyncIterator[None]:
        """The connection with no transaction open on it (an open group is
        committed first): for SQLAlchemy's own use."""
        await self.acquire()
        try:
            if self.group is not None:
                await self._commit(self.connection(), ok=True, release=False)
            yield
        finally:
            self.turn.release()

    async def _begin(self, raw: sqlite3.Connection) -> None:
        if self.group is not None and not raw.in_transaction:
            # SQLite rolled the whole group back (an I/O error, a full disk):
            # its units must not be answered as committed.
            group, self.group = self.group, None
            error = self._wrap("COMMIT", sqlite3.OperationalError(
                "the group's transaction was rolled back by SQLite"))
            for waiter in group:
                if not waiter.done():
                    waiter.set_exception(error)
        if self.group is None:
            try:
                await sqlite_driver.patiently(raw.execute, "BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise self._wrap("BEGIN IMMEDIATE", exc) from exc
            self.group = []

    async def _done(self, raw: sqlite3.Connection, *, ok: bool) -> None:
        """A unit of work in the open group finished (``ok``: its work is to be
        kept).  Its COMMIT comes at the end of this turn of the event loop,
        shared with every unit that finishes before then.  Releases the turn."""
        group = self.group
        assert group is not None
        if not ok and not group:  # nothing of anyone's to keep
            await self._commit(raw, ok=False, release=True)
            return
        if len(group) + 1 >= self.MAX_GROUP:
            await self._commit(raw, ok=ok, release=True)
            return
        done: asyncio.Future[None] | None = None
        if ok:
            done = asyncio.get_running_loop().create_future()
            group.append(done)
        self.turn.release()
        self._kick()
        if done is not None:
            await done

    async def _commit(self, raw: sqlite3.Connection, *, ok: bool, release: bool) -> None:
        group, self.group = self.group or [], None
        try:
            if not raw.in_transaction:
                raise sqlite3.OperationalError("the group's transaction was rolled back by SQLite")
            if ok or group:
                await sqlite_driver.patiently(raw.execute, "COMMIT")
            else:
                raw.execute("ROLLBACK")
        except BaseException as exc:
            if raw.in_transaction:
                raw.execute("ROLLBACK")
            error = self._wrap("COMMIT", exc) if isinstance(exc, sqlite3.Error) else exc
            for waiter in group:
                if not waiter.done():
                    waiter.set_exception(error)
            if ok:
                raise error from exc
        else:
            for waiter in group:
                if not waiter.done():
                    waiter.set_result(None)
        finally:
            if release:
                self.turn.release()

    def _kick(self) -> None:
        """Commit the open group at the end of this turn of the event loop."""
        if self.group is not None and not self.flushing:
            self.flushing = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self.flushing = False
        if self.group is None or self.turn.locked() or self.queued:
            return  # whoever has or waits for the turn finishes its unit and kicks again
        raw = self.connection()
        group, self.group = self.group, None
        try:
            if not raw.in_transaction:
                raise sqlite3.OperationalError("the group's transaction was rolled back by SQLite")
            raw.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if sqlite_driver.locked(exc) and raw.in_transaction:  # wait for it, in a task
                self.group = group
                asyncio.get_running_loop().create_task(self._flush_patiently(),
                                                       name="amoeba group commit")
                return
            self._fail(group, raw, exc)
        except sqlite3.Error as exc:
            self._fail(group, raw, exc)
        else:
            for waiter in group:
                if not waiter.done():
                    waiter.set_result(None)

    def _fail(self, group: list[asyncio.Future[None]], raw: sqlite3.Connection,
              exc: sqlite3.Error) -> None:
        if raw.in_transaction:
            raw.execute("ROLLBACK")
        error = self._wrap("COMMIT", exc)
        for waiter in group:
            if not waiter.done():
                waiter.set_exception(error)

    async def _flush_patiently(self) -> None:
        with contextlib.suppress(Exception):  # its units get the error
            async with self.holding():
                pass

    async def run(self, kind: int, stmt: sa.Executable, params: Params) -> Any:
        bound = self.bind(stmt, params)
        if bound is None:
            async with self.holding():
                return await greenlet_spawn(self.db._run_sync, kind, stmt, params)
        await self.acquire()
        raw = self.connection()
        if self.group is None and not bound.many and bound.plan.read:
            try:  # a read, alone: SQLite's autocommit
                return _take(kind, await sqlite_driver.patiently(self.execute, raw, bound))
            except sqlite3.Error as exc:  # still locked after BUSY_WAIT_S
                raise self._wrap(bound.sql, exc) from exc
            finally:
                self.turn.release()
        try:
            await self._begin(raw)
            if bound.many:
                raw.execute("SAVEPOINT amoeba_unit")
                try:
                    result = self.execute(raw, bound)
                except BaseException:
                    raw.execute("ROLLBACK TO amoeba_unit")
                    raise
                finally:
                    raw.execute("RELEASE amoeba_unit")
            else:  # one statement is atomic by itself inside a transaction
                result = self.execute(raw, bound)
        except BaseException:
            if self.group is not None:
                await self._done(raw, ok=False)
            else:
                self.turn.release()
            raise
        await self._done(raw, ok=True)
        return _take(kind, result)

    def execute(self, conn: sqlite3.Connection, bound: lean.Bound) -> lean.LeanResult:
        try:
            if bound.many:
                cur = conn.executemany(bound.sql, bound.args)
            else:
                cur = conn.execute(bound.sql, bound.args[0])
            description = cur.description
            rows = cur.fetchall() if description is not None else []
        except sqlite3.OperationalError as exc:
            if sqlite_driver.locked(exc) and not conn.in_transaction:
                raise  # patiently() waits and runs it again
            raise self._wrap(bound.sql, exc, bound) from exc
        except sqlite3.Error as exc:
            raise self._wrap(bound.sql, exc, bound) from exc
        keys = [d[0] for d in description] if description is not None else None
        return bound.rows(rows, keys, cur.rowcount, cur.lastrowid)

    def _wrap(self, sql: str, exc: BaseException, bound: lean.Bound | None = None) -> BaseException:
        return sa_exc.DBAPIError.instance(sql, bound.args if bound else None, exc, sqlite3.Error,
                                          dialect=self.dialect,
                                          ismulti=bound.many if bound else None)

    async def open(self) -> LeanConnection:
        """A unit of work of ``Database.transaction()``: the connection's turn,
        inside the open group (begun if none), in a savepoint of its own."""
        await self.acquire()
        raw = self.connection()
        try:
            await self._begin(raw)
        except BaseException:
            self.turn.release()
            raise
        try:
            raw.execute("SAVEPOINT amoeba_unit")
        except BaseException:  # (the group's other units keep their work)
            await self._done(raw, ok=False)
            raise
        return LeanConnection(self, raw)

    async def close(self, conn: LeanConnection, *, ok: bool) -> None:
        """End the unit ``open`` began: its work kept (``ok``, returning once
        its group committed) or undone."""
        raw = conn._raw
        try:
            await conn.close()
            if ok:
                raw.execute("RELEASE amoeba_unit")
        except BaseException:
            await self._undo(raw)
            raise
        if ok:
            await self._done(raw, ok=True)
        else:
            await self._undo(raw)

    async def _undo(self, raw: sqlite3.Connection) -> None:
        """Roll the unit back to its savepoint; the group's other units keep their work."""
        raw.execute("ROLLBACK TO amoeba_unit")
        raw.execute("RELEASE amoeba_unit")
        await self._done(raw, ok=False)


class LeanConnection:
    """What ``Database.transaction()`` yields on ``sqlite+amoeba``: the
    statement methods of SQLAlchemy's ``AsyncConnection`` run inline on the
    transaction's sqlite3 connection; ``run_sync``, ``exec_driver_sql`` and
    statements ``lean`` does not take run on an ``AsyncConnection`` opened on
    first use over the same connection, inside the same transaction."""

    def __init__(self, owner: _SQLiteLean, raw: sqlite3.Connection):
        self._owner = owner
        self._raw = raw
        self._sa: AsyncConnection | None = None
        self._savepoints = 0
        # Savepoints begun inside which nothing has run yet: sent just before the
        # first statement, so a handler that writes nothing costs no SAVEPOINT
        # and RELEASE (the inbox's savepoint per event of a batch).
        self.pending: list[Savepoint] = []

    def sync(self) -> None:
        """Send the savepoints begun and not yet sent, outermost first."""
        for savepoint in self.pending:
            self._raw.execute(f"SAVEPOINT {savepoint.name}")
            savepoint.sent = True
        self.pending.clear()

    async def execute(self, statement: sa.Executable, parameters: Params = None, *,
                      execution_options: Mapping[str, Any] | None = None) -> Any:
        if self.pending:
            self.sync()
        if not execution_options:
            bound = self._owner.bind(statement, parameters)
            if bound is not None:
                return self._owner.execute(self._raw, bound)
        conn = await self.sqlalchemy()
        return await conn.execute(statement, parameters,
                                  execution_options=execution_options or {})

    async def scalar(self, statement: sa.Executable, parameters: Params = None) -> Any:
        return (await self.execute(statement, parameters)).scalar()

    async def scalars(self, statement: sa.Executable, parameters: Params = None) -> Any:
        return (await self.execute(statement, parameters)).scalars()

    async def exec_driver_sql(self, statement: str, parameters: Any = None) -> Any:
        return await (await self.sqlalchemy()).exec_driver_sql(statement, parameters)

    async def run_sync(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        return await (await self.sqlalchemy()).run_sync(fn, *args, **kw)

    def begin_nested(self) -> Savepoint:
        self._savepoints += 1
        return Savepoint(self.pending, f"amoeba_sp_{self._savepoints}", self._raw)

    async def sqlalchemy(self) -> AsyncConnection:
        """An ``AsyncConnection`` inside this transaction (SQLAlchemy's pool
        holds the same sqlite3 connection; its BEGIN is skipped: ours is open)."""
        if self.pending:
            self.sync()
        if self._sa is None:
            conn = await self._owner.db.engine.connect()
            self._owner.shared.owned = True
            await conn.execution_options(amoeba_begin="")
            await conn.begin()
            self._sa = conn
        return self._sa

    async def close(self) -> None:
        """Close the SQLAlchemy connection of this transaction, if one was
        opened: its ROLLBACK is skipped (``Shared.owned``), the transaction
        is ours to end."""
        if self._sa is not None:
            sa_conn, self._sa = self._sa, None
            try:
                await sa_conn.close()
            finally:
                self._owner.shared.owned = False


class Savepoint:
    """``begin_nested()`` of a :class:`LeanConnection` (and, through
    :class:`PGSavepoint`, of a :class:`PGConnection`): ``async with``
    (released on success, rolled back to on an exception), or awaited and
    then ``commit()`` / ``rollback()``, as SQLAlchemy's ``AsyncTransaction``.
    SAVEPOINT is sent only when something first runs inside it (the
    connection's ``sync``): with nothing inside, there is nothing to release
    or to roll back."""

    def __init__(self, pending: list[Any], name: str, raw: sqlite3.Connection | None = None):
        self._pending = pending  # the connection's savepoints not yet sent
        self._raw = raw
        self.name = name
        self._open = False
        self.sent = False

    async def _send(self, sql: str) -> None:
        assert self._raw is not None
        self._raw.execute(sql)

    async def start(self) -> Savepoint:
        self._open = True
        self._pending.append(self)
        return self

    def __await__(self) -> Any:
        return self.start().__await__()

    def _close(self) -> bool:
        """Closed now; was its SAVEPOINT sent?"""
        self._open = False
        if not self.sent:
            with contextlib.suppress(ValueError):
                self._pending.remove(self)
        return self.sent

    async def commit(self) -> None:
        if self._open and self._close():
            await self._send(f"RELEASE SAVEPOINT {self.name}")

    async def rollback(self) -> None:
        if self._open and self._close():
            await self._send(f"ROLLBACK TO SAVEPOINT {self.name}")
            await self._send(f"RELEASE SAVEPOINT {self.name}")

    async def __aenter__(self) -> Savepoint:
        return await self.start()

    async def __aexit__(self, kind: type[BaseException] | None, *_: Any) -> None:
        if kind is None:
            await self.commit()
        else:
            await self.rollback()


class PGSavepoint(Savepoint):
    """``begin_nested()`` of a :class:`PGConnection`: as :class:`Savepoint`,
    its SQL straight to asyncpg, without SQLAlchemy's nested transaction and
    greenlet."""

    def __init__(self, conn: PGConnection, name: str):
        super().__init__(conn.pending, name)
        self._conn = conn

    async def _send(self, sql: str) -> None:
        await self._conn.sql(sql)
