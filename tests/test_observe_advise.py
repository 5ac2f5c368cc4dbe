"""Placement advice from known traffic patterns (synthetic snapshots)."""

from __future__ import annotations

import copy

import pytest
from snapshots import call, cluster, node, served, snapshot, tickets_pair

from amoeba.observe.advise import DEFAULT_OVERHEAD, Advisor, advise, render


def pair(advice, a, b):
    return next(p for p in advice["pairs"] if p["services"] == sorted([a, b]))


def mixed(t: float, scale: float):
    """ticket -> vacancy remote at 1000/s (120 µs crossing each); in process
    "main", report -> audit local at 0.2 calls/s and report -> ticket never."""
    services = {"ticket": node("ticket", ["vacancy"]), "vacancy": node("vacancy"),
                "report": node("main", ["audit", "ticket"]), "audit": node("main")}
    n = int(1000 * scale)
    ticket = snapshot("ticket", ["ticket"], now=t, port=8002, requests=n, calls=[
        call("http", "ticket", "purchase", "local", n, 0.0004),
        call("ticket", "vacancy", "reserve", "remote", n, 0.0002, size=150)])
    vacancy = snapshot("vacancy", ["vacancy"], now=t, port=8001, pid=101,
                       served_=[served("vacancy", "reserve", n, 0.00008)])
    main = snapshot("main", ["report", "audit"], now=t, port=8003, pid=102, calls=[
        call("report", "audit", "record", "local", int(0.2 * scale), 0.00001, size=400,
             sampled=1 if scale else 0)])
    return cluster(t, services, [("ticket", False, [ticket]), ("vacancy", True, [vacancy]),
                                 ("main", False, [main])])


def test_known_pattern_co_locate_and_split():
    advice = advise(mixed(2000.0, 0), mixed(2010.0, 10), 10.0)
    tv = pair(advice, "ticket", "vacancy")
    assert tv["placement"] == "remote" and tv["calls"] == pytest.approx(1000)
    assert tv["per_call"] == pytest.approx(120e-6)
    assert tv["crossing"] == pytest.approx(0.12)  # 1000/s x 120 µs = 0.12 cores
    assert tv["bytes"] == pytest.approx(150_000)
    assert tv["per_request"] == pytest.approx(120e-6)  # one reserve per purchase
    assert tv["verdict"] == "co-locate" and not tv["estimated"]
    assert advice["overhead"] == pytest.approx(120e-6) and advice["overhead_source"] == "measured"

    ra = pair(advice, "audit", "report")
    assert ra["placement"] == "local" and ra["calls"] == pytest.approx(0.2)
    assert ra["crossing"] == pytest.approx(0.2 * 120e-6)  # estimated with the measured overhead
    assert ra["bytes"] == pytest.approx(0.2 * 400) and ra["estimated"]
    assert ra["verdict"] == "safe to split"
    # report -> ticket is declared but never called: no row, no advice.
    assert not any(p["services"] == ["report", "ticket"] for p in advice["pairs"])
    edge = pair(advice, "edge:ticket", "ticket")  # the edge of process ticket serves purchase
    assert edge["placement"] == "local" and edge["calls"] == pytest.approx(1000)
    assert edge["methods"] == ["edge:ticket->ticket.purchase"] and edge["verdict"] == "keep together"

    first, second = advice["recommendations"]
    assert first["action"] == "co-locate" and first["services"] == ["ticket", "vacancy"]
    # vacancy's process is private and ticket serves the edge: vacancy moves, not ticket.
    assert (first["move"], first["into"]) == ("vacancy", "ticket")
    assert first["cores"] == pytest.approx(0.12)
    assert "move vacancy into process 'ticket'" in first["text"] and "saves ≈ 0.120 cores" in first["text"]
    assert second["action"] == "split" and second["services"] == ["audit", "report"]
    assert second["cores"] == pytest.approx(0.2 * 120e-6)
    text = render(advice)
    assert "ticket <> vacancy" in text and "co-locate" in text and "safe to split" in text
    assert "1. co-locate ticket and vacancy" in text


def test_a_pair_that_never_called_gets_no_row_and_no_advice():
    services = {"a": node("main", ["b"]), "b": node("main")}
    before = cluster(0.0, services, [("main", False, [snapshot("main", ["a", "b"], now=10.0)])])
    after = cluster(5.0, services, [("main", False, [snapshot("main", ["a", "b"], now=15.0)])])
    advice = advise(before, after)
    assert advice["pairs"] == [] and advice["recommendations"] == []
    assert advice["overhead"] == DEFAULT_OVERHEAD and advice["overhead_source"] == "default"
    assert advice["interval"] == 5.0
    assert "recommendations: none" in render(advice)


