"""``Plan``: what runs where, built once from a bound topology and its app.

Pure data, no I/O: every renderer reads only a ``Plan``.  Values come from
the topology as loaded (ports, replicas, sizes) and from the file's own text
(``raw``: the YAML before ``${VAR}`` expansion) wherever a value could be a
secret or should stay configurable in the container: a resource URL becomes
a reference to its variable, never the value the environment held while
rendering.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from amoeba.deploy.install import Install, Project, extra_for_url, install_for
from amoeba.topology import Problem, Settings, Topology, TopologyError
from amoeba.topology.check import find_cycle
from amoeba.topology.deploy import DEFAULT_EDGE_PORT, DeploySpec, ProcessDeploy

if TYPE_CHECKING:
    from amoeba.app import App

__all__ = ["EdgeRoute", "Plan", "Port", "Resource", "Unit", "Upstream", "build_plan",
           "edge_port_conflict", "edge_warnings", "embedded_data", "per_pod_problems", "route_regex"]

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_INFRA = {"postgresql": "postgres", "postgres": "postgres", "redis": "redis", "rediss": "redis",
          "nats": "nats", "kafka": "kafka"}
# Where things live inside the image: the same for compose and Kubernetes.
APP_DIR = "/app"
DATA_DIR = "/var/lib/amoeba"
TOPOLOGY_IN_IMAGE = "/etc/amoeba/topology.yaml"
KEYS_IN_K8S = "/etc/amoeba/auth/keys.json"
KEYS_VAR = "AMOEBA_AUTH_KEYS"
SECRET_VAR = "AMOEBA_SECRET"


@dataclass(frozen=True)
class Port:
    name: str  # Kubernetes port name (<= 15 characters)
    number: int  # base port: every container replica listens on it
    public: bool

    def __repr__(self) -> str:
        return f"<Port {self.name}:{self.number} {'public' if self.public else 'private'}>"


@dataclass(frozen=True)
class Unit:
    """One process of the topology, as an orchestrator sees it."""

    process: str
    name: str  # DNS label: Kubernetes Deployment/Service, compose service, systemd unit stem
    services: tuple[str, ...]
    replicas: int
    private: bool
    ports: tuple[Port, ...]
    rpc_port: int  # the port callers connect to
    callers: tuple[str, ...]  # process names that call this one
    callees: tuple[str, ...]
    sizing: ProcessDeploy
    # Services keeping data in a file of the process's data directory (SQLite):
    # on Kubernetes the directory is a persistent volume and the process one pod.
    embedded: tuple[str, ...] = ()
    # A private listener the container topology adds so Prometheus (and callers)
    # reach the process without the public port; None: it has a private one.
    metrics_listener: int | None = None
    # Where /metrics of each replica answers when the topology runs on its hosts
    # as written (amoeba run, systemd): its private listener, else its public one
    # (which answers loopback peers: Prometheus on the same host).
    local_targets: tuple[tuple[str, int], ...] = ()

    def __repr__(self) -> str:
        return f"<Unit {self.name} x{self.replicas} ports={[p.number for p in self.ports]}>"


@dataclass(frozen=True)
class Resource:
    """A resource URL of the topology, as containers receive it."""

    kind: str  # database | cache | events | ...
    var: str | None  # the variable carrying the URL; None: a file/in-memory URL kept as written
    infra: str | None  # postgres | redis | nats | kafka: a server compose can start
    default: str  # the URL written in the file (the default of ${VAR:-...}), never the env's value

    def __repr__(self) -> str:
        return f"<Resource {self.kind} via {self.var or self.default!r}>"


@dataclass(frozen=True)
class Upstream:
    """A public listener of a process: one server per replica."""

    name: str
    process: str
    unit: str
    port: int  # base port (containers)
    servers: tuple[tuple[str, int], ...]  # host, port of every replica on the topology's hosts
    bind: str = "0.0.0.0"  # the listener's host as the topology writes it
    key: str = ""  # where the listener is declared: processes.gateway.listeners[0]

    def __repr__(self) -> str:
        return f"<Upstream {self.name} {list(self.servers)}>"


@dataclass(frozen=True)
class EdgeRoute:
    """A route the edge sends to an upstream other than the default one."""

    path: str  # as declared: /api/orders/{order_id}; a mount's prefix: /api/v1
    upstream: str
    # A mounted ASGI app's prefix: the path itself and everything below it.
    mount: bool = False

    @property
    def exact(self) -> bool:
        return "{" not in self.path and not self.mount

    @property
    def prefix(self) -> str:
        """The static segments before the first parameter (Kubernetes ``Prefix`` paths)."""
        return self.path.split("{", 1)[0].rstrip("/") or "/"

    @property
    def below(self) -> str:
        """A mount's subtree, ``/api/v1/`` (its own path is matched exactly)."""
        return self.path.rstrip("/") + "/"


