"""What one process measures about itself, cheaply, on the hot path.

Every call between services goes through a *metered* reference (a local
call too: the process wraps the co-located instance once, at startup, when
metrics are on), every HTTP request through :meth:`Metrics.http`, every RPC
served through :meth:`Metrics.served`.  Recording is a few integer and float
additions into plain objects; nothing is formatted until someone reads:

* :func:`snapshot` builds the JSON of :mod:`.snapshot` (``/_amoeba/api/stats``);
* :class:`PrometheusCollector` turns the same numbers into metric families
  for ``prometheus-client``'s text exposition (``/metrics``), at scrape time.

Label sets are bounded by construction: services, methods and route
*templates* come from the app's code, status codes and outcomes from small
sets; no ids and no raw paths.  A process reports only its own numbers;
Prometheus scrapes every replica as its own target (the ``instance`` label),
which is what keeps the figures right with several processes and replicas.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import time
from bisect import bisect_left
from collections.abc import Callable, Coroutine, Iterator
from contextlib import suppress
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from amoeba.codec import MethodCodec, msgpack_encoder
from amoeba.observe.hist import Hist
from amoeba.observe.instruments import REGISTRY, Counter, Gauge, Histogram
from amoeba.observe.snapshot import (
    BUCKETS,
    AppMetric,
    AppSeries,
    CallStats,
    ConsumerStats,
    EventStats,
    HttpRoute,
    PoolStats,
    ServedStats,
    Snapshot,
)
from amoeba.spec import ServiceSpec

if TYPE_CHECKING:
    from amoeba.runtime.host import Host

__all__ = ["Backlog", "CallStat", "Hist", "Metrics", "PrometheusCollector", "backlog",
           "metered_stub", "snapshot"]

#: Per consuming service, events waiting in the broker; per publishing service,
#: rows waiting in its outbox (-1: could not be read).  Read asynchronously
#: (:func:`backlog`) before a snapshot or a scrape.
Backlog = tuple[dict[str, int], dict[str, int]]
SAMPLE_EVERY = 64  # a local call in this many is run through the codec to learn its size


class CallStat:
    """Calls from one caller to one method of one callee, local or remote."""

    __slots__ = ("bytes_in", "bytes_out", "err", "ok", "sampled")

    def __init__(self) -> None:
        self.ok = Hist()
        self.err = Hist()
        self.bytes_out = 0
        self.bytes_in = 0
        self.sampled = 0

    def __repr__(self) -> str:
        return f"<CallStat ok={self.ok.count} err={self.err.count}>"

    def sized(self, out: int, back: int) -> None:
        self.bytes_out += out
        self.bytes_in += back
        self.sampled += 1


class Metrics:
    """The numbers of one process (one replica)."""

    def __init__(self) -> None:
        self.started = time.time()
        self.calls: dict[tuple[str, str, str, str], CallStat] = {}
        self.routes: dict[tuple[str, str, int], Hist] = {}
        self.rpc: dict[tuple[str, str], Hist] = {}
        # The edge's routes to local methods: (HTTP method, template) -> (service,
        # method, kind).  Those calls (caller "http") are its routed requests, an
        # error when the answer was >= 400; remote ones are counted by the client.
        self.edge: dict[tuple[str, str], tuple[str, str, str]] = {}

    def __repr__(self) -> str:
        return f"<Metrics calls={len(self.calls)} routes={len(self.routes)}>"

    def call(self, caller: str, callee: str, method: str, kind: str) -> CallStat:
        key = (caller, callee, method, kind)
        stat = self.calls.get(key)
        if stat is None:
            stat = self.calls[key] = CallStat()
        return stat

    def all_calls(self) -> dict[tuple[str, str, str, str], CallStat]:
        """Every caller/callee/method/kind: the metered calls, and the edge's
        calls read from its route histograms (a copy; for readers)."""
        out = dict(self.calls)
        for (verb, template, status), h in self.routes.items():
            target = self.edge.get((verb, template))
            if target is None:
                continue
            key = ("http", *target)
            stat = out.get(key)
            if stat is None:
                stat = out[key] = CallStat()
            into = stat.ok if status < 400 else stat.err
            into.sum += h.sum
            into.hist = [a + b for a, b in zip(into.hist, h.hist, strict=True)]
        return out

    def route(self, method: str, route: str, status: int) -> Hist:
        key = (method, route, status)
        hist = self.routes.get(key)
        if hist is None:
            hist = self.routes[key] = Hist()
        return hist

    def http(self, method: str, route: str, status: int, seconds: float) -> None:
        self.route(method, route, status).observe(seconds)

    def served(self, service: str, method: str) -> Hist:
        key = (service, method)
        hist = self.rpc.get(key)
        if hist is None:
            hist = self.rpc[key] = Hist()
        return hist


def metered_stub(spec: ServiceSpec, codecs: dict[str, MethodCodec], target: Any, stats: Metrics,
                 caller: str, kind: str) -> Any:
    """An object with ``spec``'s methods that times each call into ``target``
    (the instance, a strict stub or a remote stub) and counts its outcome.
    Local calls: one in :data:`SAMPLE_EVERY` also measures the size its
    arguments and result would have on the wire."""
    from amoeba.transport.stub import stub_class

    def make(codec: MethodCodec) -> Callable[..., Coroutine[Any, Any, Any]]:
        stat = stats.call(caller, spec.name, codec.spec.name, kind)
        env: dict[str, Any] = {
            "fn": getattr(target, codec.spec.name), "clock": time.perf_counter,
            "where": bisect_left, "bounds": BUCKETS, "ok": stat.ok, "err": stat.err,
            "ok_hist": stat.ok.hist, "err_hist": stat.err.hist, "stat": stat,
            "bind": codec.bind, "encode": msgpack_encoder.encode, "suppress": suppress,
            "sample_every": SAMPLE_EVERY,
            # Local calls: every SAMPLE_EVERY-th is sized; remote calls are sized by the client.
            "countdown": [1 if kind == "local" else -1],
        }
        params, call, names = _signature(getattr(spec.cls, codec.spec.name), env)
        # The hot path of every call between services: the method's own signature
        # (no *args/**kwargs packing), two clock reads, a bisect, two additions.
        source = f"""
