"""Shop browse and checkout, ours beside a lean FastAPI implementation, same run.

    python bench/shop.py [--duration 6] [--connections 32] [--rounds 2]
                         [--topologies monolith,microservices]
                         [--paths browse,checkout,checkout-spread] [--products 100]
                         [--impls ours,fastapi] [--tickets]

For each topology two implementations of the same two paths are started,
every process pinned to core 0, and driven by wrk pinned to core 1:

* ours: ``amoeba run`` on examples/shop/topologies/<topology>.yaml, through
  its gateway (monolith: one process, SQLite files; microservices: gateway,
  accounts, catalog, orders and notifications processes on PostgreSQL, Redis
  for rate limits);
* fastapi: bench/fastapi_shop.py, FastAPI + SQLAlchemy 2 (async) + PyJWT under
  uvicorn (uvloop, httptools, one worker per process): monolith is one process
  on SQLite (aiosqlite, WAL); microservices is a gateway verifying the JWT and
  calling catalog and orders over pooled httpx, orders reserving through
  catalog over httpx, each of them on its own PostgreSQL schema (asyncpg).

The paths (``--paths``):

* browse: ``GET /api/products/{id}``, anonymous, always the same product;
* checkout: ``POST /api/orders {"items": [{"product_id": id, "qty": 1}]}``
  with ``Authorization: Bearer <token>``, every order on the same product;
* checkout-spread: the same, each request on one of ``--products`` products
  picked at random by the wrk script.

Every product has stock 100,000,000.  Ours gets its products from an admin
and its token from a registered user's login; FastAPI seeds its products at
start-up and gets an HS256 token signed by this script.

Each implementation starts once per round, runs every path (1 s warm-up, then
the measured ``--duration``), is checked, and stops.  Rounds alternate the
order (ours first, then fastapi first: ABBA), so a drift of the shared
machine does not favour one side.  The table shows, per path, the round with
the median req/s (upper median for an even count) and the median over rounds
of the **server CPU per request**: user + system time of the implementation's
process trees over the measured window divided by the requests wrk completed
(PostgreSQL and Redis are not counted, for either side).  Errors are socket
errors plus answers other than 200 (browse) or 201 (checkout), over all rounds;
a figure with any is not a valid measurement.  wrk runs with ``--timeout 10s``:
an answer slower than 2 s (wrk's default) is latency, counted in p99, not an
error; one slower than 10 s is a timeout error.

The check, after each start's last path, once its processes are idle:
the orders in its database against the 201s wrk saw (counted by the wrk
script's ``response()``; warm-ups included), and the units taken from the
products' stock against the units in its order lines.  A request wrk sent
but whose answer it never read (in flight when wrk stopped, at most one per
connection) may or may not have become an order, so the orders must lie
between the 201s seen and that plus the requests in flight; stock must match
exactly.  A failed check is printed at once and makes the run exit 1.

``--fastapi-db-pool N`` gives each FastAPI process with a database a pool of N
connections instead of SQLAlchemy's default (5 plus 10 overflow).

``--tickets`` also starts bench/tickets.py's amoeba server of the same
topology once a round and prints its purchase for scale (off by default: it
adds about a tenth to the run).  Defaults take about 4 minutes.

Monolith runs on its embedded defaults (SQLite files in a temporary
directory, rate limits in memory, all four unlimited here).  Microservices
gets a PostgreSQL database (and for ours a Redis key prefix) of its own for
each start, removed afterwards (also on Ctrl-C or failure).  Servers run at
AMOEBA_LOG_LEVEL=WARNING, FastAPI without access log.
``AMOEBA_TEST_POSTGRES`` / ``AMOEBA_TEST_REDIS`` point at other servers, as
for the tests.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import tickets  # noqa: E402
from load import (  # noqa: E402
    LoadResult,
    free_port,
    lua_string,
    parse_wrk,
    run_wrk,
    run_wrk_script,
    start_server,
    stop_server,
    tree_cpu_seconds,
    wait_http,
    wrk_script,
)

SERVER_CPU, LOAD_CPU = 0, 1
WARMUP_S = 1
WRK_TIMEOUT_S = 10  # slower is an error; wrk's default (2 s) would leave slow answers out of p99
LOG_LEVEL = "WARNING"
STOCK = 100_000_000
ADMIN = ("admin@bench.test", "bench-admin-password")
POSTGRES = os.environ.get("AMOEBA_TEST_POSTGRES") or "postgresql://postgres@127.0.0.1:5432"
REDIS = os.environ.get("AMOEBA_TEST_REDIS") or "redis://127.0.0.1:6379"
UNLIMITED = "1000000"
TOPOLOGIES = ("monolith", "microservices")
PATHS = ("browse", "checkout", "checkout-spread")
IMPLS = ("ours", "fastapi")
JSON = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class Tables:
    """Where one service's tables are: a SQLite file, or a PostgreSQL database and schema."""

    sqlite: str = ""
    postgres: str = ""
    schema: str = ""


