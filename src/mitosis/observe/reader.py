"""Reading a running topology from outside: every replica's
``/_mitosis/api/stats`` straight from its RPC listener (:func:`read_cluster`,
what the runtime's ``/_mitosis/api/cluster`` does from inside), or that
endpoint itself from the first process that answers (:func:`fetch_cluster`)."""

from __future__ import annotations

import asyncio
import time
from typing import cast

from mitosis.app import App
from mitosis.observe.fetch import FetchError, fetch_json
from mitosis.observe.graph import service_nodes
from mitosis.observe.snapshot import ClusterSnapshot, InstanceError, ProcessEntry, Snapshot
from mitosis.topology import Topology

__all__ = ["CLUSTER", "STATS", "answered", "fetch_cluster", "read_cluster"]

STATS = "/_mitosis/api/stats"
CLUSTER = "/_mitosis/api/cluster"


async def read_cluster(app: App, topology: Topology) -> ClusterSnapshot:
    """Every replica's snapshot (or why it could not be read), read concurrently."""

    async def one(proc: str, replica: int, host: str, port: int) -> Snapshot | InstanceError:
        try:
            return cast(Snapshot, await fetch_json(host, port, STATS, timeout=2.0))
        except FetchError as exc:
            return InstanceError(process=proc, replica=replica, address=f"{host}:{port}",
                                 error=str(exc))

    procs = list(topology.processes.values())
    found = await asyncio.gather(*(asyncio.gather(*(one(p.name, i, h, port) for i, (h, port)
                                                    in enumerate(p.rpc_addresses())))
                                   for p in procs))
    entries = [ProcessEntry(name=p.name, services=list(p.services), replicas=p.replicas,
                            private=p.private, instances=list(instances))
               for p, instances in zip(procs, found, strict=True)]
    return ClusterSnapshot(app=app.name, topology=topology.name, now=time.time(),
                           services=service_nodes(app, topology), processes=entries)


async def fetch_cluster(app: App, topology: Topology) -> ClusterSnapshot:
    """``/_mitosis/api/cluster`` of the first process that serves it; when none
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
