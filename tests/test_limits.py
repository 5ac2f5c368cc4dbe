"""Edge policy: rate limits (in-process and Redis), CORS, access log, proxies."""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from typing import Any

import pytest
from authapp.app import app
from require import missing
from test_auth import SETTINGS, bearer, claims, sign

from amoeba.gateway.limits import Bucket, MemoryBuckets, RateLimiter, RedisBuckets, parse_rate_limit
from amoeba.testing import InProcessHarness
from amoeba.topology.model import TopologyError


def redis_url() -> str:
    try:
        from servers import redis_url as shared
    except ImportError:  # pragma: no cover - the shared helper is optional
        import socket

        try:
            socket.create_connection(("127.0.0.1", 6379), timeout=0.5).close()
        except OSError:

            missing("Redis not reachable on 127.0.0.1:6379; start redis-server")
        return "redis://127.0.0.1:6379"
    return shared()


async def harness(tmp_path: Any, **settings: Any) -> InProcessHarness:
    h = InProcessHarness(app, tmp_path / "data", strict=False, env={},
                         settings={**SETTINGS, **settings})
    await h.start()
    return h


async def test_ip_bucket_bursts_then_429_with_retry_after_then_refills(tmp_path):
    # 0.5/s: a token comes back 2 s after it was taken, so a loaded machine's
    # slow requests cannot refill the bucket between the burst and the 429.
    h = await harness(tmp_path, rate_limit={"ip": {"burst": 3, "rate": 0.5}})
    try:
        assert [(await h.get("/api/open")).status for _ in range(3)] == [200, 200, 200]
        r = await h.get("/api/open")
        assert r.status == 429
        assert r.json()["error"]["type"] == "TooManyRequests"
        assert r.headers["retry-after"] == "2"
        assert r.headers["x-request-id"]
        assert (await h.get("/healthz")).status == 200  # probes are never limited
        loop = asyncio.get_running_loop()
        refused_at = loop.time()
        while (status := (await h.get("/api/open")).status) == 429:  # wait for the refill
            assert loop.time() - refused_at < 10, "no token came back within 10 s at 0.5/s"
            await asyncio.sleep(0.1)
        assert status == 200 and loop.time() - refused_at >= 1.0  # not before a token was due
        assert (await h.get("/api/open")).status == 429  # that one token, and no more
    finally:
        await h.aclose()


async def test_user_bucket_is_per_subject(tmp_path):
    h = await harness(tmp_path, rate_limit={"user": {"burst": 2, "rate": 0.1}})
    try:
        alice, bob = bearer(sign(claims(sub="alice"))), bearer(sign(claims(sub="bob")))
        assert [(await h.get("/api/me", headers=alice)).status for _ in range(3)] == [200, 200, 429]
        r = await h.get("/api/me", headers=alice)
        assert r.status == 429 and int(r.headers["retry-after"]) >= 9
        assert (await h.get("/api/me", headers=bob)).status == 200
        assert (await h.get("/api/open")).status == 200  # anonymous: no user bucket
    finally:
        await h.aclose()


async def test_memory_bucket_arithmetic():
    now = [100.0]
    store = MemoryBuckets(clock=lambda: now[0])
    b = Bucket(burst=2, rate=0.5)
    assert [store.take_now("k", b) for _ in range(2)] == [0.0, 0.0]
    assert store.take_now("k", b) == pytest.approx(2.0)
    now[0] += 1.0
    assert store.take_now("k", b) == pytest.approx(1.0)
    now[0] += 1.0
    assert store.take_now("k", b) == 0.0
    assert store.take_now("other", b) == 0.0


@pytest.mark.parametrize(("raw", "key"), [
    ({"ip": {"burst": 0, "rate": 1}}, "settings.rate_limit.ip.burst"),
    ({"user": {"burst": 5, "rate": -1}}, "settings.rate_limit.user.rate"),
    ({"ip": {"burst": 5, "rate": 1, "extra": 1}}, "settings.rate_limit.ip"),
    ({"host": {"burst": 5, "rate": 1}}, "settings.rate_limit.host"),
])
async def test_bad_rate_limit_settings_name_the_key(tmp_path, raw, key):
    with pytest.raises(TopologyError, match=key.replace(".", r"\.")):
        await harness(tmp_path, rate_limit=raw)
    assert parse_rate_limit({"ip": None}) == {}