def route_regex(path: str) -> str:
    """``/api/orders/{id}`` -> ``^/api/orders/[^/]+$`` (a parameter is one segment)."""
    parts = re.split(r"\{[A-Za-z_][A-Za-z0-9_]*\}", path)
    return "^" + "[^/]+".join(re.escape(p).replace("\\/", "/") for p in parts) + "$"


@dataclass(frozen=True)
class AppMetricDecl:
    """A metric the application declared, as the monitoring files need it."""

    name: str
    kind: str  # "counter" | "gauge" | "histogram"
    help: str
    labels: tuple[str, ...]


def app_metrics(app: App) -> tuple[AppMetricDecl, ...]:
    """The metrics declared in the app's own modules (imported with the app)."""
    from amoeba.observe.instruments import declared_by

    packages = {spec.cls.__module__.partition(".")[0] for spec in app.specs.values()}
    packages.add(app.module.partition(".")[0])
    return tuple(AppMetricDecl(i.name, i.kind, i.help, i.label_names) for i in declared_by(packages))


@dataclass(frozen=True)
class Plan:
    source: str  # the topology path as given on the command line
    topology: str
    app: str
    image: str
    namespace: str
    secret: str  # name of the Secret / env file holding the secret variables
    auth_secret: str | None  # Secret holding the JWT key file; None: no service uses auth
    units: tuple[Unit, ...]  # start order: callees before callers
    acyclic: bool  # False: processes call each other in a cycle, no start order between them
    resources: tuple[Resource, ...]
    secrets: tuple[str, ...]  # variables whose values only the operator has
    config: dict[str, str]  # variables with a default in the file: non-secret configuration
    upstreams: tuple[Upstream, ...]
    routes: tuple[EdgeRoute, ...]  # every other path goes to upstreams[0]
    settings: Settings
    deploy: DeploySpec
    context: str  # build context (project root) relative to the output directory
    out_in_context: str  # the output directory relative to the build context
    pythonpath: tuple[str, ...]  # relative to the build context
    container_topology: str  # the topology containers run (YAML, without header)
    install: Install  # what the Dockerfile copies before pip install, and installs
    extras: tuple[str, ...] = field(default=())
    # What an orchestrator giving every replica its own file system (Kubernetes)
    # must refuse: replicated per-process data files.  See per_pod_problems().
    per_pod: tuple[Problem, ...] = ()
    trusted_proxies: tuple[str, ...] = ()  # settings.trusted_proxies as written
    metrics: tuple[AppMetricDecl, ...] = ()  # the app's own (amoeba.Counter, Gauge, Histogram)

    def __repr__(self) -> str:
        return f"<Plan {self.app}/{self.topology} units={[u.name for u in self.units]}>"

    def header(self, target: str, comment: str = "#") -> str:
        return (f"{comment} Generated by amoeba deploy {target} from {self.source} "
                f"(topology \"{self.topology}\", app \"{self.app}\").\n"
                f"{comment} Do not edit: change the topology and run amoeba deploy {target} again "
                f"(--check tells when this file is stale).\n")

    @property
    def base(self) -> str:
        """The app's name as a DNS label: the stem of every object's name."""
        return dns_name(self.app)

    def unit(self, process: str) -> Unit:
        return next(u for u in self.units if u.process == process)

    @property
    def infra(self) -> tuple[str, ...]:
        return tuple(sorted({r.infra for r in self.resources if r.infra}))

    # Seconds: the pause before SIGTERM so load balancers stop sending first,
    # then the process's own drain (drain_delay, then grace for in-flight work).
    @property
    def stop_seconds(self) -> int:
        return math.ceil(self.settings.drain_delay + self.settings.grace)

    @property
    def read_timeout(self) -> int:
        return math.ceil(self.settings.deadline) + 5

    @property
    def connect_timeout_ms(self) -> int:
        return max(100, round(self.settings.connect_timeout * 1000))


