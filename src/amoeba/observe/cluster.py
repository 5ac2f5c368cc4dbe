"""Gather every replica's snapshot of a topology into one
:class:`~.snapshot.ClusterSnapshot` (what the dashboard and ``amoeba advise``
read).  Each replica is read at its RPC listener, concurrently, with a short
timeout; one that does not answer is an :class:`~.snapshot.InstanceError`
entry, never a failure of the whole."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from amoeba.observe.fetch import FetchError, fetch_json
from amoeba.observe.snapshot import ClusterSnapshot, InstanceError, ProcessEntry, ServiceNode, Snapshot

if TYPE_CHECKING:
    from amoeba.app import App
    from amoeba.topology.model import Topology
    from amoeba.transport.credential import TokenSigner

__all__ = ["collect_cluster", "service_graph"]


def service_graph(app: App, topology: Topology) -> dict[str, ServiceNode]:
    """The static graph: where each service runs, whom it calls, its events."""
    nodes: dict[str, ServiceNode] = {}
    for name, spec in sorted(app.specs.items()):
        proc = topology.process_of(name)
        nodes[name] = {
            "process": proc.name if proc else "",
            "depends": sorted(set(spec.dependencies.values())),
            "publishes": sorted(e.event_name for e in spec.publishes),
            "handles": sorted({e.event_name for e in spec.handlers.values()}),
            "methods": sorted(spec.methods),
        }
    return nodes


async def _read(process: str, replica: int, host: str, port: int, headers: dict[str, str],
                wait: float) -> Snapshot | InstanceError:
    try:
        snap: Snapshot = await fetch_json(host, port, "/_amoeba/api/stats", timeout=wait,
                                          headers=headers)
        return snap
    except FetchError as exc:
        return {"process": process, "replica": replica, "address": f"{host}:{port}",
                "error": str(exc)}


async def collect_cluster(app: App, topology: Topology, *, own: Snapshot | None = None,
                          signer: TokenSigner | None = None, caller: str = "amoeba",
                          wait: float = 1.5) -> ClusterSnapshot:
    """Every replica's snapshot (``own``: the caller's, not fetched again)."""
    jobs: list[asyncio.Task[Snapshot | InstanceError]] = []
    slots: list[tuple[str, int]] = []
    loop = asyncio.get_running_loop()
    for proc in topology.processes.values():
        for replica, (host, port) in enumerate(proc.rpc_addresses()):
            if own is not None and own["process"] == proc.name and own["replica"] == replica:
                continue
            headers = {"x-amoeba-token": signer.issue(proc.name, caller)} if signer else {}
            jobs.append(loop.create_task(_read(proc.name, replica, host, port, headers, wait)))
            slots.append((proc.name, replica))
    results = dict(zip(slots, await asyncio.gather(*jobs), strict=True))
    processes: list[ProcessEntry] = []
    for proc in topology.processes.values():
        instances: list[Snapshot | InstanceError] = []
        for replica in range(proc.replicas):
            if own is not None and own["process"] == proc.name and own["replica"] == replica:
                instances.append(own)
            else:
                instances.append(results[(proc.name, replica)])
        processes.append({"name": proc.name, "services": list(proc.services),
                          "replicas": proc.replicas, "private": proc.private,
                          "instances": instances})
    return {"app": app.name, "topology": topology.name, "now": time.time(),
            "services": service_graph(app, topology), "processes": processes}
