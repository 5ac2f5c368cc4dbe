"""What one RPC costs the caller and the callee, in instructions (deterministic).

    python bench/rpc_cost.py --against DIR [--calls 50] [--observe on|off]

``bench/calls.py``'s echo app, 32 concurrent callers each making N and then
3N calls to ``echo.ping``; the difference / (2N x 32) is one call's
instructions.  The caller's side: this script's child process under
``valgrind --tool=callgrind``, the echo process outside it; the callee's
side: ``amoeba run`` of the echo process under callgrind, the caller
outside.  For this checkout and checkout DIR.

Time in the kernel is not counted: fewer ``send()`` calls (what coalescing
writes saves) do not show here, only the Python and C work around them; and
how many calls a turn of the loop gathers depends on the two sides' speeds,
so compare figures from the same side.  ``bench/calls.py`` gives calls/s and
CPU per call beside the echo floor.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CALLERS = 32


def _collected(stderr: str) -> int:
    for line in stderr.splitlines():
        if "Collected :" in line:
            return int(line.split()[-1])
    raise RuntimeError(f"no instruction count from callgrind:\n{stderr[-2000:]}")


def drive(src: Path, side: str, n: int, observe: str) -> int:
    """In a child process (one amoeba per process): ``n`` calls per caller;
    the instructions of ``side``'s process, start-up included."""
    env = {**os.environ, "PYTHONHASHSEED": "0", "AMOEBA_OBSERVE": observe,
           "AMOEBA_LOG_LEVEL": "WARNING", "PYTHONPATH": str(src)}
    argv = [sys.executable, __file__, "--child", side, "--src", str(src), "--calls", str(n),
            "--observe", observe]
    if side == "caller":
        argv = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *argv]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    if side == "caller":
        return _collected(done.stderr)
    return int(done.stdout.split("COLLECTED ")[1])


def child(side: str, src: Path, n: int) -> None:
    """The caller: a host in this process; the echo process started beside it,
    under callgrind when ``side`` is the callee."""
    sys.path[:0] = [str(HERE), str(src)]
    import uvloop
    from load import free_port
    from rpcapp import app

    from amoeba.runtime.host import Host
    from amoeba.testing import wait_ready
    from amoeba.topology import bind, load_topology

    topo_file = HERE / "topologies" / "calls.yaml"
    port = free_port()
    os.environ.update(AMOEBA_SECRET="bench", ECHO_PORT=str(port), CALLER_PORT=str(free_port()),
                      AMOEBA_DATA_DIR=tempfile.mkdtemp())
    argv = [sys.executable, "-m", "amoeba", "run", str(topo_file), "--process", "echo"]
    if side == "callee":
        argv = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *argv]
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    async def run() -> None:
        host = Host(app, bind(load_topology(topo_file), app), "caller", listen=False,
                    data=Path(tempfile.mkdtemp()))
        await host.start()
        ping = host.instances["caller"].echo.ping
        for i in range(200):  # connections open, code paths warm
            await ping(i)

        async def caller() -> None:
            for i in range(n):
                await ping(i)

        await asyncio.gather(*(caller() for _ in range(CALLERS)))
        await host.stop()

    try:
        wait_ready([port], 300.0, server)
        uvloop.run(run())
    finally:
        server.send_signal(signal.SIGINT)
        err = server.communicate(timeout=600)[1]
    if side == "callee":
        print(f"COLLECTED {_collected(err)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--against", type=Path, metavar="DIR", help="the checkout to compare with")
    ap.add_argument("--calls", type=int, default=50, help="N: calls per caller (then 3N)")
    ap.add_argument("--observe", choices=("on", "off"), default="on")
    ap.add_argument("--child", choices=("caller", "callee"), help=argparse.SUPPRESS)
    ap.add_argument("--src", type=Path, default=ROOT / "src", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.src, args.calls)
        return
    if args.against is None:
        ap.error("--against DIR is required")
    if shutil.which("valgrind") is None:
        sys.exit("bench/rpc_cost.py needs valgrind: apt-get install -y valgrind")
    n = args.calls
    per: dict[tuple[str, str], float] = {}
    for side in ("caller", "callee"):
        for name, root in (("before", args.against.resolve()), ("after", ROOT)):
            small, big = drive(root / "src", side, n, args.observe), drive(root / "src", side, 3 * n,
                                                                          args.observe)
            per[name, side] = (big - small) / (2 * n * CALLERS)
            print(f"  {side:<6} {name:<6} {per[name, side]:8.0f} instructions per call  ({root})",
                  flush=True)
    print(f"bench/rpc_cost.py: {CALLERS} callers, {2 * n * CALLERS} calls measured, metrics "
          f"{args.observe}")
    for side in ("caller", "callee"):
        after, before = per["after", side], per["before", side]
        print(f"  {side:<6} after {after:8.0f}   before {before:8.0f}   {after - before:+7.0f} "
              f"({(after / before - 1) * 100:+.2f}%)")


if __name__ == "__main__":
    main()