def dns_name(*parts: str) -> str:
    name = "-".join(parts).lower().replace("_", "-")
    return re.sub(r"[^a-z0-9-]", "-", name).strip("-")[:63].rstrip("-")


def _vars(value: Any) -> Iterator[tuple[str, str | None]]:
    if isinstance(value, str):
        for m in _VAR.finditer(value):
            yield m.group(1), m.group(2)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _vars(v)
    elif isinstance(value, list):
        for v in value:
            yield from _vars(v)


def _resource(kind: str, raw: Any, loaded: str) -> Resource:
    text = raw if isinstance(raw, str) else loaded
    m = _VAR.fullmatch(text.strip())
    default = (m.group(2) or "") if m else text
    scheme = (default or loaded).split("://", 1)[0].split("+", 1)[0].lower()
    infra = _INFRA.get(scheme)
    if m:
        return Resource(kind, m.group(1), infra, default)
    # A URL written out in the file: a network one still travels by variable, so
    # the container can be pointed elsewhere; a file/in-memory one is kept.
    return Resource(kind, f"AMOEBA_{kind.upper()}_URL" if infra else None, infra, default)


def _calls(topo: Topology, app: App) -> dict[str, set[str]]:
    """Process -> the processes it calls: its services' dependencies, and the
    services a public listener of it publishes from elsewhere (``routes:``)."""
    calls: dict[str, set[str]] = {p: set() for p in topo.processes}
    for proc in topo.processes.values():
        wanted = {d for s in proc.services for d in app.specs[s].dependencies.values()}
        for lst in proc.listeners:
            wanted.update(lst.routes or ())
        for s in wanted:
            owner = topo.process_of(s)
            if owner is not None and owner.name != proc.name:
                calls[proc.name].add(owner.name)
    return calls


def _start_order(names: list[str], calls: dict[str, set[str]]) -> list[str]:
    order: list[str] = []

    def visit(n: str, path: set[str]) -> None:
        if n in order or n in path:
            return
        for c in sorted(calls[n], key=names.index):
            visit(c, path | {n})
        order.append(n)

    for n in names:
        visit(n, set())
    return order


def embedded_data(topo: Topology, app: App) -> dict[str, tuple[str, ...]]:
    """Process -> its services that keep data in a file of the process's data
    directory: a ``SQLite`` resource, or a ``Database`` without a server URL."""
    url = topo.resources.get("database")
    db_is_file = url is None or url.split(":", 1)[0].split("+", 1)[0].lower() == "sqlite"
    out: dict[str, tuple[str, ...]] = {}
    for proc in topo.processes.values():
        found = tuple(s for s in proc.services
                      if any(getattr(r, "kind", None) == "sqlite"
                             or (getattr(r, "kind", None) == "database" and db_is_file)
                             for r in app.specs[s].resources.values()))
        if found:
            out[proc.name] = found
    return out


