"""Call overhead, local and remote, each beside its baseline from the same run.

    python bench/calls.py [--calls 200000] [--rtt 20000] [--seconds 5]

1. local: ``await self.echo.ping(i)`` through amoeba's wiring vs a direct
   ``await echo.ping(i)`` on an object built without amoeba (ns per call);
2. remote round trip, sequential: p50/p99 of one RPC vs the raw asyncio
   TCP echo floor (same framing idea, no codec, no pool);
3. remote calls/s with 32 concurrent callers, and the floor's.

Servers are pinned to core 0, this process (the client) to core 1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import uvloop

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "src")]

from echo_floor import take_frames  # noqa: E402
from load import free_port, start_server, stop_server  # noqa: E402
from rpcapp import Echo, app  # noqa: E402

from amoeba.runtime.host import Host  # noqa: E402
from amoeba.testing import monolith_topology, wait_ready  # noqa: E402
from amoeba.topology import bind, load_topology  # noqa: E402

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
        self.waiters: list[asyncio.Future[bytes]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        for frame in take_frames(self.buf):
            self.waiters.pop(0).set_result(frame[4:])

    async def call(self, payload: bytes) -> bytes:
        fut = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        self.t.write(len(payload).to_bytes(4, "big") + payload)  # type: ignore[attr-defined]
        return await fut


async def measure(call, rtt: int, seconds: float) -> tuple[float, float, float]:
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

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(32)))
    return pct(lat, 50), pct(lat, 99), count / (time.perf_counter() - t0)


async def remote(rtt: int, seconds: float) -> None:
    """The raw echo floor, then amoeba with metrics and tracing on (the default)
    and off (``AMOEBA_OBSERVE=off`` on both sides), one after the other."""
    fport = free_port()
    floor = start_server([sys.executable, str(HERE / "echo_floor.py"), str(fport)], cpu=SERVER_CPU,
                         env=None)
    topo_file = HERE / "topologies" / "calls.yaml"
    servers, ports = {}, {}
    for observe in ("on", "off"):
        ports[observe] = free_port()
        env = {**os.environ, "ECHO_PORT": str(ports[observe]), "CALLER_PORT": str(free_port()),
               "AMOEBA_SECRET": "bench", "AMOEBA_DATA_DIR": tempfile.mkdtemp(),
               "AMOEBA_OBSERVE": observe}
        servers[observe] = start_server([sys.executable, "-m", "amoeba", "run", str(topo_file),
                                         "--process", "echo"], cpu=SERVER_CPU, env=env)
    try:
        wait_ready(list(ports.values()), 30.0)
        await asyncio.sleep(0.5)
        loop = asyncio.get_running_loop()
        _, fc = await loop.create_connection(_FloorClient, "127.0.0.1", fport)
        payload = b"\x93\x01\xa4ping\x01"  # about the size of a small call

        async def floor_call(i: int) -> bytes:
            return await fc.call(payload)

        callers = {}
        for observe in ("on", "off"):
            os.environ.update(AMOEBA_SECRET="bench", ECHO_PORT=str(ports[observe]),
                              AMOEBA_OBSERVE=observe)
            topo = bind(load_topology(topo_file), app)
            callers[observe] = Host(app, topo, "caller", listen=False,
                                    data=Path(tempfile.mkdtemp()))
            await callers[observe].start()
        del os.environ["AMOEBA_OBSERVE"]

        f50, f99, frate = await measure(floor_call, rtt, seconds)
        for observe in ("on", "off"):
            m50, m99, mrate = await measure(callers[observe].instances["caller"].echo.ping, rtt,
                                            seconds)
            label = f"metrics {observe}"
            print(f"remote p50      floor {f50:7.1f} us   amoeba, {label:<11} {m50:7.1f} us   "
                  f"ratio {m50 / f50:5.2f}x  (target <= 2.00x)")
            print(f"remote p99      floor {f99:7.1f} us   amoeba, {label:<11} {m99:7.1f} us   "
                  f"ratio {m99 / f99:5.2f}x")
            print(f"remote 32 callers  floor {frate:9.0f} calls/s   amoeba, {label:<11} "
                  f"{mrate:9.0f} calls/s   ratio {mrate / frate:5.2f}x")
        for host in callers.values():
            await host.stop()
    finally:
        for server in servers.values():
            stop_server(server)
        stop_server(floor)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--calls", type=int, default=200_000)
    ap.add_argument("--rtt", type=int, default=20_000)
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    os.sched_setaffinity(0, {CLIENT_CPU})
    print(f"bench/calls.py: servers on cpu {SERVER_CPU}, client on cpu {CLIENT_CPU}, uvloop "
          f"{uvloop.__version__}, python {sys.version.split()[0]}")
    uvloop.run(local(args.calls))
    uvloop.run(remote(args.rtt, args.seconds))


if __name__ == "__main__":
    main()
