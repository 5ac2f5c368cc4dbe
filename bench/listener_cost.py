"""What the listener's hardening costs per request, in instructions (deterministic).

    python bench/listener_cost.py --against DIR [--requests 1000]

``amoeba run`` of the tickets monolith under ``valgrind --tool=callgrind``,
from this checkout and from checkout DIR (say a ``git worktree`` of the commit
before the change), each driven with N and then 3N ``POST /api/v1/purchase``
over 50 keep-alive connections by a client outside valgrind; the difference /
2N is one request's instructions in the server (HTTP parsing, limits, timers,
routing, the handler, the SQLite commit; kernel time is not counted).
Throughput on a shared machine moves by more than the few per cent this is
about: ``bench/tickets.py --against DIR`` gives req/s and CPU time beside this.
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
sys.path.insert(0, str(HERE))

from load import free_port  # noqa: E402
from observe_cost import _drive  # noqa: E402


def server_instructions(root: Path, n: int) -> int:
    port = free_port()
    env = {**os.environ, "INITIAL_STOCK": "100000000", "AMOEBA_DATA_DIR": tempfile.mkdtemp(),
           "AMOEBA_LOG_LEVEL": "WARNING", "PORT": str(port), "PYTHONPATH": str(root / "src"),
           "PYTHONHASHSEED": "0"}
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                             sys.executable, "-m", "amoeba", "run",
                             str(root / "examples" / "tickets" / "topologies" / "monolith.yaml"),
                             "--process", "main"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        asyncio.run(_drive(port, n))
    finally:
        proc.send_signal(signal.SIGINT)
        err = proc.communicate(timeout=600)[1]
    for line in err.splitlines():
        if "Collected :" in line:
            return int(line.split()[-1])
    raise RuntimeError(f"no instruction count from callgrind:\n{err[-2000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--against", required=True, metavar="DIR", help="the checkout to compare with")
    ap.add_argument("--requests", type=int, default=1000)
    args = ap.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("bench/listener_cost.py needs valgrind: apt-get install -y valgrind")
    n = max(50, args.requests // 50 * 50)
    per = {}
    for name, root in (("before", Path(args.against).resolve()), ("after", ROOT)):
        small, big = server_instructions(root, n), server_instructions(root, 3 * n)
        per[name] = (big - small) / (2 * n)
        print(f"  {name:<6} {per[name]:9.0f} instructions per purchase  ({root})", flush=True)
    print(f"bench/listener_cost.py: tickets purchase through the server, {2 * n} requests measured")
    print(f"  after {per['after']:9.0f}   before {per['before']:9.0f}   "
          f"{per['after'] - per['before']:+7.0f} ({(per['after'] / per['before'] - 1) * 100:+.2f}%)")


if __name__ == "__main__":
    main()