def per_pod_problems(topo: Topology, app: App) -> list[Problem]:
    """Replicas of a process whose data is a file, where each replica has its
    own file system (Kubernetes pods): each would keep its own copy of the data
    (two stocks, two sets of accounts).  On one host (``amoeba run``, systemd,
    compose's shared volume) the replicas share the file and SQLite's locks."""
    problems: list[Problem] = []
    for name, services in embedded_data(topo, app).items():
        proc = topo.processes[name]
        what = (f"service(s) {', '.join(services)} keep their data in a SQLite file of the "
                f"process; each Kubernetes pod has its own file system, so every replica would "
                f"keep its own copy of the data (two stocks, two sets of accounts)")
        fix = ("replicas: 1 (the data directory is a persistent volume), or give "
               "resources.database a PostgreSQL/MySQL URL so replicas share one database"
               if all(_db_kind(app, s) == "database" for s in services) else
               "replicas: 1 (the data directory is a persistent volume); a SQLite resource is "
               "one file: move the data to a Database resource on PostgreSQL to replicate")
        key = f"processes.{name}.replicas"
        if proc.replicas > 1:
            problems.append(Problem(topo.file, topo.lines.get(key) or proc.line, key,
                                    f"{proc.replicas} replicas, but {what}", fix))
        auto = topo.deploy.process(name).autoscale
        if auto is not None and auto.max > 1:
            akey = f"deploy.processes.{name}.autoscale.max"
            problems.append(Problem(topo.file, topo.lines.get(akey), akey,
                                    f"autoscaling to {auto.max} pods, but {what}",
                                    "remove autoscale (or max: 1), " + fix.split(", or ", 1)[-1]))
    return problems


def _db_kind(app: App, service: str) -> str:
    kinds = {getattr(r, "kind", None) for r in app.specs[service].resources.values()}
    return "sqlite" if "sqlite" in kinds else "database"


def edge_warnings(plan: Plan) -> list[str]:
    """What leaves a generated nginx/HAProxy edge bypassable or blind to the
    client's address, each with its fix (printed by ``amoeba deploy``, written
    into the files' headers)."""
    import ipaddress

    out: list[str] = []
    for u in plan.upstreams:
        if u.bind not in ("127.0.0.1", "::1", "localhost"):
            out.append(f"{u.key}.host is {u.bind!r}: clients can reach the gateway on port "
                       f"{u.port} without the edge (its deny rules, body limit and request ids); "
                       f"fix: host: 127.0.0.1 on that listener when the edge runs on the same host")
    edge = ipaddress.ip_address("127.0.0.1")
    trusted = []
    for p in plan.trusted_proxies:
        try:
            trusted.append(ipaddress.ip_network(p, strict=False))
        except ValueError:
            continue
    if plan.upstreams and not any(edge in net for net in trusted):
        out.append("settings.trusted_proxies does not include 127.0.0.1: the gateway sees every "
                   "client as the edge's address, so all clients share one rate-limit bucket and "
                   "access logs name the edge; fix: settings: {trusted_proxies: [127.0.0.1/32]}")
    return out


def edge_port_conflict(plan: Plan, edge: str) -> None:
    """An edge on the same host cannot listen where a replica does."""
    taken = {p for u in plan.upstreams for _, p in u.servers}
    taken |= {p.number for u in plan.units for p in u.ports if p.name != "metrics"}
    if plan.deploy.edge_port in taken:
        raise ValueError(f"{plan.source}: deploy.edge.port {plan.deploy.edge_port} is also a port of "
                         f"a process; {edge} could not listen on it; fix: deploy: {{edge: {{port: "
                         f"N}}}} with N a free port (default {DEFAULT_EDGE_PORT})")


def _fail(topo: Topology, key: str, message: str, fix: str) -> TopologyError:
    return TopologyError([Problem(topo.file, topo.lines.get(key), key, message, fix)])


