"""``Hist``: a duration histogram cheap enough for the hot path, with no
dependency beyond the bucket bounds, so resources (``data/``) can record
into one without importing ``prometheus-client``."""

from __future__ import annotations

from bisect import bisect_left

from amoeba.observe.snapshot import BUCKETS

__all__ = ["Hist"]

_N = len(BUCKETS) + 1


class Hist:
    """Sum and bucket counts (non-cumulative) of durations in seconds; the
    count is the buckets' total, so recording is two additions."""

    __slots__ = ("hist", "sum")

    def __init__(self) -> None:
        self.sum = 0.0
        self.hist = [0] * _N

    def __repr__(self) -> str:
        return f"<Hist n={self.count} sum={self.sum:.6f}>"

    @property
    def count(self) -> int:
        return sum(self.hist)

    def observe(self, seconds: float) -> None:
        self.sum += seconds
        self.hist[bisect_left(BUCKETS, seconds)] += 1
