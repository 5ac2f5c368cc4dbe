"""Shop throughput through its gateway, beside the tickets purchase of the same run.

    python bench/shop.py [--duration 10] [--connections 32] [--rounds 1]
                         [--topologies monolith,microservices]

For each topology (examples/shop/topologies/) ``amoeba run`` serves the shop
pinned to core 0 (every process of microservices shares it) and wrk, pinned
to core 1, drives the gateway with

* browse:   ``GET /api/products/{id}``, anonymous;
* checkout: ``POST /api/orders {"items": [{"product_id": id, "qty": 1}]}`` with
  ``Authorization: Bearer <access token>`` of a user registered and logged in
  before the load, on a product an admin created with stock 100,000,000;

and then bench/tickets.py's amoeba server of the same topology is driven
with its purchase, same connections and durations, so the table shows shop
and tickets side by side.  Each figure is measured after a 1 s warm-up; with
``--rounds N`` every configuration runs N times interleaved and the round
with the median req/s is shown.  Errors are socket errors plus non-2xx
responses over all rounds; a figure with any is not a valid measurement.

Monolith runs on its embedded defaults (SQLite files in a temporary
AMOEBA_DATA_DIR, rate limits in memory).  Microservices gets a PostgreSQL
database and a Redis key prefix of its own for each start, removed afterwards
(also on Ctrl-C or failure); PostgreSQL and Redis themselves are not pinned.
Servers run at AMOEBA_LOG_LEVEL=WARNING (no access-log lines), shop and
tickets alike.  ``AMOEBA_TEST_POSTGRES`` / ``AMOEBA_TEST_REDIS`` point at
other servers, as for the tests.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import tickets  # noqa: E402
from load import LoadResult, free_port, run_wrk, start_server, stop_server, wait_http  # noqa: E402

SERVER_CPU, LOAD_CPU = 0, 1
WARMUP_S = 1
LOG_LEVEL = "WARNING"
STOCK = 100_000_000
ADMIN = ("admin@bench.test", "bench-admin-password")
POSTGRES = os.environ.get("AMOEBA_TEST_POSTGRES") or "postgresql://postgres@127.0.0.1:5432"
REDIS = os.environ.get("AMOEBA_TEST_REDIS") or "redis://127.0.0.1:6379"
UNLIMITED = "1000000"
TOPOLOGIES = ("monolith", "microservices")
JSON = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class Shop:
    """A running shop, ready for load: its gateway and what to order."""

    port: int
    product_id: int
    bearer: str
    pid: int = 0  # of `amoeba run` (its children are the shop's processes)


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


async def _postgres(sql: str) -> None:
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(POSTGRES + "/postgres")
    try:
        await conn.execute(sql)
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
def backing() -> Iterator[dict[str, str]]:
    """A fresh PostgreSQL database and Redis key prefix: their env, removed on exit."""
    tag = uuid.uuid4().hex[:12]
    database, prefix = f"amoeba_bench_{tag}", f"amoeba-bench-{tag}:"
    asyncio.run(_postgres(f'CREATE DATABASE "{database}"'))
    try:
        yield {"DATABASE_URL": f"{POSTGRES}/{database}", "REDIS_URL": f"{REDIS}/0?prefix={prefix}"}
    finally:
        try:
            asyncio.run(_postgres(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        finally:
            asyncio.run(_redis_delete(prefix))


# --- the shop ----------------------------------------------------------------


def _call(client: Any, method: str, path: str, expect: int, **kwargs: Any) -> Any:
    r = client.request(method, path, **kwargs)
    if r.status_code != expect:
        raise RuntimeError(f"setup: {method} {path} answered {r.status_code}, expected {expect}: {r.text}")
    return r.json()


def prepare(port: int) -> Shop:
    """Create a product with plenty of stock (as admin) and a logged-in user."""
    import httpx

    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30.0) as client:
        admin = _call(client, "POST", "/api/auth/login", 200,
                      json={"email": ADMIN[0], "password": ADMIN[1]})["access_token"]
        product = _call(client, "POST", "/api/products", 201,
                        headers={"Authorization": f"Bearer {admin}"},
                        json={"name": "bench widget", "price": "1.00", "stock": STOCK})
        email, password = f"bench-{uuid.uuid4().hex[:10]}@bench.test", "bench-password"
        _call(client, "POST", "/api/auth/register", 202, json={"email": email, "password": password})
        user = _call(client, "POST", "/api/auth/login", 200,
                     json={"email": email, "password": password})["access_token"]
    return Shop(port=port, product_id=int(product["id"]), bearer=user)


@contextmanager
def shop(topology: str, extra_env: dict[str, str] | None = None,
         auth: dict[str, Any] | None = None) -> Iterator[Shop]:
    """Start ``amoeba run`` on a shop topology; yield it prepared for load.
    ``extra_env``: more environment for the servers; ``auth``: keys merged into
    the topology's ``settings.auth`` (on a copy of the file)."""
    ports = {name: free_port() for name in ("PORT", "ACCOUNTS_PORT", "CATALOG_PORT", "ORDERS_PORT")}
    with ExitStack() as stack:
        data_dir = tempfile.mkdtemp(prefix="bench-shop-")
        stack.callback(shutil.rmtree, data_dir, ignore_errors=True)
        env = {k: str(v) for k, v in ports.items()}
        env.update(AMOEBA_DATA_DIR=data_dir, AMOEBA_LOG_LEVEL=LOG_LEVEL,
                   SHOP_ADMIN_EMAIL=ADMIN[0], SHOP_ADMIN_PASSWORD=ADMIN[1],
                   SHOP_RATE_USER_BURST=UNLIMITED, SHOP_RATE_USER_RATE=UNLIMITED,
                   SHOP_RATE_IP_BURST=UNLIMITED, SHOP_RATE_IP_RATE=UNLIMITED, **(extra_env or {}))
        if topology != "monolith":
            env.update(stack.enter_context(backing()))
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
        for port in [ports["PORT"]] if topology == "monolith" else ports.values():
            wait_http(f"http://127.0.0.1:{port}/readyz", timeout=90.0, proc=proc)
        yield replace(prepare(ports["PORT"]), pid=proc.pid)