def _edge(topo: Topology, app: App, units: dict[str, Unit]) -> tuple[list[Upstream], list[EdgeRoute]]:
    upstreams: list[Upstream] = []
    served: list[tuple[str, list[str], list[str]]] = []
    for proc in topo.processes.values():
        public = [lst for lst in proc.listeners if lst.public]
        for lst in public:
            if lst.port == 0:
                raise _fail(topo, f"{lst.key}.port", "port 0 (any free port) cannot be put behind "
                            "a load balancer", "give the public listener a fixed port")
            name = proc.name if len(public) == 1 else f"{proc.name}-{lst.port}"
            host = proc.address or ("127.0.0.1" if lst.host in ("0.0.0.0", "::", "") else lst.host)
            upstreams.append(Upstream(name, proc.name, units[proc.name].name, lst.port,
                                      tuple((host, lst.port_for(i)) for i in range(proc.replicas)),
                                      lst.host, lst.key))
            paths: list[str] = []
            prefixes: list[str] = []  # mounted ASGI apps' path prefixes
            for s in (proc.services if lst.routes is None else lst.routes):
                for m in app.specs[s].methods.values():
                    if m.route is not None and m.route.path not in paths:
                        paths.append(m.route.path)
                for mount in app.specs[s].mounts:
                    prefixes.extend(p for p in mount.prefixes if p not in prefixes)
            served.append((name, paths, prefixes))
    routes: list[EdgeRoute] = []
    if served:
        taken = set(served[0][1])
        mounted = set(served[0][2])
        for name, paths, prefixes in served[1:]:
            for p in paths:
                if p not in taken:
                    taken.add(p)
                    routes.append(EdgeRoute(p, name))
            for p in prefixes:
                if p not in mounted and p != "/":  # "/" is the default upstream's anyway
                    mounted.add(p)
                    routes.append(EdgeRoute(p, name, mount=True))
    return upstreams, routes


def _container_topology(topo: Topology, raw: dict[str, Any], units: dict[str, Unit],
                        resources: list[Resource], pythonpath: list[str],
                        auth_secret: str | None) -> str:
    from amoeba.deploy.document import dump_yaml

    settings = dict(raw.get("settings") or {})
    if auth_secret is not None:
        auth = dict(settings.get("auth") or {})
        auth["keys"] = f"${{{KEYS_VAR}:-{DATA_DIR}/.auth-keys.json}}"
        settings["auth"] = auth
    doc: dict[str, Any] = {"name": topo.name, "app": topo.app,
                           "pythonpath": [f"{APP_DIR}/{p}".rstrip("/.") for p in pythonpath]}
    if settings:
        doc["settings"] = settings
    res = {r.kind: f"${{{r.var}}}" if r.var else r.default for r in resources}
    if res:
        doc["resources"] = res
    procs: dict[str, Any] = {}
    raw_procs = raw.get("processes") or {}
    for proc in topo.processes.values():
        unit = units[proc.name]
        entry: dict[str, Any] = {"services": list(proc.services)}
        if proc.private:
            entry["private"] = True
        entry["address"] = unit.name
        env = (raw_procs.get(proc.name) or {}).get("env")
        if env:
            entry["env"] = env
        listeners = []
        for lst in proc.listeners:
            item: dict[str, Any] = {"port": lst.port, "host": "0.0.0.0", "public": lst.public}
            if lst.routes is not None:
                item["routes"] = list(lst.routes)
            listeners.append(item)
        if unit.metrics_listener is not None:
            # /metrics (and calls from other processes) off the public port: the
            # NetworkPolicy admits only callers and Prometheus here.
            listeners.append({"port": unit.metrics_listener, "host": "0.0.0.0", "public": False})
        entry["listeners"] = listeners
        procs[proc.name] = entry
    doc["processes"] = procs
    return dump_yaml(doc)


