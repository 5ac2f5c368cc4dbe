"""``amoeba status``: every replica of a running topology in one table —
pid, listeners, health, uptime, and its rates over a short interval.

Pure: :func:`replica_rows` turns two cluster readings (see
:mod:`amoeba.observe.reader`) into rows, :func:`render` the rows into text.
"""

from __future__ import annotations

from typing import TypedDict, cast

from amoeba.observe.reader import STATS
from amoeba.observe.snapshot import ClusterSnapshot, InstanceError, ListenerInfo, Snapshot
from amoeba.observe.table import duration, rate, table
from amoeba.topology import Topology

__all__ = ["ReplicaRow", "render", "replica_rows"]


class ReplicaRow(TypedDict):
    process: str
    replica: int
    address: str  # where it was read
    pid: int | None
    listeners: list[ListenerInfo]
    health: str  # "ready" | "draining" | "not ready" | "down: <why>"
    uptime: float | None
    requests: float | None  # per second over the interval; None without two readings
    errors: float | None  # share of 5xx among those requests (0..1); None without requests
    calls: float | None  # calls per second made by its services (local and remote)
    served: float | None  # remote calls per second it served (RPC in)


def _why(error: str) -> str:
    # FetchError says "http://host:port/path: why"; the address has its own column.
    _, sep, why = error.partition(f"{STATS}: ")
    why = (why if sep else error).lower()
    return "connection refused" if why.startswith("connect call failed") else why


def replica_rows(after: ClusterSnapshot, before: ClusterSnapshot | None,
                 topology: Topology) -> list[ReplicaRow]:
    """One row per replica, in topology order; rates from ``before`` when given."""
    old = {p["name"]: p["instances"] for p in (before or {"processes": []})["processes"]}
    rows: list[ReplicaRow] = []
    for entry in after["processes"]:
        proc = topology.processes.get(entry["name"])
        addresses = proc.rpc_addresses() if proc else []
        for i, inst in enumerate(entry["instances"]):
            address = ":".join(map(str, addresses[i])) if i < len(addresses) else "?"
            if "error" in inst:
                err = cast(InstanceError, inst)
                declared = [ListenerInfo(host=lst.host, port=lst.port_for(i), public=lst.public)
                            for lst in (proc.listeners if proc else ())]
                rows.append(ReplicaRow(process=entry["name"], replica=i, address=err["address"],
                                       pid=None, listeners=declared,
                                       health=f"down: {_why(err['error'])}", uptime=None,
                                       requests=None, errors=None, calls=None, served=None))
                continue
            prev_list = old.get(entry["name"], [])
            prev = prev_list[i] if i < len(prev_list) else None
            snap = inst
            health = ("draining" if snap["draining"] else "ready" if snap["ready"] else "not ready")
            row = ReplicaRow(process=entry["name"], replica=i, address=address, pid=snap["pid"],
                             listeners=snap["listeners"], health=health, uptime=snap["uptime"],
                             requests=None, errors=None, calls=None, served=None)
            if prev is not None and "error" not in prev:
                _rates(row, prev, snap)
            rows.append(row)
    return rows


def _rates(row: ReplicaRow, was: Snapshot, now: Snapshot) -> None:
    restarted = was["pid"] != now["pid"] or was["started"] != now["started"]
    dt = min(now["now"] - was["now"], now["uptime"]) if restarted else now["now"] - was["now"]
    if dt <= 0:
        return

    def delta(a: int, b: int) -> int:
        return a if restarted or a < b else a - b  # counters went backwards: a restart

    requests = delta(now["http"]["requests"], was["http"]["requests"])
    row["requests"] = requests / dt
    if requests:
        row["errors"] = delta(now["http"]["errors"], was["http"]["errors"]) / requests
    # Every call this process made into a service, its edge's included: a
    # gateway's row shows the calls it forwards, not 0.
    out_now = sum(c["count"] for c in now["calls"])
    out_was = sum(c["count"] for c in was["calls"])
    row["calls"] = delta(out_now, out_was) / dt
    row["served"] = delta(sum(s["count"] for s in now["served"]),
                          sum(s["count"] for s in was["served"])) / dt


def _listeners(listeners: list[ListenerInfo]) -> str:
    def one(lst: ListenerInfo) -> str:
        host = "" if lst["host"] in ("0.0.0.0", "::", "") else lst["host"]
        return f"{host}:{lst['port']} {'pub' if lst['public'] else 'priv'}"

    return ", ".join(one(lst) for lst in listeners) or "-"


def _short(text: str, width: int = 24) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def render(rows: list[ReplicaRow], title: str) -> str:
    """The table, at most ~100 columns wide; long reasons of a ``down`` replica
    are cut in the table and given in full under it."""
    body = [[f"{r['process']}[{r['replica']}]", str(r["pid"] or "-"), _listeners(r["listeners"]),
             _short(r["health"]), duration(r["uptime"]) if r["uptime"] is not None else "-",
             rate(r["requests"]) if r["requests"] is not None else "-",
             f"{r['errors'] * 100:.1f}" if r["errors"] is not None else "-",
             rate(r["served"]) if r["served"] is not None else "-",
             rate(r["calls"]) if r["calls"] is not None else "-"] for r in rows]
    grid = table(["REPLICA", "PID", "LISTENERS", "HEALTH", "UPTIME", "REQ/S", "ERR%", "RPC/S",
                  "CALLS/S"], body, right=(1, 4, 5, 6, 7, 8))
    ready = sum(1 for r in rows if r["health"] == "ready")
    notes = "".join(f"{r['process']}[{r['replica']}] {r['address']}: {r['health']}\n"
                    for r in rows if _short(r["health"]) != r["health"])
    footer = (
        "\nREQ/S: HTTP requests answered; RPC/S: remote calls served;\n"
        "CALLS/S: calls it made into services, its edge's included\n" + (f"\n{notes}" if notes else ""))
    return f"{title}: {ready}/{len(rows)} replicas ready\n\n{grid}\n{footer}"