async def test_redis_buckets_are_shared_between_limiters():
    url = redis_url()
    prefix = f"amoeba:test-{secrets.token_hex(6)}:rl:"
    one = RateLimiter({"ip": Bucket(3, 1.0)}, RedisBuckets(url, prefix))
    two = RateLimiter({"ip": Bucket(3, 1.0)}, RedisBuckets(url, prefix))
    try:
        waits = [await lim.check(None, "10.0.0.1") for lim in (one, two, one, two)]
        assert waits[:3] == [0.0, 0.0, 0.0]
        assert 0.5 < waits[3] <= 1.0  # the fourth request, from either replica, waits
        assert await two.check(None, "10.0.0.2") == 0.0
        ttl = await one.store.client.pttl(prefix + "ip:10.0.0.1")  # type: ignore[attr-defined]
        assert 0 < ttl <= 4000
    finally:
        await one.store.client.delete(prefix + "ip:10.0.0.1", prefix + "ip:10.0.0.2")  # type: ignore[attr-defined]
        await one.aclose()
        await two.aclose()


async def test_redis_leases_never_let_more_through_than_the_shared_bucket():
    """Each replica takes a tenth of the burst from Redis at once and spends it
    locally: across replicas never more than the bucket, and refused early by
    at most (lease - 1) tokens per other replica; one round trip per lease."""
    url = redis_url()
    prefix = f"amoeba:test-{secrets.token_hex(6)}:rl:"
    bucket = Bucket(50, 0.001)  # no refill to speak of during the test
    replicas = [RateLimiter({"ip": bucket}, RedisBuckets(url, prefix)) for _ in range(3)]
    trips = [0, 0, 0]
    for i, lim in enumerate(replicas):
        store = lim.store
        assert isinstance(store, RedisBuckets)
        script = store.script

        async def counted(*args: Any, _script: Any = script, _i: int = i, **kw: Any) -> Any:
            trips[_i] += 1
            return await _script(*args, **kw)

        store.script = counted
    try:
        allowed = 0
        for n in range(200):
            if await replicas[n % 3].check(None, "10.0.0.9") == 0.0:
                allowed += 1
        assert 50 - 2 * (5 - 1) <= allowed <= 50, allowed
        assert sum(trips) <= allowed / 5 + 200 - allowed + 3, trips  # a lease per 5, or a refusal
        assert min(trips) >= 1
        # At once: concurrent requests of one client wait for their gateway's one
        # lease instead of each taking one (which would strand most of the bucket).
        waits = await asyncio.gather(*(replicas[n % 3].check(None, "10.0.0.10")
                                       for n in range(300)))
        allowed = sum(1 for w in waits if w == 0.0)
        assert 50 - 2 * (5 - 1) <= allowed <= 50, allowed
    finally:
        await replicas[0].store.client.delete(prefix + "ip:10.0.0.9", prefix + "ip:10.0.0.10")  # type: ignore[attr-defined]
        for lim in replicas:
            await lim.aclose()


async def test_a_redis_lease_lapses_once_redis_would_have_refilled_it():
    url = redis_url()
    prefix = f"amoeba:test-{secrets.token_hex(6)}:rl:"
    store = RedisBuckets(url, prefix)
    trips: list[float] = []
    script = store.script

    async def counted(*args: Any, **kw: Any) -> Any:
        trips.append(time.monotonic())
        return await script(*args, **kw)

    store.script = counted
    bucket = Bucket(20, 10.0)  # a lease of 2 tokens, held at most 2 / 10 = 0.2 s
    try:
        for _ in range(3):  # a lease, its second token spent here, a new lease
            assert await store.take("k", bucket) == 0.0
        assert len(trips) == 2 and store.leases["k"][0] == 1.0
        await asyncio.sleep(0.3)
        assert await store.take("k", bucket) == 0.0  # its token lapsed: Redis again
        assert len(trips) == 3
    finally:
        await store.client.delete(prefix + "k")  # type: ignore[attr-defined]
        await store.aclose()


