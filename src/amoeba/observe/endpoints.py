"""The observability endpoints of a listener (when metrics are on):

* ``/metrics``               Prometheus text format (``prometheus-client``)
* ``/_amoeba/``             the dashboard (one self-contained page)
* ``/_amoeba/api/stats``    this process's :class:`~.snapshot.Snapshot`
* ``/_amoeba/api/cluster``  every replica's, gathered by this process

Private listeners answer them to anyone who reaches them (the cluster-internal
side Prometheus scrapes).  Public listeners follow ``settings.observe.expose``:
``loopback`` (default) answers peers on 127.0.0.0/8 and ::1 (unless the
request carries ``X-Forwarded-For`` or ``Forwarded``: a same-host proxy is a
loopback peer for every client; then only when a ``trusted_proxies`` proxy
forwards a loopback client) and callers with the internal credential;
``never`` answers 404, ``always`` answers everyone.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.process_collector import ProcessCollector

from amoeba.codec import json_encoder
from amoeba.errors import NotFound, ServiceError
from amoeba.gateway.http import Request, Response
from amoeba.observe.advise import Advisor
from amoeba.observe.metrics import PrometheusCollector, backlog, snapshot

if TYPE_CHECKING:
    from amoeba.runtime.host import Host

__all__ = ["Observe"]

Endpoint = Callable[[Request], Awaitable[Response]]


class _Hidden(NotFound):
    """Answered for observability paths a public listener does not expose."""


class Observe:
    """The endpoints for one listener of one host."""

    def __init__(self, host: Host, public: bool):
        self.host = host
        self.public = public
        self.expose = host.observe.expose
        state = host.observe_state
        if state.registry is None:  # one registry per host, shared by its listeners
            state.collector = PrometheusCollector(host)
            state.registry = CollectorRegistry(auto_describe=False)
            state.registry.register(state.collector)
            state.registry.register(ProcessCollector(registry=None))
        self.state = state

    def __repr__(self) -> str:
        return f"<Observe {self.host!r} {'public' if self.public else 'private'}>"

    def routes(self) -> dict[str, Endpoint]:
        return {"/metrics": self._guard(self.metrics), "/_amoeba/": self._guard(self.dashboard),
                "/_amoeba": self._guard(self.dashboard),
                "/_amoeba/api/stats": self._guard(self.stats),
                "/_amoeba/api/cluster": self._guard(self.cluster)}

    def _allowed(self, req: Request) -> bool:
        if not self.public or self.expose == "always":
            return True
        if self.expose == "never":
            return False
        policy = self.host.policy
        if policy is not None and policy.is_local(req):
            return True
        token = req.headers.get("x-amoeba-token")
        if token:
            try:
                self.host.signer.verify(token, self.host.process.name)
            except ServiceError:
                return False
            return True
        return False

    def _guard(self, fn: Endpoint) -> Endpoint:
        async def guarded(req: Request) -> Response:
            if not self._allowed(req):
                raise _Hidden(f"no route for GET {req.path}")
            return await fn(req)

        return guarded

    async def metrics(self, req: Request) -> Response:
        state = self.state
        assert state.collector is not None and state.registry is not None
        state.collector.backlog = await backlog(self.host)
        return Response(200, generate_latest(state.registry), CONTENT_TYPE_LATEST.encode())

    async def stats(self, req: Request) -> Response:
        ready, _ = await self.host.readiness()
        return Response(200, json_encoder.encode(snapshot(self.host, ready,
                                                          await backlog(self.host))))

    async def cluster(self, req: Request) -> Response:
        from amoeba.observe.cluster import collect_cluster

        ready, _ = await self.host.readiness()
        mine = snapshot(self.host, ready, await backlog(self.host))
        cluster = await collect_cluster(self.host.app, self.host.topology, own=mine,
                                        signer=self.host.signer, caller=self.host.process.name)
        advice = self.state.advisor.observe(cluster)  # needs a snapshot from a while ago
        if advice is not None:
            cluster["advice"] = advice
        return Response(200, json_encoder.encode(cluster))

    async def dashboard(self, req: Request) -> Response:
        page = self.state.page
        if page is None:
            page = self.state.page = resources.files("amoeba.observe").joinpath(
                "dashboard.html").read_bytes()
        return Response(200, page, b"text/html; charset=utf-8",
                        [("cache-control", "no-store")])


class ObserveState:
    """What the listeners of one host share."""

    def __init__(self) -> None:
        self.registry: CollectorRegistry | None = None
        self.collector: PrometheusCollector | None = None
        self.page: bytes | None = None
        self.started = time.time()
        # The dashboard's advice panel compares the cluster now with ~10 s ago.
        self.advisor = Advisor(window=10.0)

    def __repr__(self) -> str:
        return f"<ObserveState registry={'yes' if self.registry else 'no'}>"
