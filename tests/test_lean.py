"""The ``Database``'s own statement path (``amoeba/data/lean.py``) on ``sqlite+amoeba``
and on PostgreSQL with asyncpg: it answers what SQLAlchemy's execution answers,
row for row and type for type, keeps transactions atomic when it and SQLAlchemy
share one; on SQLite it waits for another process's write lock and groups
commits."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from servers import postgres_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from amoeba import Database, Unavailable
from amoeba.data import sqlite_driver
from amoeba.resource import ResourceContext


class Stamp(sa.TypeDecorator[datetime]):
    """Stored as text, read back as an aware datetime: both processors run."""

    impl = sa.String
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> str | None:
        return None if value is None else value.isoformat()

    def process_result_value(self, value: str | None, dialect: Any) -> datetime | None:
        return None if value is None else datetime.fromisoformat(value)


meta = sa.MetaData()
things = sa.Table(
    "things", meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(50), nullable=False, unique=True),
    sa.Column("price", sa.Numeric(10, 2), nullable=False),
    sa.Column("at", Stamp, nullable=False),
)
AT = datetime(2026, 11, 29, 12, 30, tzinfo=UTC)


class Scratch:
    name = "scratch"


async def _pg_admin(sql: str) -> None:
    base = postgres_url().replace("postgresql://", "postgresql+asyncpg://", 1)
    engine = create_async_engine(f"{base}/postgres", poolclass=NullPool,
                                 isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(sa.text(sql))
    finally:
        await engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
async def any_db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    if request.param == "sqlite":
        async for database in _opened(tmp_path, None):
            assert database._lean is not None, "sqlite+amoeba should take the lean path"
            yield database
        return
    async for database in _pg_opened(tmp_path):
        yield database


async def _pg_opened(tmp_path: Path) -> AsyncIterator[Database]:
    """A database of its own on the shared PostgreSQL, dropped afterwards."""
    name = f"amoeba_t_{uuid.uuid4().hex[:10]}"
    await _pg_admin(f'CREATE DATABASE "{name}"')
    try:
        async for database in _opened(tmp_path, f"{postgres_url()}/{name}"):
            assert database._pg_lean, "asyncpg should take the lean path"
            yield database
    finally:
        await _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    async for database in _opened(tmp_path, None):
        assert database._lean is not None, "sqlite+amoeba should take the lean path"
        yield database


async def _opened(tmp_path: Path, url: str | None) -> AsyncIterator[Database]:
    database = await Database.open(ResourceContext("scratch", url, tmp_path, {}, owner=Scratch))
    async with database.transaction() as conn:
        await conn.run_sync(meta.create_all)
    await database.execute(things.insert(), [
        {"name": f"t{i}", "price": Decimal(f"{i}.50"), "at": AT} for i in range(1, 6)])
    try:
        yield database
    finally:
        await database.aclose()


def _sqlalchemy_statements(db: Database) -> list[str]:
    seen: list[str] = []
    sa.event.listen(db.engine.sync_engine, "before_cursor_execute",
                    lambda *args: seen.append(args[2]))
    return seen


async def _through_sqlalchemy(db: Database, stmt: Any, params: Any = None) -> list[sa.Row[Any]]:
    if db._lean is None:
        async with db.engine.connect() as conn:
            return list((await conn.execute(stmt, params)).all())
    async with db._lean.holding(), db.engine.connect() as conn:
        return list((await conn.execute(stmt, params)).all())


@pytest.mark.parametrize("stmt, params", [
    (sa.select(things).order_by(things.c.id), None),
    (sa.select(things.c.name, things.c.price).where(things.c.id == sa.bindparam("i")), {"i": 3}),
    (sa.select(things.c.id).where(things.c.id.in_([2, 4, 9])).order_by(things.c.id), None),
    (sa.select(things.c.at, sa.func.count()).group_by(things.c.at), None),
    (sa.text("SELECT name, price FROM things WHERE id > :i ORDER BY id"), {"i": 3}),
])
async def test_rows_are_sqlalchemys_rows(any_db: Database, stmt: Any, params: Any):
    expected = await _through_sqlalchemy(any_db, stmt, params)
    seen = _sqlalchemy_statements(any_db)
    got = await any_db.fetchall(stmt, params)
    assert seen == [], "the statement went through SQLAlchemy's execution"
    assert got == expected and got
    assert [r._fields for r in got] == [r._fields for r in expected]
    assert [[type(v) for v in r] for r in got] == [[type(v) for v in r] for r in expected]
    assert [r._mapping for r in got] == [r._mapping for r in expected]


async def test_a_statement_derived_from_a_used_one_is_its_own(any_db: Database):
    """SQLAlchemy copies a statement's attributes into the statements derived
    from it (``.where()``, ``.limit()``): what the first compiled to must not
    answer for them."""
    base = sa.select(things.c.id).order_by(things.c.id)
    assert [i for (i,) in await any_db.fetchall(base)] == [1, 2, 3, 4, 5]
    for above in (1, 3):
        derived = base.where(things.c.id > above).limit(1)
        assert [i for (i,) in await any_db.fetchall(derived)] == [above + 1]
    assert [i for (i,) in await any_db.fetchall(base)] == [1, 2, 3, 4, 5]


async def test_writes_and_their_results(any_db: Database):
    seen = _sqlalchemy_statements(any_db)
    async with any_db.transaction() as conn:
        result = await conn.execute(things.insert(), {"name": "new", "price": Decimal("2.25"),
                                                      "at": AT})
        new_id = result.inserted_primary_key[0]
        assert new_id == 6
        row = (await conn.execute(
            things.update().where(things.c.id == new_id).values(price=things.c.price + 1)
            .returning(things.c.price, things.c.at))).one()
        assert row.price == Decimal("3.25") and row.at == AT
        many = await conn.execute(things.update().where(things.c.id == sa.bindparam("i"))
                                  .values(name=sa.bindparam("n")),
                                  [{"i": 1, "n": "one"}, {"i": 2, "n": "two"}])
        # what SQLAlchemy answers too: asyncpg's executemany reports no count
        assert many.rowcount == (-1 if any_db.dialect == "postgresql" else 2)
        assert await conn.scalar(sa.select(sa.func.count()).select_from(things)) == 6
        assert (await conn.scalars(sa.select(things.c.name).where(things.c.id < 3)
                                   .order_by(things.c.id))).all() == ["one", "two"]
    assert seen == []
    assert (await any_db.execute(things.delete().where(things.c.id > 4))).rowcount == 2


async def test_integrity_errors_are_sqlalchemys(any_db: Database):
    with pytest.raises(sa.exc.IntegrityError):
        await any_db.execute(things.insert().values(name="t1", price=1, at=AT))
    with pytest.raises(sa.exc.IntegrityError):
        async with any_db.transaction() as conn:
            await conn.execute(things.insert().values(name="t2", price=1, at=AT))
    assert await any_db.scalar(sa.select(sa.func.count()).select_from(things)) == 5


async def test_lean_and_sqlalchemy_share_one_transaction(any_db: Database):
    """A statement through SQLAlchemy (run_sync) and lean statements see each
    other's writes, and one rollback undoes both."""
    with pytest.raises(RuntimeError):
        async with any_db.transaction() as conn:
            await conn.execute(things.insert().values(name="lean", price=1, at=AT))
            await conn.run_sync(lambda c: c.execute(things.insert().values(name="sa", price=1,
                                                                            at=AT)))
            names = (await conn.execute(sa.select(things.c.name).where(things.c.id > 5))).all()
            assert sorted(n for (n,) in names) == ["lean", "sa"]
            raise RuntimeError("roll back")
    assert await any_db.scalar(sa.select(sa.func.count()).select_from(things)) == 5
    async with any_db.transaction() as conn:
        await conn.run_sync(lambda c: c.execute(things.insert().values(name="sa", price=1, at=AT)))
        await conn.execute(things.insert().values(name="lean", price=1, at=AT))
    assert await any_db.scalar(sa.select(sa.func.count()).select_from(things)) == 7


