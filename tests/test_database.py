"""The raw SQLite resource: group commit, errors, transactions, durability."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from amoeba.data import SQLite
from amoeba.resource import ResourceContext


@pytest.fixture
async def db(tmp_path):
    d = await SQLite.open(ResourceContext("svc", None, tmp_path, {}))
    await d.executescript("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER NOT NULL)")
    yield d
    await d.aclose()


async def test_concurrent_statements_share_one_commit(db, monkeypatch):
    commits = 0
    real = db.conn

    class Counting:
        in_transaction = property(lambda self: real.in_transaction)

        def execute(self, sql, params=()):
            nonlocal commits
            commits += sql == "COMMIT"
            return real.execute(sql, params)

    monkeypatch.setattr(db, "conn", Counting())
    counts = await asyncio.gather(*(
        db.execute("INSERT INTO t VALUES (?, ?)", (f"k{i}", i)) for i in range(100)))
    assert counts == [1] * 100
    assert commits == 1
    monkeypatch.setattr(db, "conn", real)
    assert (await db.fetchone("SELECT count(*), sum(v) FROM t")) == (100, sum(range(100)))


async def test_a_failing_statement_fails_only_its_caller(db):
    results = await asyncio.gather(
        db.execute("INSERT INTO t VALUES ('a', 1)"),
        db.execute("INSERT INTO t VALUES ('a', 2)"),  # duplicate key
        db.execute("INSERT INTO t VALUES ('b', 3)"),
        return_exceptions=True)
    assert results[0] == 1 and results[2] == 1
    assert isinstance(results[1], sqlite3.IntegrityError)
    assert await db.fetchall("SELECT k, v FROM t ORDER BY k") == [("a", 1), ("b", 3)]


async def test_transaction_is_atomic_and_does_not_deadlock_with_batches(db):
    async def background() -> int:
        return await db.execute("INSERT INTO t VALUES ('bg', 0)")

    with pytest.raises(RuntimeError):
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO t VALUES ('x', 1)")
            task = asyncio.ensure_future(background())  # queued behind the transaction
            await asyncio.sleep(0)
            raise RuntimeError("roll back")
    assert await task == 1
    assert await db.fetchall("SELECT k FROM t ORDER BY k") == [("bg",)]
    async with db.transaction() as tx:
        await tx.execute("UPDATE t SET v = v + 5 WHERE k = 'bg'")
        assert await tx.fetchone("SELECT v FROM t WHERE k = 'bg'") == (5,)


async def test_committed_before_answered_survives_reopen(tmp_path):
    ctx = ResourceContext("svc", None, tmp_path, {})
    d = await SQLite.open(ctx)
    await d.executescript("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER)")
    await asyncio.gather(*(d.execute("INSERT INTO t VALUES (?, 1)", (str(i),)) for i in range(50)))
    await d.aclose()
    again = await SQLite.open(ctx)
    assert not again.created
    assert await again.fetchone("SELECT count(*) FROM t") == (50,)
    await again.aclose()
