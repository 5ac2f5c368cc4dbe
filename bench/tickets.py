"""Tickets purchase throughput: mitosis vs the FastAPI + httpx comparison, same run.

    python bench/tickets.py [--duration 10] [--connections 50] [--rounds 1]

Drives ``POST /api/v1/purchase {"qty": 1}`` with wrk (50 connections, pinned to
core 1) against servers pinned to core 0 (both processes of a microservices
topology share that core), stock large enough never to sell out:

* mitosis monolith (durable SQLite stock) and microservices (RPC between
  two processes, durable SQLite stock);
* bench/fastapi_tickets.py: FastAPI routers + pydantic + in-memory stock
  under an asyncio.Lock, local client / pooled httpx client.

Every figure is printed beside its comparison and the ratio.  With
``--rounds N`` each configuration runs N times interleaved and the median
round is reported.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from load import LoadResult, free_port, run_wrk, start_server, stop_server, wait_http  # noqa: E402

SERVER_CPU, LOAD_CPU = 0, 1
STOCK = "1000000000"
BODY = b'{"qty": 1}'
HEADERS = {"Content-Type": "application/json"}


@contextmanager
def mitosis(topology: str) -> Iterator[int]:
    """Start ``mitosis run`` on a tickets topology; yield the purchase port."""
    ports = {"PORT": free_port(), "VACANCY_PORT": free_port(), "TICKET_PORT": free_port()}
    env = {k: str(v) for k, v in ports.items()}
    env.update(INITIAL_STOCK=STOCK, MITOSIS_DATA_DIR=tempfile.mkdtemp(prefix="bench-tickets-"),
               MITOSIS_LOG_LEVEL="WARNING")
    proc = start_server([sys.executable, "-m", "mitosis", "run",
                         str(ROOT / "examples" / "tickets" / "topologies" / f"{topology}.yaml")],
                        cpu=SERVER_CPU, env=env)
    port = ports["PORT"] if topology == "monolith" else ports["TICKET_PORT"]
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", proc=proc)
        if topology != "monolith":
            wait_http(f"http://127.0.0.1:{ports['VACANCY_PORT']}/readyz", proc=proc)
        yield port
    finally:
        stop_server(proc)


@contextmanager
def fastapi(topology: str) -> Iterator[int]:
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
        yield port
    finally:
        for p in reversed(procs):
            stop_server(p)


def drive(server: Callable[[str], Iterator[int]], topology: str, args: argparse.Namespace) -> LoadResult:
    with server(topology) as port:  # type: ignore[attr-defined]
        url = f"http://127.0.0.1:{port}/api/v1/purchase"
        run_wrk(url, body=BODY, headers=HEADERS, connections=args.connections, duration=2,
                cpu=LOAD_CPU)  # warm-up
        r = run_wrk(url, body=BODY, headers=HEADERS, connections=args.connections,
                    duration=args.duration, cpu=LOAD_CPU)
    if r.errors or r.non2xx:
        print(f"  warning: {topology}: {r.errors} socket errors, {r.non2xx} non-2xx responses")
    return r


def fmt(r: LoadResult) -> str:
    return f"{r.rps:8.0f} req/s  p50 {r.p50_ms:6.2f} ms  p99 {r.p99_ms:6.2f} ms"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--duration", type=int, default=10, help="seconds of load per measurement")
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    if os.cpu_count() and os.cpu_count() < 2:  # type: ignore[operator]
        print("warning: fewer than 2 cores; server and load generator will share one")
    print(f"bench/tickets.py: POST /api/v1/purchase {{\"qty\": 1}}, {args.connections} connections, "
          f"{args.duration}s, servers on cpu {SERVER_CPU}, wrk on cpu {LOAD_CPU}, "
          f"{args.rounds} round(s)")
    targets = {"monolith": 3.2, "microservices": 15.0}
    for topology in ("monolith", "microservices"):
        ours: list[LoadResult] = []
        theirs: list[LoadResult] = []
        for _ in range(args.rounds):
            ours.append(drive(mitosis, topology, args))
            theirs.append(drive(fastapi, topology, args))
        m = sorted(ours, key=lambda r: r.rps)[len(ours) // 2]
        f = sorted(theirs, key=lambda r: r.rps)[len(theirs) // 2]
        ratio = m.rps / f.rps
        print(f"{topology:>13}  mitosis  {fmt(m)}")
        print(f"{'':>13}  fastapi  {fmt(f)}")
        print(f"{'':>13}  ratio    {ratio:5.2f}x  (target >= {targets[topology]}x, p99 <= 25 ms)"
              + (f"  rounds: {[round(r.rps) for r in ours]} vs {[round(r.rps) for r in theirs]}"
                 if args.rounds > 1 else ""))


if __name__ == "__main__":
    main()
