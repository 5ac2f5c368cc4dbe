"""Every event backend keeps the same contract (bus.py): per-group delivery,
one subscriber of a group per message, explicit acks, redelivery after a nack
or a lost subscriber.  Each backend is a parameter of the ``buses`` fixture."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
import servers
from require import missing
from waiting import checked, eventually

from amoeba.events.bus import Delivery, EventBus, Message, open_bus

BACKENDS = ["memory", "nats", "redis", "kafka"]


def _url(backend: str) -> str | None:
    if backend == "memory":
        return None
    if backend == "nats":
        return servers.nats_url()  # skips (or fails in CI) when no nats-server -js runs
    if backend == "redis":
        prefix = f"amoeba-test-events-{uuid.uuid4().hex[:8]}:"
        _REDIS_PREFIXES.append(prefix)  # deleted by ``_redis_keys_deleted`` after the test
        return f"{servers.redis_url()}/0?prefix={prefix}"
    if backend == "kafka":
        return f"{servers.kafka_url()}?partitions=4"  # a private Tansu unless AMOEBA_TEST_KAFKA
    raise AssertionError(backend)


@pytest.fixture(params=BACKENDS)
async def buses(request) -> AsyncIterator[Callable[[], EventBus]]:
    """A factory of started buses on one broker, namespaced to this test."""
    url = _url(request.param)
    app = f"t{uuid.uuid4().hex[:8]}"
    made: list[EventBus] = []
    shared: list[EventBus] = []

    async def make() -> EventBus:
        if url is None and shared:  # in-process: one bus is the whole "broker"
            return shared[0]
        bus = open_bus(url, app=app)
        await bus.start()
        made.append(bus)
        shared.append(bus)
        return bus

    yield make
    for bus in made:
        await bus.aclose()
    if url is not None and url.startswith("nats://"):
        from amoeba.events.nats import delete_stream

        await delete_stream(url, app=app)


def msg(name: str = "test.happened", key: str | None = None) -> Message:
    return Message(name=name, id=uuid.uuid4().hex, payload=b"\x81\xa1x\x01", key=key)


class Collect:
    def __init__(self, fail_first: int = 0, nack_delay: float = 0.05, work: float = 0.0):
        self.seen: list[tuple[str, int]] = []
        self.work = work
        self.fail_first = fail_first
        self.nack_delay = nack_delay
        self.event = asyncio.Event()

    async def __call__(self, d: Delivery) -> None:
        self.seen.append((d.message.id, d.attempt))
        self.event.set()
        if self.work:
            await asyncio.sleep(self.work)
        if d.attempt <= self.fail_first:
            await d.nack(self.nack_delay)
        else:
            await d.ack()

    async def wait_for(self, n: int, within: float = 10.0) -> None:
        async def enough() -> None:
            while len(self.seen) < n:
                self.event.clear()
                await self.event.wait()
        await asyncio.wait_for(enough(), within)


async def test_every_group_gets_every_message_once(buses):
    bus = await buses()
    a, b = Collect(), Collect()
    await bus.subscribe("alpha", ["test.happened"], a)
    await bus.subscribe("beta", ["test.happened", "test.other"], b)
    sent = [msg() for _ in range(20)] + [msg("test.other")]
    for m in sent:
        await bus.publish(m)
    await a.wait_for(20)
    await b.wait_for(21)
    await settled(bus, "alpha")  # every delivery acked: nothing left to come again
    await settled(bus, "beta")
    assert sorted(i for i, _ in a.seen) == sorted(m.id for m in sent[:20])
    assert sorted(i for i, _ in b.seen) == sorted(m.id for m in sent)
    assert await bus.pending("alpha") == 0


async def test_a_batch_published_at_once_arrives_whole_and_in_order(buses):
    bus = await buses()
    got = Collect()
    await bus.subscribe("alpha", ["test.happened", "test.other"], got)
    sent = [msg("test.happened" if i % 3 else "test.other", key=f"k{i % 4}") for i in range(150)]
    await bus.publish_many(sent)  # returns once the broker holds every one
    await bus.publish_many(sent[:1])  # a repeat: NATS stores it once (Nats-Msg-Id)
    kind = type(bus).__name__
    await got.wait_for(150 if kind == "NatsBus" else 151)
    await settled(bus, "alpha")
    ids = [i for i, _ in got.seen]
    assert sorted(set(ids)) == sorted(m.id for m in sent)
    assert len(ids) == (150 if kind == "NatsBus" else 151)
    if kind in ("NatsBus", "RedisBus"):  # one consumer: handlers start in publish order
        for name in ("test.happened", "test.other"):
            order = [m.id for m in sent if m.name == name]
            assert [i for i in dict.fromkeys(ids) if i in set(order)] == order


async def test_nats_publish_many_raises_when_no_stream_takes_it():
    url = _url("nats")
    assert url is not None
    from amoeba.events.nats import delete_stream

    app = f"t{uuid.uuid4().hex[:8]}"
    bus = open_bus(url, app=app)
    await bus.start()
    try:
        await bus.publish_many([msg(), msg()])
        await delete_stream(url, app=app)
        with pytest.raises(ConnectionError, match="no JetStream stream took"):
            async with asyncio.timeout(10):
                await bus.publish_many([msg(), msg()])
    finally:
        await bus.aclose()
        await delete_stream(url, app=app)


async def test_replicas_of_a_group_share_the_messages(buses):
    one, two = await buses(), await buses()
    a, b = Collect(work=0.02), Collect(work=0.02)  # each delivery takes a while: both get work
    await one.subscribe("svc", ["test.happened"], a)
    await two.subscribe("svc", ["test.happened"], b)
    sent = [msg() for _ in range(200)]  # more than one replica takes in at once
    for m in sent:
        await one.publish(m)
    async def all_in() -> None:
        while len(a.seen) + len(b.seen) < len(sent):  # noqa: ASYNC110 (two collectors)
            await asyncio.sleep(0.02)
    await asyncio.wait_for(all_in(), 20)
    await settled(one, "svc")  # every delivery acked: nothing left to come again
    ids = [i for i, _ in a.seen + b.seen]
    assert sorted(ids) == sorted(m.id for m in sent)  # each once, across the replicas
    print(f"replicas of one group: {len(a.seen)} + {len(b.seen)} messages")
    assert a.seen and b.seen, "one replica got every message: the group did not share them"


async def settled(bus: EventBus, group: str, within: float = 15.0) -> None:
    """Wait until ``group`` has nothing published-but-unacked: no redelivery can follow."""
    end = asyncio.get_running_loop().time() + within
    while (left := await bus.pending(group)) != 0:
        assert asyncio.get_running_loop().time() < end, f"{left} still pending for {group}"
        await asyncio.sleep(0.05)


async def test_nack_redelivers_later_with_the_attempt_count(buses):
    bus = await buses()
    c = Collect(fail_first=2)
    await bus.subscribe("svc", ["test.happened"], c)
    m = msg()
    await bus.publish(m)
    await c.wait_for(3)
    await settled(bus, "svc")  # acked: the broker holds nothing more to deliver
    assert c.seen == [(m.id, 1), (m.id, 2), (m.id, 3)]


# --- NATS JetStream -------------------------------------------------------------

@pytest.fixture
async def nats_app() -> AsyncIterator[tuple[str, str]]:
    """A NATS URL and an app namespace whose stream is deleted afterwards."""
    from amoeba.events.nats import delete_stream

    url, app = servers.nats_url(), f"t{uuid.uuid4().hex[:8]}"
    yield url, app
    await delete_stream(url, app=app)


async def test_nats_unacked_delivery_of_a_closed_subscriber_goes_to_another(nats_app):
    url, app = nats_app
    url += "?ack_wait=1"  # the consumer's redelivery timeout, set when it is created
    first, second = open_bus(url, app=app), open_bus(url, app=app)
    await first.start()
    await second.start()
    got = asyncio.Event()

    async def hold(d: Delivery) -> None:  # takes the message, never acks it
        got.set()
        await asyncio.sleep(3600)

    try:
        await first.subscribe("svc", ["test.happened"], hold)
        m = msg()
        await second.publish(m)
        await asyncio.wait_for(got.wait(), 10)
        await first.aclose()  # cancels the handler: the message stays unacked
        c = Collect()
        await second.subscribe("svc", ["test.happened"], c)
        await c.wait_for(1)  # after ack_wait
        await settled(second, "svc")  # acked: nothing more can come
        assert c.seen == [(m.id, 2)]
    finally:
        await first.aclose()
        await second.aclose()


async def test_nats_publishing_one_message_id_twice_delivers_it_once(nats_app):
    url, app = nats_app
    bus = open_bus(url, app=app)
    await bus.start()
    c = Collect()
    try:
        await bus.subscribe("svc", ["test.happened"], c)
        m, other = msg(), msg()
        replay = Message(m.name, m.id, m.payload, dedupe=f"{m.id}-replay")  # a dead letter's
        await bus.publish(m)
        await bus.publish(m)  # an outbox relay retrying after a lost publish ack
        await bus.publish(other)
        await bus.publish(replay)
        await c.wait_for(3)
        await settled(bus, "svc")  # a fourth (a repeat the broker kept) would be delivered by now
        assert sorted(c.seen) == sorted([(m.id, 1), (other.id, 1), (m.id, 1)])
    finally:
        await bus.aclose()


def test_nats_names_map_one_to_one():
    from amoeba.events.nats import consumer_name, stream_name, subject

    names = ["shop.order_placed", "shop.order=5Fplaced", "shop.order placed", "shop.order*",
             "shop_order.placed", "shop.order.placed", "caf\u00e9.done"]
    assert len({subject("a", n) for n in names}) == len(names)
    assert subject("shop", "shop.order_placed") == "amoeba.shop.shop.order_placed"
    pairs = [("a", "b__c"), ("a__b", "c"), ("a_", "_b.c"), ("a", "b.c"), ("a", "b=2Ec")]
    consumers = [consumer_name(g, n) for g, n in pairs]
    assert len(set(consumers)) == len(pairs)
    assert all(not set(c) & set(".*> /\\") for c in consumers)
    assert stream_name("my app") == "AMOEBA_my=20app"
    with pytest.raises(ValueError, match="empty"):
        subject("a", "shop..x")


# --- Redis Streams --------------------------------------------------------------

_REDIS_PREFIXES: list[str] = []  # key prefixes ``_url("redis")`` handed out


@pytest.fixture(autouse=True)
async def _redis_keys_deleted() -> AsyncIterator[None]:
    """After each test (and after ``buses`` closed its buses), delete its Redis keys."""
    yield
    if not _REDIS_PREFIXES:
        return
    import redis.asyncio as aioredis

    client = aioredis.from_url(servers.redis_url())
    try:
        while _REDIS_PREFIXES:
            prefix = _REDIS_PREFIXES.pop()
            keys = [k async for k in client.scan_iter(match=prefix + "*", count=500)]
            if keys:
                await client.delete(*keys)
    finally:
        await client.aclose()


async def redis_buses(n: int, query: str) -> list[EventBus]:
    """``n`` started buses of one app on one fresh prefix, with ``query`` added to the URL."""
    url, app = f"{_url('redis')}&{query}", f"t{uuid.uuid4().hex[:8]}"
    made = [open_bus(url, app=app) for _ in range(n)]
    for bus in made:
        await bus.start()
    return made


async def test_redis_entries_a_closed_consumer_left_pending_go_to_another():
    first, second, third = await redis_buses(3, "claim_idle=1")
    got: list[tuple[str, int]] = []
    took = asyncio.Event()

    async def hold(d: Delivery) -> None:  # takes the message, never acks it
        got.append((d.message.id, d.attempt))
        took.set()
        await asyncio.sleep(3600)

    async def defer(d: Delivery) -> None:  # nacks far beyond claim_idle, then dies
        got.append((d.message.id, d.attempt))
        took.set()
        await d.nack(3600)

    try:
        await first.subscribe("svc", ["test.happened"], hold)
        m = msg()
        await first.publish(m)
        await asyncio.wait_for(took.wait(), 10)
        await first.aclose()  # cancels the handler: the entry stays pending under it
        took.clear()
        await second.subscribe("svc", ["test.happened"], defer)
        await asyncio.wait_for(took.wait(), 10)  # reclaimed after claim_idle
        await second.aclose()  # the nacked entry stays pending: not lost with its consumer
        c = Collect()
        await third.subscribe("svc", ["test.happened"], c)
        await c.wait_for(1, within=10)
        await settled(third, "svc")  # acked: nothing more can come
        assert got + c.seen == [(m.id, 1), (m.id, 2), (m.id, 3)]
    finally:
        for bus in (first, second, third):
            await bus.aclose()


async def test_redis_held_entries_are_not_reclaimed_from_a_live_consumer():
    one, two = await redis_buses(2, "claim_idle=0.5")
    slow, other = Collect(fail_first=1, nack_delay=0), Collect()
    running = 0
    read = asyncio.Event()

    async def slow_handler(d: Delivery) -> None:  # runs for several claim_idle periods
        nonlocal running
        running += 1
        read.set()
        try:
            await asyncio.sleep(2)
            await slow(d)
        finally:
            running -= 1

    async def idle() -> bool:  # acked, and no (wrongly claimed) delivery still running
        return running == 0 and await two.pending("svc") == 0

    try:
        await one.subscribe("svc", ["test.happened"], slow_handler)
        m = msg()
        await one.publish(m)
        await asyncio.wait_for(read.wait(), 10)  # ``one`` has read it
        await two.subscribe("svc", ["test.happened"], other)
        await slow.wait_for(2, within=10)
        await eventually(idle, 15, "the entry acked and every handler done")
        # Not claimed meanwhile, by ``two`` nor by ``one``'s own XAUTOCLAIM (which
        # would have bumped Redis's delivery counter, hence the attempt).
        assert slow.seen == [(m.id, 1), (m.id, 2)]
        assert other.seen == []
        assert await two.pending("svc") == 0
    finally:
        await one.aclose()
        await two.aclose()


async def test_redis_a_vanished_stream_gets_its_group_back():
    from amoeba.events.redis import RedisBus

    bus, = await redis_buses(1, "claim_idle=30")
    assert isinstance(bus, RedisBus)
    c = Collect()
    try:
        await bus.subscribe("svc", ["test.happened"], c)
        first = msg()
        await bus.publish(first)
        await c.wait_for(1)
        await bus.redis.delete(bus.stream("test.happened"))  # as a Redis restart without persistence
        second = msg()
        await bus.publish(second)  # XADD makes the stream again, without the group
        await c.wait_for(2, within=10)
        assert [i for i, _ in c.seen] == [first.id, second.id]
    finally:
        await bus.aclose()


async def test_redis_url_options_are_checked_and_not_passed_to_redis():
    from amoeba.events.redis import RedisBus

    bus = RedisBus("redis://127.0.0.1:6379/0?prefix=p:&claim_idle=2.5&maxlen=0&concurrency=1", app="a")
    assert (bus.claim_idle, bus.maxlen, bus.concurrency) == (2.5, 0, 1)
    assert bus.stream("shop.x") == "p:amoeba:a:events:shop.x"
    assert "claim_idle" not in repr(bus.redis.connection_pool.connection_kwargs)
    await bus.aclose()
    with pytest.raises(ValueError, match="claim_idle"):
        RedisBus("redis://127.0.0.1:6379/0?claim_idle=soon", app="a")


class _Cuttable:
    """A TCP proxy to Redis whose connections the test can cut and refuse for a
    while, as a Redis restart does (without touching the shared server)."""

    def __init__(self, target: str):
        parts = target.split("//")[-1].split(":")
        self.target = (parts[0], int(parts[1]))
        self.port = 0
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def open(self) -> None:
        self.server = await asyncio.start_server(self._pipe, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.writers:
            w.close()
        await self.server.wait_closed()
        self.writers.clear()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        if self.server is None or not self.server.is_serving():  # accepted just before a cut
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.writers.append(up_writer)

        async def copy(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except OSError:
                pass
            finally:
                w.close()

        await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))


async def test_redis_consumers_ride_out_a_lost_connection():
    proxy = _Cuttable(servers.redis_url())
    await proxy.open()
    direct = _url("redis")
    url = direct.replace(servers.redis_url(), f"redis://127.0.0.1:{proxy.port}")
    app = f"t{uuid.uuid4().hex[:8]}"
    bus, publisher = open_bus(url, app=app), open_bus(direct, app=app)
    c = Collect()
    try:
        await bus.start()
        await publisher.start()
        await bus.subscribe("svc", ["test.happened"], c)
        before, after = msg(), msg()
        await publisher.publish(before)
        await c.wait_for(1)
        # Acked before the cut: an ack whose connection the proxy accepts just as it
        # cuts would leave that socket behind in the proxy (an asyncio race of this
        # test's helper, not of the bus; a lost ack is XAUTOCLAIM's, tested above).
        await settled(publisher, "svc")
        await proxy.cut()
        await asyncio.sleep(1.5)  # the reader fails and backs off meanwhile
        await proxy.open()
        # Published once the bus can reconnect: an entry XREADGROUP hands out just as
        # the connection drops is lost with the reply, and comes back only through
        # XAUTOCLAIM after claim_idle (30 s here).
        await publisher.publish(after)
        await c.wait_for(2, within=15)
        assert [i for i, _ in c.seen] == [before.id, after.id]
    finally:
        await bus.aclose()
        await publisher.aclose()
        await proxy.cut()


class _OwnNats:
    """A private ``nats-server -js`` on a free port, which the test may restart
    (the shared server is never touched).  Its store lives in ``tmp_path``."""

    def __init__(self, binary: str, store: str):
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.binary, self.store = binary, store
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            self.binary, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", self.store,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        for _ in range(100):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            await writer.wait_closed()
            return
        raise RuntimeError(f"{self.binary} did not listen on {self.port} within 5 s")

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            await self.proc.wait()
        self.proc = None


async def test_nats_subscribers_ride_out_a_server_restart(tmp_path):
    import os
    import shutil

    binary = shutil.which("nats-server", path=f"{os.environ.get('PATH', '')}:/usr/sbin")
    if binary is None:
        missing("nats-server binary not found (needed to restart a private server): "
                "apt-get install nats-server")
    server = _OwnNats(binary, str(tmp_path))
    await server.start()
    bus = open_bus(server.url, app="restart")
    c = Collect()
    try:
        await bus.start()
        await bus.subscribe("svc", ["test.happened"], c)
        before, after = msg(), msg()
        await bus.publish(before)
        await c.wait_for(1)
        await server.stop()
        await asyncio.sleep(1.0)  # the fetch loop fails and backs off meanwhile
        await server.start()  # same store: the stream and the durable consumer are back
        for _ in range(100):  # as the outbox relay does: retry until the broker takes it
            try:
                await bus.publish(after)
                break
            except Exception:
                await asyncio.sleep(0.1)
        await c.wait_for(2, within=15)
        assert [i for i, _ in c.seen] == [before.id, after.id]
    finally:
        await bus.aclose()
        await server.stop()


async def test_nats_start_raises_when_no_server_listens():
    from amoeba.events.nats import NatsBus

    port = _OwnNats("nats-server", "").port  # free: nothing listens there
    bus = NatsBus(f"nats://127.0.0.1:{port}?ack_wait=5", app="absent")
    assert bus.ack_wait == 5
    with pytest.raises(ConnectionError, match="nats-server -js"):
        await bus.start()
    with pytest.raises(ValueError, match="ack_wait"):
        NatsBus("nats://127.0.0.1:4222?ackwait=5", app="absent")


# --- Kafka ----------------------------------------------------------------------

async def kafka_buses(n: int, query: str = "") -> list[EventBus]:
    """``n`` started buses of one fresh app on the test Kafka (a private Tansu)."""
    url, app = f"{servers.kafka_url()}?partitions=4{query}", f"t{uuid.uuid4().hex[:8]}"
    made = [open_bus(url, app=app) for _ in range(n)]
    for bus in made:
        await bus.start()
    return made


async def test_kafka_pending_counts_records_not_batches():
    """Tansu's ListOffsets says the last batch's base offset + 1: 40 records sent
    in a few batches must still count as 40 (and 0 once handled)."""
    bus, = await kafka_buses(1)
    try:
        sent = [msg(key="one") for _ in range(40)]  # one key: one partition, batched
        await bus.publish(sent[0])  # makes the topic: the others go out in list order
        await asyncio.gather(*(bus.publish(m) for m in sent[1:]))
        assert await bus.pending("svc") == 40
        c = Collect()
        await bus.subscribe("svc", ["test.happened"], c)
        await c.wait_for(40, within=30)
        for _ in range(100):
            if await bus.pending("svc") == 0:
                break
            await asyncio.sleep(0.1)
        assert await bus.pending("svc") == 0
        assert [i for i, _ in c.seen] == [m.id for m in sent]  # one key: in order
    finally:
        await bus.aclose()


async def test_kafka_unacked_records_of_a_closed_subscriber_go_to_another():
    first, second = await kafka_buses(2)
    got = asyncio.Event()

    async def hold(d: Delivery) -> None:  # takes the record, never acks it
        got.set()
        await asyncio.sleep(3600)

    try:
        await first.subscribe("svc", ["test.happened"], hold)
        m = msg()
        await second.publish(m)
        await asyncio.wait_for(got.wait(), 30)
        assert await second.pending("svc") == 1  # delivered, not acked: still lag
        await first.aclose()  # cancels the handler; leaves the group without committing it
        c = Collect()
        await second.subscribe("svc", ["test.happened"], c)
        await c.wait_for(1, within=30)
        assert [i for i, _ in c.seen] == [m.id]
    finally:
        await first.aclose()
        await second.aclose()


async def test_kafka_a_nacked_record_does_not_hold_up_its_partition():
    bus, = await kafka_buses(1)
    seen: list[tuple[str, int]] = []
    done = asyncio.Event()
    first, second = msg(key="k"), msg(key="k")  # one key: one partition, in order

    async def handler(d: Delivery) -> None:
        seen.append((d.message.id, d.attempt))
        if d.message.id == first.id and d.attempt == 1:
            await d.nack(2.0)
            return
        await d.ack()
        if len(seen) == 3:
            done.set()

    try:
        await bus.subscribe("svc", ["test.happened"], handler)
        await bus.publish(first)
        await bus.publish(second)
        await asyncio.wait_for(done.wait(), 30)
        # The second record ran while the first waited out its 2 s in the retry topic.
        assert seen == [(first.id, 1), (second.id, 1), (first.id, 2)]
        assert await bus.pending("svc") == 0
    finally:
        await bus.aclose()


async def test_kafka_urls_are_checked():
    from amoeba.events.kafka import KafkaBus, group_id, retry_topic, topic

    bus = KafkaBus("kafka://h1:9092,h2:9093?partitions=3&replication=2", app="shop_t1")
    assert bus.servers == "h1:9092,h2:9093"
    assert (bus.options["partitions"], bus.options["replication"]) == (3, 2)
    assert topic("shop", "shop.order_placed") == "amoeba.shop.shop.order_placed"
    assert retry_topic("shop", "notifications") == "amoeba-retry.shop.notifications"
    assert group_id("my app", "x") == "amoeba.my.20.app.x"
    with pytest.raises(ValueError, match="partitions"):
        KafkaBus("kafka://h:9092?partitions=1.5", app="a")
    with pytest.raises(ValueError, match="unknown option"):
        KafkaBus("kafka://h:9092?acks=1", app="a")
    port = _OwnNats("nats-server", "").port  # free: nothing listens there
    absent = KafkaBus(f"kafka://127.0.0.1:{port}?request_timeout=2", app="a")
    with pytest.raises(ConnectionError, match="no Kafka broker"):
        await absent.start()


async def test_an_event_after_an_idle_spell_arrives_promptly_and_idling_warns_nothing(buses, caplog):
    """An empty fetch is not a failure: no warning, no backoff (NATS's fetch loop
    once took the built-in TimeoutError for one and paused up to 5 s)."""
    import logging

    bus = await buses()
    c = Collect()
    await bus.subscribe("svc", ["test.happened"], c)
    await bus.publish(msg())
    await c.wait_for(1, within=30)  # subscribed and flowing
    with caplog.at_level(logging.WARNING, logger="amoeba.events"):
        await asyncio.sleep(7)  # longer than NATS's 5 s lingering pull: it ends empty
        sent = asyncio.get_running_loop().time()
        await bus.publish(msg())
        await c.wait_for(2, within=10)
        took = asyncio.get_running_loop().time() - sent
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == []
    assert took < 1.5, f"{took:.2f}s from publish to delivery after an idle spell"


async def test_nats_an_empty_fetch_is_not_a_failure(caplog):
    """nats-py's fetch() ends empty with its own TimeoutError or, from some paths,
    the built-in one; neither is logged or backed off from."""
    import logging

    from amoeba.events.nats import NatsBus

    class Empty:  # a pull subscription with nothing to fetch
        calls = 0

        async def fetch(self, batch: int, timeout: float) -> list[object]:  # noqa: ASYNC109
            Empty.calls += 1
            await asyncio.sleep(0.001)  # as a pull request's round trip
            if Empty.calls % 2:
                raise TimeoutError  # what fetch(n > 1) raises when its deadline runs out
            import nats.errors

            raise nats.errors.TimeoutError

    bus = NatsBus("nats://127.0.0.1:4222", app="unit")
    with caplog.at_level(logging.WARNING, logger="amoeba.events"):
        task = asyncio.create_task(bus._fetch(Empty(), "test.happened", Collect()))  # type: ignore[arg-type]
        # 20 failures with the loop's backoff (0.1 s doubling to 5 s) would take
        # over a minute; without it, a few tens of milliseconds.
        await eventually(checked(lambda: Empty.calls > 20), 10, "more than 20 empty fetches")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert [r.getMessage() for r in caplog.records] == []
    assert Empty.calls > 20  # no backoff pauses between the empty fetches
