"""``/docs`` in Chromium, on the shop monolith started with ``amoeba run``:
an Authorize control whose token the auth operations send, docstrings
rendered (reST ``code``, whole first paragraphs as summaries), nullable
types named, placeholders from defaults and minimums, and an empty console."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_dashboard import browser, wait_for  # noqa: F401  (the module's Chromium fixture)

from amoeba.gateway.openapi import summary_of
from amoeba.testing import TopologyGroup

ROOT = Path(__file__).resolve().parent.parent
SHOP = ROOT / "examples" / "shop" / "topologies" / "monolith.yaml"
OP = "document.querySelector('details.op.{method}[data-search^=\"{method} {path} \"]')"


def test_summaries_are_whole_first_paragraphs_in_plain_text():
    doc = ("Place an order for the caller.  ``total_amount``, when sent, must match\n"
           "the catalog's prices.\n\nMore detail here.")
    assert summary_of(doc, "place_order") == ("Place an order for the caller.  total_amount, when "
                                              "sent, must match the catalog's prices.")
    assert summary_of(None, "place_order") == "Place order"


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from shop.app import app

    group = TopologyGroup(app, "monolith", SHOP, {"SHOP_RATE_IP_BURST": "100000",
                                                  "SHOP_RATE_IP_RATE": "100000"})
    group.start()
    try:
        yield group
    finally:
        group.stop()


def test_docs_page_authorize_rendering_and_a_clean_console(browser, shop, tmp_path):  # noqa: F811
    base = shop.url()
    email = f"docs-{uuid.uuid4().hex[:8]}@shop.test"
    with httpx.Client(base_url=base, timeout=10) as client:
        assert client.post("/api/auth/register", json={"email": email, "password": "correct horse"}
                           ).status_code == 202  # the same answer for a taken email
        token = client.post("/api/auth/login", json={"email": email, "password": "correct horse"}
                            ).json()["access_token"]
    browser.get(base + "/docs")
    wait_for(browser, "document.querySelectorAll('details.op').length > 5")

    orders = OP.format(method="post", path="/api/orders")
    summary = browser.execute_script(f"return {orders}.querySelector('.osum').textContent;")
    assert summary == ("Place an order for the caller.  total_amount, when sent, must match the "
                       "catalog's prices; Idempotency-Key makes a retry safe.")
    assert browser.execute_script(f"return {orders}.querySelector('.lock') !== null;")
    browser.execute_script(f"{orders}.open = true;")
    wait_for(browser, f"{orders}.querySelector('.odesc')")
    desc = browser.execute_script(
        f"const d = {orders}.querySelector('.odesc');"
        "return [d.textContent, [...d.querySelectorAll('code')].map(c => c.textContent)];")
    assert "``" not in desc[0] and desc[1] == ["total_amount", "Idempotency-Key"], desc
    header_type = browser.execute_script(
        f"return [...{orders}.querySelectorAll('tbody tr')].filter(r => r.cells[0].textContent"
        ".startsWith('Idempotency-Key')).map(r => r.cells[2].textContent)[0];")
    assert header_type == "string | null"

    products = OP.format(method="get", path="/api/products")
    browser.execute_script(f"{products}.open = true;")
    wait_for(browser, f"{products}.querySelector('.try input')")
    placeholders = browser.execute_script(
        f"return [...{products}.querySelectorAll('.try input')].map(i => i.placeholder);")
    assert placeholders == ["1", "20"], placeholders

    me = OP.format(method="get", path="/api/auth/me")
    send = f"{me}.querySelector('.try button.primary').click();"
    status = f"({me}.querySelector('.status-line .code') || {{}}).textContent"
    browser.execute_script(f"{me}.open = true;")  # the body is built on the toggle event
    wait_for(browser, f"{me}.querySelector('.try button.primary')")
    browser.execute_script(send)
    assert wait_for(browser, status) == "401"  # not authorized yet
    browser.find_element("id", "token").send_keys(token)
    browser.find_element("id", "authorize").click()
    assert "authorized" in browser.find_element("id", "auth-state").text
    browser.execute_script(f"{me}.querySelector('.result').textContent = '';" + send)
    assert wait_for(browser, status) == "200"
    assert email in browser.execute_script(f"return {me}.querySelector('pre.out:last-of-type').textContent;")

    shot = tmp_path / "docs.png"
    browser.save_screenshot(str(shot))
    print(f"screenshot: {shot}")
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    # The one 401 above is the test's own request; anything else is the page's fault.
    assert [e for e in severe if "/api/auth/me" not in e["message"]] == [], severe