async def test_a_savepoint_undoes_only_its_own_work(any_db: Database):
    async with any_db.transaction() as conn:
        await conn.execute(things.insert().values(name="kept", price=1, at=AT))
        with pytest.raises(sa.exc.IntegrityError):
            async with conn.begin_nested():
                await conn.execute(things.insert().values(name="undone", price=1, at=AT))
                await conn.execute(things.insert().values(name="t1", price=1, at=AT))
        sp = await conn.begin_nested()
        await conn.execute(things.insert().values(name="also kept", price=1, at=AT))
        await sp.commit()
    names = {n for (n,) in await any_db.fetchall(sa.select(things.c.name))}
    assert {"kept", "also kept"} <= names and "undone" not in names


async def test_nested_savepoints_keep_their_order_whatever_runs_first_inside(any_db: Database):
    async with any_db.transaction() as conn:
        outer = await conn.begin_nested()
        inner = await conn.begin_nested()
        await conn.run_sync(lambda c: c.execute(things.insert().values(name="inner", price=1, at=AT)))
        await inner.commit()
        await conn.execute(things.insert().values(name="outer", price=1, at=AT))
        await outer.rollback()  # undoes both: the inner one was released into it
        async with conn.begin_nested():
            pass  # nothing inside: nothing to release
        with pytest.raises(RuntimeError):
            async with conn.begin_nested():
                raise RuntimeError("before any statement: nothing to roll back")
        await conn.execute(things.insert().values(name="after", price=1, at=AT))
    names = {n for (n,) in await any_db.fetchall(sa.select(things.c.name))}
    assert "after" in names and not names & {"inner", "outer"}