@dataclass(frozen=True)
class Shop:
    """A running shop, ready for load: its gateway and what to order."""

    port: int
    product_id: int
    bearer: str
    pid: int = 0  # of `amoeba run` (its children are the shop's processes)
    products: tuple[int, ...] = ()  # every product made for the benchmark; [0] is product_id
    pids: tuple[int, ...] = ()  # every process tree that serves it, when not just `pid`
    catalog: Tables = field(default_factory=Tables)  # products(id, stock)
    orders: Tables = field(default_factory=Tables)  # orders, order_items(qty)

    def cpu_seconds(self) -> float:
        return sum(tree_cpu_seconds(p) for p in self.pids or (self.pid,))


@dataclass(frozen=True)
class Request:
    """One kind of request wrk repeats."""

    method: str
    path: str
    body: bytes | None
    headers: dict[str, str]


# --- backing services (microservices) ----------------------------------------


BACKING = (  # name, URL, default port, what starts it, the variable that moves it
    ("PostgreSQL", POSTGRES, 5432, "service postgresql start", "AMOEBA_TEST_POSTGRES"),
    ("Redis", REDIS, 6379, "service redis-server start", "AMOEBA_TEST_REDIS"),
)


def unreachable_backing() -> str | None:
    """Why PostgreSQL/Redis cannot be used, with what to do; None when they can."""
    for name, url, default_port, start, variable in BACKING:
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or default_port
        try:
            socket.create_connection((host, port), timeout=0.5).close()
        except OSError:
            return f"{name} not reachable on {host}:{port}: start it (`{start}`) or point {variable} at one"
    for module, extra in (("asyncpg", "postgres"), ("redis", "redis")):
        try:
            __import__(module)
        except ImportError:
            return f"{module} is not installed: pip install -e '.[{extra}]'"
    return None


async def _postgres(sql: str, database: str = "postgres") -> Any:
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(f"{POSTGRES}/{database}")
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


