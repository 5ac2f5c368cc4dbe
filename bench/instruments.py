"""What recording an application metric costs, beside the cheapest thing it
could be in Python: a float added to an object's attribute (same run).

    python bench/instruments.py [--n 1000000] [--repeat 7]

Prints ns per operation (median of ``--repeat`` timings of ``--n`` each) for
Counter.inc(), Counter.labels(v).inc(), Gauge.set(), Histogram.observe(),
each with the bare addition's figure and their difference.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from amoeba import Counter, Gauge, Histogram


class Bare:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    bare = Bare()
    counter = Counter("bench_counter", "bench")
    labelled = Counter("bench_labelled", "bench", labels=("payment",))
    gauge = Gauge("bench_gauge", "bench")
    hist = Histogram("bench_hist", "bench", buckets=(5, 10, 25, 50, 100, 250, 500))
    cases = {
        "bare: obj.value += 1": ("bare.value += 1.0", {"bare": bare}),
        "Counter.inc()": ("counter.inc()", {"counter": counter}),
        'Counter.labels("card").inc()': ('labelled.labels("card").inc()', {"labelled": labelled}),
        "Gauge.set(v)": ("gauge.set(3.0)", {"gauge": gauge}),
        "Histogram.observe(v)": ("hist.observe(42.0)", {"hist": hist}),
    }
    results: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeat):  # interleaved: the machine's noise falls on every case alike
        for name, (stmt, env) in cases.items():
            results[name].append(timeit.timeit(stmt, globals=env, number=args.n) / args.n * 1e9)
    base = statistics.median(results["bare: obj.value += 1"])
    print(f"{'operation':<32} {'ns/op':>8} {'bare':>8} {'+ns':>8}   (median of {args.repeat} x {args.n:,})")
    for name, xs in results.items():
        med = statistics.median(xs)
        print(f"{name:<32} {med:8.1f} {base:8.1f} {med - base:+8.1f}")


if __name__ == "__main__":
    main()
