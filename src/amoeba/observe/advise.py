"""Placement advice from measured traffic: which services to co-locate,
which are safe to split, and what either would save or cost.

Pure: :func:`advise` reads two :class:`~amoeba.observe.snapshot.ClusterSnapshot`
taken some seconds apart and returns plain data (JSON-ready); no I/O.

For every pair of services it reports, over the interval:

* **calls/s**, both directions summed.  The edge of each process that serves
  routes is a node of its own, :func:`edge_node` (``edge:<process>``): its calls
  into services (``caller="http"`` in the metrics) form pairs like any other,
  so a gateway's busiest crossings are advised on; an edge never moves;
* **bytes/s** crossing processes: measured for a remote pair; for a local pair,
  what *would* cross if it were split (bytes per call from the calls the
  runtime sampled through the wire codec, times calls/s);
* **crossing time/s**: for a remote pair, what the callers waited minus what
  the callee spent inside the method (its ``served`` time), per method; for a
  local pair, calls/s times the per-call crossing overhead measured on the
  remote pairs of the same snapshot, or :data:`DEFAULT_OVERHEAD` when none is
  remote.  On one host that time is mostly CPU (encoding, decoding, syscalls on
  both sides), so time/s reads as cores: an upper bound on the CPU a move saves.

Verdicts, with a gap between the two thresholds so that following one piece of
advice never produces the opposite advice on the next run:

* remote pair, crossing >= :data:`CO_LOCATE_CORES` (2 % of a core) -> **co-locate**
  (below that the saving is noise next to the services' own work) else *fine apart*;
* local pair, estimated crossing < :data:`SPLIT_CORES` (0.5 % of a core) and
  calls/s < :data:`SPLIT_CALLS` -> **safe to split**, else *keep together*.

A pair that exchanged no call in the interval gets no row and no advice: there
is nothing measured to advise on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations
from typing import Literal, TypedDict, cast

from amoeba.observe.snapshot import ClusterSnapshot, InstanceError, Snapshot
from amoeba.observe.table import cores, human_bytes, rate, seconds, table

__all__ = ["CO_LOCATE_CORES", "DEFAULT_OVERHEAD", "SPLIT_CALLS", "SPLIT_CORES", "Advice", "Advisor",
           "PairAdvice", "Recommendation", "advise", "edge_node", "render"]

#: Per-call cost of crossing processes when no remote call was measured
#: (seconds): a local loopback RPC round trip in ``bench/calls.py``.
DEFAULT_OVERHEAD = 150e-6
#: A remote pair whose crossing costs at least this (cores) should be co-located.
CO_LOCATE_CORES = 0.02
#: A local pair is safe to split below this estimated cost (cores) ...
SPLIT_CORES = 0.005
#: ... and below this many calls per second.
SPLIT_CALLS = 10.0

def edge_node(process: str) -> str:
    """The node that stands for the HTTP edge of ``process`` (its listeners'
    routed requests) in pairs, graphs and the dashboard."""
    return f"edge:{process}"


def is_edge(node: str) -> bool:
    return node.startswith("edge:")


Verdict = Literal["co-locate", "fine apart", "keep together", "safe to split", "no data"]


class PairAdvice(TypedDict):
    services: list[str]  # two names, sorted
    processes: list[str]  # where each runs now
    placement: Literal["local", "remote"]
    calls: float  # calls/s, both directions
    methods: list[str]  # "caller->callee.method" seen in the interval
    bytes: float  # bytes/s crossing now (remote), or that would cross if split (local)
    crossing: float  # seconds/s (~ cores) spent crossing, or that would be if split
    per_call: float  # seconds of crossing per call
    per_request: float | None  # seconds of crossing per edge request, None without edge traffic
    estimated: bool  # crossing comes from the overhead estimate, not this pair's measurements
    verdict: Verdict


class Recommendation(TypedDict):
    action: Literal["co-locate", "split"]
    services: list[str]
    move: str  # the service to move
    into: str  # the process to move it into ("" for a new process of its own)
    cores: float  # saved (co-locate, net of the moved service's other pairs) or cost (split)
    bytes: float  # bytes/s no longer crossing, or newly crossing
    per_request: float | None
    text: str


class Advice(TypedDict):
    interval: float
    overhead: float  # seconds per call used for local pairs
    overhead_source: Literal["measured", "default"]
    thresholds: dict[str, float]
    pairs: list[PairAdvice]
    recommendations: list[Recommendation]
    notes: list[str]


@dataclass
class _Flow:
    """Rates of one caller->callee.method over the interval."""

    calls: float = 0.0
    time: float = 0.0
    bytes: float = 0.0
    sampled: float = 0.0
    kinds: set[str] = field(default_factory=set)


@dataclass
class _Rates:
    flows: dict[tuple[str, str, str], _Flow] = field(default_factory=dict)
    served: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)  # calls, time
    edge: dict[str, float] = field(default_factory=dict)  # callee -> http calls/s
    edges: set[str] = field(default_factory=set)  # processes whose edge called a service
    notes: list[str] = field(default_factory=list)
    replicas: int = 0  # replicas that gave rates


def _delta(after: float, before: float, reset: bool) -> float:
    # A counter that went backwards was reset (the process restarted).
    return after if reset or after < before else after - before


def _rates(before: ClusterSnapshot, after: ClusterSnapshot) -> _Rates:
    out = _Rates()
    old = {p["name"]: p["instances"] for p in before["processes"]}
    for proc in after["processes"]:
        for i, new in enumerate(proc["instances"]):
            where = f"{proc['name']}[{i}]"
            prev = old.get(proc["name"], [])
            was = prev[i] if i < len(prev) else None
            if "error" in new:
                out.notes.append(f"{where}: not read ({cast(InstanceError, new)['error']}); "
                                 f"its traffic is missing")
                continue
            if was is None or "error" in was:
                out.notes.append(f"{where}: no earlier snapshot; its traffic is missing")
                continue
            _add_replica(out, was, new, where, proc["name"])
    return out


def _add_replica(out: _Rates, was: Snapshot, new: Snapshot, where: str, process: str) -> None:
    reset = new["pid"] != was["pid"] or new["started"] != was["started"]
    dt = new["now"] - was["now"]
    if reset:
        dt = min(dt, new["uptime"])
        out.notes.append(f"{where}: restarted during the interval; counted since its start")
    if dt <= 0:
        out.notes.append(f"{where}: no time passed between the two snapshots; no rates")
        return
    out.replicas += 1
    before = {(c["caller"], c["callee"], c["method"], c["kind"]): c for c in was["calls"]}
    for c in new["calls"]:
        p = before.get((c["caller"], c["callee"], c["method"], c["kind"]))
        r = reset or p is None or c["count"] < p["count"]
        count, time, out_, in_, sampled = (
            _delta(c[k], p[k] if p is not None else 0, r) / dt
            for k in ("count", "sum", "bytes_out", "bytes_in", "sampled"))
        caller = c["caller"]
        if caller == "http":
            out.edge[c["callee"]] = out.edge.get(c["callee"], 0.0) + count
            out.edges.add(process)
            caller = edge_node(process)
        f = out.flows.setdefault((caller, c["callee"], c["method"]), _Flow())
        f.calls += count
        f.time += time
        f.bytes += out_ + in_
        f.sampled += sampled
        f.kinds.add(c["kind"])
    served = {(s["service"], s["method"]): s for s in was["served"]}
    for s in new["served"]:
        p2 = served.get((s["service"], s["method"]))
        r = reset or p2 is None or s["count"] < p2["count"]
        calls, time = out.served.get((s["service"], s["method"]), (0.0, 0.0))
        out.served[(s["service"], s["method"])] = (
            calls + _delta(s["count"], p2["count"] if p2 else 0, r) / dt,
            time + _delta(s["sum"], p2["sum"] if p2 else 0.0, r) / dt)


def _crossing(rates: _Rates, key: tuple[str, str, str], flow: _Flow) -> float | None:
    """Seconds of crossing per call of a remote flow; None when the callee's
    served time is unknown."""
    calls, time = rates.served.get((key[1], key[2]), (0.0, 0.0))
    if flow.calls <= 0 or calls <= 0:
        return None
    return max(0.0, flow.time / flow.calls - time / calls)


def advise(before: ClusterSnapshot, after: ClusterSnapshot, interval: float | None = None) -> Advice:
    """Advice from the traffic between two snapshots.  Each replica's rates use
    the time between its own two snapshots; ``interval`` is only reported
    (default: the difference of the clusters' ``now``)."""
    rates = _rates(before, after)
    span = interval if interval is not None else after["now"] - before["now"]
    placed = {name: node["process"] for name, node in after["services"].items()}
    placed.update({edge_node(proc): proc for proc in rates.edges})
    remote_calls = remote_time = 0.0
    per_flow: dict[tuple[str, str, str], float | None] = {}
    for key, flow in rates.flows.items():
        if "remote" in flow.kinds:
            per_flow[key] = x = _crossing(rates, key, flow)
            if x is not None:
                remote_calls += flow.calls
                remote_time += flow.calls * x
    measured = remote_calls > 0
    overhead = remote_time / remote_calls if measured else DEFAULT_OVERHEAD
    edge_rate = sum(rates.edge.values())
    pairs: list[PairAdvice] = []
    for a, b in combinations(sorted(placed), 2):
        calls = bytes_ = crossing = 0.0
        estimated = False
        methods: list[str] = []
        for key, flow in sorted(rates.flows.items()):
            if {key[0], key[1]} != {a, b} or flow.calls <= 0:
                continue
            methods.append(f"{key[0]}->{key[1]}.{key[2]}")
            calls += flow.calls
            if flow.sampled > 0:
                bytes_ += flow.bytes / flow.sampled * flow.calls
            x = per_flow.get(key)
            if x is None:
                estimated = True
                x = overhead
            crossing += flow.calls * x
        if calls <= 0:
            continue  # never exchanged a call in the interval: nothing to advise on
        local = placed[a] == placed[b]
        pairs.append(PairAdvice(
            services=[a, b], processes=[placed[a], placed[b]],
            placement="local" if local else "remote", calls=calls, methods=methods, bytes=bytes_,
            crossing=crossing, per_call=crossing / calls if calls else (overhead if local else 0.0),
            per_request=crossing / edge_rate if edge_rate > 0 else None,
            estimated=estimated or (local and calls > 0),
            verdict=_verdict(local, calls, crossing) if rates.replicas else "no data"))
    pairs.sort(key=lambda p: (-p["crossing"], -p["calls"], p["services"]))
    notes = list(rates.notes)
    if not rates.replicas:
        notes.append("no replica gave two snapshots some time apart: no advice")
    return Advice(
        interval=span, overhead=overhead, overhead_source="measured" if measured else "default",
        thresholds={"co_locate_cores": CO_LOCATE_CORES, "split_cores": SPLIT_CORES,
                    "split_calls": SPLIT_CALLS},
        pairs=pairs, recommendations=_recommend(pairs, placed, after, rates.edge), notes=notes)


def _verdict(local: bool, calls: float, crossing: float) -> Verdict:
    if local:
        return "safe to split" if crossing < SPLIT_CORES and calls < SPLIT_CALLS else "keep together"
    return "co-locate" if crossing >= CO_LOCATE_CORES else "fine apart"


def _recommend(pairs: list[PairAdvice], placed: dict[str, str], cluster: ClusterSnapshot,
               edge: dict[str, float]) -> list[Recommendation]:
    private = {p["name"]: p["private"] for p in cluster["processes"]}
    hosted: dict[str, list[str]] = {}
    for svc, proc in placed.items():
        if not is_edge(svc):
            hosted.setdefault(proc, []).append(svc)
    by_pair = {tuple(p["services"]): p for p in pairs}

    def crossing(x: str, y: str) -> float:
        p = by_pair.get((x, y) if x < y else (y, x))
        return p["crossing"] if p is not None else 0.0

    def move_gain(svc: str, into: str) -> float:
        """Cores saved by moving ``svc`` into ``into``, over all its pairs."""
        gain = 0.0
        for other, proc in placed.items():
            if other == svc:
                continue
            if proc == into:
                gain += crossing(svc, other)
            elif proc == placed[svc]:
                gain -= crossing(svc, other)
        return gain

    def traffic(svc: str) -> float:
        return sum(p["calls"] for p in pairs if svc in p["services"])

    recs: list[Recommendation] = []
    for p in pairs:
        a, b = p["services"]
        if p["verdict"] == "co-locate":
            def rank(svc: str, into: str) -> tuple[bool, float, bool, str]:
                # Never strand a service the public edge reaches inside a private process.
                exposed = bool(private.get(into)) and edge.get(svc, 0.0) > 0
                return (not exposed, round(move_gain(svc, into), 9), len(hosted[placed[svc]]) == 1, svc)

            # An edge stays with its listener: the service moves to it.
            moves = [(x, placed[y]) for x, y in ((a, b), (b, a)) if not is_edge(x)]
            move, into = max(moves, key=lambda m: rank(*m))
            saved = move_gain(move, into)
            text = (f"co-locate {a} and {b}: move {move} into process {into!r} — saves "
                    f"≈ {cores(saved)} cores, {human_bytes(p['bytes'])}/s across processes")
            if p["per_request"]:
                text += f", {seconds(p['per_request'])} per request"
            recs.append(Recommendation(action="co-locate", services=[a, b], move=move, into=into,
                                       cores=saved, bytes=p["bytes"], per_request=p["per_request"],
                                       text=text))
        elif p["verdict"] == "safe to split":
            # Move out whichever service costs less to take out of the process,
            # then the one with less traffic overall.
            move = min((s for s in (a, b) if not is_edge(s)),
                       key=lambda s: (round(-move_gain(s, ""), 9), traffic(s), s))
            cost = p["crossing"]
            text = (f"safe to split {a} and {b}: move {move} out of process {placed[move]!r} "
                    f"into one of its own — costs {cores(cost)} cores, "
                    f"{human_bytes(p['bytes'])}/s, {rate(p['calls'])} calls/s")
            recs.append(Recommendation(action="split", services=[a, b], move=move, into="",
                                       cores=cost, bytes=p["bytes"], per_request=p["per_request"],
                                       text=text))
    recs.sort(key=lambda r: (r["action"] != "co-locate", -r["cores"] if r["action"] == "co-locate"
                             else r["cores"], r["services"]))
    return recs


def render(advice: Advice) -> str:
    """The advice as text: the pairs' table, then the recommendations."""
    src = ("measured on remote calls" if advice["overhead_source"] == "measured"
           else "default: no remote call was measured")
    out = [f"placement advice over {advice['interval']:.1f}s "
           f"(crossing overhead {seconds(advice['overhead'])} per call, {src})", ""]
    rows = [[" <> ".join(p["services"]), p["placement"], rate(p["calls"]),
             human_bytes(p["bytes"]) + "/s", cores(p["crossing"]) + ("*" if p["estimated"] else ""),
             seconds(p["per_call"]) if p["calls"] else "-", p["verdict"]] for p in advice["pairs"]]
    out.append(table(["PAIR", "NOW", "CALLS/S", "BYTES/S", "CORES", "PER CALL", "VERDICT"], rows,
                     right=(2, 3, 4, 5)))
    if any(p["estimated"] for p in advice["pairs"]):
        out.append("* estimated: local pairs show what crossing would cost once split")
    out.append("")
    if advice["recommendations"]:
        out.append("recommendations (each on its own, best first):")
        out += [f"  {i}. {r['text']}" for i, r in enumerate(advice["recommendations"], 1)]
    else:
        out.append("recommendations: none; the placement fits the traffic")
    out += [f"note: {n}" for n in advice["notes"]]
    return "\n".join(out) + "\n"


class Advisor:
    """Advice over a sliding window, for a server answering repeated requests:
    :meth:`observe` keeps recent cluster snapshots and compares the newest with
    the most recent one at least ``window`` seconds older (or the oldest kept)."""

    def __init__(self, window: float = 10.0, keep: int = 64):
        self.window = window
        self.keep = keep
        self.history: list[ClusterSnapshot] = []

    def __repr__(self) -> str:
        return f"<Advisor window={self.window}s kept={len(self.history)}>"

    def observe(self, cluster: ClusterSnapshot) -> Advice | None:
        """Record ``cluster``; the advice since a baseline, None on the first call."""
        now = cluster["now"]
        base = next((c for c in reversed(self.history) if now - c["now"] >= self.window),
                    self.history[0] if self.history else None)
        self.history.append(cluster)
        # Drop what can no longer be a baseline: older than the newest one that is.
        while len(self.history) > 1 and (now - self.history[1]["now"] >= self.window
                                         or len(self.history) > self.keep):
            self.history.pop(0)
        return advise(base, cluster) if base is not None and now > base["now"] else None
