"""Tickets purchase throughput: amoeba vs the FastAPI + httpx comparison, same run.

    python bench/tickets.py [--duration 10] [--connections 50] [--rounds 1]
                            [--access-log off|on|both] [--observe on|off|both]
                            [--topologies monolith,microservices] [--no-fastapi]
                            [--against DIR]

Drives ``POST /api/v1/purchase {"qty": 1}`` with wrk (50 connections, pinned to
core 1) against servers pinned to core 0 (both processes of a microservices
topology share that core), stock large enough never to sell out:

* amoeba monolith (durable SQLite stock) and microservices (RPC between
  two processes, durable SQLite stock);
* bench/fastapi_tickets.py: FastAPI routers + pydantic + in-memory stock
  under an asyncio.Lock, local client / pooled httpx client.

Every figure is printed beside its comparison and the ratio.  With
``--rounds N`` each configuration runs N times interleaved and the median
round is reported.  ``--access-log`` runs amoeba at log level WARNING (off,
the default here), INFO (on: one access-log line per request, as ``amoeba run``
does by default), or both, interleaved, with the on/off ratio.  ``--observe``
runs amoeba with metrics and tracing on (the default: per-call and per-route
metrics, trace ids made at the edge), off (``AMOEBA_OBSERVE=off``), or both,
interleaved, with the on/off ratio (issue 6's overhead budget: >= 0.90).
``--against DIR`` also runs the amoeba of another checkout (say a ``git
worktree`` of an older commit: its ``src`` and ``examples``), interleaved
ABBA with this one, and prints this/that for req/s and server CPU per request.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from load import (  # noqa: E402
    LoadResult,
    free_port,
    run_wrk,
    start_server,
    stop_server,
    tree_cpu_seconds,
    wait_http,
)

SERVER_CPU, LOAD_CPU = 0, 1
STOCK = "1000000000"
BODY = b'{"qty": 1}'
HEADERS = {"Content-Type": "application/json"}


@contextmanager
def amoeba(topology: str, log_level: str = "WARNING", observe: str = "on",
           tree: str = "") -> Iterator[tuple[int, int]]:
    """Start ``amoeba run`` on a tickets topology; yield the purchase port.
    ``tree``: another checkout whose amoeba and examples to run."""
    ports = {"PORT": free_port(), "VACANCY_PORT": free_port(), "TICKET_PORT": free_port()}
    env = {k: str(v) for k, v in ports.items()}
    env.update(INITIAL_STOCK=STOCK, AMOEBA_DATA_DIR=tempfile.mkdtemp(prefix="bench-tickets-"),
               AMOEBA_LOG_LEVEL=log_level, AMOEBA_OBSERVE=observe)
    root = Path(tree) if tree else ROOT
    if tree:
        env["PYTHONPATH"] = str(root / "src")
    proc = start_server([sys.executable, "-m", "amoeba", "run",
                         str(root / "examples" / "tickets" / "topologies" / f"{topology}.yaml")],
                        cpu=SERVER_CPU, env=env)
    port = ports["PORT"] if topology == "monolith" else ports["TICKET_PORT"]
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", proc=proc)
        if topology != "monolith":
            wait_http(f"http://127.0.0.1:{ports['VACANCY_PORT']}/readyz", proc=proc)
        yield port, proc.pid
    finally:
        stop_server(proc)


@contextmanager
def fastapi(topology: str) -> Iterator[tuple[int, int]]:
    script = str(HERE / "fastapi_tickets.py")
    env = {"INITIAL_STOCK": STOCK}
    procs = []
    try:
        if topology == "monolith":
            port = free_port()
            procs.append(start_server([sys.executable, script, "monolith", "--port", str(port)],
                                      cpu=SERVER_CPU, env=env))
        else:
            vport, port = free_port(), free_port()
            procs.append(start_server([sys.executable, script, "vacancy", "--port", str(vport)],
                                      cpu=SERVER_CPU, env=env))
            wait_http(f"http://127.0.0.1:{vport}/api/v1/health", proc=procs[0])
            procs.append(start_server([sys.executable, script, "ticket", "--port", str(port),
                                       "--vacancy-url", f"http://127.0.0.1:{vport}"],
                                      cpu=SERVER_CPU, env=env))
        wait_http(f"http://127.0.0.1:{port}/api/v1/health", proc=procs[-1])
        yield port, procs[0].pid
    finally:
        for p in reversed(procs):
            stop_server(p)


def drive(server: Callable[..., Iterator[tuple[int, int]]], topology: str,
          args: argparse.Namespace, **options: str) -> LoadResult:
    with server(topology, **options) as (port, pid):  # type: ignore[attr-defined]
        url = f"http://127.0.0.1:{port}/api/v1/purchase"
        run_wrk(url, body=BODY, headers=HEADERS, connections=args.connections, duration=2,
                cpu=LOAD_CPU)  # warm-up
        cpu = tree_cpu_seconds(pid)
        r = run_wrk(url, body=BODY, headers=HEADERS, connections=args.connections,
                    duration=args.duration, cpu=LOAD_CPU)
        r = replace(r, cpu_us=(tree_cpu_seconds(pid) - cpu) / max(r.requests, 1) * 1e6)
    if r.errors or r.non2xx:
        print(f"  warning: {topology}: {r.errors} socket errors, {r.non2xx} non-2xx responses")
    return r


def median(runs: list[LoadResult]) -> LoadResult:
    return sorted(runs, key=lambda r: r.rps)[len(runs) // 2]


def fmt(r: LoadResult) -> str:
    return (f"{r.rps:8.0f} req/s  p50 {r.p50_ms:6.2f} ms  p99 {r.p99_ms:6.2f} ms  "
            f"server cpu {r.cpu_us:6.1f} us/req")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--duration", type=int, default=10, help="seconds of load per measurement")
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--access-log", choices=("off", "on", "both"), default="off",
                    help="amoeba at log level WARNING (off), INFO (on: access log), or both")
    ap.add_argument("--observe", choices=("on", "off", "both"), default="on",
                    help="metrics and tracing on, off (AMOEBA_OBSERVE=off), or both")
    ap.add_argument("--topologies", default="monolith,microservices")
    ap.add_argument("--no-fastapi", action="store_true", help="skip the FastAPI comparison")
    ap.add_argument("--against", default="", metavar="DIR",
                    help="also run the amoeba of checkout DIR, interleaved, and compare")
    args = ap.parse_args()
    if os.cpu_count() and os.cpu_count() < 2:  # type: ignore[operator]
        print("warning: fewer than 2 cores; server and load generator will share one")
    print(f"bench/tickets.py: POST /api/v1/purchase {{\"qty\": 1}}, {args.connections} connections, "
          f"{args.duration}s, servers on cpu {SERVER_CPU}, wrk on cpu {LOAD_CPU}, "
          f"{args.rounds} round(s), access log {args.access_log}, observe {args.observe}")
    targets = {"monolith": 3.2, "microservices": 15.0}
    levels = {"off": ["WARNING"], "on": ["INFO"], "both": ["WARNING", "INFO"]}[args.access_log]
    observes = {"on": ["on"], "off": ["off"], "both": ["off", "on"]}[args.observe]
    trees = [args.against, ""] if args.against else [""]
    variants = [(level, obs, tree) for tree in trees for obs in observes for level in levels]

    def label(level: str, obs: str, tree: str = "") -> str:
        parts = []
        if len(trees) > 1:
            parts.append(f"before ({Path(tree).name})" if tree else "after (this tree)")
        if len(levels) > 1:
            parts.append(f"log {'on' if level == 'INFO' else 'off'}")
        if len(observes) > 1:
            parts.append(f"observe {obs}")
        return ", ".join(parts) or "amoeba"

    for topology in args.topologies.split(","):
        ours: dict[tuple[str, str, str], list[LoadResult]] = {v: [] for v in variants}
        theirs: list[LoadResult] = []
        for r in range(args.rounds):
            # ABBA: alternate the order each round, so a drift of the machine's speed
            # does not always favour the configuration that runs first.
            for level, obs, tree in (variants if r % 2 == 0 else variants[::-1]):
                ours[(level, obs, tree)].append(drive(amoeba, topology, args, log_level=level,
                                                      observe=obs, tree=tree))
            if not args.no_fastapi:
                theirs.append(drive(fastapi, topology, args))
        width = max(len(label(*v)) for v in variants)
        for i, v in enumerate(variants):
            m = median(ours[v])
            print(f"{topology if i == 0 else '':>13}  {label(*v):<{width}}  {fmt(m)}"
                  + (f"  rounds: {[round(r.rps) for r in ours[v]]}" if args.rounds > 1 else ""))
        if theirs:
            f = median(theirs)
            print(f"{'':>13}  {'fastapi':<{width}}  {fmt(f)}"
                  + (f"  rounds: {[round(r.rps) for r in theirs]}" if args.rounds > 1 else ""))
            for v in variants:
                ratio = median(ours[v]).rps / f.rps
                print(f"{'':>13}  ratio vs fastapi {ratio:5.2f}x  (target >= {targets[topology]}x, "
                      f"p99 <= 25 ms)  {label(*v)}")
        if len(trees) > 1:
            for level in levels:
                for obs in observes:
                    new, old = ours[(level, obs, "")], ours[(level, obs, args.against)]
                    ratios = sorted(a.rps / b.rps for a, b in zip(new, old, strict=True))
                    cpu_new = statistics.median(r.cpu_us for r in new)
                    cpu_old = statistics.median(r.cpu_us for r in old)
                    print(f"{'':>13}  after/before {median(new).rps / median(old).rps:5.3f} of "
                          f"median req/s; per round {[round(r, 3) for r in ratios]}; server cpu "
                          f"per request {cpu_new:.1f} us / {cpu_old:.1f} us = "
                          f"{cpu_new / cpu_old:5.3f}  {label(level, obs)}")
        if len(levels) > 1:
            for obs in observes:
                on, off = median(ours[("INFO", obs, "")]), median(ours[("WARNING", obs, "")])
                print(f"{'':>13}  log on/off {on.rps / off.rps:5.3f}  (target >= 0.90)")
        if len(observes) > 1:
            for level in levels:
                on, off = median(ours[(level, "on", "")]), median(ours[(level, "off", "")])
                ratios = sorted(a.rps / b.rps for a, b in zip(ours[(level, "on", "")],
                                                              ours[(level, "off", "")], strict=True))
                print(f"{'':>13}  observe on/off {on.rps / off.rps:5.3f} of medians; per round "
                      f"{[round(r, 3) for r in ratios]}  (target >= 0.90)")
                cpu_on = statistics.median(r.cpu_us for r in ours[(level, "on", "")])
                cpu_off = statistics.median(r.cpu_us for r in ours[(level, "off", "")])
                print(f"{'':>13}  server cpu per request on {cpu_on:.1f} us / off {cpu_off:.1f} us "
                      f"(medians): throughput bound on/off {cpu_off / cpu_on:5.3f}  (target >= 0.90)")


if __name__ == "__main__":
    main()
