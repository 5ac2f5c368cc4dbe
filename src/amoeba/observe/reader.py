"""Reading a running topology from outside (the CLI): every replica's
``/_amoeba/api/stats`` straight from its RPC listener (:func:`read_cluster`),
or ``/_amoeba/api/cluster`` from the first process that answers
(:func:`fetch_cluster`)."""

from __future__ import annotations

from typing import cast

from amoeba.app import App
from amoeba.observe.cluster import collect_cluster
from amoeba.observe.fetch import FetchError, fetch_json
from amoeba.observe.snapshot import ClusterSnapshot
from amoeba.topology import Topology

__all__ = ["CLUSTER", "STATS", "answered", "fetch_cluster", "read_cluster"]

STATS = "/_amoeba/api/stats"  # what FetchError messages name
CLUSTER = "/_amoeba/api/cluster"


async def read_cluster(app: App, topology: Topology) -> ClusterSnapshot:
    """Every replica's snapshot (or why it could not be read), read concurrently."""
    return await collect_cluster(app, topology, caller="cli")


async def fetch_cluster(app: App, topology: Topology) -> ClusterSnapshot:
    """``/_amoeba/api/cluster`` of the first process that serves it; when none
    does (an older runtime, or every process down), each replica read directly."""
    for proc in topology.processes.values():
        for host, port in proc.rpc_addresses():
            try:
                return cast(ClusterSnapshot, await fetch_json(host, port, CLUSTER, timeout=5.0))
            except FetchError:
                continue
    return await read_cluster(app, topology)


def answered(cluster: ClusterSnapshot) -> bool:
    """Whether at least one replica gave its snapshot."""
    return any("error" not in inst for p in cluster["processes"] for inst in p["instances"])