async def test_a_savepoint_with_nothing_inside_costs_no_statement(db: Database):
    assert db._lean is not None
    raw = db._lean.connection()
    sent: list[str] = []
    raw.set_trace_callback(sent.append)
    try:
        async with db.transaction() as conn:
            for _ in range(3):
                async with conn.begin_nested():
                    pass
            async with conn.begin_nested():
                await conn.execute(things.insert().values(name="one", price=1, at=AT))
    finally:
        raw.set_trace_callback(None)
    savepoints = [q for q in sent if "amoeba_sp" in q]
    assert savepoints == ["SAVEPOINT amoeba_sp_4", "RELEASE SAVEPOINT amoeba_sp_4"], sent


@pytest.fixture
async def pg_db(tmp_path: Path) -> AsyncIterator[Database]:
    async for database in _pg_opened(tmp_path):
        yield database


async def test_a_postgresql_transaction_takes_one_greenlet_and_gives_its_connection_back(
        pg_db: Database, monkeypatch: pytest.MonkeyPatch):
    from amoeba.data import database as module

    spawned: list[Any] = []
    real = module.greenlet_spawn

    async def counting(fn: Any, *args: Any, **kw: Any) -> Any:
        spawned.append(fn)
        return await real(fn, *args, **kw)

    monkeypatch.setattr(module, "greenlet_spawn", counting)
    pool: Any = pg_db.engine.sync_engine.pool
    async with pg_db.transaction() as conn:
        await conn.execute(things.insert().values(name="a", price=1, at=AT))
        async with conn.begin_nested():  # savepoints too, sent or not
            await conn.execute(things.update().where(things.c.name == "a").values(price=2))
        async with conn.begin_nested():
            pass
        with pytest.raises(sa.exc.IntegrityError):
            async with conn.begin_nested():
                await conn.execute(things.insert().values(name="a", price=3, at=AT))
        assert pool.checkedout() == 1
    assert len(spawned) == 1, spawned  # the checkout; BEGIN, COMMIT and checkin without one
    assert pool.checkedout() == 0
    assert await pg_db.scalar(sa.select(things.c.price).where(things.c.name == "a")) == 2

    with pytest.raises(RuntimeError):
        async with pg_db.transaction() as conn:
            await conn.execute(things.insert().values(name="b", price=1, at=AT))
            raise RuntimeError("undo")
    assert pool.checkedout() == 0
    assert await pg_db.scalar(sa.select(sa.func.count()).where(things.c.name == "b")) == 0

    async with pg_db.transaction() as conn:  # SQLAlchemy first, then lean: one transaction
        await conn.run_sync(lambda c: c.execute(things.insert().values(name="c", price=1, at=AT)))
        await conn.execute(things.insert().values(name="d", price=1, at=AT))
        assert await conn.scalar(sa.select(sa.func.count()).where(
            things.c.name.in_(["c", "d"]))) == 2
    assert pool.checkedout() == 0
    assert await pg_db.scalar(sa.select(sa.func.count()).where(
        things.c.name.in_(["c", "d"]))) == 2