async def test_redis_leases_cost_the_bucket_only_what_was_spent():
    """Steady traffic far under the rate through two replicas is never refused:
    a lapsed lease's unspent tokens go back with the next one (else each
    replica would burn a lease per lapse, faster than the bucket refills)."""
    url = redis_url()
    prefix = f"amoeba:test-{secrets.token_hex(6)}:rl:"
    bucket = Bucket(1000, 1000.0)  # leases of 100, lapsing after 0.1 s
    replicas = [RateLimiter({"ip": bucket}, RedisBuckets(url, prefix)) for _ in range(2)]
    try:
        refused = 0
        end = time.monotonic() + 1.5
        while time.monotonic() < end:  # about 200 requests a second in all
            for lim in replicas:
                refused += await lim.check(None, "10.0.0.11") != 0.0
            await asyncio.sleep(0.01)
        assert refused == 0
    finally:
        await replicas[0].store.client.delete(prefix + "ip:10.0.0.11")  # type: ignore[attr-defined]
        for lim in replicas:
            await lim.aclose()


async def test_redis_down_fails_open_and_warns_once(caplog):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    store = RedisBuckets(f"redis://127.0.0.1:{port}/0", "amoeba:x:rl:")
    try:
        with caplog.at_level(logging.WARNING, logger="amoeba.limits"):
            assert [await store.take("k", Bucket(1, 1.0)) for _ in range(3)] == [0.0, 0.0, 0.0]
        assert len([r for r in caplog.records if "not enforced" in r.getMessage()]) == 1
    finally:
        await store.aclose()


