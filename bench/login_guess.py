"""Other clients' latency while one client guesses passwords.

    flock /tmp/amoeba-bench.lock python bench/login_guess.py [--duration 10] [--rounds 2]

The monolith shop runs pinned to core 0 (its argon2 worker threads too);
wrk on core 1 sends ``GET /api/products/1`` over 4 connections, and a
guesser, also on core 1, keeps 4 wrong-password logins in flight:

* ``quiet``: nobody guesses (the reference);
* ``one``:   every guess at one existing account (the per-account throttle
  answers 429 after 5 failures, before any hash);
* ``spray``: every guess at a different email (the throttle never fires:
  only the cap on concurrent hashes protects the other clients).

in two configurations, interleaved ABBA over the rounds:

* ``uncapped``: ``AMOEBA_PASSWORD_HASHES=64`` (as before: the thread pool's
  6 workers hash at once);
* ``capped``:   the default, half the cores (1 here).

Shown: browse req/s, p50 and p99, its p50 against ``quiet`` of the same
configuration, and what the guesser got (answers per second by status).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import shop  # noqa: E402
from load import LoadResult  # noqa: E402

CONFIGS = {"uncapped": {"AMOEBA_PASSWORD_HASHES": "64"}, "capped": {}}
ATTACKS = ("quiet", "one", "spray")
GUESSERS = 4


class Guesser(threading.Thread):
    """``GUESSERS`` wrong logins in flight, on their own loop in this thread."""

    def __init__(self, port: int, email: str | None):
        super().__init__(daemon=True)
        self.url = f"http://127.0.0.1:{port}/api/auth/login"
        self.email = email  # None: a new email each guess
        self.stop = threading.Event()
        self.statuses: Counter[int] = Counter()
        self.seconds = 0.0

    def run(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        import httpx

        started = time.monotonic()
        async with httpx.AsyncClient(timeout=30) as client:
            async def worker() -> None:
                while not self.stop.is_set():
                    email = self.email or f"spray-{uuid.uuid4().hex[:10]}@bench.test"
                    try:
                        r = await client.post(self.url, json={"email": email, "password": "guess-1234"})
                        self.statuses[r.status_code] += 1
                    except httpx.HTTPError:
                        self.statuses[0] += 1
            await asyncio.gather(*(worker() for _ in range(GUESSERS)))
        self.seconds = time.monotonic() - started


def one_config(name: str, args: argparse.Namespace) -> dict[str, tuple[LoadResult, str]]:
    out: dict[str, tuple[LoadResult, str]] = {}
    with shop.shop("monolith", extra_env=CONFIGS[name]) as s:
        browse = shop.Request("GET", "/api/products/1", None, {})
        for attack in ATTACKS:
            guesser = None
            if attack != "quiet":
                guesser = Guesser(s.port, shop.ADMIN[0] if attack == "one" else None)
                guesser.start()
            result = shop.measure(s.port, browse, args)
            got = ""
            if guesser is not None:
                guesser.stop.set()
                guesser.join()
                got = ", ".join(f"{st}: {n / guesser.seconds:.1f}/s"
                                for st, n in sorted(guesser.statuses.items()))
            out[attack] = (result, got)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    args.connections = 4
    signal.signal(signal.SIGTERM, shop._terminated)
    os.sched_setaffinity(0, {shop.LOAD_CPU})  # this process (the guesser) beside wrk; servers use taskset
    print(f"bench/login_guess.py: monolith shop on cpu {shop.SERVER_CPU}; wrk (4 connections) and "
          f"{GUESSERS} concurrent guesses on cpu {shop.LOAD_CPU}; {args.duration}s per figure after "
          f"{shop.WARMUP_S}s warm-up; {args.rounds} round(s) ABBA", flush=True)
    runs: dict[tuple[str, str], list[tuple[LoadResult, str]]] = {}
    names = list(CONFIGS)
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            for attack, (result, got) in one_config(name, args).items():
                runs.setdefault((name, attack), []).append((result, got))
                print(f"  round {r + 1} {name:<9} {attack:<6} browse p50 {result.p50_ms:6.2f} ms "
                      f"p99 {result.p99_ms:7.2f} ms {result.rps:7.0f} req/s; guesses {got or '-'}",
                      flush=True)
    print(f"{'config':<9} {'attack':<6} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'p50/quiet':>10}  "
          f"guesser answers (median round)")
    for name in names:
        quiet = shop.median([x for x, _ in runs[(name, "quiet")]])
        for attack in ATTACKS:
            rounds = sorted(runs[(name, attack)], key=lambda x: x[0].rps)
            m, got = rounds[len(rounds) // 2]
            print(f"{name:<9} {attack:<6} {m.rps:8.0f} {m.p50_ms:8.2f} {m.p99_ms:8.2f} "
                  f"{m.p50_ms / quiet.p50_ms:9.2f}x  {got or '-'}")


if __name__ == "__main__":
    main()
