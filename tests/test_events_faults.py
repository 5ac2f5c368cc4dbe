"""Events survive the faults the outbox and the inbox exist for, on real
servers and real processes (``amoeba run``):

* the broker is down while the shop takes 1,000 orders: every event still
  becomes exactly one notification once it is back;
* a consumer is SIGKILLed after its transaction committed, before its ack:
  the redelivery is a no-op;
* a relay is SIGKILLed in the middle of a batch: the rows it had published
  but not deleted go out again, and the broker (NATS) or the inbox (Redis)
  drops the repeats (Kafka: the inbox too).

Each runs on NATS JetStream, and on Kafka (a private Tansu: its log in a
private S3 for the outage, so it survives the restart; in memory otherwise),
and the last two on Redis Streams as well.

Each broker is a private one (tests/brokers.py), so stopping it touches no
other test.  Every test prints what it counted (``pytest -s`` shows it; a
failure shows it too), and on failure the tail of the processes' output.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx
import pytest
import servers
import yaml
from brokers import PrivateNats, PrivateRedis, PrivateTansu
from e2e import ROOT
from eventapp.app import app as eventapp
from shop.app import app as shop_app
from test_shop import ENV as SHOP_ENV
from test_shop import events_settled, new_product, new_user
from waiting import checked, eventually

from amoeba.app import App
from amoeba.testing import TopologyGroup, TopologyHarness

pytestmark = pytest.mark.e2e

T = TypeVar("T")
TESTS = Path(__file__).resolve().parent
ORDERS = 1000
PINGS, KILL_AFTER = 500, 250  # the relay dies in its third batch of 100


# -- helpers -------------------------------------------------------------------

@contextlib.contextmanager
def running(app: App, name: str, topology: Path, env: dict[str, str]) -> Iterator[TopologyGroup]:
    """``amoeba run`` on free ports; stopped and its files deleted afterwards.
    On failure the tail of the processes' output goes with the report."""
    group = TopologyGroup(app, name, topology, env)
    try:
        group.start(timeout=60)
        yield group
    except BaseException:
        if group.log.exists():
            print(f"--- tail of {name}'s output ---\n{group.log.read_text()[-6000:]}")
        raise
    finally:
        group.stop()
        shutil.rmtree(group.dir, ignore_errors=True)


async def _at_least(probe: Callable[[], Awaitable[int]], n: int) -> int | None:
    got = await probe()
    return got if got >= n else None