async def test_cors_preflight_and_response_headers(tmp_path):
    h = await harness(tmp_path, cors={"origins": ["https://a.example"], "max_age": 60,
                                      "credentials": True})
    try:
        pre = {"Origin": "https://a.example", "Access-Control-Request-Method": "POST",
               "Access-Control-Request-Headers": "authorization, content-type"}
        r = await h.request("OPTIONS", "/api/orders", headers=pre)
        assert r.status == 204
        assert r.headers["access-control-allow-origin"] == "https://a.example"
        assert "POST" in r.headers["access-control-allow-methods"]
        assert r.headers["access-control-allow-headers"] == "authorization, content-type"
        assert r.headers["access-control-max-age"] == "60"
        assert r.headers["access-control-allow-credentials"] == "true"
        r = await h.get("/api/open", headers={"Origin": "https://a.example"})
        assert r.headers["access-control-allow-origin"] == "https://a.example"
        assert r.headers["vary"] == "Origin"
        r = await h.get("/api/open", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers
        r = await h.request("OPTIONS", "/api/orders", headers={**pre, "Origin": "https://evil.example"})
        assert r.status == 405 and "access-control-allow-origin" not in r.headers
    finally:
        await h.aclose()


async def test_cors_any_origin_without_credentials_is_a_plain_star(tmp_path):
    h = await harness(tmp_path, cors={"origins": ["*"]})
    try:
        r = await h.get("/api/open", headers={"Origin": "https://anywhere.example"})
        assert r.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in r.headers
        pre = {"Origin": "https://anywhere.example", "Access-Control-Request-Method": "POST"}
        r = await h.request("OPTIONS", "/api/orders", headers=pre)
        assert r.status == 204 and r.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in r.headers
    finally:
        await h.aclose()


async def test_cors_any_origin_with_credentials_is_refused_with_the_fix(tmp_path):
    with pytest.raises(TopologyError) as info:
        await harness(tmp_path, cors={"origins": ["*"], "credentials": True})
    text = str(info.value)
    assert "settings.cors" in text and "any web page" in text
    assert 'origins: ["https://app.example"]' in text and "credentials: false" in text


def test_check_refuses_cors_any_origin_with_credentials(tmp_path, capsys, monkeypatch):
    from pathlib import Path

    from amoeba.cli import main

    root = Path(__file__).resolve().parent.parent
    monkeypatch.setenv("AMOEBA_DATA_DIR", str(tmp_path / "data"))
    shop = root / "examples" / "shop" / "topologies" / "monolith.yaml"
    text = shop.read_text().replace("pythonpath: ../..", f"pythonpath: {root / 'examples'}")
    origins = '    origins: ["${SHOP_CORS_ORIGIN:-http://localhost:3000}"]\n'
    assert origins in text
    bad = tmp_path / "cors.yaml"
    bad.write_text(text.replace(origins, '    origins: ["*"]\n    credentials: true\n'))
    assert main(["check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "cors.yaml:" in err and "settings.cors" in err and "fix:" in err and "credentials: false" in err


async def test_no_cors_settings_no_cors_headers(tmp_path):
    h = await harness(tmp_path)
    try:
        r = await h.get("/api/open", headers={"Origin": "https://a.example"})
        assert not any(k.startswith("access-control") for k in r.headers)
    finally:
        await h.aclose()


async def test_access_log_line(tmp_path, caplog):
    h = await harness(tmp_path, trusted_proxies=["127.0.0.0/8"])
    try:
        with caplog.at_level(logging.INFO, logger="amoeba.access"):
            await h.get("/api/me", headers={**bearer(sign(claims(sub="dave"))),
                                            "X-Request-Id": "req-1",
                                            "X-Forwarded-For": "203.0.113.9, 127.0.0.2"})
            await h.get("/api/me")
        lines = [r for r in caplog.records if r.name == "amoeba.access"]
        assert len(lines) == 2
        msg = lines[0].getMessage()
        assert msg.startswith("method=GET path=/api/me status=200 duration_ms=")
        assert re.search(r"request_id=req-1 trace_id=[0-9a-f]{32} user=dave ip=203\.0\.113\.9$", msg)
        assert lines[0].status == 200 and lines[0].user == "dave"  # type: ignore[attr-defined]
        assert " status=401 " in lines[1].getMessage() and " user=- " in lines[1].getMessage()
    finally:
        await h.aclose()


@pytest.mark.parametrize("setting", [True, "all"])
async def test_probes_and_observability_polls_stay_out_of_the_access_log(tmp_path, caplog, setting):
    h = await harness(tmp_path, access_log=setting)
    quiet = ["/healthz", "/readyz", "/metrics", "/_amoeba/api/stats", "/_amoeba/api/cluster"]
    try:
        with caplog.at_level(logging.INFO, logger="amoeba.access"):
            for path in quiet:
                assert (await h.get(path)).status == 200, path
            assert (await h.get("/api/open")).status == 200
        logged = [r.path for r in caplog.records if r.name == "amoeba.access"]  # type: ignore[attr-defined]
        assert logged == (["/api/open"] if setting is True else [*quiet, "/api/open"])
    finally:
        await h.aclose()


async def test_access_log_setting_is_true_false_or_all(tmp_path):
    with pytest.raises(TopologyError, match=r"settings\.access_log.*true, false or all"):
        await harness(tmp_path, access_log="some")


async def test_forwarded_for_ignored_from_untrusted_peer_and_log_can_be_off(tmp_path, caplog):
    h = await harness(tmp_path, access_log=False, rate_limit={"ip": {"burst": 1, "rate": 0.01}})
    try:
        with caplog.at_level(logging.INFO, logger="amoeba.access"):
            assert (await h.get("/api/open", headers={"X-Forwarded-For": "1.1.1.1"})).status == 200
            # Spoofing another address does not buy a fresh bucket.
            assert (await h.get("/api/open", headers={"X-Forwarded-For": "2.2.2.2"})).status == 429
        assert not [r for r in caplog.records if r.name == "amoeba.access"]
    finally:
        await h.aclose()


def test_bucket_refill_timing_is_wall_clock_independent():
    store = MemoryBuckets()
    b = Bucket(1, 1000.0)
    assert store.take_now("k", b) == 0.0
    time.sleep(0.005)
    assert store.take_now("k", b) == 0.0