def browse(s: Shop) -> Request:
    return Request("GET", f"/api/products/{s.product_id}", None, {})


def checkout(s: Shop) -> Request:
    body = f'{{"items":[{{"product_id":{s.product_id},"qty":1}}]}}'.encode()
    return Request("POST", "/api/orders", body, {**JSON, "Authorization": f"Bearer {s.bearer}"})


# --- load --------------------------------------------------------------------


def measure(port: int, request: Request, args: argparse.Namespace) -> LoadResult:
    url = f"http://127.0.0.1:{port}{request.path}"
    wrk = partial(run_wrk, url, method=request.method, body=request.body, headers=request.headers,
                  connections=args.connections, cpu=LOAD_CPU)
    wrk(duration=WARMUP_S)
    return wrk(duration=args.duration)


def shop_round(topology: str, args: argparse.Namespace) -> dict[str, LoadResult]:
    with shop(topology) as s:
        return {name: measure(s.port, make(s), args)
                for name, make in (("shop browse", browse), ("shop checkout", checkout))}


def tickets_round(topology: str, args: argparse.Namespace) -> dict[str, LoadResult]:
    purchase = Request("POST", "/api/v1/purchase", tickets.BODY, dict(tickets.HEADERS))
    with tickets.amoeba(topology, log_level=LOG_LEVEL) as (port, _pid):
        return {"tickets purchase": measure(port, purchase, args)}


# One server start each per round, shop then tickets, so their figures interleave.
ROUNDS: tuple[Callable[[str, argparse.Namespace], dict[str, LoadResult]], ...] = (
    shop_round, tickets_round)


def median(runs: list[LoadResult]) -> LoadResult:
    return sorted(runs, key=lambda r: r.rps)[len(runs) // 2]


def report(topology: str, runs: dict[str, list[LoadResult]], rounds: int) -> None:
    purchase = median(runs["tickets purchase"]).rps
    for i, (name, results) in enumerate(runs.items()):
        m = median(results)
        errors = sum(r.errors + r.non2xx for r in results)
        flag = "" if errors == 0 else (
            f"  INVALID: {sum(r.errors for r in results)} socket errors, "
            f"{sum(r.non2xx for r in results)} non-2xx")
        spread = f"  rounds {[round(r.rps) for r in results]}" if rounds > 1 else ""
        print(f"{topology if i == 0 else '':<14} {name:<17} {m.rps:9.0f} {m.p50_ms:8.2f} {m.p99_ms:8.2f} "
              f"{errors:7d} {m.rps / purchase:10.2f}x{flag}{spread}", flush=True)


def _terminated(signum: int, frame: object) -> NoReturn:
    raise SystemExit(128 + signum)  # unwinds the context managers: servers, database, keys


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--duration", type=int, default=10, help="seconds of load per figure")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=1, help="median of N interleaved rounds")
    ap.add_argument("--topologies", default=",".join(TOPOLOGIES),
                    help="comma-separated, from: " + ", ".join(TOPOLOGIES))
    args = ap.parse_args()
    chosen = [t.strip() for t in args.topologies.split(",") if t.strip()]
    unknown = sorted(set(chosen) - set(TOPOLOGIES))
    if unknown or not chosen:
        ap.error(f"--topologies: unknown {unknown or 'empty'}; choose from {', '.join(TOPOLOGIES)}")
    signal.signal(signal.SIGTERM, _terminated)
    if (os.cpu_count() or 1) < 2:
        print("warning: fewer than 2 cores; server and load generator will share one")
    print(f"bench/shop.py: {args.connections} connections, {args.duration}s per figure after "
          f"{WARMUP_S}s warm-up, servers on cpu {SERVER_CPU}, wrk on cpu {LOAD_CPU}, "
          f"{args.rounds} round(s), median shown; AMOEBA_LOG_LEVEL={LOG_LEVEL} "
          f"(no access log) for shop and tickets")
    if "microservices" in chosen and (why := unreachable_backing()):
        print(f"skipping microservices: {why}")
        chosen.remove("microservices")
    print(f"{'topology':<14} {'figure':<17} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} "
          f"{'/ tickets':>11}", flush=True)
    invalid = False
    for topology in chosen:
        runs: dict[str, list[LoadResult]] = {}
        for _ in range(args.rounds):
            for run_round in ROUNDS:
                for name, result in run_round(topology, args).items():
                    runs.setdefault(name, []).append(result)
        report(topology, runs, args.rounds)
        invalid |= any(r.errors or r.non2xx for rs in runs.values() for r in rs)
    if invalid:
        print("errors above: those figures are not valid measurements")
        sys.exit(1)


if __name__ == "__main__":
    main()