async def test_a_failing_postgresql_commit_is_sqlalchemys_error(pg_db: Database):
    async with pg_db.transaction() as conn:  # checked at COMMIT, not at the INSERT
        await conn.exec_driver_sql("ALTER TABLE things ADD CONSTRAINT one_price UNIQUE (price) "
                                   "DEFERRABLE INITIALLY DEFERRED")
    pool: Any = pg_db.engine.sync_engine.pool
    with pytest.raises(sa.exc.IntegrityError, match="one_price"):
        async with pg_db.transaction() as conn:  # lean statements only: the COMMIT is ours
            await conn.execute(things.insert().values(name="x", price=777, at=AT))
            await conn.execute(things.insert().values(name="y", price=777, at=AT))
    assert pool.checkedout() == 0
    assert await pg_db.scalar(sa.select(sa.func.count()).where(things.c.price == 777)) == 0
    async with pg_db.transaction() as conn:  # the connection went back clean
        await conn.execute(things.insert().values(name="z", price=777, at=AT))
    assert await pg_db.scalar(sa.select(sa.func.count()).where(things.c.price == 777)) == 1


async def test_bound_values_come_from_the_caller_and_the_statement_alike(any_db: Database):
    """The driver's parameters, mixed from the caller's values, the statement's
    own literals, bind defaults and callables, each call anew."""
    calls = iter(range(100, 200))
    stmt = things.insert().values(name=sa.bindparam("n"), price=sa.bindparam("p", value=7),
                                  at=AT)
    for i in range(3):  # the first call finds where each value comes from; the others reuse it
        await any_db.execute(stmt, {"n": f"lit{i}", "p": i})
    await any_db.execute(stmt, {"n": "default"})  # another key set: p's default
    await any_db.execute(stmt, [{"n": "many1", "p": 1}, {"n": "many2", "p": 2}])
    with pytest.raises(sa.exc.InvalidRequestError, match=r"parameter .n., in parameter group 1"):
        await any_db.execute(stmt, [{"n": "ok", "p": 1}, {"p": 2}])  # the second lacks n
    later = things.update().where(things.c.name == sa.bindparam("who")).values(
        price=sa.bindparam("p", callable_=lambda: next(calls)))
    await any_db.execute(later, {"who": "lit0"})
    await any_db.execute(later, {"who": "lit1"})
    rows = {r.name: r.price for r in await any_db.fetchall(
        sa.select(things.c.name, things.c.price).where(things.c.id > 5))}
    assert rows == {"lit0": 100, "lit1": 101, "lit2": 2, "default": 7, "many1": 1, "many2": 2}
    assert all(type(v) is Decimal for v in rows.values())


async def test_statements_built_per_call_bind_their_own_values(any_db: Database):
    """A statement built anew for each call finds the plan of an equal one, made
    by an earlier call; one carrying literals of its own binds those, never the
    literals of an earlier statement that compiled the same."""
    for i in range(3):  # no values of its own: the plan is shared through the compiled form
        await any_db.execute(things.insert(), {"name": f"call{i}", "price": 10 + i, "at": AT})
    for i in range(3):  # its own literal each time: same compiled form, other values
        await any_db.execute(things.insert().values(name=f"lit{i}", price=20 + i), {"at": AT})
    for i in range(3):
        await any_db.execute(things.update().where(things.c.name == f"lit{i}")
                             .values(price=sa.bindparam("p")), {"p": 30 + i})
    rows = {r.name: r.price for r in await any_db.fetchall(
        sa.select(things.c.name, things.c.price).where(things.c.id > 5))}
    assert rows == {"call0": 10, "call1": 11, "call2": 12, "lit0": 30, "lit1": 31, "lit2": 32}


