"""The application's own metrics: declared once, recorded cheaply, exported on
/metrics (parsed by prometheus-client's parser) and in /_amoeba/api/stats."""

from __future__ import annotations

import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

from amoeba import Counter, Gauge, Histogram
from amoeba.observe.instruments import MAX_SERIES, REGISTRY


def unique(stem: str) -> str:
    return f"test_{stem}_{uuid.uuid4().hex[:8]}"  # the registry is per process


def test_counter_gauge_histogram_record():
    c = Counter(unique("orders"), "Orders placed")
    c.inc()
    c.inc(2)
    assert c.children[()].value == 3
    with pytest.raises(ValueError, match="only goes up"):
        c.inc(-1)
    g = Gauge(unique("open"), "Open carts", labels=("shop",))
    g.labels("a").inc(5)
    g.labels("a").dec(2)
    g.labels("b").set(7)
    assert {k: v.value for k, v in g.children.items()} == {("a",): 3, ("b",): 7}
    h = Histogram(unique("value"), "Checkout value", buckets=(10, 100))
    for v in (5, 50, 500, 10):
        h.observe(v)
    child = h.children[()]
    assert child.counts == [2, 1, 1] and child.sum == 565 and child.count == 4


def test_declaration_errors_say_what_to_do():
    name = unique("twice")
    Counter(name, "once")
    with pytest.raises(ValueError, match="declared twice"):
        Counter(name, "again")
    with pytest.raises(ValueError, match="does not start with amoeba_"):
        Counter("amoeba_mine", "reserved")
    with pytest.raises(ValueError, match=r"fix: e\.g\. shop_orders_placed"):
        Counter("orders placed", "spaces")
    with pytest.raises(ValueError, match="labels must be distinct identifiers"):
        Counter(unique("labels"), "dup", labels=("a", "a"))
    with pytest.raises(ValueError, match="buckets must be increasing"):
        Histogram(unique("buckets"), "unsorted", buckets=(5, 1))
    labelled = Counter(unique("lab"), "by payment", labels=("payment",))
    with pytest.raises(ValueError, match=r"use .*\.labels\(\.\.\.\) first"):
        labelled.inc()
    with pytest.raises(ValueError, match="give 1 value"):
        labelled.labels("card", "extra")


def test_label_combinations_are_bounded():
    c = Counter(unique("bounded"), "per user, badly", labels=("user",))
    for i in range(MAX_SERIES):
        c.labels(str(i)).inc()
    with pytest.raises(ValueError, match="never ids or raw input"):
        c.labels("one-more")


def test_exported_on_metrics_and_in_the_stats(tmp_path):
    import asyncio

    from tickets.app import app

    from amoeba.testing import InProcessHarness

    counter = Counter(unique("sold"), "Tickets sold", labels=("channel",))
    hist = Histogram(unique("basket"), "Basket size", buckets=(1, 2, 5))
    counter.labels("web").inc(3)
    hist.observe(2)
    hist.observe(9)

    async def read() -> tuple[str, dict]:  # type: ignore[type-arg]
        h = InProcessHarness(app, tmp_path / "data", strict=False, env={"INITIAL_STOCK": "5"})
        await h.start()
        try:
            return (await h.get("/metrics")).body.decode(), (await h.get("/_amoeba/api/stats")).json()
        finally:
            await h.aclose()

    text, stats = asyncio.run(read())
    families = {f.name: f for f in text_string_to_metric_families(text)}
    sold = families[counter.name]
    assert sold.type == "counter"
    assert [(s.name, s.labels, s.value) for s in sold.samples if s.name.endswith("_total")] == [
        (counter.name + "_total", {"channel": "web"}, 3.0)]
    basket = families[hist.name]
    buckets = {s.labels["le"]: s.value for s in basket.samples if s.name.endswith("_bucket")}
    assert buckets == {"1.0": 0, "2.0": 1, "5.0": 1, "+Inf": 2}
    assert next(s.value for s in basket.samples if s.name.endswith("_sum")) == 11
    mine = {m["name"]: m for m in stats["metrics"]}
    assert mine[counter.name]["series"] == [{"labels": ["web"], "value": 3.0}]
    assert mine[hist.name]["buckets"] == [1.0, 2.0, 5.0]
    assert mine[hist.name]["series"][0]["hist"] == [0, 1, 0, 1] and mine[hist.name]["kind"] == "histogram"
    assert {i.name for i in REGISTRY} >= {counter.name, hist.name}
