"""Metrics an application defines: :class:`Counter`, :class:`Gauge` and
:class:`Histogram`, declared once at module level, with fixed label names::

    from amoeba import Counter, Histogram

    ORDERS = Counter("shop_orders_placed", "Orders placed", labels=("lines",))
    CHECKOUT = Histogram("shop_checkout_value", "Order totals, in currency units",
                         buckets=(5, 10, 25, 50, 100, 250, 500))

    ORDERS.labels("1").inc()
    CHECKOUT.observe(42.5)

Each process exports its own values on ``/metrics`` next to the built-in
``amoeba_*`` families (Prometheus adds the replica as ``instance``), in
``/_amoeba/api/stats`` (so ``amoeba status``' readers and the dashboard show
them), and ``amoeba deploy prometheus|grafana`` pick them up from the app.

Recording costs what an attribute addition costs: ``inc`` is a bound method of
the child that holds the value, ``labels(...)`` one dict lookup; nothing is
formatted until a scrape.  Label values are bounded by :data:`MAX_SERIES`
per metric, so a label fed from user input cannot grow memory without end.
"""

from __future__ import annotations

import math
import re
import sys
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, Generic, TypeVar

__all__ = ["MAX_SERIES", "REGISTRY", "Counter", "Gauge", "Histogram", "Instrument", "declared_by"]

MAX_SERIES = 1000  # label-value combinations per metric
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
#: Default histogram buckets: durations in seconds, as the built-in ones.
DEFAULT_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                      1.0, 2.5, 5.0, 10.0)


class _CounterValue:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError(f"a counter only goes up; inc({amount}) — use a Gauge for values that fall")
        self.value += amount


class _GaugeValue:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def set(self, value: float) -> None:
        self.value = value

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount


class _HistogramValue:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.sum = 0.0
        self.counts = [0] * (len(bounds) + 1)  # non-cumulative; the last is +Inf

    @property
    def count(self) -> int:
        return sum(self.counts)

    def observe(self, value: float) -> None:
        self.sum += value
        self.counts[bisect_left(self.bounds, value)] += 1


V = TypeVar("V", _CounterValue, _GaugeValue, _HistogramValue)


class Registry:
    """Every instrument this process declared, by name."""

    def __init__(self) -> None:
        self._by_name: dict[str, Instrument[Any]] = {}

    def __repr__(self) -> str:
        return f"<Registry {sorted(self._by_name)}>"

    def add(self, inst: Instrument[Any]) -> None:
        if inst.name in self._by_name:
            raise ValueError(f"metric {inst.name!r} is declared twice ({self._by_name[inst.name]!r}); "
                             f"declare it once, at module level, and import it where it is used")
        self._by_name[inst.name] = inst

    def __iter__(self) -> Iterator[Instrument[Any]]:
        return iter(sorted(self._by_name.values(), key=lambda i: i.name))


REGISTRY = Registry()


def declared_by(packages: set[str]) -> list[Instrument[Any]]:
    """The instruments declared in modules of ``packages`` (top-level names):
    an app's own, for the files ``amoeba deploy`` generates, whatever else the
    generating process imported."""
    return [i for i in REGISTRY if i.module.partition(".")[0] in packages]


class Instrument(Generic[V]):
    kind: ClassVar[str]

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        where = f"{type(self).__name__}({name!r})"
        if not _NAME.match(name) or name.startswith(("amoeba_", "__")):
            raise ValueError(f"{where}: a metric name is letters, digits, _ and : and does not start "
                             f"with amoeba_ (the framework's own); fix: e.g. shop_orders_placed")
        bad = [x for x in labels if not _LABEL.match(x) or x.startswith("__")]
        if bad or len(set(labels)) != len(labels) or isinstance(labels, str):
            raise ValueError(f"{where}: labels must be distinct identifiers, given {labels!r}; "
                             f"fix: labels=(\"payment\",)")
        self.name = name
        self.help = help
        self.label_names: tuple[str, ...] = tuple(labels)
        frame = sys._getframe(1)
        while frame.f_back is not None and frame.f_globals.get("__name__") == __name__:
            frame = frame.f_back
        self.module: str = frame.f_globals.get("__name__", "")  # where it was declared
        self.children: dict[tuple[str, ...], V] = {}
        REGISTRY.add(self)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} labels={list(self.label_names)}>"

    def _new(self) -> V:
        raise NotImplementedError

    def labels(self, *values: str) -> V:
        """The series for these label values (positional, in declared order)."""
        child = self.children.get(values)
        if child is None:
            if len(values) != len(self.label_names):
                raise ValueError(f"{self.name}.labels{values!r}: give {len(self.label_names)} "
                                 f"value(s), for {list(self.label_names)}")
            if len(self.children) >= MAX_SERIES:
                raise ValueError(f"{self.name}: more than {MAX_SERIES} label combinations; a label "
                                 f"must take few values (never ids or raw input)")
            child = self.children[values] = self._new()
        return child

    def _unlabelled(self) -> V:
        if self.label_names:
            raise ValueError(f"{self.name} has labels {list(self.label_names)}: "
                             f"use {self.name}.labels(...) first")
        return self.labels()


class Counter(Instrument[_CounterValue]):
    """A count that only goes up (orders placed, bytes sent)."""

    kind = "counter"

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, help, labels)
        if not labels:
            # The child's bound method: no lookup per call (mypy: deliberate shadowing).
            self.inc = self._unlabelled().inc  # type: ignore[method-assign]

    def _new(self) -> _CounterValue:
        return _CounterValue()

    def inc(self, amount: float = 1.0) -> None:
        self._unlabelled().inc(amount)


class Gauge(Instrument[_GaugeValue]):
    """A value that goes up and down (items in a cart, open sessions)."""

    kind = "gauge"

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, help, labels)
        if not labels:
            child = self._unlabelled()
            self.set, self.inc, self.dec = child.set, child.inc, child.dec  # type: ignore[method-assign]

    def _new(self) -> _GaugeValue:
        return _GaugeValue()

    def set(self, value: float) -> None:
        self._unlabelled().set(value)

    def inc(self, amount: float = 1.0) -> None:
        self._unlabelled().inc(amount)

    def dec(self, amount: float = 1.0) -> None:
        self._unlabelled().dec(amount)


class Histogram(Instrument[_HistogramValue]):
    """A distribution (checkout values, payment latency): counts per bucket
    upper bound, their sum and count."""

    kind = "histogram"

    def __init__(self, name: str, help: str, labels: Sequence[str] = (),
                 buckets: Sequence[float] = DEFAULT_BUCKETS) -> None:
        bounds = tuple(float(b) for b in buckets if not math.isinf(b))
        if not bounds or list(bounds) != sorted(set(bounds)):
            raise ValueError(f"Histogram({name!r}): buckets must be increasing numbers, given "
                             f"{tuple(buckets)!r}; fix: buckets=(5, 10, 25, 50, 100)")
        self.bounds = bounds
        super().__init__(name, help, labels)
        if not labels:
            self.observe = self._unlabelled().observe  # type: ignore[method-assign]

    def _new(self) -> _HistogramValue:
        return _HistogramValue(self.bounds)

    def observe(self, value: float) -> None:
        self._unlabelled().observe(value)
