"""Call overhead, local and remote, each beside its baseline from the same run.

    python bench/calls.py [--calls 200000] [--rtt 20000] [--seconds 5] [--against DIR [--rounds 1]]

1. local: ``await self.echo.ping(i)`` through amoeba's wiring vs a direct
   ``await echo.ping(i)`` on an object built without amoeba (ns per call);
2. remote round trip, sequential: p50/p99 of one RPC vs the raw asyncio
   TCP echo floor (same framing idea, no codec, no pool);
3. remote calls/s with 32 concurrent callers, and the floor's.

``--against DIR``: the remote part also for the amoeba of checkout DIR,
ABBA, each run in a child process beside its own floor.

Servers are pinned to core 0, this process (the client) to core 1.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec
import uvloop

HERE = Path(__file__).resolve().parent


def _src() -> Path:
    """The amoeba measured: ``--src DIR`` (how ``--against`` runs itself), else ours."""
    if "--src" in sys.argv:
        return Path(sys.argv[sys.argv.index("--src") + 1]).resolve()
    return HERE.parent / "src"


sys.path[:0] = [str(HERE), str(_src())]

from echo_floor import take_frames  # noqa: E402
from load import free_port, start_server, stop_server, tree_cpu_seconds  # noqa: E402
from rpcapp import Echo, app  # noqa: E402

from amoeba.context import new_traceparent  # noqa: E402
from amoeba.runtime.host import Host  # noqa: E402
from amoeba.testing import monolith_topology, wait_ready  # noqa: E402
from amoeba.topology import bind, load_topology  # noqa: E402
from amoeba.topology.model import Settings  # noqa: E402

SERVER_CPU, CLIENT_CPU = 0, 1


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


async def local(calls: int) -> None:
    """Direct await vs amoeba's wiring, with metrics on (the default: a metered
    reference counts and times every call) and off (``AMOEBA_OBSERVE=off``:
    the co-located instance itself)."""
    hosts = {}
    for observe in ("on", "off"):
        os.environ["AMOEBA_OBSERVE"] = observe
        hosts[observe] = Host(app, bind(monolith_topology(app), app), "main", listen=False,
                              data=Path(tempfile.mkdtemp()))
        await hosts[observe].start()
    del os.environ["AMOEBA_OBSERVE"]
    direct = Echo()

    def via(host: Host) -> Callable[[int], Awaitable[None]]:
        caller = host.instances["caller"]

        async def run(n: int) -> None:
            for i in range(n):
                await caller.echo.ping(i)

        return run

    async def by_hand(n: int) -> None:
        for i in range(n):
            await direct.ping(i)

    fns = {"direct": by_hand, "metrics on": via(hosts["on"]), "metrics off": via(hosts["off"])}
    runs: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(7):
        for name, fn in fns.items():
            t = time.perf_counter_ns()
            await fn(calls)
            runs[name].append((time.perf_counter_ns() - t) / calls)
    d = statistics.median(runs["direct"])
    for name in ("metrics off", "metrics on"):
        m = statistics.median(runs[name])
        print(f"local call      direct await {d:7.1f} ns   via amoeba, {name:<11} {m:7.1f} ns   "
              f"overhead {m - d:+7.1f} ns  (target <= 1000 ns)")
    for host in hosts.values():
        await host.stop()


class _FloorClient(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = bytearray()
        self.waiters: deque[asyncio.Future[bytes]] = deque()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        for frame in take_frames(self.buf):
            self.waiters.popleft().set_result(frame[4:])

    async def call(self, payload: bytes) -> bytes:
        fut = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        self.t.write(len(payload).to_bytes(4, "big") + payload)  # type: ignore[attr-defined]
        return await fut


async def measure(call, rtt: int, seconds: float, server: int) -> list[float]:
    """p50 and p99 of a sequential call (us); then, with 32 callers, calls/s
    and the CPU time per call of this process and of the ``server`` pid (us:
    what a busy neighbour steals is not charged, unlike wall time)."""
    for i in range(2000):  # warm up
        await call(i)
    lat = []
    for i in range(rtt):
        t = time.perf_counter_ns()
        await call(i)
        lat.append((time.perf_counter_ns() - t) / 1000)
    count = 0
    stop = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal count
        i = 0
        while time.perf_counter() < stop:
            await call(i)
            i += 1
            count += 1

    t0, c0, s0 = time.perf_counter(), time.process_time(), tree_cpu_seconds(server)
    await asyncio.gather(*(worker() for _ in range(32)))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    served = tree_cpu_seconds(server) - s0
    return [pct(lat, 50), pct(lat, 99), count / wall, cpu / count * 1e6, served / count * 1e6]


# Measured in this order, so that each is measured early and late in the run.
ORDER = ("floor", "metrics on", "metrics off", "metrics off", "metrics on", "floor")


async def remote(rtt: int, seconds: float, src: Path) -> dict[str, list[float]]:
    """The raw echo floor and amoeba with metrics and tracing on (the default)
    and off (``AMOEBA_OBSERVE=off`` on both sides), interleaved (``ORDER``);
    amoeba from ``src``.  Returns the medians of what ``measure`` returns.

    The floor is held to what amoeba gets: as many connections as the pool
    opens (rotated per call as the pool does), 32 calls in flight, and a
    payload the size of amoeba's call frame for ``echo.ping`` (the floor
    echoes it back; amoeba's reply is smaller)."""
    fport = free_port()
    floor = start_server([sys.executable, str(HERE / "echo_floor.py"), str(fport)], cpu=SERVER_CPU,
                         env=None)
    topo_file = HERE / "topologies" / "calls.yaml"
    servers, ports = {}, {}
    for observe in ("on", "off"):
        ports[observe] = free_port()
        env = {**os.environ, "ECHO_PORT": str(ports[observe]), "CALLER_PORT": str(free_port()),
               "AMOEBA_SECRET": "bench", "AMOEBA_DATA_DIR": tempfile.mkdtemp(),
               "AMOEBA_OBSERVE": observe, "PYTHONPATH": str(src)}
        servers[observe] = start_server([sys.executable, "-m", "amoeba", "run", str(topo_file),
                                         "--process", "echo"], cpu=SERVER_CPU, env=env)
    try:
        wait_ready(list(ports.values()), 30.0)
        await asyncio.sleep(0.5)
        loop = asyncio.get_running_loop()
        conns = []
        for _ in range(Settings().connections):
            conns.append((await loop.create_connection(_FloorClient, "127.0.0.1", fport))[1])
        payload = msgspec.msgpack.encode((1, "echo.ping", 10.0, new_traceparent(), "caller", [1], ""))
        turn = itertools.cycle(conns)

        async def floor_call(i: int) -> bytes:
            return await next(turn).call(payload)

        callers = {}
        for observe in ("on", "off"):
            os.environ.update(AMOEBA_SECRET="bench", ECHO_PORT=str(ports[observe]),
                              AMOEBA_OBSERVE=observe)
            topo = bind(load_topology(topo_file), app)
            callers[observe] = Host(app, topo, "caller", listen=False,
                                    data=Path(tempfile.mkdtemp()))
            await callers[observe].start()
        del os.environ["AMOEBA_OBSERVE"]

        fns = {"floor": floor_call, "metrics on": callers["on"].instances["caller"].echo.ping,
               "metrics off": callers["off"].instances["caller"].echo.ping}
        pids = {"floor": floor.pid, "metrics on": servers["on"].pid,
                "metrics off": servers["off"].pid}
        runs: dict[str, list[list[float]]] = {name: [] for name in fns}
        for name in ORDER:
            runs[name].append(await measure(fns[name], rtt, seconds, pids[name]))
        for host in callers.values():
            await host.stop()
    finally:
        for server in servers.values():
            stop_server(server)
        stop_server(floor)
    return {name: [statistics.median(r[k] for r in rs) for k in range(5)]
            for name, rs in runs.items()}


