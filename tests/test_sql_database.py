"""The SQLAlchemy ``Database`` resource on SQLite, PostgreSQL and MySQL/MariaDB:
migrations, per-service isolation, transactions, errors, the ``amoeba db`` CLI.

PostgreSQL and MySQL tests each run in a database of their own, created and
dropped here; see ``servers.py`` for what happens when a server is not running.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from servers import mysql_url, postgres_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool
from sqlapp.app import Catalog, Orders, Scratch

from amoeba import Database, Unavailable
from amoeba.cli import main
from amoeba.data import migrate
from amoeba.resource import ResourceContext

TESTS = Path(__file__).resolve().parent


class Backend:
    """One database server (or a directory of SQLite files) for one test."""

    def __init__(self, name: str, url: str | None, data_dir: Path):
        self.name = name
        self.url = url  # what the topology's resources.database says
        self.data_dir = data_dir

    def ctx(self, owner: type, settings: dict[str, object] | None = None) -> ResourceContext:
        service = owner.name  # type: ignore[attr-defined]
        url = self.url.replace("{service}", service) if self.url else None
        return ResourceContext(service, url, self.data_dir, {"database": settings or {}},
                               owner=owner)

    async def open(self, owner: type, **settings: object) -> Database:
        db = await Database.open(self.ctx(owner, settings))
        assert isinstance(db, Database)
        return db


async def _admin(url: str, sql: str, **params: object) -> list[sa.Row[object]]:
    engine = create_async_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            result = await conn.execute(sa.text(sql), params)
            return list(result.all()) if result.returns_rows else []
    finally:
        await engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    name = f"amoeba_t_{uuid.uuid4().hex[:10]}"
    if request.param == "sqlite":
        yield Backend("sqlite", None, tmp_path)
    elif request.param == "postgresql":
        base = postgres_url().replace("postgresql://", "postgresql+asyncpg://", 1)
        await _admin(f"{base}/postgres", f'CREATE DATABASE "{name}"')
        try:
            yield Backend("postgresql", f"{postgres_url()}/{name}", tmp_path)
        finally:
            await _admin(f"{base}/postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    else:
        base = mysql_url().replace("mysql://", "mysql+aiomysql://", 1)
        await _admin(base, f"CREATE DATABASE `{name}`")
        try:
            yield Backend("mysql", f"{mysql_url()}/{name}", tmp_path)
        finally:
            # the URL's database, and one per service beside it
            rows = await _admin(base, "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA "
                                      "WHERE SCHEMA_NAME LIKE :p", p=f"{name}%")
            for (db,) in rows:
                await _admin(base, f"DROP DATABASE `{db}`")


async def test_open_migrates_to_head_and_reopening_is_a_no_op(backend: Backend):
    db = await backend.open(Catalog)
    try:
        assert db.dialect == backend.name
        assert db.created
        assert await migrate.current(db) == "c2"
        await db.execute("INSERT INTO items (name, price) VALUES (:n, :p)", {"n": "pen", "p": 3})
    finally:
        await db.aclose()
    again = await backend.open(Catalog)
    try:
        assert not again.created
        assert await migrate.upgrade(again) == ("c2", "c2")  # nothing left to run
        assert await again.fetchall("SELECT name, price FROM items") == [("pen", 3)]
        assert [s.revision for s in migrate.history(again)] == ["c2", "c1"]
    finally:
        await again.aclose()


async def test_migrate_off_leaves_the_schema_alone_and_upgrade_steps(backend: Backend):
    db = await backend.open(Catalog, migrate=False)
    try:
        assert db.created  # the schema / database / file was made, empty
        assert await migrate.current(db) is None
        assert await migrate.upgrade(db, "c1") == (None, "c1")
        assert await migrate.upgrade(db) == ("c1", "c2")
        assert await migrate.downgrade(db, "c1") == ("c2", "c1")
        await db.execute("INSERT INTO items (name) VALUES ('no price column any more')")
    finally:
        await db.aclose()


async def test_created_without_migrations_means_a_new_schema(backend: Backend):
    db = await backend.open(Scratch)
    try:
        assert db.created
        await db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body VARCHAR(50))")
        assert await db.scalar("SELECT 1") == 1
    finally:
        await db.aclose()
    again = await backend.open(Scratch)
    try:
        assert not again.created
        assert await again.scalar("SELECT count(*) FROM notes") == 0
    finally:
        await again.aclose()


async def test_services_sharing_one_url_never_share_a_table(backend: Backend):
    catalog = await backend.open(Catalog)
    orders = await backend.open(Orders)
    try:
        await catalog.execute("INSERT INTO items (name) VALUES ('a'), ('b')")
        await orders.execute("INSERT INTO items (order_id, qty) VALUES (7, 70)")
        assert await catalog.fetchall("SELECT name FROM items ORDER BY name") == [("a",), ("b",)]
        assert await orders.fetchall("SELECT order_id, qty FROM items") == [(7, 70)]
        assert await migrate.current(catalog) == "c2"
        assert await migrate.current(orders) == "o1"
    finally:
        await catalog.aclose()
        await orders.aclose()


async def test_transaction_commits_or_rolls_back_and_integrity_errors_propagate(backend: Backend):
    db = await backend.open(Catalog)
    try:
        async with db.transaction() as conn:
            await conn.execute(sa.text("INSERT INTO items (name) VALUES ('kept')"))
            await conn.execute(sa.text("UPDATE items SET price = 5 WHERE name = 'kept'"))
        with pytest.raises(RuntimeError):
            async with db.transaction() as conn:
                await conn.execute(sa.text("INSERT INTO items (name) VALUES ('lost')"))
                raise RuntimeError("roll back")
        with pytest.raises(sa.exc.IntegrityError):
            await db.execute("INSERT INTO items (name) VALUES ('kept')")
        items = sa.table("items", sa.column("name"), sa.column("price"))
        assert await db.fetchall(sa.select(items.c.name, items.c.price)) == [("kept", 5)]
        assert await db.fetchone("SELECT name FROM items WHERE name = 'lost'") is None
        result = await db.execute("UPDATE items SET price = price + 1")
        assert result.rowcount == 1
    finally:
        await db.aclose()


async def test_concurrent_opens_of_one_service_migrate_once(backend: Backend):
    a, b = await asyncio.gather(backend.open(Catalog), backend.open(Catalog))
    try:
        assert sorted([a.created, b.created]) == [False, True]
        assert await migrate.current(a) == await migrate.current(b) == "c2"
        await a.execute("INSERT INTO items (name) VALUES ('x')")
        assert await b.scalar("SELECT count(*) FROM items") == 1
    finally:
        await a.aclose()
        await b.aclose()


async def test_an_exhausted_pool_is_unavailable(backend: Backend):
    db = await backend.open(Scratch, pool_size=1, max_overflow=0, pool_timeout=0.2)
    held, release = asyncio.Event(), asyncio.Event()

    async def hold() -> None:
        async with db.transaction():  # another task holds the only connection
            held.set()
            await release.wait()

    try:
        holder = asyncio.create_task(hold())
        await held.wait()
        with pytest.raises(Unavailable, match="scratch"):
            await db.scalar("SELECT 1")
        with pytest.raises(Unavailable, match="scratch"):  # a transaction waits the same
            async with db.transaction():
                pass
        assert db.pool_stats().waiting == 0
        release.set()
        await holder
        assert await db.scalar("SELECT 1") == 1
    finally:
        await db.aclose()


async def test_statements_inside_a_transaction_join_it(backend: Backend):
    """execute/fetch* and a nested transaction() of the same database use the
    open transaction: they see its rows, and its rollback undoes them."""
    db = await backend.open(Scratch, pool_size=1, max_overflow=0, pool_timeout=2)
    try:
        await db.execute("CREATE TABLE joined (v INTEGER)")
        with pytest.raises(RuntimeError):
            async with db.transaction() as conn:
                await conn.execute(sa.text("INSERT INTO joined (v) VALUES (1)"))
                await db.execute("INSERT INTO joined (v) VALUES (2)")
                async with db.transaction() as inner:
                    assert inner is conn
                assert await db.scalar("SELECT count(*) FROM joined") == 2
                raise RuntimeError("roll back")
        assert await db.scalar("SELECT count(*) FROM joined") == 0
        committed: list[bool] = []
        async with db.transaction() as conn:
            from amoeba.data.database import current_transaction

            tx = current_transaction()
            assert tx is not None
            tx.after_commit.append(lambda: committed.append(True))
            await conn.execute(sa.text("INSERT INTO joined (v) VALUES (3)"))
            assert committed == []
        assert committed == [True]
        await db.execute("DROP TABLE joined")
    finally:
        await db.aclose()


async def test_executemany_and_savepoints_inside_a_transaction(backend: Backend):
    """What the events inbox does in a batch: a list of rows inside a
    transaction (once AwaitRequired on the inline SQLite driver), and a
    savepoint whose rollback undoes its own rows only."""
    db = await backend.open(Scratch, pool_size=1, max_overflow=0, pool_timeout=2)
    try:
        await db.execute("CREATE TABLE saved (v INTEGER)")
        async with db.transaction() as conn:
            await conn.execute(sa.text("INSERT INTO saved (v) VALUES (:v)"), [{"v": 1}, {"v": 2}])
            with pytest.raises(RuntimeError):
                async with conn.begin_nested():
                    await db.execute("INSERT INTO saved (v) VALUES (3)")
                    raise RuntimeError("undo 3 alone")
            async with conn.begin_nested():
                await db.execute("INSERT INTO saved (v) VALUES (4)")
        rows = await db.fetchall("SELECT v FROM saved ORDER BY v")
        assert [r.v for r in rows] == [1, 2, 4]
        await db.execute("DROP TABLE saved")
    finally:
        await db.aclose()


@pytest.mark.parametrize("url", ["postgresql://postgres:hunter2@127.0.0.1:1/test",
                                 "mysql://root:hunter2@127.0.0.1:1/test"])
async def test_an_unreachable_server_is_unavailable_without_the_password(url: str, tmp_path: Path):
    ctx = ResourceContext("catalog", url, tmp_path, {}, owner=Catalog)
    with pytest.raises(Unavailable) as info:
        await Database.open(ctx)
    assert "catalog" in str(info.value)
    assert "127.0.0.1:1" in str(info.value)
    assert "hunter2" not in str(info.value)


async def test_ready_and_repr_and_pool_settings(tmp_path: Path):
    ctx = ResourceContext("scratch", "postgresql://u:secret@h/db", tmp_path,
                          {"database": {"pool_size": 2}})
    built = Database.build(ctx)
    try:
        assert repr(built) == ("<Database postgresql scratch "
                               "postgresql+asyncpg://u:***@h/db>")
        assert built.engine.pool.size() == 2  # type: ignore[attr-defined]
    finally:
        await built.aclose()
    db = await Database.open(ResourceContext("scratch", None, tmp_path, {}))
    try:
        assert await db.ready()
        assert db.path == tmp_path / "scratch.sqlite3"
        assert await db.scalar("PRAGMA journal_mode") == "wal"
        assert await db.scalar("PRAGMA foreign_keys") == 1
    finally:
        await db.aclose()


@pytest.mark.parametrize(("settings", "key"), [
    ({"pool_size": "5"}, "settings.database.pool_size"),
    ({"migrate": 1}, "settings.database.migrate"),
    ({"pool_szie": 5}, "settings.database.pool_szie"),
    ({"max_overflow": True}, "settings.database.max_overflow"),
])
def test_bad_settings_name_their_key(settings: dict[str, object], key: str, tmp_path: Path):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        Database.build(ResourceContext("scratch", None, tmp_path, {"database": settings}))


def test_service_names_are_checked(tmp_path: Path):
    with pytest.raises(ValueError, match="a-z, 0-9 and _"):
        Database.build(ResourceContext("Bad-Name", None, tmp_path, {}))


async def test_cli_upgrade_current_downgrade(backend: Backend, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]):
    monkeypatch.setenv("AMOEBA_DATA_DIR", str(tmp_path / "data"))
    topo = tmp_path / "sqlapp.yaml"
    resources = f"resources: {{database: '{backend.url}'}}\n" if backend.url else ""
    topo.write_text(f"name: sqlapp\napp: sqlapp.app:app\npythonpath: {TESTS}\n{resources}"
                    "processes:\n  main:\n    services: '*'\n    listeners: [{port: 8000}]\n")

    def cli(*args: str) -> tuple[int, list[str]]:
        code = main(list(args))
        out = capsys.readouterr()
        return code, (out.out + out.err).strip().splitlines()

    # main() runs its own event loop: give it a thread
    code, lines = await asyncio.to_thread(cli, "db", "upgrade", str(topo), "--service", "catalog",
                                          "--to", "c1")
    assert code == 0, lines
    assert lines[0].startswith(f"catalog: upgraded base -> c1 ({backend.name}")
    assert "catalog.sqlite3" in lines[0] if backend.name == "sqlite" else True
    code, lines = await asyncio.to_thread(cli, "db", "upgrade", str(topo))
    assert code == 0, lines
    assert [line.split(" (")[0] for line in lines] == [
        "catalog: upgraded c1 -> c2", "orders: upgraded base -> o1", "scratch: no migrations"]
    code, lines = await asyncio.to_thread(cli, "db", "downgrade", str(topo), "--service", "catalog",
                                          "--to", "c1")
    assert code == 0, lines
    assert lines[0].startswith("catalog: downgraded c2 -> c1")
    code, lines = await asyncio.to_thread(cli, "db", "current", str(topo))
    assert code == 0, lines
    assert [line.split(" (")[0] for line in lines] == [
        "catalog: c1", "orders: o1", "scratch: no migrations"]
    code, lines = await asyncio.to_thread(cli, "db", "upgrade", str(topo), "--to", "nope")
    assert code == 1
    assert any("nope" in line for line in lines), lines
    code, lines = await asyncio.to_thread(cli, "db", "downgrade", str(topo), "--service", "nobody",
                                          "--to", "c1")
    assert code == 2
    assert "nobody" in lines[-1]