async def sql(database: str, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


def port_of(group: TopologyGroup, process: str) -> int:
    return group.topo.processes[process].listeners[0].port_for(0)


@pytest.fixture
def database(request: pytest.FixtureRequest) -> str:
    return servers.fresh_postgres_database(request)  # dropped at session end


@pytest.fixture
def nats() -> Iterator[PrivateNats]:
    server = PrivateNats()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    try:
        server.start()
        yield server
    finally:
        server.close()


# -- 1. the broker is down while orders are placed --------------------------------

@pytest.fixture(params=["nats", "kafka"])
def durable_broker(request: pytest.FixtureRequest) -> Iterator[tuple[str, PrivateNats | PrivateTansu]]:
    """A broker whose store survives its restart."""
    server: PrivateNats | PrivateTansu | None = None
    try:
        server = PrivateNats() if request.param == "nats" else PrivateTansu(durable=True)
        server.start()
        yield request.param, server
    finally:
        if server is not None:
            server.close()


async def test_broker_outage_loses_and_repeats_no_event(durable_broker, redis, database):
    """orders' outbox holds every OrderPlaced while the broker is down; once it
    is back the relay and the notifications consumer catch up, exactly once."""
    kind, server = durable_broker
    rates = {k: "1000000" for k in SHOP_ENV if k.startswith("SHOP_RATE_")}
    env = {**SHOP_ENV, **rates, "DATABASE_URL": database, "REDIS_URL": redis.url,
           "EVENTS_URL": server.url}
    topology = ROOT / "examples" / "shop" / "topologies" / "microservices.yaml"
    with running(shop_app, "microservices", topology, env) as group:
        h = TopologyHarness(group)
        try:
            uid, user = await new_user(h)
            product = await new_product(h, ORDERS + 200)

            async def notified() -> int:
                r = await h.get("/api/notifications", headers=user)
                assert r.status == 200, r.json()
                return int(r.json()["total"])

            await eventually(notified, 30, "the welcome notification")

            server.stop()  # SIGTERM: the broker is gone, its store stays
            down = time.monotonic()
            gate = asyncio.Semaphore(50)

            async def order() -> int:
                async with gate:
                    r = await h.post("/api/orders", headers=user, json={
                        "items": [{"product_id": product["id"], "qty": 1}]})
                    assert r.status == 201, r.json()
                    return int(r.json()["id"])

            placed = await asyncio.gather(*(order() for _ in range(ORDERS)))
            placing = time.monotonic() - down
            await asyncio.sleep(max(0.0, 4.0 - placing))  # down for several seconds
            held = (await sql(database, "SELECT count(*) FROM orders.amoeba_outbox"))[0][0]
            seen_while_down = await notified()
            outage = time.monotonic() - down
            server.start()  # same port, same store
            up = time.monotonic()

            total = await eventually(lambda: _at_least(notified, ORDERS + 1), 90,
                                     f"{ORDERS + 1} notifications after the broker came back")
            catch_up = time.monotonic() - up
            await events_settled(h, 60)  # nothing on its way: a duplicate would be here by now
            final = await notified()
            rows = await sql(database, "SELECT kind, message, event_id FROM "
                             "notifications.notifications WHERE user_id = $1", uid)
            left = (await sql(database, "SELECT count(*) FROM orders.amoeba_outbox"))[0][0]
            stored = (await stream_messages(server.url, "shop", "shop.order_placed") if kind == "nats"
                      else await kafka_records(server.url, "shop"))
        finally:
            await h.aclose()

    event_ids = {r["event_id"] for r in rows}
    order_ids = [int(m.group(1)) for r in rows if (m := re.match(r"Order (\d+) placed", r["message"]))]
    print(f"\n[broker outage, {kind}] {ORDERS} orders placed in {placing:.1f}s with it down "
          f"({outage:.1f}s outage); held in orders' outbox: {held}; notifications while down: "
          f"{seen_while_down}; after restart: {total} within {catch_up:.1f}s, {final} once "
          f"settled; rows={len(rows)} distinct event ids={len(event_ids)} distinct order ids="
          f"{len(set(order_ids))}; outbox left={left}; the broker stored {stored} OrderPlaced")
    assert held == ORDERS and seen_while_down == 1, "the outage did not hold the events back"
    assert final == len(rows) == ORDERS + 1
    assert len(event_ids) == ORDERS + 1, "an event was handled twice"
    assert sorted(order_ids) == sorted(placed), "an order's notification is missing or doubled"
    assert sum(r["kind"] == "welcome" for r in rows) == 1
    assert left == 0
    # Publishes that timed out while NATS was down sit in nats-py's reconnect
    # buffer and go out on reconnect, and the relay sends their rows again:
    # Nats-Msg-Id must store each event once.  Kafka keeps such repeats (the
    # producer is not idempotent); the inbox dropped them above.
    if kind == "nats":
        assert stored == ORDERS
    else:
        assert stored >= ORDERS


# -- 2. and 3.: eventapp, on either broker ------------------------------------------

@pytest.fixture(params=["nats", "redis", "kafka"])
def broker(request: pytest.FixtureRequest) -> Iterator[tuple[str, PrivateNats | PrivateRedis | PrivateTansu]]:
    kinds = {"nats": PrivateNats, "redis": PrivateRedis, "kafka": PrivateTansu}
    server: PrivateNats | PrivateRedis | PrivateTansu | None = None
    try:
        server = kinds[request.param]()
        server.start()
        yield request.param, server
    finally:
        if server is not None:
            server.close()


def eventapp_topology(tmp: Path, events: str, database: str, *, publisher: dict[str, str],
                      consumer: dict[str, str], settings: dict[str, str] | None = None) -> Path:
    """publisher and consumer in processes of their own, each with ``env``."""
    def process(service: str, env: dict[str, str]) -> dict[str, Any]:
        return {"services": [service], "env": env,
                "listeners": [{"port": 0, "host": "127.0.0.1", "public": True}]}

    path = tmp / "eventapp.yaml"
    path.write_text(yaml.safe_dump({
        "name": "eventapp", "app": "eventapp.app:app", "pythonpath": [str(TESTS)],
        "settings": settings or {"grace": "2s"},
        "resources": {"database": database, "events": events},
        "processes": {"publisher": process("publisher", publisher),
                      "consumer": process("consumer", consumer)},
    }, sort_keys=False))
    return path


async def counts(http: httpx.AsyncClient, group: TopologyGroup, service: str) -> dict[str, int]:
    r = await http.get(f"http://127.0.0.1:{port_of(group, service)}/{service}/counts")
    r.raise_for_status()
    return dict(r.json())


async def settled(http: httpx.AsyncClient, group: TopologyGroup) -> bool:
    """Nothing on its way: the publisher's outbox is empty and the consumer's group
    has no lag (nothing published but unacked), so no repeat can still arrive."""
    for service in ("publisher", "consumer"):
        r = await http.get(f"http://127.0.0.1:{port_of(group, service)}/_amoeba/api/stats")
        r.raise_for_status()
        events = r.json().get("events") or {}
        backlog = [c["lag"] for c in events.get("consumers", [])]
        backlog += list(events.get("outbox", {}).values())
        if any(n != 0 for n in backlog):  # -1: unknown, not settled
            return False
    return True


async def stream_messages(url: str, app: str, event: str) -> int:
    """Messages named ``event`` in ``app``'s JetStream stream (repeats it dropped excluded)."""
    import nats as nats_py

    from amoeba.events.nats import stream_name, subject

    nc = await nats_py.connect(url)
    try:
        info = await nc.jetstream().stream_info(stream_name(app), subjects_filter=subject(app, event))
        return int((info.state.subjects or {}).get(subject(app, event), 0))
    finally:
        await nc.close()


async def kafka_records(url: str, app: str) -> int:
    """Records in ``app``'s event topics (a group that never consumed lags by all)."""
    from amoeba.events.bus import open_bus

    bus = open_bus(url, app=app)
    await bus.start()
    try:
        return await bus.pending("nobody")
    finally:
        await bus.aclose()


async def broker_holds(kind: str, server: PrivateNats | PrivateRedis | PrivateTansu) -> int:
    """Messages the broker stored for eventapp.ping."""
    if kind == "nats":
        return await stream_messages(server.url, "eventapp", "eventapp.ping")
    if kind == "kafka":
        return await kafka_records(server.url, "eventapp")
    import redis.asyncio as aioredis

    client = aioredis.from_url(server.url)
    try:
        return int(await client.xlen("amoeba:eventapp:events:eventapp.ping"))
    finally:
        await client.aclose()


async def consumed(database: str) -> tuple[list[asyncpg.Record], int]:
    rows = await sql(database, "SELECT event_id, n, pid FROM consumer.received")
    inbox = (await sql(database, "SELECT count(*) FROM consumer.amoeba_inbox"))[0][0]
    return rows, inbox


async def test_consumer_killed_after_commit_before_ack(broker, database, tmp_path):
    kind, server = broker
    # Redelivery within seconds: NATS after ack_wait, Redis once the entry is claim_idle,
    # Kafka when the restarted consumer takes the partitions (from the last commit).
    events = {"nats": f"{server.url}?ack_wait=2", "redis": f"{server.url}?claim_idle=2",
              "kafka": server.url}[kind]
    marker = tmp_path / "fired"
    topology = eventapp_topology(tmp_path, events, database, publisher={}, consumer={
        "EVENTAPP_KILL_BEFORE_ACK": "1", "EVENTAPP_MARKER": str(marker)})
    async with httpx.AsyncClient(timeout=10) as http:
        with running(eventapp, "eventapp", topology, {}) as group:
            r = await http.post(f"http://127.0.0.1:{port_of(group, 'publisher')}/publish",
                                json={"n": 1})
            assert r.status_code == 200, r.text
            [event_id] = r.json()
            start = time.monotonic()
            await eventually(checked(marker.exists), 15, "the consumer killing itself before the ack")

            async def absorbed() -> dict[str, int] | None:
                c = await counts(http, group, "consumer")
                return c if c["acked"] else None

            after = await eventually(absorbed, 30, "the redelivery reaching the restarted consumer")
            redelivered = time.monotonic() - start
            await eventually(lambda: settled(http, group), 60, "nothing left to redeliver")
            after = await counts(http, group, "consumer")
            rows, inbox = await consumed(database)
            in_inbox = await sql(database, "SELECT 1 FROM consumer.amoeba_inbox WHERE "
                                 "event_id = $1", event_id)
            log = group.log.read_text()

    print(f"\n[consumer killed before ack, {kind}] restarted consumer: delivered="
          f"{after['delivered']} duplicates={after['duplicates']} acked={after['acked']} "
          f"({redelivered:.1f}s after the kill); rows={len(rows)} inbox={inbox}")
    assert re.search(r"consumer exited \(signal 9\)", log), "the consumer was not killed"
    assert len(rows) == 1 and rows[0]["event_id"] == event_id, "the handler ran twice"
    assert rows[0]["pid"] != after["pid"], "the row is not the killed process's commit"
    assert inbox == 1 and in_inbox
    assert after["delivered"] == after["duplicates"] == after["acked"] == 1


async def test_relay_killed_mid_batch(broker, database, tmp_path):
    kind, server = broker
    marker = tmp_path / "fired"
    topology = eventapp_topology(tmp_path, server.url, database, consumer={}, publisher={
        "EVENTAPP_KILL_AFTER_PUBLISHES": str(KILL_AFTER), "EVENTAPP_MARKER": str(marker)})
    async with httpx.AsyncClient(timeout=10) as http:
        with running(eventapp, "eventapp", topology, {}) as group:
            start = time.monotonic()
            with contextlib.suppress(httpx.TransportError):  # the kill may cut the answer
                r = await http.post(f"http://127.0.0.1:{port_of(group, 'publisher')}/publish",
                                    json={"n": PINGS})
                assert r.status_code == 200, r.text

            async def all_rows() -> int | None:
                rows, _ = await consumed(database)
                return len(rows) if len(rows) >= PINGS else None

            await eventually(all_rows, 60, f"{PINGS} rows at the consumer")
            took = time.monotonic() - start
            # A late repeat would be here once nothing is left to deliver or redeliver.
            await eventually(lambda: settled(http, group), 60, "nothing left to redeliver")
            rows, inbox = await consumed(database)
            outbox = (await sql(database, "SELECT count(*) FROM publisher.amoeba_outbox"))[0][0]
            publisher = await counts(http, group, "publisher")
            consumer = await counts(http, group, "consumer")
            stored = await broker_holds(kind, server)
            log = group.log.read_text()

    confirmed = KILL_AFTER + publisher["published"]  # publishes the broker acknowledged
    print(f"\n[relay killed mid-batch, {kind}] {PINGS} events; publishes confirmed: "
          f"{KILL_AFTER} before the kill + {publisher['published']} after the restart = "
          f"{confirmed}; broker stored {stored} ({stored - PINGS} repeats kept, at least "
          f"{max(0, confirmed - stored)} dropped); consumer "
          f"delivered={consumer['delivered']} inbox dropped={consumer['duplicates']}; rows="
          f"{len(rows)} distinct={len({r['event_id'] for r in rows})} inbox={inbox} "
          f"outbox left={outbox}; {took:.1f}s")
    assert marker.exists() and re.search(r"publisher exited \(signal 9\)", log), \
        "the relay was not killed"
    assert confirmed > PINGS, "the restarted relay republished nothing: no fault was injected"
    assert len(rows) == PINGS, "an event was lost or handled twice"
    assert len({r["event_id"] for r in rows}) == PINGS
    assert sorted(r["n"] for r in rows) == list(range(PINGS))
    assert inbox == PINGS and outbox == 0
    assert consumer["delivered"] == stored and consumer["duplicates"] == stored - PINGS
    if kind == "nats":
        assert stored == PINGS, "JetStream stored a republished event twice (Nats-Msg-Id)"
    else:
        assert stored > PINGS  # Redis keeps the repeats; the inbox dropped them


def alive(pid: int) -> bool:
    """Running (a zombie the supervisor has not reaped yet has exited)."""
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


# -- 4. a consumer stops on SIGTERM, within grace, without losing an ack ------------------

async def test_consumer_stops_on_sigterm_within_grace_without_losing_an_ack(broker, database,
                                                                            tmp_path):
    """SIGTERM to a consumer busy with a flood of events: it exits within its
    grace; the supervisor starts another, which gets every event the first did
    not ack and none it did (its inbox would show those as duplicates)."""
    import os
    import signal

    kind, server = broker
    events = {"nats": f"{server.url}?ack_wait=2", "redis": f"{server.url}?claim_idle=2",
              "kafka": server.url}[kind]
    grace = 2.0
    topology = eventapp_topology(tmp_path, events, database, publisher={}, consumer={},
                                 settings={"grace": f"{grace:g}s", "drain_delay": "0s"})
    async with httpx.AsyncClient(timeout=10) as http:
        with running(eventapp, "eventapp", topology, {}) as group:
            first = await counts(http, group, "consumer")
            r = await http.post(f"http://127.0.0.1:{port_of(group, 'publisher')}/publish",
                                json={"n": PINGS})
            assert r.status_code == 200, r.text

            async def some_rows() -> int | None:
                rows, _ = await consumed(database)
                return len(rows) if len(rows) >= 20 else None

            await eventually(some_rows, 60, "the consumer handling events")
            os.kill(first["pid"], signal.SIGTERM)
            sent = time.monotonic()
            while alive(first["pid"]) and time.monotonic() - sent < 60:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
            stopped = time.monotonic() - sent
            before, _ = await consumed(database)

            async def all_rows() -> int | None:
                rows, _ = await consumed(database)
                return len(rows) if len(rows) >= PINGS else None

            await eventually(all_rows, 90, f"{PINGS} rows after the restart")
            # A late repeat (of an event the first consumer handled and did not ack)
            # would be here once nothing is left to redeliver: ack_wait/claim_idle 2 s.
            await eventually(lambda: settled(http, group), 60, "nothing left to redeliver")
            rows, inbox = await consumed(database)

            async def restarted() -> dict[str, int] | None:
                c = await counts(http, group, "consumer")
                return c if c["pid"] != first["pid"] else None

            after = await eventually(restarted, 30, "the restarted consumer")

    by_first = sum(r["pid"] == first["pid"] for r in rows)
    print(f"\n[SIGTERM to a busy consumer, {kind}] exited {stopped:.2f}s after SIGTERM (grace "
          f"{grace:g}s); handled by it: {by_first} (rows seen at exit {len(before)}); restarted "
          f"consumer: delivered={after['delivered']} duplicates={after['duplicates']}; rows="
          f"{len(rows)} distinct={len({r['event_id'] for r in rows})} inbox={inbox}")
    # Within grace, with room for a loaded machine; a consumer that does not stop at
    # all (what NATS's fetch loop did) is still caught: the wait above ends at 60 s.
    assert stopped < grace + 10.0, f"the consumer took {stopped:.1f}s to exit (grace {grace:g}s)"
    assert len(rows) == PINGS and len({r["event_id"] for r in rows}) == PINGS
    assert inbox == PINGS
    assert after["duplicates"] == 0, "an event handled before SIGTERM was not acked"