async def {codec.spec.name}(self, {params}):
    started = clock()
    try:
        result = await fn({call})
    except BaseException:
        took = clock() - started
        err.sum += took
        err_hist[where(bounds, took)] += 1
        raise
    took = clock() - started
    ok.sum += took
    ok_hist[where(bounds, took)] += 1
    countdown[0] -= 1
    if not countdown[0]:
        countdown[0] = sample_every
        with suppress(TypeError, ValueError):  # not wire-encodable: a local-only call
            stat.sized(len(encode(bind(({names}), {{}}))), len(encode(result)))
    return result
"""
        exec(compile(source, f"<metered {spec.name}.{codec.spec.name}>", "exec"), env)
        method: Callable[..., Coroutine[Any, Any, Any]] = env[codec.spec.name]
        method.__doc__ = codec.spec.doc
        return method

    return stub_class(spec, f"metered {kind}", {n: make(c) for n, c in codecs.items()})


def _signature(func: Callable[..., Any], env: dict[str, Any]) -> tuple[str, str, str]:
    """``func``'s parameters as source: the signature (defaults bound through
    ``env``), the call that passes them on, and a tuple of them in order."""
    sig = inspect.signature(func)
    params, call, names = [], [], []
    star = False
    for i, p in enumerate(list(sig.parameters.values())[1:]):  # without self
        if p.kind is p.KEYWORD_ONLY and not star:
            params.append("*")
            star = True
        text = p.name
        if p.default is not p.empty:
            env[f"_default_{i}"] = p.default
            text += f"=_default_{i}"
        params.append(text)
        call.append(p.name if p.kind is p.POSITIONAL_OR_KEYWORD else f"{p.name}={p.name}")
        names.append(p.name)
    return ", ".join(params), ", ".join(call), "".join(f"{n}, " for n in names)


# -- readers -----------------------------------------------------------------------------------
def _merged(stat: CallStat) -> tuple[int, float, list[int]]:
    ok, err = stat.ok, stat.err
    return ok.count + err.count, ok.sum + err.sum, [a + b for a, b in zip(ok.hist, err.hist,
                                                                           strict=True)]


def snapshot(host: Host, ready: bool, backlog: Backlog | None = None) -> Snapshot:
    """This process's numbers as the JSON of :class:`~.snapshot.Snapshot`."""
    m = host.metrics
    assert m is not None
    now = time.time()
    routes: list[HttpRoute] = []
    requests = errors = client_errors = 0
    for (method, route, status), h in sorted(m.routes.items()):
        routes.append({"method": method, "route": route, "status": status, "count": h.count,
                       "sum": h.sum, "hist": list(h.hist)})
        requests += h.count
        if status >= 500:
            errors += h.count
        elif status >= 400:
            client_errors += h.count
    calls: list[CallStats] = []
    for (caller, callee, method, kind), stat in sorted(m.all_calls().items()):
        count, total, hist = _merged(stat)
        if not count:
            continue
        calls.append({"caller": caller, "callee": callee, "method": method,
                      "kind": "local" if kind == "local" else "remote", "count": count,
                      "errors": stat.err.count, "sum": total, "hist": hist,
                      "bytes_out": stat.bytes_out, "bytes_in": stat.bytes_in,
                      "sampled": stat.sampled})
    served: list[ServedStats] = [{"service": s, "method": meth, "count": h.count, "sum": h.sum}
                                 for (s, meth), h in sorted(m.rpc.items()) if h.count]
    pools: list[PoolStats] = [
        {"process": name, "replicas": [
            {"address": r.address, "connections": len(r.conns), "ejected": r.ejected,
             "ejections": r.ejections} for r in client.replicas]}
        for name, client in sorted(host.clients.items())]
    events: EventStats | None = None
    if host.events is not None:
        ev = host.events
        lag, waiting = backlog or ({}, {})
        consumers: list[ConsumerStats] = [
            {"service": svc, "event": name, "delivered": c.delivered, "acked": c.acked,
             "retried": c.retried, "dead_lettered": c.dead_lettered, "duplicates": c.duplicates,
             "lag": lag.get(svc, -1)}
            for (svc, name), c in sorted(ev.counters.items())]
        events = {"published": dict(sorted(ev.published.items())), "consumers": consumers,
                  "outbox": {svc: waiting.get(svc, -1) for svc in sorted(ev.relays)}}
    return {
        "app": host.app.name, "topology": host.topology.name, "process": host.process.name,
        "replica": host.replica, "pid": os.getpid(), "services": list(host.process.services),
        "listeners": [{"host": e.listener.host, "port": port, "public": e.listener.public}
                      for e, port in zip(host.edges, host.bound_ports(), strict=False)],
        "started": m.started, "now": now, "uptime": now - m.started,
        "ready": ready, "draining": host.draining, "buckets": list(BUCKETS),
        "http": {"requests": requests, "errors": errors, "client_errors": client_errors,
                 "inflight": host.inflight, "routes": routes},
        "calls": calls, "served": served, "pools": pools, "events": events,
        "metrics": app_metrics(),
    }


