"""What metrics and tracing cost per request, in instructions (deterministic).

    python bench/observe_cost.py [--requests 1000] [--skip-server]

Throughput on a shared machine is too noisy to see a few per cent, so this
counts instructions with ``valgrind --tool=callgrind`` (Debian's ``valgrind``),
which no other tenant disturbs.  Each configuration drives the tickets purchase
straight into the edge of an in-process host (50 concurrent requests at a
time; no HTTP parsing and no socket work, so the per-request total is smaller
than a server's and the share it prints an upper bound), once with N and once
with 3N requests; the difference / 2N is the cost of one request:

* ``off``       ``AMOEBA_OBSERVE=off`` (the baseline)
* ``on``        metrics and tracing on (the default)
* ``no-trace``  ``settings.observe.tracing: false``
* ``no-meter``  metrics on, but local calls not metered

Then the same through a real server: ``amoeba run`` of the tickets monolith
under callgrind, N and 3N purchases over 50 keep-alive connections from a
client outside valgrind (HTTP parsing and responses included; time in the
kernel is not counted, so the real share is lower still).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

DRIVER = '''
import asyncio, gc, os, sys, tempfile, pathlib
sys.path.insert(0, {examples!r})
os.environ["INITIAL_STOCK"] = "100000000"
variant, n = sys.argv[1], int(sys.argv[2])
os.environ["AMOEBA_OBSERVE"] = "off" if variant == "off" else "on"
from tickets.app import app
import amoeba.runtime.host as hostmod
if variant == "no-meter":
    hostmod.metered_stub = lambda spec, codecs, ref, *a: ref
from amoeba.testing import InProcessHarness
from amoeba.gateway.http import Request
import uvloop

async def main():
    settings = {{"observe": {{"tracing": False}}}} if variant == "no-trace" else {{}}
    h = InProcessHarness(app, pathlib.Path(tempfile.mkdtemp()), strict=False, env={{}},
                         settings=settings)
    await h.start()
    gc.freeze()  # as a process does after startup
    edge = h.host.edges[0]
    body, hdr = b'{{"qty": 1}}', {{"content-type": "application/json"}}
    loop = asyncio.get_running_loop()

    async def one():
        return await edge.handle(Request("POST", "/api/v1/purchase", "", hdr, body, "127.0.0.1"),
                                 "rid")

    for _ in range(n // 50):
        await asyncio.gather(*(loop.create_task(one()) for _ in range(50)))
    await h.aclose()

uvloop.run(main())
'''


def instructions(driver: Path, variant: str, n: int) -> int:
    out = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                          sys.executable, str(driver), variant, str(n)],
                         capture_output=True, text=True, check=True)
    for line in out.stderr.splitlines():
        if "Collected :" in line:
            return int(line.split()[-1])
    raise RuntimeError(f"no instruction count from callgrind:\n{out.stderr[-2000:]}")


_REQUEST = (b"POST /api/v1/purchase HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
            b"content-length: 10\r\n\r\n{\"qty\": 1}")


async def _drive(port: int, n: int) -> None:
    import asyncio

    async def client(count: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(count):
            writer.write(_REQUEST)
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length"))
            await reader.readexactly(length)
        writer.close()

    for _ in range(600):  # valgrind starts the server slowly
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            break
        except OSError:
            await asyncio.sleep(0.5)
    await asyncio.sleep(1.0)
    await asyncio.gather(*(client(n // 50) for _ in range(50)))


def server_instructions(observe: str, n: int) -> int:
    import asyncio
    import signal

    sys.path.insert(0, str(HERE))
    from load import free_port

    port = free_port()
    env = {**os.environ, "INITIAL_STOCK": "100000000", "AMOEBA_DATA_DIR": tempfile.mkdtemp(),
           "AMOEBA_LOG_LEVEL": "WARNING", "AMOEBA_OBSERVE": observe, "PORT": str(port)}
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                             sys.executable, "-m", "amoeba", "run",
                             str(ROOT / "examples" / "tickets" / "topologies" / "monolith.yaml"),
                             "--process", "main"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        asyncio.run(_drive(port, n))
    finally:
        proc.send_signal(signal.SIGINT)
        err = proc.communicate(timeout=300)[1]
    for line in err.splitlines():
        if "Collected :" in line:
            return int(line.split()[-1])
    raise RuntimeError(f"no instruction count from callgrind:\n{err[-2000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--skip-server", action="store_true", help="only the in-process measurement")
    args = ap.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("bench/observe_cost.py needs valgrind: apt-get install -y valgrind")
    n = max(50, args.requests // 50 * 50)
    with tempfile.TemporaryDirectory() as tmp:
        driver = Path(tmp) / "driver.py"
        driver.write_text(DRIVER.format(examples=str(ROOT / "examples")))
        per: dict[str, float] = {}
        for variant in ("off", "on", "no-trace", "no-meter"):
            small, big = instructions(driver, variant, n), instructions(driver, variant, 3 * n)
            per[variant] = (big - small) / (2 * n)
            print(f"  {variant:<9} {per[variant]:9.0f} instructions per request", flush=True)
    base = per["off"]
    print(f"bench/observe_cost.py: tickets purchase into the edge, {2 * n} requests measured")
    print(f"  observe on  {per['on']:9.0f}   off {base:9.0f}   +{per['on'] - base:7.0f} "
          f"(+{(per['on'] / base - 1) * 100:.1f}%; without HTTP in the denominator)")
    print(f"  of which: tracing {per['on'] - per['no-trace']:+7.0f}, "
          f"metering local calls {per['on'] - per['no-meter']:+7.0f}, "
          f"the rest (route metrics) {per['no-trace'] + per['no-meter'] - per['on'] - base:+7.0f}")
    if args.skip_server:
        return
    served = {}
    for observe in ("off", "on"):
        small, big = server_instructions(observe, n), server_instructions(observe, 3 * n)
        served[observe] = (big - small) / (2 * n)
    print(f"  through the server (HTTP): observe on {served['on']:9.0f}   off {served['off']:9.0f}   "
          f"+{served['on'] - served['off']:7.0f} (+{(served['on'] / served['off'] - 1) * 100:.1f}%, "
          f"target <= 10%)")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
