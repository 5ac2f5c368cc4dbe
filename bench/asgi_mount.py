"""Mounted ASGI apps: cost and gain, same run, interleaved ABBA.

    flock /tmp/amoeba-bench.lock python bench/asgi_mount.py [--duration 5] [--rounds 2]

Pairs, each printed with its ratio (servers pinned to core 0, wrk to core 1,
50 connections; figures are medians over the rounds):

1. native routes, before vs after: examples/tickets monolith,
   ``POST /api/v1/purchase``, with the framework of commit e55c4f3 (before
   mounts, pydantic, Protocol binding) vs this tree;
2. a trivial ASGI app (bench/asgi_trivial.py) mounted under ``/t`` vs the
   same app under uvicorn (uvloop, httptools);
3. (``--only edge``) the edge as an ASGI app (amoeba.runtime.asgi_edge) under
   uvicorn vs ``amoeba run``, tickets monolith;
4. examples/fastapi_tickets adopted and mounted (amoeba run, monolith and
   microservices topologies) vs the same FastAPI app before adoption under
   uvicorn (commit cb728e2: SERVICE_MODE=monolith; vacancy + ticket over httpx).

Older trees are taken with ``git archive`` into a temporary directory and
put first on PYTHONPATH.

``--instructions``: throughput on a shared machine cannot show a few per
cent, so the native route is also measured in instructions (valgrind's
callgrind, which no neighbour disturbs): bench/observe_cost.py's in-process
driver (the tickets purchase into the edge, metrics and tracing on), N and
3N requests, before vs after; (3N - N) / 2N is one request.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

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
BEFORE = "e55c4f3"  # the framework before this work
ORIGINAL_EXAMPLE = "cb728e2"  # examples/fastapi_tickets before adoption
STOCK = "1000000000"
PURCHASE = ("/api/v1/purchase", "POST", b'{"qty": 1}')
# A server: a context manager yielding (port to load, pids whose CPU is counted).
Server = Callable[[], Any]


def checkout(commit: str, path: str) -> Path:
    """``path`` of ``commit``, extracted into a temporary directory."""
    out = Path(tempfile.mkdtemp(prefix=f"bench-{commit}-"))
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, path],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return out / path


def env_with(pythonpath: list[Path], **extra: str) -> dict[str, str]:
    return {"PYTHONPATH": ":".join(str(p) for p in pythonpath), "AMOEBA_LOG_LEVEL": "WARNING",
            "INITIAL_STOCK": STOCK, "AMOEBA_DATA_DIR": tempfile.mkdtemp(prefix="bench-data-"),
            **extra}


@contextmanager
def amoeba(topology: Path, ports: dict[str, int], entry: str, src: Path | None = None,
           cwd: Path | None = None) -> Iterator[tuple[int, list[int]]]:
    env = env_with([src] if src else [], **{k: str(v) for k, v in ports.items()})
    proc = start_server([sys.executable, "-m", "amoeba", "run", str(topology)], cpu=SERVER_CPU,
                        env=env, cwd=cwd)
    try:
        for port in ports.values():
            wait_http(f"http://127.0.0.1:{port}/readyz", proc=proc)
        yield ports[entry], [proc.pid]
    finally:
        stop_server(proc)


@contextmanager
def uvicorn(app: str, where: Path, **env: str) -> Iterator[tuple[int, list[int]]]:
    port = free_port()
    proc = start_server([sys.executable, "-m", "uvicorn", app, "--port", str(port), "--loop",
                         "uvloop", "--http", "httptools", "--no-access-log", "--log-level",
                         "warning"], cpu=SERVER_CPU, env=env_with([where], **env), cwd=where)
    try:
        _wait_any(port, proc)
        yield port, [proc.pid]
    finally:
        stop_server(proc)


def _wait_any(port: int, proc: subprocess.Popen[bytes]) -> None:
    """Ready when the port answers HTTP at all (a 404 will do)."""
    import time

    import httpx

    end = time.monotonic() + 30
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise TimeoutError(f"port {port} never answered")


@contextmanager
def fastapi_micro(where: Path) -> Iterator[tuple[int, list[int]]]:
    vport, tport = free_port(), free_port()
    procs = [start_server([sys.executable, "-m", "uvicorn", "tickets_api.main:app", "--port", str(p),
                           "--loop", "uvloop", "--http", "httptools", "--no-access-log",
                           "--log-level", "warning"], cpu=SERVER_CPU,
                          env=env_with([where], **mode), cwd=where)
             for p, mode in ((vport, {"SERVICE_MODE": "vacancy"}),
                             (tport, {"SERVICE_MODE": "ticket",
                                      "VACANCY_URL": f"http://127.0.0.1:{vport}"}))]
    try:
        for p, proc in zip((vport, tport), procs, strict=True):
            wait_http(f"http://127.0.0.1:{p}/api/v1/health", proc=proc)
        yield tport, [p.pid for p in procs]
    finally:
        for proc in reversed(procs):
            stop_server(proc)


def drive(server: Server, request: tuple[str, str, bytes | None],
          args: argparse.Namespace) -> LoadResult:
    path, method, body = request
    headers = {"Content-Type": "application/json"} if body else {}
    with server() as (port, watched):
        url = f"http://127.0.0.1:{port}{path}"
        run_wrk(url, method=method, body=body, headers=headers, connections=args.connections,
                duration=2, cpu=LOAD_CPU)  # warm-up
        cpu = sum(tree_cpu_seconds(p) for p in watched)
        r = run_wrk(url, method=method, body=body, headers=headers, connections=args.connections,
                    duration=args.duration, cpu=LOAD_CPU)
        used = sum(tree_cpu_seconds(p) for p in watched) - cpu
        r = replace(r, cpu_us=used / max(r.requests, 1) * 1e6)
    if r.errors or r.non2xx:
        print(f"  warning: {r.errors} socket errors, {r.non2xx} non-2xx answers")
    return r


def fmt(r: LoadResult) -> str:
    return (f"{r.rps:8.0f} req/s  p50 {r.p50_ms:6.2f} ms  p99 {r.p99_ms:6.2f} ms  "
            f"cpu {r.cpu_us:6.1f} us/req")


def pair(name: str, a: tuple[str, Server], b: tuple[str, Server],
         request: tuple[str, str, bytes | None], args: argparse.Namespace) -> None:
    runs: dict[str, list[LoadResult]] = {a[0]: [], b[0]: []}
    for r in range(args.rounds):
        order = [a, b] if r % 2 == 0 else [b, a]  # ABBA
        for label, server in order:
            runs[label].append(drive(server, request, args))
    med = {k: sorted(v, key=lambda x: x.rps)[len(v) // 2] for k, v in runs.items()}
    cpu = {k: statistics.median(x.cpu_us for x in v) for k, v in runs.items()}
    print(f"{name}")
    for label in (a[0], b[0]):
        print(f"  {label:<34} {fmt(med[label])}  rounds {[round(x.rps) for x in runs[label]]}")
    print(f"  ratio {a[0]} / {b[0]}: req/s {med[a[0]].rps / med[b[0]].rps:5.2f}x, "
          f"cpu per request {cpu[a[0]] / cpu[b[0]]:5.2f}x")


def instructions_per_request(src: Path, n: int) -> float:
    from observe_cost import DRIVER

    counts = []
    with tempfile.TemporaryDirectory() as tmp:
        driver = Path(tmp) / "driver.py"
        driver.write_text(DRIVER.format(examples=str(ROOT / "examples")))
        for k in (n, 3 * n):
            out = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                                  sys.executable, str(driver), "on", str(k)],
                                 capture_output=True, text=True, check=True,
                                 env={**os.environ, "PYTHONPATH": str(src), "PYTHONHASHSEED": "0"})
            counts.append(next(int(line.split()[-1]) for line in out.stderr.splitlines()
                               if "Collected :" in line))
    return (counts[1] - counts[0]) / (2 * n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--instructions", action="store_true",
                    help="only: native route instructions per request, before vs after (callgrind)")
    ap.add_argument("--requests", type=int, default=1000, help="N for --instructions")
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--only", default="native,trivial,fastapi",
                    help="comma-separated: native, trivial, fastapi, edge")
    args = ap.parse_args()
    if args.instructions:
        n = max(50, args.requests // 50 * 50)
        before = instructions_per_request(checkout(BEFORE, "src"), n)
        after = instructions_per_request(ROOT / "src", n)
        print(f"native route (tickets purchase into the edge, observe on), {2 * n} requests "
              f"measured: after {after:.0f} vs before ({BEFORE}) {before:.0f} instructions per "
              f"request: {after - before:+.0f} ({(after / before - 1) * 100:+.2f}%)")
        return
    only = set(args.only.split(","))
    print(f"bench/asgi_mount.py: {args.connections} connections, {args.duration}s, "
          f"{args.rounds} round(s) ABBA, servers on cpu {SERVER_CPU}, wrk on cpu {LOAD_CPU}")
    tickets = ROOT / "examples" / "tickets" / "topologies" / "monolith.yaml"
    if "native" in only:
        before = checkout(BEFORE, "src")
        pair("native route (tickets monolith, POST /api/v1/purchase)",
             ("after (this tree)", lambda: amoeba(tickets, {"PORT": free_port()}, "PORT")),
             (f"before ({BEFORE})", lambda: amoeba(tickets, {"PORT": free_port()}, "PORT", before)),
             PURCHASE, args)
    if "trivial" in only:
        pair("trivial ASGI app (GET, constant JSON)",
             ("mounted in amoeba", lambda: amoeba(HERE / "topologies" / "asgi-trivial.yaml",
                                                  {"PORT": free_port()}, "PORT")),
             ("uvicorn", lambda: uvicorn("asgi_trivial:app", HERE)),
             ("/t", "GET", None), args)
    if "edge" in only:
        pair("the edge as an ASGI app (tickets monolith, POST /api/v1/purchase)",
             ("under uvicorn (asgi_edge)",
              lambda: uvicorn("asgi_edge_app:app", HERE, PORT=str(free_port()))),
             ("amoeba run", lambda: amoeba(tickets, {"PORT": free_port()}, "PORT")),
             PURCHASE, args)
    if "fastapi" in only:
        original = checkout(ORIGINAL_EXAMPLE, "examples/fastapi_tickets")
        topo = ROOT / "examples" / "fastapi_tickets" / "topologies"
        pair("fastapi_tickets monolith (POST /api/v1/purchase)",
             ("mounted in amoeba (monolith)", lambda: amoeba(topo / "monolith.yaml",
                                                             {"PORT": free_port()}, "PORT")),
             ("uvicorn (SERVICE_MODE=monolith)",
              lambda: uvicorn("tickets_api.main:app", original, SERVICE_MODE="monolith")),
             PURCHASE, args)
        vt: dict[str, int] = {}

        def micro() -> Any:
            vt.update(VACANCY_PORT=free_port(), TICKET_PORT=free_port())
            return amoeba(topo / "microservices.yaml", dict(vt), "TICKET_PORT")

        pair("fastapi_tickets microservices (POST /api/v1/purchase to ticket)",
             ("mounted in amoeba (microservices)", micro),
             ("uvicorn vacancy + ticket (httpx)", lambda: fastapi_micro(original)),
             PURCHASE, args)


if __name__ == "__main__":
    main()