def app_metrics() -> list[AppMetric]:
    """The application's own metrics (declared with Counter, Gauge, Histogram)."""
    out: list[AppMetric] = []
    for inst in REGISTRY:
        series: list[AppSeries] = []
        for values, child in sorted(inst.children.items()):
            if isinstance(inst, Histogram):
                series.append({"labels": list(values), "value": child.count, "sum": child.sum,
                               "hist": list(child.counts)})
            else:
                series.append({"labels": list(values), "value": child.value})
        metric: AppMetric = {"name": inst.name, "kind": inst.kind,  # type: ignore[typeddict-item]
                             "help": inst.help, "labels": list(inst.label_names), "series": series}
        if isinstance(inst, Histogram):
            metric["buckets"] = list(inst.bounds)
        out.append(metric)
    return out


async def backlog(host: Host, wait: float = 1.0) -> Backlog:
    ev = host.events
    if ev is None:
        return {}, {}
    try:
        async with asyncio.timeout(wait):
            return await ev.lag(), await ev.outbox_waiting()
    except Exception:  # a broker or database that does not answer must not break a scrape
        return {g: -1 for g in ev.groups}, {s: -1 for s in ev.relays}


def _app_families() -> Iterator[Any]:
    for inst in REGISTRY:
        names = list(inst.label_names)
        if isinstance(inst, Counter):
            counter = CounterMetricFamily(inst.name, inst.help, labels=names)
            for values, c in sorted(inst.children.items()):
                counter.add_metric(list(values), c.value)
            yield counter
        elif isinstance(inst, Gauge):
            gauge = GaugeMetricFamily(inst.name, inst.help, labels=names)
            for values, g in sorted(inst.children.items()):
                gauge.add_metric(list(values), g.value)
            yield gauge
        elif isinstance(inst, Histogram):
            hist = HistogramMetricFamily(inst.name, inst.help, labels=names)
            for values, h in sorted(inst.children.items()):
                hist.add_metric(list(values), _buckets(h.counts, h.sum, inst.bounds), h.sum)
            yield hist


