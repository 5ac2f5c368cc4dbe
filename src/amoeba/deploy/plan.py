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

from amoeba.topology import Problem, Settings, Topology, TopologyError
from amoeba.topology.check import find_cycle
from amoeba.topology.deploy import DeploySpec, ProcessDeploy

if TYPE_CHECKING:
    from amoeba.app import App

__all__ = ["EdgeRoute", "Plan", "Port", "Resource", "Unit", "Upstream", "build_plan", "route_regex"]

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

    def __repr__(self) -> str:
        return f"<Upstream {self.name} {list(self.servers)}>"


@dataclass(frozen=True)
class EdgeRoute:
    """A route the edge sends to an upstream other than the default one."""

    path: str  # as declared: /api/orders/{order_id}
    upstream: str

    @property
    def exact(self) -> bool:
        return "{" not in self.path

    @property
    def prefix(self) -> str:
        """The static segments before the first parameter (Kubernetes ``Prefix`` paths)."""
        return self.path.split("{", 1)[0].rstrip("/") or "/"


def route_regex(path: str) -> str:
    """``/api/orders/{id}`` -> ``^/api/orders/[^/]+$`` (a parameter is one segment)."""
    parts = re.split(r"\{[A-Za-z_][A-Za-z0-9_]*\}", path)
    return "^" + "[^/]+".join(re.escape(p).replace("\\/", "/") for p in parts) + "$"


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
    pip_install: str  # what the Dockerfile installs
    project_files: tuple[str, ...] = ()  # files of the context the image installs from
    extras: tuple[str, ...] = field(default=())

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


def _fail(topo: Topology, key: str, message: str, fix: str) -> TopologyError:
    return TopologyError([Problem(topo.file, topo.lines.get(key), key, message, fix)])


def _edge(topo: Topology, app: App, units: dict[str, Unit]) -> tuple[list[Upstream], list[EdgeRoute]]:
    upstreams: list[Upstream] = []
    served: list[tuple[str, list[str]]] = []
    for proc in topo.processes.values():
        public = [lst for lst in proc.listeners if lst.public]
        for lst in public:
            if lst.port == 0:
                raise _fail(topo, f"{lst.key}.port", "port 0 (any free port) cannot be put behind "
                            "a load balancer", "give the public listener a fixed port")
            name = proc.name if len(public) == 1 else f"{proc.name}-{lst.port}"
            host = proc.address or ("127.0.0.1" if lst.host in ("0.0.0.0", "::", "") else lst.host)
            upstreams.append(Upstream(name, proc.name, units[proc.name].name, lst.port,
                                      tuple((host, lst.port_for(i)) for i in range(proc.replicas))))
            paths = []
            for s in (proc.services if lst.routes is None else lst.routes):
                for m in app.specs[s].methods.values():
                    if m.route is not None and m.route.path not in paths:
                        paths.append(m.route.path)
            served.append((name, paths))
    routes: list[EdgeRoute] = []
    if served:
        taken = set(served[0][1])
        for name, paths in served[1:]:
            for p in paths:
                if p not in taken:
                    taken.add(p)
                    routes.append(EdgeRoute(p, name))
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
        entry["listeners"] = listeners
        procs[proc.name] = entry
    doc["processes"] = procs
    return dump_yaml(doc)


def build_plan(topo: Topology, app: App, raw: dict[str, Any], *, source: str,
               context: str = ".", out_in_context: str = ".",
               pythonpath: tuple[str, ...] = (), project: str | None = None,
               project_files: tuple[str, ...] = ()) -> Plan:
    """``raw``: the topology file's YAML before expansion.  ``context``: the
    build context (project root) relative to the output directory;
    ``out_in_context`` the reverse; ``pythonpath``: the topology's pythonpath
    relative to the context; ``project``: the context's pyproject name and
    ``project_files`` what of it to copy before ``pip install`` (pyproject.toml, ...)."""
    from amoeba.auth.tokens import Tokens

    dep = topo.deploy
    calls = _calls(topo, app)
    names = list(topo.processes)
    order = _start_order(names, calls)
    callers = {n: sorted((m for m in names if n in calls[m]), key=names.index) for n in names}
    units: dict[str, Unit] = {}
    for proc in topo.processes.values():
        ports = tuple(Port("http" if i == 0 else f"http-{lst.port}", lst.port, lst.public)
                      for i, lst in enumerate(proc.listeners))
        rpc = proc.rpc_listener()
        units[proc.name] = Unit(
            proc.name, dns_name(app.name, proc.name), proc.services, proc.replicas, proc.private,
            ports, rpc.port if rpc else ports[0].number, tuple(callers[proc.name]),
            tuple(sorted(calls[proc.name], key=names.index)), dep.process(proc.name))
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
    extras = tuple(sorted({r.infra for r in resources if r.infra}))
    amoeba_req = f"amoeba[{','.join(extras)}]" if extras else "amoeba"
    if project == "amoeba":
        pip = f'".[{",".join(extras)}]"' if extras else "."
    elif project is not None:
        pip = f'. "{amoeba_req}"'
    else:
        pip = f'"{amoeba_req}"'
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
        pip_install=pip, project_files=project_files, extras=extras,
    )
