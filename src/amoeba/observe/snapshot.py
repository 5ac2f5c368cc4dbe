"""What one process (one replica) reports about itself at
``GET /_amoeba/api/stats``, and what ``GET /_amoeba/api/cluster`` gathers
from every replica of the topology.  Plain JSON, described here as TypedDicts:
the runtime writes it, ``amoeba status``, ``amoeba advise`` and the
dashboard read it.

Counters are cumulative since the process started; a reader takes two
snapshots and divides the differences by the time between them.  Latency
histograms share the fixed bucket bounds :data:`BUCKETS` (seconds); ``hist``
holds one *non-cumulative* count per bound plus a last one for ``+Inf``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, NotRequired, TypedDict

if TYPE_CHECKING:
    from amoeba.observe.advise import Advice

__all__ = [
    "BUCKETS", "AppMetric", "AppSeries", "CallStats", "ClusterSnapshot", "ConsumerStats", "EventStats",
    "HttpRoute", "HttpStats", "InstanceError", "ListenerInfo", "PoolReplica", "PoolStats", "ProcessEntry",
    "ServedStats", "ServiceNode", "Snapshot",
]

#: Upper bounds (seconds) of the latency buckets, shared by every histogram.
BUCKETS: tuple[float, ...] = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)


class ListenerInfo(TypedDict):
    host: str
    port: int  # the port this replica listens on
    public: bool


class HttpRoute(TypedDict):
    method: str
    route: str  # the route template ("/api/orders/{id}"), never the raw path
    status: int
    count: int
    sum: float  # seconds
    hist: list[int]  # len(BUCKETS) + 1


class HttpStats(TypedDict):
    requests: int  # all answered requests on public and private listeners
    errors: int  # answered 5xx
    client_errors: int  # answered 4xx
    inflight: int
    routes: list[HttpRoute]


class CallStats(TypedDict):
    """Calls made *from* this process: one entry per caller/callee/method/kind."""

    caller: str  # the calling service, or "http" for the edge of a listener
    callee: str  # service
    method: str
    kind: Literal["local", "remote"]
    count: int
    errors: int  # calls that raised (any exception)
    sum: float  # seconds, as the caller saw them
    hist: list[int]
    # Bytes of arguments/results: measured on every remote call; for local calls
    # estimated from ``sampled`` calls run through the wire codec.
    bytes_out: int
    bytes_in: int
    sampled: int  # how many calls the byte counts cover (== count for remote)


class ServedStats(TypedDict):
    """Remote calls served by this process (time inside the method)."""

    service: str
    method: str
    count: int
    sum: float


class PoolReplica(TypedDict):
    address: str
    connections: int
    ejected: bool
    ejections: int


class PoolStats(TypedDict):
    process: str  # the callee process
    replicas: list[PoolReplica]


class ConsumerStats(TypedDict):
    service: str
    event: str
    delivered: int
    acked: int
    retried: int
    dead_lettered: int
    duplicates: int
    lag: int  # waiting in the broker for this group, -1 when unknown


class EventStats(TypedDict):
    published: dict[str, int]  # "service/event" -> count
    consumers: list[ConsumerStats]
    outbox: dict[str, int]  # service -> rows waiting in its outbox, -1 when unknown


class AppSeries(TypedDict):
    labels: list[str]  # values, in the order of the metric's label names
    value: float  # counter or gauge value; a histogram's count
    sum: NotRequired[float]  # histogram
    hist: NotRequired[list[int]]  # histogram: non-cumulative, one per bound plus +Inf


class AppMetric(TypedDict):
    """A metric the application declared (:mod:`amoeba.observe.instruments`)."""

    name: str
    kind: Literal["counter", "gauge", "histogram"]
    help: str
    labels: list[str]  # label names
    buckets: NotRequired[list[float]]  # histogram upper bounds
    series: list[AppSeries]


class Snapshot(TypedDict):
    app: str
    topology: str
    process: str
    replica: int
    pid: int
    services: list[str]
    listeners: list[ListenerInfo]
    started: float  # unix time
    now: float  # unix time this snapshot was taken
    uptime: float  # seconds
    ready: bool
    draining: bool
    buckets: list[float]  # == BUCKETS
    http: HttpStats
    calls: list[CallStats]
    served: list[ServedStats]
    pools: list[PoolStats]
    events: EventStats | None
    metrics: NotRequired[list[AppMetric]]  # the application's own


class InstanceError(TypedDict):
    """A replica that could not be read."""

    process: str
    replica: int
    address: str
    error: str


class ServiceNode(TypedDict):
    process: str
    depends: list[str]  # services it calls (from its annotations)
    publishes: list[str]  # event names
    handles: list[str]  # event names
    methods: list[str]


class ProcessEntry(TypedDict):
    name: str
    services: list[str]
    replicas: int
    private: bool
    instances: list[Snapshot | InstanceError]  # one per replica, in replica order


class ClusterSnapshot(TypedDict):
    app: str
    topology: str
    now: float
    services: dict[str, ServiceNode]
    processes: list[ProcessEntry]
    advice: NotRequired[Advice]  # filled by readers that compute it (needs two snapshots)