async def test_in_lists_of_any_length_bind_their_own_values(any_db: Database):
    """An IN list's expansion is found once per length and reused: each call
    binds its own list, the caller's other values, through the column type's
    bind processor, and the statement's own literals; none of it goes
    SQLAlchemy's way."""
    seen = _sqlalchemy_statements(any_db)
    in_names = sa.bindparam("names", expanding=True)
    by_name = sa.select(things.c.name).where(things.c.name.in_(in_names)).order_by(things.c.name)
    for names in (["t1"], ["t2", "t3"], ["t1"], ["t5", "t4", "nope"], [], ["t3", "t2"]):
        got = [r.name for r in await any_db.fetchall(by_name, {"names": names})]
        assert got == sorted(n for n in names if n != "nope"), names
    by_at = sa.select(things.c.name).where(  # Stamp's processor turns each element to text
        things.c.at.in_(sa.bindparam("ats", expanding=True)),
        things.c.price > sa.bindparam("p")).order_by(things.c.name)
    other = AT.replace(hour=1)
    for p, ats, want in ((2, [AT], ["t2", "t3", "t4", "t5"]), (4, [other, AT], ["t4", "t5"]),
                         (0, [other], []), (3, [AT], ["t3", "t4", "t5"])):
        got = [r.name for r in await any_db.fetchall(by_at, {"ats": ats, "p": Decimal(p)})]
        assert got == want, (p, ats)
    for ids in ([1, 2], [3, 4], [5], [2, 1]):  # lists of its own, built per call
        stmt = sa.select(things.c.id).where(things.c.id.in_(ids), things.c.name != "x")
        for _ in range(2):  # the second call of the same statement reuses its expansion
            assert sorted(r.id for r in await any_db.fetchall(stmt)) == sorted(ids)
    async with any_db.transaction() as conn:  # a DELETE as the outbox relay's
        gone = await conn.execute(things.delete().where(things.c.id.in_(
            sa.bindparam("ids", expanding=True))), {"ids": [4, 5, 99]})
        assert gone.rowcount == 2
    assert await any_db.scalar(sa.select(sa.func.count()).select_from(things)) == 3
    assert seen == []


async def test_a_unit_that_cannot_open_its_savepoint_gives_the_connection_back(db: Database):
    assert db._lean is not None
    real = db._lean.shared.conn

    class Failing:  # the connection, but its unit's SAVEPOINT fails once (a full disk, say)
        failed = False

        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def execute(self, sql: str, *args: Any) -> Any:
            if sql == "SAVEPOINT amoeba_unit" and not self.failed:
                self.failed = True
                raise sqlite3.OperationalError("database or disk is full")
            return real.execute(sql, *args)

    db._lean.shared.conn = Failing()  # type: ignore[assignment]
    try:
        with pytest.raises(Exception, match="full"):
            async with db.transaction():
                pass
        async with asyncio.timeout(5):  # the turn came back: not a pool_timeout
            async with db.transaction() as conn:
                await conn.execute(things.update().values(price=1))
    finally:
        db._lean.shared.conn = real
    assert await db.scalar(sa.select(sa.func.sum(things.c.price))) == 5


async def test_a_busy_connection_is_unavailable_after_pool_timeout(tmp_path: Path):
    database = await Database.open(ResourceContext(
        "scratch", None, tmp_path, {"database": {"pool_timeout": 0.2}}, owner=Scratch))
    try:
        held, done = asyncio.Event(), asyncio.Event()

        async def hold() -> None:
            async with database.transaction():
                held.set()
                await done.wait()

        holder = asyncio.create_task(hold())
        await held.wait()
        with pytest.raises(Unavailable, match="scratch"):
            await database.scalar("SELECT 1")
        done.set()
        await holder
        assert await database.scalar("SELECT 1") == 1
    finally:
        await database.aclose()


