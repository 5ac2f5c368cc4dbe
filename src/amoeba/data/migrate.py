"""Alembic migrations of a :class:`~amoeba.data.database.Database`, run
without an ``env.py``.

A service's migration directory holds only ``versions/`` with standard
Alembic revision scripts (``revision``, ``down_revision``, ``upgrade()``,
``downgrade()`` using ``alembic.op``).  Alembic is driven from here
(``ScriptDirectory`` + ``EnvironmentContext(fn=...)`` on a connection of the
service's own engine), so each service's ``alembic_version`` table lives in
its own schema / database / file.

Replicas starting at once serialize on a lock held while the schema is
created and upgraded: ``pg_advisory_lock`` on PostgreSQL, ``GET_LOCK`` on
MySQL, ``flock`` on ``<file>.lock`` beside a SQLite file.  The first replica
migrates; the others find the schema at head.

    await upgrade(db, "head")     # -> (before, after) revisions, None = empty
    await downgrade(db, "abc123")
    await current(db)             # -> revision or None
    history(db)                   # -> [alembic Script], newest first
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext
from alembic.script import Script, ScriptDirectory
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine
from sqlalchemy.pool import NullPool

from amoeba.errors import Unavailable

if TYPE_CHECKING:
    from amoeba.data.database import Database

__all__ = ["current", "downgrade", "history", "prepare", "upgrade"]

Revisions = tuple[str | None, str | None]
LOCK_WAIT = 300  # seconds a replica waits for another one's migration (MySQL)
log = logging.getLogger("amoeba.data")
_POLL = 0.02
# Alembic publishes the running migration through module globals (alembic.op,
# alembic.context): two migrations interleaving on one event loop would
# overwrite each other's.  One at a time per loop.
_loop_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary())


async def prepare(db: Database, *, run: bool) -> bool:
    """What ``Database.open`` does: create the service's schema if missing and,
    when ``run``, upgrade it to head.  True when it started from nothing."""
    async with _holding(db) as fresh:
        if not run or db.migrations is None:
            return fresh
        before, after = await _migrate(db, "upgrade", "head")
        if before != after:
            log.info("%s: database upgraded %s -> %s (%s)", db.service, before or "empty", after,
                     db.safe_url)
        return fresh or (before is None and after is not None)


async def upgrade(db: Database, target: str = "head") -> Revisions:
    async with _holding(db):
        return await _migrate(db, "upgrade", target)


async def downgrade(db: Database, target: str) -> Revisions:
    async with _holding(db):
        return await _migrate(db, "downgrade", target)


async def current(db: Database) -> str | None:
    opts = _opts(db)
    async with db.guard(), db.engine.connect() as conn:
        return await conn.run_sync(
            lambda c: MigrationContext.configure(c, opts=opts).get_current_revision())


def history(db: Database) -> list[Script]:
    return list(_script(db).walk_revisions())


# -- alembic -------------------------------------------------------------------
def _script(db: Database) -> ScriptDirectory:
    if db.migrations is None:
        raise ValueError(f"service {db.service!r} declares no migrations; set "
                         f"`migrations = \"migrations/{db.service}\"` on its class")
    return ScriptDirectory(str(db.migrations))


def _opts(db: Database) -> dict[str, Any]:
    # PostgreSQL's search_path already points at the schema; naming it keeps
    # the version table there even if a migration changes search_path.
    return {"version_table_schema": db.schema} if db.dialect == "postgresql" else {}


async def _migrate(db: Database, direction: str, target: str) -> Revisions:
    script = _script(db)
    opts = _opts(db)

    def steps(rev: Any, _context: MigrationContext) -> Any:
        if direction == "upgrade":
            return script._upgrade_revs(target, rev)
        return script._downgrade_revs(target, rev)

    def run(conn: sa.Connection) -> Revisions:
        before = MigrationContext.configure(conn, opts=opts).get_current_revision()
        with EnvironmentContext(Config(), script, fn=steps, destination_rev=target) as env:
            env.configure(connection=conn, **opts)
            with env.begin_transaction():  # inside ours: one transaction where DDL allows
                env.run_migrations()
            after = env.get_context().get_current_revision()
        return before, after

    loop = asyncio.get_running_loop()
    lock = _loop_locks.setdefault(loop, asyncio.Lock())
    async with lock, db.transaction() as conn:
        revisions: Revisions = await conn.run_sync(run)
    return revisions


# -- one migrator at a time --------------------------------------------------
@asynccontextmanager
async def _holding(db: Database) -> AsyncIterator[bool]:
    """Hold the service's migration lock; create its schema / database if
    missing (yielding True then) and check that its engine connects."""
    if db.dialect == "sqlite":
        cm = _sqlite_lock(db)
    elif db.dialect == "postgresql":
        cm = _server_lock(db, _pg_enter, _pg_exit)
    else:
        cm = _server_lock(db, _mysql_enter, _mysql_exit)
    async with cm as fresh:
        async with db.guard(), db.engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))  # SQLite: creates the file
        yield fresh


@asynccontextmanager
async def _sqlite_lock(db: Database) -> AsyncIterator[bool]:
    import fcntl

    assert db.path is not None
    db.path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(db.path.with_name(db.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        while True:  # polled: a blocking flock would stall the event loop
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await asyncio.sleep(_POLL)
        yield not db.path.exists()
    finally:
        os.close(fd)  # releases the lock


def _lock_name(db: Database) -> str:
    return f"amoeba.migrate.{db.engine.url.database}.{db.schema}"


Step = Callable[["Database", AsyncConnection], Any]


@asynccontextmanager
async def _server_lock(db: Database, enter: Step, exit_: Step) -> AsyncIterator[bool]:
    # A connection of its own, outside the service's pool (whose size may be
    # 1), and not to the service's MySQL database, which may not exist yet.
    assert db.admin_url is not None
    admin = create_async_engine(db.admin_url, poolclass=NullPool)
    try:
        async with db.guard(), admin.connect() as conn:
            fresh = await enter(db, conn)
            await conn.commit()
            try:
                yield fresh
            finally:
                # If the connection is gone, so is the session and its lock.
                with suppress(sa_exc.SQLAlchemyError, OSError):
                    await exit_(db, conn)
                    await conn.commit()
    finally:
        await admin.dispose()


async def _pg_enter(db: Database, conn: AsyncConnection) -> bool:
    digest = hashlib.sha256(_lock_name(db).encode()).digest()
    key = int.from_bytes(digest[:8], "big", signed=True)
    conn.info["amoeba_lock"] = key
    await conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": key})
    exists = await conn.scalar(sa.text("SELECT 1 FROM pg_namespace WHERE nspname = :s"),
                               {"s": db.schema})
    if not exists:
        await conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{db.schema}"'))
    return not exists


async def _pg_exit(db: Database, conn: AsyncConnection) -> None:
    await conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": conn.info["amoeba_lock"]})


async def _mysql_enter(db: Database, conn: AsyncConnection) -> bool:
    # GET_LOCK names are at most 64 characters.
    name = hashlib.sha256(_lock_name(db).encode()).hexdigest()[:48]
    conn.info["amoeba_lock"] = name
    got = await conn.scalar(sa.text("SELECT GET_LOCK(:n, :t)"), {"n": name, "t": LOCK_WAIT})
    if got != 1:
        raise Unavailable(f"database of service {db.service!r}: another process held the "
                          f"migration lock for {LOCK_WAIT}s ({db.safe_url})")
    exists = await conn.scalar(
        sa.text("SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = :s"),
        {"s": db.schema})
    if not exists:
        await conn.execute(sa.text(f"CREATE DATABASE IF NOT EXISTS `{db.schema}` "
                                   f"CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"))
    return not exists


async def _mysql_exit(db: Database, conn: AsyncConnection) -> None:
    await conn.execute(sa.text("SELECT RELEASE_LOCK(:n)"), {"n": conn.info["amoeba_lock"]})