def build_plan(topo: Topology, app: App, raw: dict[str, Any], *, source: str,
               context: str = ".", out_in_context: str = ".",
               pythonpath: tuple[str, ...] = (), project: Project | None = None,
               version: str | None = None) -> Plan:
    """``raw``: the topology file's YAML before expansion.  ``context``: the
    build context (project root) relative to the output directory;
    ``out_in_context`` the reverse; ``pythonpath``: the topology's pythonpath
    relative to the context; ``project``: what declares the app's dependencies
    and ``version`` the framework's, for the image's ``pip install`` (see
    :mod:`amoeba.deploy.install`)."""
    from amoeba.auth.tokens import Tokens

    dep = topo.deploy
    calls = _calls(topo, app)
    names = list(topo.processes)
    order = _start_order(names, calls)
    callers = {n: sorted((m for m in names if n in calls[m]), key=names.index) for n in names}
    units: dict[str, Unit] = {}
    embedded = embedded_data(topo, app)
    taken = {lst.port_for(i) for p in topo.processes.values() for lst in p.listeners
             for i in range(p.replicas)}
    next_metrics = dep.metrics_port
    for proc in topo.processes.values():
        ports = tuple(Port("http" if i == 0 else f"http-{lst.port}", lst.port, lst.public)
                      for i, lst in enumerate(proc.listeners))
        rpc = proc.rpc_listener()
        extra: int | None = None
        if rpc is None or rpc.public:
            # The container topology is one file checked as a whole: each process
            # gets its own port, from deploy.metrics_port up, past any listener's.
            extra = next_metrics
            while extra in taken:
                extra += 1
            if extra > 65535:
                raise _fail(topo, "deploy.metrics_port", f"no free port from {dep.metrics_port} "
                            "up for the private metrics listeners", "metrics_port: 9464")
            taken.add(extra)
            next_metrics = extra + 1
            ports += (Port("metrics", extra, False),)
        units[proc.name] = Unit(
            proc.name, dns_name(app.name, proc.name), proc.services, proc.replicas, proc.private,
            ports, extra if extra is not None else rpc.port if rpc else ports[0].number,
            tuple(callers[proc.name]), tuple(sorted(calls[proc.name], key=names.index)),
            dep.process(proc.name), embedded.get(proc.name, ()), extra,
            tuple(proc.rpc_addresses()))
    raw_resources = raw.get("resources") or {}
    resources = [_resource(k, raw_resources.get(k), v) for k, v in topo.resources.items()]
    secrets = [SECRET_VAR, *(r.var for r in resources if r.var)]
    config: dict[str, str] = {}
    raw_procs = raw.get("processes") or {}
    found = [*_vars(raw.get("settings")), *(v for p in raw_procs.values() if isinstance(p, dict)
                                           for v in _vars(p.get("env")))]
    for name, default in found:
        if name in dep.secrets or default is None:
            secrets.append(name)  # no default in the file: only the operator has a value
        elif name not in secrets:
            config.setdefault(name, default)
    secrets.extend(dep.secrets)
    secrets = list(dict.fromkeys(secrets))
    for s in secrets:
        config.pop(s, None)
    uses_auth = "auth" in topo.settings.extra or any(
        isinstance(r, type) and issubclass(r, Tokens)
        for spec in app.specs.values() for r in spec.resources.values())
    keys_given = isinstance(topo.settings.extra.get("auth"), dict) and "keys" in topo.settings.extra["auth"]
    auth_secret = dns_name(app.name, "auth-keys") if uses_auth and not keys_given else None
    upstreams, routes = _edge(topo, app, units)
    extras = tuple(sorted({e for r in resources
                           if (e := extra_for_url(r.default or topo.resources[r.kind]))}))
    return Plan(
        source=source, topology=topo.name, app=app.name,
        image=dep.image or f"amoeba-{dns_name(app.name)}:latest",
        namespace=dep.namespace or dns_name(app.name),
        secret=dep.secret or dns_name(app.name, "secrets"),
        auth_secret=auth_secret,
        units=tuple(units[n] for n in order),
        acyclic=find_cycle({n: sorted(c) for n, c in calls.items()}) is None,
        resources=tuple(resources), secrets=tuple(secrets), config=dict(sorted(config.items())),
        upstreams=tuple(upstreams), routes=tuple(routes), settings=topo.settings, deploy=dep,
        context=context, out_in_context=out_in_context, pythonpath=pythonpath,
        container_topology=_container_topology(topo, raw, units, resources, list(pythonpath),
                                               auth_secret),
        install=install_for(project, extras, version), extras=extras,
        per_pod=tuple(per_pod_problems(topo, app)),
        trusted_proxies=tuple(str(p) for p in topo.settings.extra.get("trusted_proxies") or ()),
        metrics=app_metrics(app),
    )
