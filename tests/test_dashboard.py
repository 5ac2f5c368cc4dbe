"""The dashboard in headless Chromium (Debian's ``chromium`` + ``chromedriver``,
driven by Selenium; nothing is downloaded): once against the tickets app run
as microservices under load, once against synthetic snapshots that exercise
the advice and events panels.  Each saves a screenshot under ``tmp_path``."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from require import missing
from snapshots import call, cluster, dashboard_server, node, served, snapshot

from amoeba.observe.advise import Advisor
from amoeba.testing import TopologyGroup

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("AMOEBA_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("AMOEBA_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1400,1000")


def _missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (shutil.which(path) or os.access(path, os.X_OK)):
            return f"{path} not found (apt-get install chromium chromium-driver)"
    return None


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    why = _missing()
    if why:
        missing(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager fetch anything
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: Any, script: str, timeout: float = 40.0) -> Any:
    """Poll ``script`` (a JS expression) until it is truthy; its value."""
    end = time.monotonic() + timeout
    while True:
        value = driver.execute_script(f"return ({script});")
        if value:
            return value
        if time.monotonic() > end:
            logs = "\n".join(str(e) for e in driver.get_log("browser"))
            raise AssertionError(f"timed out waiting for {script}\nbrowser log:\n{logs}\n"
                                 f"page text:\n{driver.find_element('tag name', 'body').text}")
        time.sleep(0.2)


NONE = "\u2013"  # the page's "no value" (an en dash)
EDGE = "document.querySelector('[data-edge=\"{}\"]')"


def test_dashboard_shows_the_tickets_app_live(browser: Any, tmp_path: Path) -> None:
    from tickets.app import app

    group = TopologyGroup(app, "microservices", ROOT / "examples/tickets/topologies/microservices.yaml",
                          {"INITIAL_STOCK": "1000000000"})
    group.start()
    stop = threading.Event()
    port = group.topo.processes["ticket"].listeners[0].port

    def load() -> None:
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                r = client.post(f"http://127.0.0.1:{port}/api/v1/purchase", json={"qty": 1})
                assert r.status_code == 200, r.text
                time.sleep(0.005)

    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    try:
        browser.get(f"http://127.0.0.1:{port}/_amoeba/")
        wait_for(browser, "document.querySelector('[data-service=\"ticket\"]') && "
                          "document.querySelector('[data-service=\"vacancy\"]')")
        rate = float(wait_for(browser, f"{EDGE.format('ticket->vacancy')}?.dataset.rate > 0 && "
                                       f"{EDGE.format('ticket->vacancy')}.dataset.rate"))
        assert rate > 0
        edge = browser.execute_script(f"const e = {EDGE.format('ticket->vacancy')};"
                                      "return [e.dataset.kind, e.dataset.p99, e.textContent];")
        assert edge[0] == "remote" and float(edge[1]) > 0
        health = browser.execute_script(
            "return [...document.querySelectorAll('[data-replica]')]"
            ".map(r => r.dataset.replica + ' ' + r.dataset.health);")
        assert sorted(health) == ["ticket/0 ready", "vacancy/0 ready"]
        assert wait_for(browser, "document.querySelector('[data-method=\"ticket->vacancy.reserve\"]')")
        # The runtime's own advice (its Advisor compares the cluster with an earlier poll).
        wait_for(browser, "!document.getElementById('advice').textContent.includes('appears once')")
        advice = browser.find_element("id", "advice").text
        assert "ticket" in advice and "vacancy" in advice, advice
        shot = tmp_path / "dashboard-tickets.png"
        browser.save_screenshot(str(shot))
        print(f"screenshot: {shot}")
        assert shot.stat().st_size > 10_000
        severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not severe, severe
    finally:
        stop.set()
        loader.join(10)
        group.stop()


class _Synthetic:
    """A two-process app with events whose counters grow with time: ``api``
    and ``audit`` share a process, ``ledger`` runs apart and is called a lot;
    ``ledger`` declares ``audit`` as a dependency it never calls (an idle edge)."""

    def __init__(self) -> None:
        self.t0 = time.time()
        self.advisor = Advisor(window=2.0)
        self.lock = threading.Lock()

    def cluster(self) -> dict[str, Any]:
        now = time.time()
        n = int((now - self.t0) * 400)
        services = {"api": node("main", ["ledger", "audit"], ["pay"]),
                    "audit": node("main", [], ["record"]),
                    "ledger": node("ledger", ["audit"], ["post"])}
        services["api"]["publishes"] = ["paid"]
        services["audit"]["handles"] = ["paid"]
        events = {"published": {"api/paid": n // 4},
                  "consumers": [{"service": "audit", "event": "paid", "delivered": n // 4,
                                 "acked": n // 4, "retried": 2, "dead_lettered": 1, "duplicates": 0,
                                 "lag": 3}],
                  "outbox": {"api": 5}}
        main = snapshot("main", ["api", "audit"], now=now, started=self.t0 - 60, requests=n, calls=[
            call("http", "api", "pay", "local", n, 0.002),
            call("api", "ledger", "post", "remote", n, 0.0006, size=300),
            call("api", "audit", "record", "local", n // 200, 0.00002, sampled=n // 2000)],
            events=events)
        main["metrics"] = [  # the app's own: a counter at 40/s and a histogram of values
            {"name": "shop_orders_placed", "kind": "counter", "help": "Orders placed",
             "labels": ["channel"], "series": [{"labels": ["web"], "value": n // 10}]},
            {"name": "shop_checkout_value", "kind": "histogram", "help": "Totals",
             "labels": [], "buckets": [10.0, 100.0],
             "series": [{"labels": [], "value": n // 10, "sum": 20.0 * (n // 10),
                         "hist": [0, n // 10, 0]}]}]
        ledger = snapshot("ledger", ["ledger"], now=now, started=self.t0 - 60, pid=300, port=9000,
                          public=False, served_=[served("ledger", "post", n, 0.0004)])
        data = cluster(now, services, [("main", False, [main]), ("ledger", True, [ledger])])
        with self.lock:
            advice = self.advisor.observe(data)  # type: ignore[arg-type]
        if advice is not None:
            data["advice"] = advice
        return data


@pytest.fixture
def synthetic_server() -> Iterator[str]:
    with dashboard_server(_Synthetic().cluster) as url:
        yield url


def test_dashboard_shows_advice_events_and_idle_edges(browser: Any, synthetic_server: str,
                                                      tmp_path: Path) -> None:
    browser.get(synthetic_server)
    wait_for(browser, "document.querySelector('[data-advice=\"co-locate:api+ledger\"]')")
    rate = float(browser.execute_script(f"return {EDGE.format('api->ledger')}.dataset.rate;"))
    assert rate == pytest.approx(400, rel=0.2)
    assert browser.execute_script(f"return {EDGE.format('api->audit')}.dataset.kind;") == "local"
    assert browser.execute_script(f"return {EDGE.format('api->ledger')}.dataset.kind;") == "remote"
    assert browser.execute_script(f"return {EDGE.format('api->audit')}.dataset.kind;") == "local"
    assert browser.execute_script("return document.querySelector('[data-event=\"paid\"]') !== null;")
    idle = browser.execute_script(
        f"const g = {EDGE.format('ledger->audit')}; return [g.dataset.kind, g.dataset.rate, "
        "g.querySelector('path').getAttribute('class')];")
    assert idle == ["remote", "0.000", "edge remote idle"], idle
    labels = browser.execute_script(
        "return [...document.querySelectorAll('.edge-label.idle')].map(t => t.textContent);")
    assert "ledger → audit · remote · idle" in labels, labels
    text = browser.find_element("id", "advice").text
    assert "move ledger into process 'main'" in text
    consumer = browser.execute_script(
        "return document.querySelector('[data-consumer=\"audit|paid\"]').textContent;")
    assert "audit" in consumer and "paid" in consumer
    assert "api 5" in browser.find_element("id", "outbox").text
    wait_for(browser, "(document.querySelector('[data-appmetric=\"shop_orders_placed|web\"] "
                      f"td:nth-child(5)')?.textContent ?? '{NONE}') !== '{NONE}'")
    cells = browser.execute_script(
        "return [...document.querySelectorAll('[data-appmetric] td')].map(t => t.textContent);")
    checkout, orders = cells[:7], cells[7:]  # sorted by name
    assert orders[:3] == ["shop_orders_placed", "channel=web", "counter"], cells
    assert float(orders[4]) == pytest.approx(40, rel=0.25)  # per second over the window
    assert checkout[:3] == ["shop_checkout_value", NONE, "histogram"] and checkout[5] == "20", cells
    shot = tmp_path / "dashboard-advice.png"
    browser.save_screenshot(str(shot))
    print(f"screenshot: {shot}")