async def test_another_process_write_lock_is_waited_for(db: Database,
                                                        monkeypatch: pytest.MonkeyPatch):
    other = sqlite3.connect(db.path, isolation_level=None)  # type: ignore[arg-type]
    try:
        other.execute("BEGIN IMMEDIATE")
        write = asyncio.create_task(db.execute(things.update().values(price=9)))
        await asyncio.sleep(0.05)
        assert not write.done(), "the write did not wait for the lock"
        other.execute("COMMIT")
        assert (await asyncio.wait_for(write, 10)).rowcount == 5

        monkeypatch.setattr(sqlite_driver, "BUSY_WAIT_S", 0.2)
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(Unavailable, match="locked"):
            await db.execute(things.update().values(price=8))
        with pytest.raises(Unavailable, match="locked"):
            async with db.transaction():
                pass
        other.execute("ROLLBACK")
        assert await db.scalar(sa.select(sa.func.max(things.c.price))) == Decimal("9.00")
    finally:
        other.close()


def _trace(db: Database) -> list[str]:
    statements: list[str] = []
    assert db._lean is not None and db._lean.shared.conn is not None
    db._lean.shared.conn.set_trace_callback(statements.append)
    return statements


async def test_concurrent_units_share_a_commit_and_return_after_it(db: Database):
    """32 transactions and 32 lone writes at once: every one is visible to
    another connection as soon as it returns, a failing one undoes only its
    own work, and they took far fewer COMMITs than units."""
    statements = _trace(db)
    other = sqlite3.connect(db.path, isolation_level=None)  # type: ignore[arg-type]
    unseen: list[str] = []

    def visible(name: str) -> None:
        if other.execute("SELECT 1 FROM things WHERE name = ?", (name,)).fetchone() is None:
            unseen.append(name)

    async def tx(i: int) -> None:
        async with db.transaction() as conn:
            await conn.execute(things.insert().values(name=f"tx{i}", price=i, at=AT))
            await asyncio.sleep(0)
            if i % 8 == 3:
                await conn.execute(things.insert().values(name="t1", price=i, at=AT))  # taken
            await conn.execute(things.update().where(things.c.name == f"tx{i}").values(price=i + 1))
        visible(f"tx{i}")

    async def lone(i: int) -> None:
        await db.execute(things.insert().values(name=f"lone{i}", price=i, at=AT))
        visible(f"lone{i}")

    try:
        results = await asyncio.gather(*(tx(i) for i in range(32)), *(lone(i) for i in range(32)),
                                       return_exceptions=True)
        failed = [i for i, r in enumerate(results[:32]) if r is not None]
        assert failed == [i for i in range(32) if i % 8 == 3]
        assert all(isinstance(results[i], sa.exc.IntegrityError) for i in failed)
        assert all(r is None for r in results[32:])
        assert unseen == []
        names = {n for (n,) in other.execute("SELECT name FROM things")}
        assert {f"tx{i}" for i in range(32) if i not in failed} <= names
        assert not {f"tx{i}" for i in failed} & names
        assert {f"lone{i}" for i in range(32)} <= names
        commits = sum(1 for s in statements if s == "COMMIT")
        assert 1 <= commits <= 8, f"{commits} COMMITs for 64 units"
    finally:
        other.close()


async def test_a_group_is_committed_when_its_last_waiter_gives_up(db: Database,
                                                                  monkeypatch: pytest.MonkeyPatch):
    """A unit that leaves the COMMIT to a waiting one is still answered, and
    its work committed, when that waiter is cancelled instead of taking its turn."""
    lean = db._lean
    assert lean is not None
    release = asyncio.Event()

    async def slow() -> None:
        async with db.transaction() as conn:
            await conn.execute(things.insert().values(name="slow", price=1, at=AT))
            await release.wait()

    first = asyncio.create_task(slow())
    await asyncio.sleep(0.01)
    waiter = asyncio.create_task(db.execute(things.insert().values(name="late", price=1, at=AT)))
    await asyncio.sleep(0.01)
    assert lean.queued == 1
    handed = lean.turn.release

    def release_then_cancel() -> None:  # the waiter is cancelled as the turn is handed to it
        handed()
        waiter.cancel()

    monkeypatch.setattr(lean.turn, "release", release_then_cancel)
    release.set()
    await asyncio.wait_for(first, 10)
    assert waiter.cancelled()
    monkeypatch.undo()
    other = sqlite3.connect(db.path, isolation_level=None)  # type: ignore[arg-type]
    try:
        assert other.execute("SELECT name FROM things WHERE name IN ('slow', 'late')"
                             ).fetchall() == [("slow",)]
    finally:
        other.close()
