"""``amoeba status`` and ``amoeba advise``: rows from synthetic snapshots, and
both commands against the tickets app running as microservices."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import pytest
from snapshots import tickets_pair

from amoeba.cli import main
from amoeba.observe.status import render, replica_rows
from amoeba.runtime.process import load_bound
from amoeba.testing import TopologyGroup, free_port

ROOT = Path(__file__).resolve().parent.parent
MICRO = ROOT / "examples" / "tickets" / "topologies" / "microservices.yaml"


def test_rows_rates_health_and_a_replica_that_is_down():
    _, topo = load_bound(MICRO)
    before, after = tickets_pair(100.0, 0), tickets_pair(102.0, 400)
    after["processes"][1]["instances"][0]["http"]["errors"] = 0
    after["processes"][0]["instances"][0]["http"]["errors"] = 4  # 4 of 400 requests: 1 %
    after["processes"][0]["instances"][0]["draining"] = True
    rows = replica_rows(after, before, topo)
    ticket = next(r for r in rows if r["process"] == "ticket")
    assert ticket["requests"] == pytest.approx(200) and ticket["errors"] == pytest.approx(0.01)
    # 200 purchases/s through its edge (local) and 200 reserves/s to vacancy (remote)
    assert ticket["calls"] == pytest.approx(400) and ticket["health"] == "draining"
    vacancy = next(r for r in rows if r["process"] == "vacancy")
    assert vacancy["served"] == pytest.approx(200) and vacancy["health"] == "ready"

    after["processes"][1]["instances"][0] = {
        "process": "vacancy", "replica": 0, "address": "127.0.0.1:8001",
        "error": "http://127.0.0.1:8001/_amoeba/api/stats: Connect call failed ('127.0.0.1', 8001)"}
    rows = replica_rows(after, before, topo)
    down = next(r for r in rows if r["process"] == "vacancy")
    assert down["health"] == "down: connection refused" and down["pid"] is None
    assert down["listeners"] == [{"host": "0.0.0.0", "port": 8001, "public": True}]
    text = render(rows, "microservices")
    lines = text.splitlines()
    assert lines[0] == "microservices: 0/2 replicas ready"
    assert lines[2].split() == ["REPLICA", "PID", "LISTENERS", "HEALTH", "UPTIME", "REQ/S", "ERR%",
                                "RPC/S", "CALLS/S"]
    assert lines[3].split()[:4] == ["ticket[0]", "100", "127.0.0.1:8002", "pub"]
    assert "down: connection refused" in text and ":8002 pub" in text and "1.0" in text
    assert max(len(line) for line in lines) <= 100
    after["processes"][1]["instances"][0]["error"] = "http://127.0.0.1:8001/_amoeba/api/stats: " + "x" * 80
    text = render(replica_rows(after, before, topo), "microservices")
    assert max(len(line) for line in text.splitlines()[:6]) <= 100
    assert "vacancy[0] 127.0.0.1:8001: down: " + "x" * 80 in text  # in full under the table


def test_first_reading_only_has_no_rates():
    _, topo = load_bound(MICRO)
    rows = replica_rows(tickets_pair(100.0, 5), None, topo)
    assert all(r["requests"] is None and r["health"] == "ready" for r in rows)
    assert "2/2 replicas ready" in render(rows, "t")


def test_nothing_running(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VACANCY_PORT", str(free_port()))
    monkeypatch.setenv("TICKET_PORT", str(free_port()))
    assert main(["status", str(MICRO), "--interval", "0"]) == 1
    err = capsys.readouterr().err
    assert "no replica answered: is `amoeba run" in err and "connection refused" in err
    assert main(["advise", str(MICRO), "--interval", "0.1"]) == 1
    assert "no replica answered" in capsys.readouterr().err


@pytest.mark.e2e
def test_status_and_advise_on_running_microservices(capsys):
    from tickets.app import app

    group = TopologyGroup(app, "microservices", MICRO, {"INITIAL_STOCK": "1000000000"})
    group.start()
    stop = threading.Event()
    port = group.topo.processes["ticket"].listeners[0].port

    def load() -> None:
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                client.post(f"http://127.0.0.1:{port}/api/v1/purchase", json={"qty": 1})
                time.sleep(0.002)

    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    try:
        time.sleep(0.5)
        assert main(["status", str(group.file), "--interval", "0.5"]) == 0
        out = capsys.readouterr().out
        assert "2/2 replicas ready" in out and f":{port} pub" in out
        assert main(["status", str(group.file), "--interval", "0.5", "--json"]) == 0
        data = json.loads(capsys.readouterr().out)
        ticket = next(r for r in data["replicas"] if r["process"] == "ticket")
        assert ticket["requests"] > 0 and ticket["calls"] > 0
        assert main(["advise", str(group.file), "--interval", "1", "--json"]) == 0
        advice = json.loads(capsys.readouterr().out)
        pair = next(p for p in advice["pairs"] if p["services"] == ["ticket", "vacancy"])
        assert pair["placement"] == "remote"
        edge = next(p for p in advice["pairs"] if p["services"] == ["edge:ticket", "ticket"])
        assert edge["placement"] == "local" and edge["calls"] > 0
        assert pair["calls"] > 0 and pair["bytes"] > 0 and pair["crossing"] > 0
        assert advice["overhead_source"] == "measured"
    finally:
        stop.set()
        loader.join(10)
        group.stop()


@pytest.mark.e2e
def test_the_busiest_pair_of_the_shop_microservices_under_load_is_a_gateway_pair(request, capsys):
    """Browsing through the gateway: its edge's calls to catalog cross processes,
    so the top row of the advice is the gateway's edge and catalog."""
    import servers
    from shop.app import app

    env = {**servers.distributed_env("microservices", request),
           "SHOP_RATE_IP_BURST": "100000", "SHOP_RATE_IP_RATE": "100000"}
    group = TopologyGroup(app, "microservices", ROOT / "examples" / "shop" / "topologies"
                          / "microservices.yaml", env)
    group.start()
    stop = threading.Event()
    port = group.topo.processes["gateway"].listeners[0].port

    def load() -> None:
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                assert client.get(f"http://127.0.0.1:{port}/api/products/1").status_code == 200
                time.sleep(0.005)

    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    try:
        time.sleep(1.0)
        assert main(["advise", str(group.file), "--interval", "2"]) == 0
        text = capsys.readouterr().out
        with capsys.disabled():
            print(f"\namoeba advise on the shop's microservices under load:\n{text}")
        assert "catalog <> edge:gateway" in text
        assert main(["advise", str(group.file), "--interval", "2", "--json"]) == 0
        advice = json.loads(capsys.readouterr().out)
        busiest = advice["pairs"][0]
        assert busiest["services"] == ["catalog", "edge:gateway"], advice["pairs"]
        assert busiest["placement"] == "remote" and busiest["calls"] > 10
        assert advice["overhead_source"] == "measured"
        assert main(["graph", str(group.file)]) == 0
        assert "edge_gateway ==>" in capsys.readouterr().out
    finally:
        stop.set()
        loader.join(10)
        group.stop()
