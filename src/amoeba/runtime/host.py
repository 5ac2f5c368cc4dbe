"""``Host``: runs one process (one replica) of a topology.

Startup, decided once from the topology and never per call:

1. instantiate the process's services;
2. wire each dependency: the co-located instance itself (a plain ``await``,
   nothing in between), a strict stub in strict mode, or a remote stub
   backed by a :class:`ProcessClient` of the callee's process;
3. open resources and the event bus;
4. pass the start gate, if any (``amoeba run`` holds a caller here until the
   processes it calls are ready: nothing before this point calls them);
5. call ``start()`` in dependency order, deliver events;
6. import mounted ASGI apps and run their lifespan startup (a failure fails
   the start: no listener ever opens, so ``/readyz`` is never ready);
7. open listeners (HTTP and RPC share each port).

Shutdown (``drain``), what a load balancer needs to lose no request:

1. ``/readyz`` answers 503, every HTTP answer says ``connection: close``, and
   RPC clients are told to go away (they send nothing new, their calls in
   flight are still answered);
2. for ``drain_delay`` the listeners stay open and serve, so a balancer with
   active health checks (HAProxy, Kubernetes) sees the 503 and stops sending
   before anything is refused, and a keep-alive connection is closed by an
   answer rather than under a request the proxy is sending;
3. listeners close (a proxy's new connection is refused: it tries the next
   server, which is always safe), idle connections close;
4. in-flight requests finish and RPC clients hang up (up to ``grace``);
5. mounted apps' lifespan shutdown, then services ``stop()`` in reverse order.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from amoeba.app import App
from amoeba.codec import MethodCodec, codec_for
from amoeba.gateway.asgi import MountedApp, MountTable
from amoeba.gateway.connections import ConnectionLimits, ConnectionTable
from amoeba.gateway.edge import Edge, RouteHandler
from amoeba.gateway.http import HttpProtocol
from amoeba.gateway.policy import EdgePolicy
from amoeba.observe.config import ObserveSettings
from amoeba.observe.endpoints import ObserveState
from amoeba.observe.metrics import Hist, Metrics, metered_stub
from amoeba.observe.tracing import Tracer, open_tracer

if TYPE_CHECKING:
    from amoeba.events.runtime import Events
from amoeba.resource import Resource, ResourceContext
from amoeba.runtime.info import RuntimeInfo
from amoeba.service import Service
from amoeba.spec import is_protocol, protocol_members
from amoeba.topology.model import Listener, Topology
from amoeba.transport.client import ProcessClient
from amoeba.transport.credential import TokenSigner, load_secret
from amoeba.transport.server import RpcServerProtocol
from amoeba.transport.stub import remote_stub, strict_stub

__all__ = ["Host", "ListenError", "data_dir"]

log = logging.getLogger("amoeba.host")
HTTP = "http"  # the caller name of the edge's calls into services


class ListenError(OSError):
    """A listener could not bind; the message names the topology key and the fix."""


class _Closable(Protocol):
    def goaway(self) -> None: ...

    def close_if_idle(self) -> None: ...

    def abort(self) -> None: ...


def data_dir() -> Path:
    return Path(os.environ.get("AMOEBA_DATA_DIR") or ".amoeba/data")


def _start_order(app: App, local: list[str]) -> list[str]:
    """Dependencies before dependents (the topology check rejects cycles)."""
    order: list[str] = []

    def visit(name: str) -> None:
        if name in order:
            return
        for dep in app.specs[name].dependencies.values():
            if dep in local:
                visit(dep)
        order.append(name)

    for name in local:
        visit(name)
    return order


class Host:
    def __init__(self, app: App, topology: Topology, process: str, replica: int = 0, *,
                 strict: bool = False, listen: bool = True, data: Path | None = None):
        if process not in topology.processes:
            raise KeyError(f"topology {topology.file} has no process {process!r}; "
                           f"its processes are: {', '.join(topology.processes)}")
        self.app = app
        self.topology = topology
        self.process = topology.processes[process]
        if not 0 <= replica < self.process.replicas:
            raise ValueError(f"process {process!r} has {self.process.replicas} replica(s); "
                             f"--replica {replica} is out of range")
        self.replica = replica
        self.strict = strict
        self.listen = listen
        self.data_dir = data or data_dir()
        self.signer = TokenSigner(load_secret(self.data_dir))
        self.instances: dict[str, Service] = {}
        self.codecs: dict[str, dict[str, MethodCodec]] = {
            name: {m: codec_for(ms) for m, ms in spec.methods.items()}
            for name, spec in app.specs.items()
        }
        self.clients: dict[str, ProcessClient] = {}
        # What a caller in this process holds for each service: (caller, callee) -> ref;
        # the caller is a service name, or "http" for the edge of a listener.
        self.refs: dict[tuple[str, ...] | tuple[str, str, frozenset[str]], Any] = {}
        self.observe = ObserveSettings.from_settings(dict(topology.settings.extra))
        self.metrics: Metrics | None = Metrics() if self.observe.metrics else None
        self.observe_state = ObserveState()
        self.tracer: Tracer | None = None  # OpenTelemetry export, when configured
        # qualname -> (codec, bound method, served-time histogram or None)
        self.rpc_handlers: dict[str, tuple[MethodCodec, Any, Hist | None]] = {}
        self.resources: list[tuple[str, Resource]] = []
        self.edges: list[Edge] = []
        self.events: Events | None = None  # when a local service publishes or handles events
        self.policy: EdgePolicy | None = None  # built at start when a listener is public
        self.servers: list[asyncio.Server] = []
        self.tables: list[ConnectionTable] = []  # each listener's open connections
        self.connections: set[_Closable] = set()
        self.inflight = 0
        self.draining = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.started: list[Service] = []
        self.mounted: dict[str, list[MountedApp]] = {}  # service -> its mounted ASGI apps
        self._mounts_up: list[MountedApp] = []

    def __repr__(self) -> str:
        return (f"<Host {self.topology.name}/{self.process.name}[{self.replica}] "
                f"services={list(self.process.services)}>")

    def loop_time(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    # -- wiring --------------------------------------------------------------
    def _ref(self, service: str, caller: str, only: frozenset[str] | None = None) -> Any:
        """The object ``caller`` (a service here, or "http") uses for ``service``:
        the instance itself, a strict or a remote stub, metered when metrics are on.
        ``only``: a stub has just these methods (a Protocol's)."""
        key = (caller, service) if only is None else (caller, service, only)
        if key in self.refs:
            return self.refs[key]
        spec = self.app.specs[service]
        codecs = self.codecs[service]
        if only is not None:
            codecs = {m: c for m, c in codecs.items() if m in only}
        if service in self.instances:
            inst = self.instances[service]
            kind = "local"
            ref = strict_stub(spec, codecs, inst) if self.strict else inst
        else:
            client = self._client_for(service)
            kind = "remote"
            ref = remote_stub(spec, codecs, client, caller=self.process.name,
                              stats=None if self.metrics is None else (self.metrics, caller))
        if self.metrics is not None and kind == "local" and caller != HTTP:
            # Remote calls are counted by their client, the edge's calls by its route
            # metrics: only a local call needs a metering wrapper.
            ref = metered_stub(spec, codecs, ref, self.metrics, caller, kind)
        self.refs[key] = ref
        return ref

    def ref_for(self, target: Any, caller: str) -> Any:
        """What ``caller`` holds for ``target``, a Service class (or a Protocol one
        service implements): the instance here, a stub otherwise."""
        name = self.app.service_for(target)
        if name == caller and name in self.instances:
            return self.instances[name]  # a mounted app reaching its own service: itself
        only = frozenset(protocol_members(target)) if is_protocol(target) else None
        return self._ref(name, caller, only)

    async def _start_mounts(self, local: list[str]) -> None:
        for name in _start_order(self.app, local):
            for mount in self.app.specs[name].mounts:
                mounted = MountedApp(name, mount, self.ref_for)
                self.mounted.setdefault(name, []).append(mounted)
                await mounted.startup()
                self._mounts_up.append(mounted)
        if self.mounted:
            # Listeners of other processes may publish these mounts (a gateway):
            # they forward over RPC to these handlers.
            from amoeba.gateway.forward import MountServer

            for name, apps in self.mounted.items():
                self.rpc_handlers.update(MountServer(name, apps, self.replica).handlers())

    def _mount_table(self, served: tuple[str, ...] | list[str]) -> MountTable | None:
        table = MountTable()
        for svc in served:
            forwarder: Any = None
            for i, mount in enumerate(self.app.specs[svc].mounts):
                handler: Any
                if svc in self.instances:
                    handler = self.mounted[svc][i]
                else:
                    from amoeba.gateway.forward import Forwarder

                    # One per service: it serves every mount of the service over there.
                    forwarder = forwarder or Forwarder(svc, self._client_for(svc),
                                                       self.process.name)
                    handler = forwarder
                for prefix in mount.prefixes:
                    table.add(prefix, svc, handler)
        return table or None

    def _client_for(self, service: str) -> ProcessClient:
        """The pooled RPC client of the process that runs ``service``."""
        proc = self.topology.process_of(service)
        assert proc is not None, f"service {service!r} is not placed (topology not bound?)"
        client = self.clients.get(proc.name)
        if client is None:
            client = self.clients[proc.name] = ProcessClient(
                process=proc.name, addresses=proc.rpc_addresses(),
                settings=self.topology.settings, signer=self.signer,
                caller_process=self.process.name, tracer=self.tracer)
        return client

    async def start(self, gate: Callable[[], Awaitable[bool]] | None = None) -> bool:
        """Open everything and listen.  ``gate`` (``amoeba run`` holding a caller
        until its callees are ready) is awaited once the resources are open and
        before anything may call another process (``start()`` hooks, event
        handlers, listeners); when it says False nothing starts, what was opened
        is closed, and the answer is False."""
        self._loop = asyncio.get_running_loop()
        info = RuntimeInfo(self.topology.name, self.process.name, self.replica, self.data_dir,
                           dict(self.topology.settings.extra))
        if self.observe.tracing:
            self.tracer = open_tracer(self.observe.otlp_endpoint,
                                      f"{self.app.name}.{self.process.name}",
                                      {"amoeba.topology": self.topology.name,
                                       "amoeba.replica": self.replica})
        local = list(self.process.services)
        for name in local:
            inst = self.app.specs[name].cls()
            inst.runtime = info
            self.instances[name] = inst
        try:
            await self._open(local)
            if gate is not None and not await gate():
                await self.stop()
                return False
            await self._begin(local)
            await self._start_mounts(local)
        except BaseException:
            await self.stop()  # what opened before the failure is closed again
            raise
        for lst in self.process.listeners:
            served = self.process.services if lst.routes is None else lst.routes
            handlers = []
            for svc in served:
                ref = self._ref(svc, HTTP)
                kind = "local" if svc in self.instances else "remote"
                for m, codec in self.codecs[svc].items():
                    if codec.spec.route is not None:
                        if self.metrics is not None and kind == "local":
                            # A local method's calls are read from the route's histogram;
                            # a remote one's are counted by its client (with the bytes).
                            route = codec.spec.route
                            self.metrics.edge[(route.method, route.path)] = (svc, m, kind)
                        handlers.append(RouteHandler(codec, getattr(ref, m)))
            edge = Edge(self, lst, handlers, self.policy)
            try:
                edge.mounts = self._mount_table(served)
            except ValueError as exc:
                await self.stop()
                raise ValueError(f"{self.topology.file}: {lst.key}: {exc}") from None
            self.edges.append(edge)
            if self.listen:
                port = lst.port_for(self.replica)
                try:
                    table = ConnectionTable(ConnectionLimits.from_settings(
                        self.topology.settings, len(self.process.listeners)))
                    self.tables.append(table)
                    server = await self._loop.create_server(
                        lambda edge=edge, table=table: HttpProtocol(edge, table),  # type: ignore[misc]
                        lst.host, port, reuse_address=True, backlog=2048)
                except OSError as exc:
                    await self.stop()
                    raise ListenError(self._listen_problem(lst, port, exc)) from None
                self.servers.append(server)
        log.info("%s ready: %s", self, ", ".join(
            f"{'public' if e.listener.public else 'private'} http://{e.listener.host}:"
            f"{s.sockets[0].getsockname()[1]}" for e, s in zip(self.edges, self.servers,
                                                                strict=False)))
        return True

    def _listen_problem(self, lst: Listener, port: int, exc: OSError) -> str:
        """One line: which listener, what went wrong, and the fix."""
        where = f"{self.topology.file}:{lst.line}" if lst.line else self.topology.file
        addr = f"{lst.host}:{port}"
        if exc.errno == errno.EADDRINUSE:
            what = (f"{addr} is already in use (another process?); free it "
                    f"(ss -ltnp 'sport = {port}' shows who holds it) or change {lst.key}.port")
        else:
            what = (f"process {self.process.name!r} cannot listen on {addr}: "
                    f"{exc.strerror or exc}; change {lst.key}")
        return f"{where}: listener {lst.key}: {what}"

    def _resource_settings(self) -> dict[str, Any]:
        """The extra settings a resource sees; ``auth`` gets the app's name as its
        default issuer and audience, so the Tokens resource and the edge agree."""
        extra = dict(self.topology.settings.extra)
        auth = extra.get("auth")
        if auth is None or isinstance(auth, dict):
            extra["auth"] = {"issuer": self.app.name, "audience": self.app.name, **(auth or {})}
        return extra

    async def _open(self, local: list[str]) -> None:
        """Wire dependencies, open resources and the event bus: nothing here
        calls another process."""
        for name in local:
            spec = self.app.specs[name]
            inst = self.instances[name]
            for attr, dep in spec.dependencies.items():
                proto = spec.protocols.get(attr)
                only = None if proto is None else frozenset(protocol_members(proto))
                setattr(inst, attr, self._ref(dep, name, only))
            for attr, rcls in spec.resources.items():
                url = self.topology.resources.get(rcls.kind)
                ctx = ResourceContext(name, url.replace("{service}", name) if url else None,
                                      self.data_dir, dict(self.topology.settings.extra),
                                      owner=spec.cls, resources=dict(self.topology.resources))
                res = await rcls.open(ctx)
                self.resources.append((f"{name}.{attr}", res))
                setattr(inst, attr, res)
            for m, codec in self.codecs[name].items():
                served = self.metrics.served(name, m) if self.metrics is not None else None
                self.rpc_handlers[codec.spec.qualname] = (codec, getattr(inst, m), served)
        await self._open_events(local)

    async def _begin(self, local: list[str]) -> None:
        """Run ``start()`` hooks, deliver events, build the edge policy."""
        for name in _start_order(self.app, local):
            await self.instances[name].start()
            self.started.append(self.instances[name])
        if self.events is not None:
            for name in local:
                await self.events.subscribe(self.app.specs[name], self.instances[name])
            self.events.begin()
        if any(lst.public for lst in self.process.listeners):
            self.policy = EdgePolicy.from_topology(self.topology, self.app.name, self.data_dir)

    async def _open_events(self, local: list[str]) -> None:
        """The process's event bus, when one of its services publishes or handles
        events (a process without any never connects to a broker)."""
        specs = [self.app.specs[n] for n in local]
        if not any(s.publishes or s.handlers for s in specs):
            return
        from amoeba.data.database import Database
        from amoeba.events.bus import open_bus
        from amoeba.events.runtime import Events, EventSettings

        self.events = Events(open_bus(self.topology.resources.get("events"), app=self.app.name),
                             EventSettings.from_settings(dict(self.topology.settings.extra)))
        self.events.tracer = self.tracer
        await self.events.start()
        for spec in specs:
            inst = self.instances[spec.name]
            inst._amoeba_events = self.events  # type: ignore[attr-defined]
            if spec.publishes or spec.handlers:
                db = next((getattr(inst, a) for a, r in spec.resources.items()
                           if issubclass(r, Database)), None)
                await self.events.attach(spec, db)

    def bound_ports(self) -> list[int]:
        return [int(s.sockets[0].getsockname()[1]) for s in self.servers]

    async def readiness(self) -> tuple[bool, dict[str, str]]:
        """What ``/readyz`` answers: ready when the process is not draining,
        every resource says it is ready, and every process it calls (a
        dependency of a local service, or a route its listeners forward) has
        at least one replica with an open, authenticated RPC connection.

        Cheap by construction, and never on a request's path: with a live
        connection a callee costs a list check; without one, the probe tries
        to connect (one attempt shared by concurrent probes, bounded by
        ``connect_timeout``), which is also how a callee that came back is
        found without waiting for the pool's ejection backoff.  Reachable, not
        transitively ready: the callee's own ``/readyz`` speaks for its callees."""
        checks: dict[str, str] = {}
        ok = not self.draining
        if self.draining:
            checks["process"] = "draining"
        for name, res in self.resources:
            good = await res.ready()
            checks[name] = "ok" if good else "failing"
            ok = ok and good
        results = await asyncio.gather(*(c.ready() for c in self.clients.values()))
        for client, good in zip(self.clients.values(), results, strict=True):
            checks[client.process] = "reachable" if good else "unreachable"
            ok = ok and good
        return ok, checks

    async def drain(self, delay: bool = True) -> None:
        """Stop taking work, finish what is in flight (up to ``grace``), stop.
        ``delay=False`` skips ``drain_delay``: nobody is left to take over."""
        if self.draining:
            return
        self.draining = True
        settings = self.topology.settings
        for conn in list(self.connections):
            conn.goaway()
        if delay and settings.drain_delay > 0:
            await asyncio.sleep(settings.drain_delay)
        for server in self.servers:
            server.close()
        for conn in list(self.connections):
            conn.close_if_idle()
        # RPC connections are closed by their clients once the calls they sent
        # are answered: closing them here could cross a call on the wire.
        end = asyncio.get_running_loop().time() + settings.grace
        while (self.inflight or any(isinstance(c, RpcServerProtocol) for c in self.connections)
               or any(m.inflight for m in self._mounts_up)):  # a streamed answer still going
            if asyncio.get_running_loop().time() >= end:
                log.warning("%s: %d request(s) still running after %.1fs grace; stopping anyway",
                            self, self.inflight, settings.grace)
                break
            await asyncio.sleep(0.02)
        await self.stop()

    async def stop(self) -> None:
        for server in self.servers:
            server.close()
        for table in self.tables:
            table.close()
        for conn in list(self.connections):
            conn.abort()
        self.connections.clear()
        if self.events is not None:
            # Deliveries stop; running handlers get ``grace`` to finish and ack;
            # what was not acked comes again.
            await self.events.aclose(self.topology.settings.grace)
            self.events = None
        for mounted in reversed(self._mounts_up):  # the app's shutdown may still call services
            try:
                await mounted.shutdown()
            except Exception:
                log.exception("%s: lifespan shutdown failed", mounted.where)
        self._mounts_up.clear()
        for inst in reversed(self.started):
            try:
                await inst.stop()
            except Exception:
                log.exception("%s.stop() failed", inst.name)
        self.started.clear()
        for client in self.clients.values():
            await client.aclose()
        for _, res in self.resources:
            await res.aclose()
        self.resources.clear()
        if self.policy is not None:
            await self.policy.aclose()
            self.policy = None
        if self.tracer is not None:
            await asyncio.to_thread(self.tracer.shutdown)  # flush spans not yet exported
            self.tracer = None