def report(res: dict[str, list[float]]) -> None:
    f50, f99, frate, fcpu, fsrv = res["floor"]
    for label in ("metrics on", "metrics off"):
        m50, m99, mrate, mcpu, msrv = res[label]
        print(f"remote p50      floor {f50:7.1f} us   amoeba, {label:<11} {m50:7.1f} us   "
              f"ratio {m50 / f50:5.2f}x  (target <= 1.50x)")
        print(f"remote p99      floor {f99:7.1f} us   amoeba, {label:<11} {m99:7.1f} us   "
              f"ratio {m99 / f99:5.2f}x")
        print(f"remote 32 callers  floor {frate:9.0f} calls/s   amoeba, {label:<11} "
              f"{mrate:9.0f} calls/s   ratio {mrate / frate:5.2f}x  (target >= 0.75x)")
        print(f"  CPU per call   floor client {fcpu:5.2f} us, server {fsrv:5.2f} us   "
              f"amoeba, {label:<11} client {mcpu:5.2f} us, server {msrv:5.2f} us")


def against(other: Path, args: argparse.Namespace) -> None:
    """The remote part for this checkout and ``other``, ABBA ``--rounds``
    times, each run in a child process (one amoeba per process) with its own
    floor; the ratios come from the medians of each checkout's runs."""
    results: dict[str, list[dict[str, list[float]]]] = {"this": [], "other": []}
    for name in ("this", "other", "other", "this") * args.rounds:
        src = HERE.parent / "src" if name == "this" else other / "src"
        out = subprocess.run([sys.executable, __file__, "--remote-only", "--src", str(src),
                              "--rtt", str(args.rtt), "--seconds", str(args.seconds)],
                             check=True, capture_output=True, text=True).stdout
        print(f"-- {name} ({src})\n" + out.split("RESULT ")[0], end="", flush=True)
        results[name].append(json.loads(out.split("RESULT ")[1]))
    for name, label in (("other", f"before ({other})"), ("this", "after (this checkout)")):
        print(f"== {label}, medians of {len(results[name])} runs")
        runs = results[name]
        report({k: [statistics.median(r[k][i] for r in runs) for i in range(5)]
                for k in runs[0]})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--calls", type=int, default=200_000)
    ap.add_argument("--rtt", type=int, default=20_000)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--against", metavar="DIR", type=Path,
                    help="also measure the remote part from checkout DIR, ABBA")
    ap.add_argument("--rounds", type=int, default=1, help="with --against: ABBA this many times")
    ap.add_argument("--remote-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--src", type=Path, default=_src(), help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.sched_setaffinity(0, {CLIENT_CPU})
    if args.remote_only:
        res = uvloop.run(remote(args.rtt, args.seconds, args.src))
        report(res)
        print("RESULT " + json.dumps(res))
        return
    print(f"bench/calls.py: servers on cpu {SERVER_CPU}, client on cpu {CLIENT_CPU}, uvloop "
          f"{uvloop.__version__}, python {sys.version.split()[0]}")
    uvloop.run(local(args.calls))
    if args.against is not None:
        against(args.against.resolve(), args)
    else:
        report(uvloop.run(remote(args.rtt, args.seconds, args.src)))


if __name__ == "__main__":
    main()