def _buckets(hist: list[int], total: float,
             bounds: tuple[float, ...] = BUCKETS) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    acc = 0
    for bound, n in zip(bounds, hist, strict=False):
        acc += n
        out.append((repr(bound), acc))
    out.append(("+Inf", acc + hist[-1]))
    return out


class PrometheusCollector(Collector):
    """``prometheus-client`` metric families built from a host's numbers at
    scrape time (the hot path never touches ``prometheus-client``)."""

    def __init__(self, host: Host):
        self.host = host
        self.backlog: Backlog = ({}, {})  # set by the /metrics handler before a scrape

    def __repr__(self) -> str:
        return f"<PrometheusCollector {self.host!r}>"

    def collect(self) -> Iterator[Any]:
        host, m = self.host, self.host.metrics
        assert m is not None
        calls = HistogramMetricFamily(
            "amoeba_call_duration_seconds",
            "Calls between services as the caller saw them (local: in-process await; remote: RPC)",
            labels=["caller", "callee", "method", "kind", "outcome"])
        sent = CounterMetricFamily("amoeba_call_sent_bytes",
                                   "Bytes of arguments of remote calls", labels=["caller", "callee",
                                                                                 "method"])
        received = CounterMetricFamily("amoeba_call_received_bytes",
                                       "Bytes of results of remote calls",
                                       labels=["caller", "callee", "method"])
        for (caller, callee, method, kind), stat in sorted(m.all_calls().items()):
            for outcome, h in (("ok", stat.ok), ("error", stat.err)):
                if h.count:
                    calls.add_metric([caller, callee, method, kind, outcome],
                                     _buckets(h.hist, h.sum), h.sum)
            if kind == "remote" and stat.sampled:
                sent.add_metric([caller, callee, method], stat.bytes_out)
                received.add_metric([caller, callee, method], stat.bytes_in)
        yield from (calls, sent, received)
        http = HistogramMetricFamily("amoeba_http_request_duration_seconds",
                                     "HTTP requests answered, per route template and status",
                                     labels=["method", "route", "status"])
        for (method, route, status), h in sorted(m.routes.items()):
            http.add_metric([method, route, str(status)], _buckets(h.hist, h.sum), h.sum)
        yield http
        served = HistogramMetricFamily("amoeba_rpc_served_duration_seconds",
                                       "Remote calls served by this process (time in the method)",
                                       labels=["service", "method"])
        for (svc, method), h in sorted(m.rpc.items()):
            if h.count:
                served.add_metric([svc, method], _buckets(h.hist, h.sum), h.sum)
        yield served
        yield GaugeMetricFamily("amoeba_http_inflight_requests",
                                "Requests being served now", value=host.inflight)
        conns = GaugeMetricFamily("amoeba_pool_connections",
                                  "Open RPC connections to each replica of a callee process",
                                  labels=["process", "address"])
        ejected = GaugeMetricFamily("amoeba_pool_replica_ejected",
                                    "1 while a callee replica is ejected for failing",
                                    labels=["process", "address"])
        ejections = CounterMetricFamily("amoeba_pool_ejections",
                                        "Times a callee replica was ejected",
                                        labels=["process", "address"])
        for name, client in sorted(host.clients.items()):
            for r in client.replicas:
                conns.add_metric([name, r.address], len(r.conns))
                ejected.add_metric([name, r.address], 1 if r.ejected else 0)
                ejections.add_metric([name, r.address], r.ejections)
        yield from (conns, ejected, ejections)
        ready = GaugeMetricFamily("amoeba_draining", "1 while the process drains before exit",
                                  value=1 if host.draining else 0)
        yield ready
        yield from self._resources()
        if host.events is not None:
            yield from self._events()
        yield from _app_families()

    def _resources(self) -> Iterator[Any]:
        """Connection pools of every Database/SQLite resource, and round trips of
        every Redis-backed cache, read from the resources at scrape time."""
        labels = ["service", "resource"]
        size = GaugeMetricFamily("amoeba_db_pool_size", "Connections the pool may hold",
                                 labels=labels)
        conns = GaugeMetricFamily("amoeba_db_pool_connections",
                                  "Pooled database connections by state (in_use, idle)",
                                  labels=[*labels, "state"])
        waiting = GaugeMetricFamily("amoeba_db_pool_waiting",
                                    "Callers waiting for a pooled database connection",
                                    labels=labels)
        timeouts = CounterMetricFamily("amoeba_db_pool_timeouts",
                                       "Waits for a pooled connection that gave up", labels=labels)
        trips = HistogramMetricFamily("amoeba_cache_round_trip_seconds",
                                      "Round trips to the cache's Redis, per operation",
                                      labels=[*labels, "op", "outcome"])
        for name, res in self.host.resources:
            service, _, attr = name.partition(".")
            stats = getattr(res, "pool_stats", None)
            if stats is not None:
                use = stats()
                size.add_metric([service, attr], use.size)
                conns.add_metric([service, attr, "in_use"], use.in_use)
                conns.add_metric([service, attr, "idle"], use.idle)
                waiting.add_metric([service, attr], use.waiting)
                timeouts.add_metric([service, attr], use.timeouts)
            for op, pair in sorted(getattr(res, "round_trips", {}).items()):
                for outcome, h in zip(("ok", "error"), pair, strict=True):
                    if h.count:
                        trips.add_metric([service, attr, op, outcome], _buckets(h.hist, h.sum),
                                         h.sum)
        yield from (size, conns, waiting, timeouts, trips)

    def _events(self) -> Iterator[Any]:
        ev = self.host.events
        assert ev is not None
        published = CounterMetricFamily("amoeba_events_published",
                                        "Events published by this process", labels=["event"])
        for name, n in sorted(ev.published.items()):
            published.add_metric([name], n)
        yield published
        families = {k: CounterMetricFamily(f"amoeba_events_{k}", f"Deliveries {k.replace('_', ' ')}",
                                           labels=["service", "event"])
                    for k in ("delivered", "acked", "retried", "dead_lettered", "duplicates")}
        for (svc, name), c in sorted(ev.counters.items()):
            for k, fam in families.items():
                fam.add_metric([svc, name], getattr(c, k))
        yield from families.values()
        lag = GaugeMetricFamily("amoeba_events_consumer_lag",
                                "Events waiting in the broker for a consuming service",
                                labels=["service"])
        lags, waiting = self.backlog
        for svc, n in sorted(lags.items()):
            if n >= 0:
                lag.add_metric([svc], n)
        yield lag
        outbox = GaugeMetricFamily("amoeba_events_outbox_rows",
                                   "Outbox rows not yet handed to the broker", labels=["service"])
        for svc, n in sorted(waiting.items()):
            if n >= 0:
                outbox.add_metric([svc], n)
        yield outbox