async def _redis_delete(prefix: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.from_url(REDIS)
    try:
        keys = [k async for k in client.scan_iter(match=prefix + "*", count=500)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database: its URL, dropped on exit."""
    database = f"amoeba_bench_{uuid.uuid4().hex[:12]}"
    asyncio.run(_postgres(f'CREATE DATABASE "{database}"'))
    try:
        yield f"{POSTGRES}/{database}"
    finally:
        asyncio.run(_postgres(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))


@contextmanager
def backing() -> Iterator[dict[str, str]]:
    """A fresh PostgreSQL database and Redis key prefix: their env, removed on exit."""
    prefix = f"amoeba-bench-{uuid.uuid4().hex[:12]}:"
    try:
        with postgres_database() as url:
            yield {"DATABASE_URL": url, "REDIS_URL": f"{REDIS}/0?prefix={prefix}"}
    finally:
        asyncio.run(_redis_delete(prefix))


# --- ours --------------------------------------------------------------------


def _call(client: Any, method: str, path: str, expect: int, **kwargs: Any) -> Any:
    r = client.request(method, path, **kwargs)
    if r.status_code != expect:
        raise RuntimeError(f"setup: {method} {path} answered {r.status_code}, expected {expect}: {r.text}")
    return r.json()


def prepare(port: int, products: int = 1) -> Shop:
    """Create ``products`` products with plenty of stock (as admin) and a logged-in user."""
    import httpx

    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30.0) as client:
        admin = _call(client, "POST", "/api/auth/login", 200,
                      json={"email": ADMIN[0], "password": ADMIN[1]})["access_token"]
        ids = tuple(int(_call(client, "POST", "/api/products", 201,
                              headers={"Authorization": f"Bearer {admin}"},
                              json={"name": f"bench widget {i}", "price": "1.00", "stock": STOCK})["id"])
                    for i in range(products))
        email, password = f"bench-{uuid.uuid4().hex[:10]}@bench.test", "bench-password"
        _call(client, "POST", "/api/auth/register", 202, json={"email": email, "password": password})
        user = _call(client, "POST", "/api/auth/login", 200,
                     json={"email": email, "password": password})["access_token"]
    return Shop(port=port, product_id=ids[0], bearer=user, products=ids)


@contextmanager
def shop(topology: str, extra_env: dict[str, str] | None = None,
         auth: dict[str, Any] | None = None, products: int = 1) -> Iterator[Shop]:
    """Start ``amoeba run`` on a shop topology; yield it prepared for load.
    ``extra_env``: more environment for the servers; ``auth``: keys merged into
    the topology's ``settings.auth`` (on a copy of the file)."""
    ports = {name: free_port() for name in ("PORT", "ACCOUNTS_PORT", "CATALOG_PORT", "ORDERS_PORT",
                                            "NOTIFICATIONS_PORT")}
    with ExitStack() as stack:
        data_dir = tempfile.mkdtemp(prefix="bench-shop-")
        stack.callback(shutil.rmtree, data_dir, ignore_errors=True)
        env = {k: str(v) for k, v in ports.items()}
        env.update(AMOEBA_DATA_DIR=data_dir, AMOEBA_LOG_LEVEL=LOG_LEVEL,
                   SHOP_ADMIN_EMAIL=ADMIN[0], SHOP_ADMIN_PASSWORD=ADMIN[1],
                   SHOP_RATE_USER_BURST=UNLIMITED, SHOP_RATE_USER_RATE=UNLIMITED,
                   SHOP_RATE_IP_BURST=UNLIMITED, SHOP_RATE_IP_RATE=UNLIMITED, **(extra_env or {}))
        if topology == "monolith":
            catalog = Tables(sqlite=f"{data_dir}/catalog.sqlite3")
            orders = Tables(sqlite=f"{data_dir}/orders.sqlite3")
        else:
            env.update(stack.enter_context(backing()))
            catalog = Tables(postgres=env["DATABASE_URL"], schema="catalog")
            orders = Tables(postgres=env["DATABASE_URL"], schema="orders")
        topo = ROOT / "examples" / "shop" / "topologies" / f"{topology}.yaml"
        if auth:
            import yaml

            raw = yaml.safe_load(topo.read_text())
            raw["pythonpath"] = str(topo.parent / raw.get("pythonpath", "."))
            raw["settings"]["auth"] = {**raw["settings"].get("auth", {}), **auth}
            topo = Path(data_dir) / f"{topology}.yaml"
            topo.write_text(yaml.safe_dump(raw, sort_keys=False))
        proc = start_server([sys.executable, "-m", "amoeba", "run", str(topo)],
                            cpu=SERVER_CPU, env=env)
        stack.callback(stop_server, proc)  # runs before the database is dropped
        for name, port in ports.items():
            if topology != "monolith" or name == "PORT":
                wait_http(f"http://127.0.0.1:{port}/readyz", timeout=90.0, proc=proc)
        yield replace(prepare(ports["PORT"], products), pid=proc.pid, catalog=catalog, orders=orders)


# --- fastapi -----------------------------------------------------------------


def _token(secret: str) -> str:
    import jwt

    now = int(time.time())
    return jwt.encode({"sub": f"bench-{uuid.uuid4().hex[:10]}", "iss": "fastapi-shop",
                       "aud": "fastapi-shop", "iat": now, "exp": now + 3600}, secret, algorithm="HS256")


@contextmanager
def fastapi_shop(topology: str, products: int, db_pool: int = 0) -> Iterator[Shop]:
    """Start bench/fastapi_shop.py in the topology's shape; yield it ready for load."""
    script = [sys.executable, str(HERE / "fastapi_shop.py")]
    secret = secrets.token_hex(32)
    env = {"SHOP_JWT_SECRET": secret, "SHOP_PRODUCTS": str(products), "SHOP_STOCK": str(STOCK)}
    with ExitStack() as stack:
        def serve(mode: str, *options: str) -> tuple[int, int]:
            port = free_port()
            pool = ["--db-pool", str(db_pool)] if db_pool and mode != "gateway" else []
            proc = start_server([*script, mode, "--port", str(port), *pool, *options], cpu=SERVER_CPU,
                                env=env)
            stack.callback(stop_server, proc)
            wait_http(f"http://127.0.0.1:{port}/health", timeout=60.0, proc=proc)
            return port, proc.pid

        if topology == "monolith":
            data_dir = tempfile.mkdtemp(prefix="bench-fastapi-shop-")
            stack.callback(shutil.rmtree, data_dir, ignore_errors=True)
            db = f"{data_dir}/shop.sqlite3"
            port, pid = serve("monolith", "--database", f"sqlite:///{db}")
            pids, catalog, orders = (pid,), Tables(sqlite=db), Tables(sqlite=db)
        else:
            url = stack.enter_context(postgres_database())
            cport, cpid = serve("catalog", "--database", url)
            oport, opid = serve("orders", "--database", url, "--catalog-url", f"http://127.0.0.1:{cport}")
            port, gpid = serve("gateway", "--catalog-url", f"http://127.0.0.1:{cport}",
                               "--orders-url", f"http://127.0.0.1:{oport}")
            pids = (gpid, cpid, opid)
            catalog, orders = Tables(postgres=url, schema="catalog"), Tables(postgres=url, schema="orders")
        yield Shop(port=port, product_id=1, bearer=_token(secret), pid=pids[0],
                   products=tuple(range(1, products + 1)), pids=pids, catalog=catalog, orders=orders)


# --- load --------------------------------------------------------------------


def browse(s: Shop) -> Request:
    return Request("GET", f"/api/products/{s.product_id}", None, {})


def checkout(s: Shop) -> Request:
    body = f'{{"items":[{{"product_id":{s.product_id},"qty":1}}]}}'.encode()
    return Request("POST", "/api/orders", body, {**JSON, "Authorization": f"Bearer {s.bearer}"})


def measure(port: int, request: Request, args: argparse.Namespace) -> LoadResult:
    """wrk after a warm-up (for bench/login_guess.py; no counting, no CPU)."""
    url = f"http://127.0.0.1:{port}{request.path}"
    wrk = partial(run_wrk, url, method=request.method, body=request.body, headers=request.headers,
                  connections=args.connections, cpu=LOAD_CPU)
    wrk(duration=WARMUP_S)
    return wrk(duration=args.duration)


# The wrk script's own part: each request one of `variants` (path and body,
# picked at random), every answer counted by status, the counts printed by
# done().  Counters are globals of each thread's Lua state, which done() (in
# the main state) reads.  Each variant gets its own headers table, so its
# Content-Length is its own body's.
COUNTING_LUA = """
local variants = {VARIANTS}
local formatted = {}
local threads = {}
sent, got, codes = 0, 0, {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  for i, v in ipairs(variants) do
    local headers = {}
    for name, value in pairs(wrk.headers) do headers[name] = value end
    formatted[i] = wrk.format(nil, v[1], headers, v[2] or nil)
  end
end

function request()
  sent = sent + 1
  return formatted[math.random(#formatted)]
end

function response(status, headers, body)
  got = got + 1
  codes[status] = (codes[status] or 0) + 1
end

function done(summary, latency, requests)
  local s, g, all = 0, 0, {}
  for _, thread in ipairs(threads) do
    s = s + thread:get("sent")
    g = g + thread:get("got")
    for status, n in pairs(thread:get("codes")) do
      all[status] = (all[status] or 0) + n
    end
  end
  io.write(string.format("shop-counts sent %d got %d\\n", s, g))
  for status, n in pairs(all) do
    io.write(string.format("shop-status %d %d\\n", status, n))
  end
end
"""


@dataclass(frozen=True)
class Counts:
    """What the wrk script counted: requests sent, answers read, answers by status."""

    sent: int
    got: int
    statuses: dict[int, int]


@dataclass(frozen=True)
class Figure:
    load: LoadResult  # cpu_us filled in
    errors: int  # socket errors + answers other than the expected status
    counts: Counts
    wrong: dict[int, int]  # answers other than the expected status, by status


def counted_wrk(port: int, request: Request, variants: list[tuple[str, bytes | None]],
                duration: int, connections: int) -> tuple[LoadResult, Counts]:
    """wrk with ``request``'s method and headers, each request one of ``variants``."""
    lua = ", ".join(f"{{{lua_string(path)}, {lua_string(body) if body is not None else 'false'}}}"
                    for path, body in variants)
    script = wrk_script(request.method, None, request.headers) + COUNTING_LUA.replace("VARIANTS", lua)
    out = run_wrk_script(f"http://127.0.0.1:{port}{request.path}", script, connections=connections,
                         duration=duration, cpu=LOAD_CPU, timeout=WRK_TIMEOUT_S)
    sent_got = re.search(r"^shop-counts sent (\d+) got (\d+)$", out, re.MULTILINE)
    if sent_got is None:
        raise RuntimeError(f"the wrk script printed no counts:\n{out}")
    statuses = {int(code): int(n) for code, n in re.findall(r"^shop-status (\d+) (\d+)$", out, re.MULTILINE)}
    return parse_wrk(out), Counts(int(sent_got[1]), int(sent_got[2]), statuses)


def drive(s: Shop, path: str, args: argparse.Namespace) -> tuple[Figure, Counts]:
    """One path on a running shop: the measured figure, and the counts of the
    warm-up and the measured run together (for the check)."""
    if path == "browse":
        request, expect = browse(s), 200
        variants = [(request.path, None)]
    else:
        request, expect = checkout(s), 201
        ids = s.products if path == "checkout-spread" else (s.product_id,)
        variants = [(request.path, f'{{"items":[{{"product_id":{pid},"qty":1}}]}}'.encode())
                    for pid in ids]
    wrk = partial(counted_wrk, s.port, request, variants, connections=args.connections)
    _, warm = wrk(WARMUP_S)
    cpu = s.cpu_seconds()
    load, counts = wrk(args.duration)
    load = replace(load, cpu_us=(s.cpu_seconds() - cpu) / max(load.requests, 1) * 1e6)
    wrong = {status: n for status, n in counts.statuses.items() if status != expect}
    figure = Figure(load, load.errors + sum(wrong.values()), counts, wrong)
    return figure, _add(warm, counts)


def _add(a: Counts, b: Counts) -> Counts:
    statuses = dict(a.statuses)
    for status, n in b.statuses.items():
        statuses[status] = statuses.get(status, 0) + n
    return Counts(a.sent + b.sent, a.got + b.got, statuses)


# --- the check ---------------------------------------------------------------


def _scalar(tables: Tables, sql: str) -> int:
    """One integer from a query on ``tables`` (``{t}`` prefixes table names
    with the PostgreSQL schema)."""
    if tables.sqlite:
        with sqlite3.connect(tables.sqlite, timeout=10) as conn:
            return int(conn.execute(sql.format(t="")).fetchone()[0])
    database = tables.postgres.rsplit("/", 1)[1]
    return int(asyncio.run(_postgres(sql.format(t=f'"{tables.schema}".'), database)))


def settle(s: Shop, timeout: float = 15.0) -> None:
    """Wait until the shop's processes are idle (requests in flight finished)."""
    deadline = time.monotonic() + timeout
    last = s.cpu_seconds()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = s.cpu_seconds()
        if now - last < 0.03:
            return
        last = now


def check(s: Shop, counts: Counts) -> tuple[bool, str]:
    """Every 201 an order, and the stock taken equal to the units ordered."""
    settle(s)
    ids = ",".join(str(i) for i in s.products)
    orders = _scalar(s.orders, "SELECT count(*) FROM {t}orders")
    units = _scalar(s.orders, "SELECT coalesce(sum(qty), 0) FROM {t}order_items")
    taken = _scalar(s.catalog, f"SELECT coalesce(sum({STOCK} - stock), 0) FROM {{t}}products "
                               f"WHERE id IN ({ids})")
    created, in_flight = counts.statuses.get(201, 0), counts.sent - counts.got
    ok = created <= orders <= created + in_flight and taken == units
    return ok, (f"201s seen {created} (+{in_flight} in flight when wrk stopped), orders in the "
                f"database {orders}; stock taken {taken}, units in order lines {units}")


# --- rounds ------------------------------------------------------------------


def one_start(impl: str, topology: str, args: argparse.Namespace,
              problems: list[str]) -> dict[str, Figure]:
    start = (partial(shop, topology, products=args.products) if impl == "ours"
             else partial(fastapi_shop, topology, args.products, args.fastapi_db_pool))
    figures: dict[str, Figure] = {}
    total = Counts(0, 0, {})
    with start() as s:
        for path in args.paths:
            figures[path], counts = drive(s, path, args)
            if path != "browse":  # a browse in flight makes no order
                total = _add(total, counts)
        ok, what = check(s, total)
    line = f"  check {impl} {topology}: {what}: {'ok' if ok else 'MISMATCH'}"
    print(line, flush=True)
    if not ok:
        problems.append(line.strip())
        print(f"CHECK FAILED: {line.strip()}", file=sys.stderr, flush=True)
    return figures


def tickets_round(topology: str, args: argparse.Namespace) -> LoadResult:
    purchase = Request("POST", "/api/v1/purchase", tickets.BODY, dict(tickets.HEADERS))
    with tickets.amoeba(topology, log_level=LOG_LEVEL) as (port, _pid):
        return measure(port, purchase, args)


def median(runs: list[LoadResult]) -> LoadResult:
    return sorted(runs, key=lambda r: r.rps)[len(runs) // 2]


def report(topology: str, runs: dict[tuple[str, str], list[Figure]], args: argparse.Namespace,
           tickets_runs: list[LoadResult]) -> None:
    first = True
    for path in args.paths:
        shown: dict[str, tuple[LoadResult, float]] = {}
        for impl in args.impls:
            figures = runs[(impl, path)]
            m = median([f.load for f in figures])
            cpu = statistics.median(f.load.cpu_us for f in figures)
            shown[impl] = (m, cpu)
            errors = sum(f.errors for f in figures)
            wrong: dict[int, int] = {}
            for f in figures:
                for status, n in f.wrong.items():
                    wrong[status] = wrong.get(status, 0) + n
            flag = "" if errors == 0 else (
                f"  INVALID: {sum(f.load.errors for f in figures)} socket errors "
                f"(timeout {WRK_TIMEOUT_S} s), wrong statuses {wrong or 'none'}")
            spread = f"  rounds {[round(f.load.rps) for f in figures]}" if args.rounds > 1 else ""
            ratio = ""
            if impl == "ours" and "fastapi" in args.impls:
                theirs = runs[("fastapi", path)]
                f_rps = median([f.load for f in theirs]).rps
                f_cpu = statistics.median(f.load.cpu_us for f in theirs)
                ratio = f"  req/s {m.rps / f_rps:5.2f}x  cpu/req {cpu / f_cpu:5.2f}x"
            print(f"{topology if first else '':<14} {path if impl == args.impls[0] else '':<16} "
                  f"{impl:<8} {m.rps:8.0f} {m.p50_ms:8.2f} {m.p99_ms:8.2f} {errors:7d} {cpu:10.1f}"
                  f"{ratio}{flag}{spread}", flush=True)
            first = False
    if tickets_runs:
        m = median(tickets_runs)
        errors = sum(r.errors + r.non2xx for r in tickets_runs)
        print(f"{'':<14} {'tickets purchase':<16} {'ours':<8} {m.rps:8.0f} {m.p50_ms:8.2f} "
              f"{m.p99_ms:8.2f} {errors:7d} {'':>10}  (for scale)", flush=True)


def _terminated(signum: int, frame: object) -> NoReturn:
    raise SystemExit(128 + signum)  # unwinds the context managers: servers, database, keys


def _choices(ap: argparse.ArgumentParser, option: str, text: str, allowed: tuple[str, ...]) -> list[str]:
    chosen = [t.strip() for t in text.split(",") if t.strip()]
    unknown = sorted(set(chosen) - set(allowed))
    if unknown or not chosen:
        ap.error(f"{option}: unknown {unknown or 'empty'}; choose from {', '.join(allowed)}")
    return [a for a in allowed if a in chosen]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--duration", type=int, default=6, help="seconds of load per figure")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2, help="rounds, ABBA; median shown")
    ap.add_argument("--topologies", default=",".join(TOPOLOGIES),
                    help="comma-separated, from: " + ", ".join(TOPOLOGIES))
    ap.add_argument("--paths", default=",".join(PATHS), help="comma-separated, from: " + ", ".join(PATHS))
    ap.add_argument("--impls", default=",".join(IMPLS), help="comma-separated, from: " + ", ".join(IMPLS))
    ap.add_argument("--products", type=int, default=100, help="products checkout-spread picks from")
    ap.add_argument("--tickets", action="store_true", help="also the tickets purchase, for scale")
    ap.add_argument("--fastapi-db-pool", type=int, default=0, metavar="N",
                    help="SQLAlchemy pool_size of each FastAPI process with a database "
                         "(default: fastapi_shop.py's own)")
    args = ap.parse_args()
    topologies = _choices(ap, "--topologies", args.topologies, TOPOLOGIES)
    args.paths = _choices(ap, "--paths", args.paths, PATHS)
    args.impls = _choices(ap, "--impls", args.impls, IMPLS)
    if args.products < 1 or args.rounds < 1 or args.duration < 1:
        ap.error("--products, --rounds and --duration must be at least 1")
    signal.signal(signal.SIGTERM, _terminated)
    if (os.cpu_count() or 1) < 2:
        print("warning: fewer than 2 cores; server and load generator will share one")
    print(f"bench/shop.py: {args.connections} connections, {args.duration}s per figure after "
          f"{WARMUP_S}s warm-up, servers on cpu {SERVER_CPU}, wrk on cpu {LOAD_CPU}, "
          f"{args.rounds} round(s) ABBA, median shown; checkout-spread over {args.products} products",
          flush=True)
    if "microservices" in topologies and (why := unreachable_backing()):
        print(f"skipping microservices: {why}")
        topologies.remove("microservices")
    header = (f"{'topology':<14} {'path':<16} {'impl':<8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'errors':>7} {'cpu us/req':>10}  ours / fastapi: req/s, cpu per request")
    began = time.monotonic()
    problems: list[str] = []
    results: list[tuple[str, dict[tuple[str, str], list[Figure]], list[LoadResult]]] = []
    for topology in topologies:
        runs: dict[tuple[str, str], list[Figure]] = {}
        tickets_runs: list[LoadResult] = []
        for r in range(args.rounds):
            order = args.impls if r % 2 == 0 else args.impls[::-1]
            for impl in order:
                for path, figure in one_start(impl, topology, args, problems).items():
                    runs.setdefault((impl, path), []).append(figure)
            if args.tickets:
                tickets_runs.append(tickets_round(topology, args))
        results.append((topology, runs, tickets_runs))
    print(header)
    for topology, runs, tickets_runs in results:
        report(topology, runs, args, tickets_runs)
    invalid = any(f.errors for _, runs, _ in results for figures in runs.values() for f in figures)
    if invalid:
        print("errors above: those figures are not valid measurements")
    if problems:
        print("CHECK FAILED (every 201 an order, stock adding up):\n  " + "\n  ".join(problems))
    print(f"run took {time.monotonic() - began:.0f} s")
    if invalid or problems:
        sys.exit(1)


if __name__ == "__main__":
    main()
