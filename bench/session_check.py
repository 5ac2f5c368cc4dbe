"""What the edge's session-revocation check costs per authenticated request.

    flock /tmp/amoeba-bench.lock python bench/session_check.py [--duration 10] [--rounds 2]

The shop's microservices topology (PostgreSQL database and Redis prefix of
its own, removed after) is started once per configuration, the servers on
core 0 and wrk on core 1, and wrk sends an authenticated ``GET /api`` (the
gateway's own index: token verified at the edge, no database) and
``GET /api/orders/{id}`` (through orders and its database) with a logged-in
user's access token, in three configurations, interleaved ABCCBA... over
the rounds:

* ``off``:      ``settings.auth.revocation: false`` (no check: the before);
* ``on``:       the default, answers remembered ``session_recheck: 2`` s;
* ``every``:    ``session_recheck: 0``, one Redis ``EXISTS`` per request (worst case).

First, the check alone: ``is_revoked`` of a session whose answer is
remembered (the steady state of ``on``) against an await of a no-op, on core
1.  The table then shows each figure's median over rounds and its ratio to ``off``,
and the median CPU the shop's processes spent per request (from ``/proc``:
time a neighbour steals is not charged to them, so it is the steadier figure
on a shared machine).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
from dataclasses import replace
from functools import partial
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import shop  # noqa: E402
from load import LoadResult, run_wrk, tree_cpu_seconds  # noqa: E402

CONFIGS = {"off": {"revocation": False}, "on": {}, "every": {"session_recheck": 0}}


def one(name: str, args: argparse.Namespace) -> dict[str, LoadResult]:
    import httpx

    with shop.shop("microservices", auth=CONFIGS[name]) as s:
        auth = {"Authorization": f"Bearer {s.bearer}"}
        r = httpx.post(f"http://127.0.0.1:{s.port}/api/orders", headers=auth, timeout=30,
                       json={"items": [{"product_id": s.product_id, "qty": 1}]})
        assert r.status_code == 201, r.text
        oid = r.json()["id"]
        return {path: measure(s, shop.Request("GET", path, None, auth), args)
                for path in ("/api", f"/api/orders/{oid}")}


def measure(s: shop.Shop, request: shop.Request, args: argparse.Namespace) -> LoadResult:
    """wrk after a warm-up, with the CPU the shop's processes spent per request
    (less disturbed by neighbours on a shared machine than req/s)."""
    url = f"http://127.0.0.1:{s.port}{request.path}"
    wrk = partial(run_wrk, url, method=request.method, body=request.body, headers=request.headers,
                  connections=args.connections, cpu=shop.LOAD_CPU)
    wrk(duration=shop.WARMUP_S)
    cpu = tree_cpu_seconds(s.pid)
    r = wrk(duration=args.duration)
    return replace(r, cpu_us=(tree_cpu_seconds(s.pid) - cpu) / max(r.requests, 1) * 1e6)


def micro() -> None:
    """ns per call of a remembered ``is_revoked`` and of a no-op await."""
    import asyncio
    import time

    from amoeba.auth.revocation import SessionRevocations

    async def run() -> None:
        r = SessionRevocations.for_cache(f"{shop.REDIS}/0?prefix=bench-i16:", "bench", 900, 2.0)
        await r.is_revoked("sid")  # asks Redis once; remembered for 2 s after

        async def noop(sid: str) -> bool:
            return False

        for name, fn in (("no check (a no-op await)", noop), ("is_revoked, remembered", r.is_revoked)):
            per = []
            for _ in range(5):
                t = time.perf_counter()
                for _ in range(100_000):
                    await fn("sid")
                per.append((time.perf_counter() - t) / 100_000 * 1e9)
            print(f"  {name:<26} {sorted(per)[2]:6.0f} ns per call (median of 5 x 100k)", flush=True)
        await r.aclose()

    os.sched_setaffinity(0, {shop.LOAD_CPU})
    try:
        asyncio.run(run())
    finally:
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, shop._terminated)
    if why := shop.unreachable_backing():
        sys.exit(f"bench/session_check.py needs PostgreSQL and Redis: {why}")
    print(f"bench/session_check.py: microservices shop, {args.connections} connections, "
          f"{args.duration}s per figure after {shop.WARMUP_S}s warm-up, servers on cpu "
          f"{shop.SERVER_CPU}, wrk on cpu {shop.LOAD_CPU}, {args.rounds} round(s) ABC CBA", flush=True)
    micro()
    runs: dict[tuple[str, str], list[LoadResult]] = {}
    names = list(CONFIGS)
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            for path, result in one(name, args).items():
                key = ("/api/orders/{id}" if path.startswith("/api/orders/") else path, name)
                runs.setdefault(key, []).append(result)
                print(f"  round {r + 1} {name:<6} {key[0]:<18} {result.rps:8.0f} req/s "
                      f"p50 {result.p50_ms:.2f} ms  cpu {result.cpu_us:7.1f} us/req  "
                      f"errors {result.errors + result.non2xx}", flush=True)
    print(f"{'route':<18} {'check':<6} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} "
          f"{'req/s vs off':>13} {'p50 vs off':>11} {'cpu us/req':>11} {'cpu vs off':>11}")
    invalid = False
    for route in ("/api", "/api/orders/{id}"):
        base = shop.median(runs[(route, "off")])
        base_cpu = statistics.median(x.cpu_us for x in runs[(route, "off")])
        for name in names:
            results = runs[(route, name)]
            m = shop.median(results)
            cpu = statistics.median(x.cpu_us for x in results)
            errors = sum(x.errors + x.non2xx for x in results)
            invalid |= errors > 0
            print(f"{route:<18} {name:<6} {m.rps:9.0f} {m.p50_ms:8.2f} {m.p99_ms:8.2f} {errors:7d} "
                  f"{m.rps / base.rps:12.3f}x {m.p50_ms / base.p50_ms:10.3f}x {cpu:11.1f} "
                  f"{cpu / base_cpu:10.3f}x")
    if invalid:
        print("errors above: those figures are not valid measurements")
        sys.exit(1)


if __name__ == "__main__":
    main()
