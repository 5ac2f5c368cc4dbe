"""The tickets HTTP contract, against every deployment of the app."""

import httpx


def available(urls) -> int:
    r = httpx.get(urls.vacancy + "/api/v1/available")
    assert r.status_code == 200
    return r.json()["qty"]


def test_purchase_takes_from_stock(urls):
    before = available(urls)
    r = httpx.post(urls.ticket + "/api/v1/purchase", json={"qty": 3})
    assert r.status_code == 200
    assert r.json() == {"success": True, "remaining": before - 3, "message": "purchased 3"}
    assert available(urls) == before - 3


def test_reserve(urls):
    before = available(urls)
    r = httpx.post(urls.vacancy + "/api/v1/reserve", json={"qty": 2})
    assert r.status_code == 200
    assert r.json()["success"] is True and r.json()["remaining"] == before - 2


def test_not_enough_is_a_clean_refusal(urls):
    before = available(urls)
    r = httpx.post(urls.ticket + "/api/v1/purchase", json={"qty": before + 1})
    assert r.status_code == 200
    assert r.json()["success"] is False and r.json()["remaining"] == before
    assert available(urls) == before


def test_bad_quantity_is_422(urls):
    r = httpx.post(urls.ticket + "/api/v1/purchase", json={"qty": 0})
    assert r.status_code == 422
    r = httpx.post(urls.vacancy + "/api/v1/reserve", json={"qty": "many"})
    assert r.status_code == 422


def test_health_and_index(urls):
    for url in (urls.vacancy, urls.ticket):
        assert httpx.get(url + "/api/v1/health").json()["status"] == "healthy"
        assert "mode" in httpx.get(url + "/").json()