def gateway(t: float, scale: float):
    """A gateway process whose edge routes requests to catalog (remote, 500/s,
    100 µs crossing) and to orders (remote, 5/s); orders calls catalog 5/s."""
    services = {"gateway": node("gateway"), "catalog": node("catalog"),
                "orders": node("orders", ["catalog"])}
    n = int(500 * scale)
    m = int(5 * scale)
    gw = snapshot("gateway", ["gateway"], now=t, port=8080, requests=n + m, calls=[
        call("http", "catalog", "get", "remote", n, 0.0003, size=400),
        call("http", "orders", "place", "remote", m, 0.002, size=600)])
    cat = snapshot("catalog", ["catalog"], now=t, port=8081, pid=101, public=False,
                   served_=[served("catalog", "get", n, 0.0002), served("catalog", "reserve", m, 0.0005)])
    orders = snapshot("orders", ["orders"], now=t, port=8082, pid=102, public=False,
                      calls=[call("orders", "catalog", "reserve", "remote", m, 0.0006)],
                      served_=[served("orders", "place", m, 0.0019)])
    return cluster(t, services, [("gateway", False, [gw]), ("catalog", True, [cat]),
                                 ("orders", True, [orders])])


def test_the_edge_is_a_node_and_its_busiest_pair_is_advised():
    advice = advise(gateway(100.0, 0), gateway(110.0, 10), 10.0)
    busiest = advice["pairs"][0]
    assert busiest["services"] == ["catalog", "edge:gateway"]
    assert busiest["placement"] == "remote" and busiest["processes"] == ["catalog", "gateway"]
    assert busiest["calls"] == pytest.approx(500)
    assert busiest["crossing"] == pytest.approx(500 * 100e-6)  # 0.05 cores
    assert busiest["verdict"] == "co-locate"
    assert pair(advice, "edge:gateway", "orders")["calls"] == pytest.approx(5)
    rec = advice["recommendations"][0]
    # The edge stays with its listener: catalog moves into the gateway's process.
    assert (rec["action"], rec["move"], rec["into"]) == ("co-locate", "catalog", "gateway")
    assert "co-locate catalog and edge:gateway: move catalog into process 'gateway'" in rec["text"]
    assert not any(r["move"].startswith("edge:") for r in advice["recommendations"])
    text = render(advice)
    assert "catalog <> edge:gateway" in text


def test_busy_local_pair_keeps_together_with_the_default_overhead():
    services = {"a": node("main", ["b"]), "b": node("main")}

    def at(t, n):
        return cluster(t, services, [("main", False, [snapshot("main", ["a", "b"], now=t, calls=[
            call("a", "b", "get", "local", n, 0.00001, size=1000, sampled=n // 100)])])])

    advice = advise(at(100.0, 0), at(101.0, 500))
    ab = pair(advice, "a", "b")
    assert ab["crossing"] == pytest.approx(500 * DEFAULT_OVERHEAD)  # 0.075 cores if split
    assert ab["bytes"] == pytest.approx(500 * 1000)
    assert ab["verdict"] == "keep together" and advice["recommendations"] == []


def test_zero_interval_gives_no_rates_and_no_advice():
    snap = tickets_pair(100.0, 1000)
    advice = advise(snap, copy.deepcopy(snap))
    assert advice["recommendations"] == []
    assert all(p["verdict"] == "no data" for p in advice["pairs"])
    assert any("no time passed" in n for n in advice["notes"])


def test_replica_that_errors_is_skipped_and_named():
    before, after = tickets_pair(100.0, 0), tickets_pair(101.0, 1000)
    after["processes"][1]["instances"][0] = {"process": "vacancy", "replica": 0,
                                             "address": "127.0.0.1:8001", "error": "refused"}
    advice = advise(before, after)
    tv = pair(advice, "ticket", "vacancy")
    # The caller's side is still known; the callee's served time is not: the
    # default overhead stands in for the measured one.
    assert tv["calls"] == pytest.approx(1000) and tv["estimated"]
    assert tv["crossing"] == pytest.approx(1000 * DEFAULT_OVERHEAD)
    assert any("vacancy[0]: not read (refused)" in n for n in advice["notes"])


def test_counters_that_went_backwards_count_as_a_restart():
    before = tickets_pair(100.0, 50_000)
    after = tickets_pair(110.0, 2000, pid=200)  # restarted: new pids, counters from zero
    for proc in after["processes"]:
        inst = proc["instances"][0]
        inst["started"] = 108.0
        inst["uptime"] = 2.0
    advice = advise(before, after)
    tv = pair(advice, "ticket", "vacancy")
    assert tv["calls"] == pytest.approx(1000)  # 2000 calls in the 2 s since the restart
    assert tv["crossing"] == pytest.approx(0.12)
    assert any("restarted" in n for n in advice["notes"])

    # Same pid, counters lower: also a reset, over the full interval.
    again = tickets_pair(120.0, 1000)
    tv2 = pair(advise(tickets_pair(110.0, 50_000), again), "ticket", "vacancy")
    assert tv2["calls"] == pytest.approx(100)


def test_advisor_compares_with_a_baseline_a_window_old():
    advisor = Advisor(window=10.0)
    assert advisor.observe(tickets_pair(0.0, 0)) is None
    for t in range(2, 30, 2):
        advice = advisor.observe(tickets_pair(float(t), 1000 * t))
        assert advice is not None
        assert pair(advice, "ticket", "vacancy")["calls"] == pytest.approx(1000)
        assert advice["interval"] == (t if t < 10 else 10)
    assert len(advisor.history) <= 7
