"""Run one test body against an app in every topology.

::

    from amoeba.testing import app_fixture
    from tickets.app import app

    tickets = app_fixture(app, env={"INITIAL_STOCK": "1000"})

    async def test_purchase(tickets):
        r = await tickets.post("/api/v1/purchase", json={"qty": 1})
        assert r.status == 200
        reservation = await tickets.service("vacancy").reserve(1)

The fixture is parametrized over three modes:

``inprocess``
    one process, calls are plain awaits, HTTP requests go straight to the
    edge in memory (no socket);
``strict``
    the same, but every call between services goes through the wire codec,
    so code that relies on sharing mutable objects fails here already;
``processes``
    one OS process per service, started with ``amoeba run`` on free ports,
    talking RPC over real sockets; HTTP requests go over TCP (httpx).
    Started once per test module (state carries over between its tests).
"""

from __future__ import annotations

import asyncio
import itertools
import json as _json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from amoeba.app import App
from amoeba.gateway.http import Request
from amoeba.gateway.router import Router
from amoeba.runtime.host import Host
from amoeba.topology.check import bind
from amoeba.topology.loader import load_topology
from amoeba.topology.model import Listener, Process, Settings, Topology
from amoeba.transport.client import ProcessClient
from amoeba.transport.credential import TokenSigner
from amoeba.transport.stub import remote_stub

__all__ = ["MODES", "Harness", "HttpResult", "app_fixture", "free_port", "monolith_topology"]

MODES = ("inprocess", "strict", "processes")


def free_port() -> int:
    """A port nothing listens on now, taken below the kernel's ephemeral range
    when it can be: a port the kernel hands out for port 0 may be given again
    to any outgoing connection (to a database, a broker) before the test's
    server binds it; a port below the range never is."""
    import random
    import socket

    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 0
    for _ in range(200 if low > 12000 else 0):
        port = random.randrange(10000, low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class HttpResult:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        return _json.loads(self.body)


@contextmanager
def _environ(env: dict[str, str]) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def monolith_topology(app: App, name: str = "test", settings: Settings | None = None) -> Topology:
    lst = Listener(0, "127.0.0.1", True, None, "processes.main.listeners[0]")
    proc = Process("main", tuple(app.specs), 1, (lst,), False, None, {})
    return Topology(name, "<test>", None, (), {"main": proc}, {}, settings or Settings())


def split_topology(app: App, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """One process per service on free ports, as a YAML-ready dict.  Events stay
    inside the process that published them (``memory://``): a test of events
    across processes runs a topology that names a broker."""
    module = app.module
    attr = next((k for k, v in vars(sys.modules[module]).items() if v is app), "app")
    return {
        "name": "processes",
        "app": f"{module}:{attr}",
        "pythonpath": [p for p in sys.path if p and Path(p).is_dir()],
        "settings": settings or {},
        "resources": {"events": "memory://"},
        "processes": {
            s: {"services": [s], "listeners": [{"port": free_port(), "host": "127.0.0.1"}]}
            for s in app.specs
        },
    }


class Harness:
    """A running app in one mode: HTTP requests and direct service calls."""

    mode: str

    async def request(self, method: str, path: str, *, json: Any = None, content: bytes | None = None,
                      headers: dict[str, str] | None = None) -> HttpResult:
        raise NotImplementedError

    def service(self, name: str) -> Any:
        """The service as a caller sees it (instance, strict stub or remote stub)."""
        raise NotImplementedError

    async def get(self, path: str, **kw: Any) -> HttpResult:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, **kw: Any) -> HttpResult:
        return await self.request("POST", path, **kw)

    async def aclose(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"<Harness {self.mode}>"


def _body(json: Any, content: bytes | None, headers: dict[str, str]) -> bytes:
    if json is not None:
        headers.setdefault("content-type", "application/json")
        return _json.dumps(json).encode()
    return content or b""


def settings_from(raw: dict[str, Any] | None) -> Settings:
    """``settings:`` as a topology file would give them (same parsing and checks)."""
    from amoeba.topology.loader import _Reader, _settings
    from amoeba.topology.model import TopologyError

    reader = _Reader("<test settings>", dict(os.environ))
    settings = _settings(reader, raw or {})
    if reader.problems:
        raise TopologyError(reader.problems)
    return settings


class InProcessHarness(Harness):
    def __init__(self, app: App, data: Path, *, strict: bool, env: dict[str, str],
                 settings: dict[str, Any] | None = None, topology: Path | None = None):
        self.mode = "strict" if strict else "inprocess"
        self.env = env
        if topology is None:
            topo, process = monolith_topology(app, self.mode, settings_from(settings)), "main"
        else:
            topo, process = _single_process(app, topology, {**os.environ, **env})
        self.host = Host(app, topo, process, strict=strict, listen=False, data=data)

    async def start(self) -> None:
        with _environ(self.env):
            await self.host.start()

    async def request(self, method: str, path: str, *, json: Any = None, content: bytes | None = None,
                      headers: dict[str, str] | None = None) -> HttpResult:
        hdrs = {k.lower(): v for k, v in (headers or {}).items()}
        body = _body(json, content, hdrs)
        path, _, query = path.partition("?")
        edge = self.host.edges[0]
        rid = edge.request_id(hdrs)
        # No checks of its own: the edge refuses what the listener would (a body
        # over max_body included).  A task of its own, as the server gives each
        # request: context stays per request.
        resp = await asyncio.get_running_loop().create_task(
            edge.handle(Request(method, path, query, hdrs, body, "127.0.0.1"), rid))
        from amoeba.gateway.asgi import AsgiResponse

        if isinstance(resp, AsgiResponse):  # a mounted app's answer: its own headers
            if resp.streaming:
                resp.body = b"".join([part async for part in resp.chunks()])
            own = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in resp.raw}
            return HttpResult(resp.status, resp.body, {**own, "x-request-id": rid,
                                                       **dict(resp.headers or ())})
        return HttpResult(resp.status, resp.body, {"x-request-id": rid,
                                                   "content-type": resp.content_type.decode(),
                                                   **dict(resp.headers or ())})

    def service(self, name: str) -> Any:
        return self.host._ref(name, "client")

    async def aclose(self) -> None:
        await self.host.stop()


def _single_process(app: App, path: Path, env: dict[str, str]) -> tuple[Topology, str]:
    """A topology file of one process, bound to ``app``: what the in-process
    modes run when the test names the app's monolith file."""
    topo = bind(load_topology(path, env), app)
    if len(topo.processes) != 1:
        raise ValueError(f"{path}: the in-process modes need a topology of one process; this one "
                         f"has {', '.join(topo.processes)} (pass it in topologies= instead)")
    return topo, next(iter(topo.processes))


def _free_run(n: int) -> int:
    """A port p such that p .. p+n-1 are all free (replica N listens on port + N)."""
    while True:
        base = free_port()
        if base + n > 65535:
            continue
        ok = True
        for port in range(base + 1, base + n):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base


class _RunGroup:
    """``amoeba run`` of one topology file, shared by a test module's tests."""

    file: Path
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None

    def wait_for(self) -> list[int]:
        """The ports whose ``/readyz`` says the app is up."""
        raise NotImplementedError

    def start(self, timeout: float = 60.0) -> None:
        if self.proc is not None:
            return
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "amoeba", "run", str(self.file)],
                env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_ready(self.wait_for(), timeout, self.proc, self.log)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None


class TopologyGroup(_RunGroup):
    """A topology file started with ``amoeba run``, every listener moved to
    free ports, ``pythonpath`` made absolute.  HTTP requests go to the public
    listener that serves the most routes (the gateway), spread over its
    replicas; ``service()`` calls over RPC like any other process would."""

    def __init__(self, app: App, name: str, path: Path, env: dict[str, str]):
        self.app = app
        self.name = name
        self.dir = Path(tempfile.mkdtemp(prefix=f"amoeba-{name}-"))
        raw = yaml.safe_load(path.read_text())
        pp = raw.get("pythonpath") or []
        raw["pythonpath"] = [str((path.parent / p).resolve()) for p in ([pp] if isinstance(pp, str) else pp)]
        for pdata in raw["processes"].values():
            try:
                replicas = int(pdata.get("replicas", 1))
            except (TypeError, ValueError):
                replicas = 1
            for lst in pdata.get("listeners") or []:
                lst["port"] = _free_run(replicas)
        self.file = self.dir / path.name
        self.file.write_text(yaml.safe_dump(raw, sort_keys=False))
        self.secret = secrets.token_hex(16)
        self.env = {**os.environ, **env, "AMOEBA_SECRET": self.secret,
                    "AMOEBA_DATA_DIR": str(self.dir / "data")}
        self.topo = bind(load_topology(self.file, self.env), app)
        self.log = self.dir / "output.log"
        self.proc: subprocess.Popen[bytes] | None = None
        entry: tuple[int, list[int]] | None = None
        for proc in self.topo.processes.values():
            for lst in proc.listeners:
                if lst.public:
                    served = proc.services if lst.routes is None else lst.routes
                    n = sum(1 for s in served for m in app.specs[s].methods.values() if m.route)
                    if entry is None or n > entry[0]:
                        entry = (n, [lst.port_for(i) for i in range(proc.replicas)])
        if entry is None:
            raise ValueError(f"{path}: no public listener to send test requests to")
        self.entry = entry[1]
        self._next = itertools.count()

    def all_ports(self) -> list[int]:
        return [lst.port_for(i) for proc in self.topo.processes.values()
                for lst in proc.listeners for i in range(proc.replicas)]

    def wait_for(self) -> list[int]:
        return self.all_ports()

    def url(self) -> str:
        return f"http://127.0.0.1:{self.entry[next(self._next) % len(self.entry)]}"


class ProcessGroup(_RunGroup):
    """Every service in its own OS process, started with ``amoeba run``."""

    def __init__(self, app: App, env: dict[str, str], settings: dict[str, Any] | None = None):
        self.app = app
        self.dir = Path(tempfile.mkdtemp(prefix="amoeba-test-"))
        self.topo = split_topology(app, settings)
        self.file = self.dir / "topology.yaml"
        self.file.write_text(yaml.safe_dump(self.topo, sort_keys=False))
        self.secret = secrets.token_hex(16)
        self.env = {**os.environ, **env, "AMOEBA_SECRET": self.secret,
                    "AMOEBA_DATA_DIR": str(self.dir / "data"),
                    "PYTHONPATH": os.pathsep.join(self.topo["pythonpath"])}
        self.log = self.dir / "output.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.router: Router[int] = Router()
        self.mounts: list[tuple[str, int]] = []  # a mounted ASGI app's prefixes, longest first
        for s, pdata in self.topo["processes"].items():
            port = pdata["listeners"][0]["port"]
            for m in app.specs[s].methods.values():
                if m.route is not None:
                    # By path alone: a wrong method must reach the owner to get its 405.
                    self.router.add("ANY", m.route.path, port)
            for mount in app.specs[s].mounts:
                self.mounts.extend((prefix, port) for prefix in mount.prefixes)
        self.mounts.sort(key=lambda e: -len(e[0]))

    def ports(self) -> dict[str, int]:
        return {s: p["listeners"][0]["port"] for s, p in self.topo["processes"].items()}

    def wait_for(self) -> list[int]:
        return list(self.ports().values())


def wait_ready(ports: list[int], timeout: float, proc: subprocess.Popen[bytes] | None = None,
               log: Path | None = None) -> None:
    """Wait until every port answers ``/readyz`` with 200."""
    import httpx

    end = time.monotonic() + timeout
    pending = list(ports)
    while pending:
        if proc is not None and proc.poll() is not None:
            out = log.read_text() if log else ""
            raise RuntimeError(f"amoeba run exited with {proc.returncode}:\n{out}")
        try:
            if httpx.get(f"http://127.0.0.1:{pending[0]}/readyz", timeout=1.0).status_code == 200:
                pending.pop(0)
                continue
        except httpx.HTTPError:
            pass
        if time.monotonic() > end:
            out = log.read_text() if log else ""
            raise TimeoutError(f"ports {pending} not ready after {timeout}s:\n{out}")
        time.sleep(0.05)


class _SocketHarness(Harness):
    """Requests over TCP (httpx) and service calls over RPC, as any client
    of a running topology would make them."""

    def __init__(self, app: App, secret: str):
        import httpx

        self.app = app
        self.secret = secret
        self.http = httpx.AsyncClient(timeout=30.0, limits=httpx.Limits(max_connections=200))
        self.clients: list[ProcessClient] = []
        self.stubs: dict[str, Any] = {}

    def url(self, path: str) -> str:
        raise NotImplementedError

    def addresses(self, service: str) -> tuple[str, list[tuple[str, int]]]:
        """The process hosting ``service`` and its replicas' RPC addresses."""
        raise NotImplementedError

    async def request(self, method: str, path: str, *, json: Any = None, content: bytes | None = None,
                      headers: dict[str, str] | None = None) -> HttpResult:
        hdrs = {k.lower(): v for k, v in (headers or {}).items()}
        body = _body(json, content, hdrs)
        r = await self.http.request(method, self.url(path), content=body, headers=hdrs)
        return HttpResult(r.status_code, r.content, dict(r.headers))

    def service(self, name: str) -> Any:
        if name not in self.stubs:
            from amoeba.codec import codec_for

            spec = self.app.specs[name]
            process, addresses = self.addresses(name)
            client = ProcessClient(process=process, addresses=addresses, settings=Settings(),
                                   signer=TokenSigner(self.secret.encode()), caller_process="test")
            self.clients.append(client)
            codecs = {m: codec_for(ms) for m, ms in spec.methods.items()}
            self.stubs[name] = remote_stub(spec, codecs, client, caller="test")
        return self.stubs[name]

    async def aclose(self) -> None:
        await self.http.aclose()
        for c in self.clients:
            await c.aclose()


class ProcessHarness(_SocketHarness):
    mode = "processes"

    def __init__(self, group: ProcessGroup):
        super().__init__(group.app, group.secret)
        self.group = group

    def url(self, path: str) -> str:
        bare = path.partition("?")[0]
        try:  # straight to the owner of the route (every process is public here)
            port, _ = self.group.router.match("ANY", bare)
        except Exception:
            port = next((p for prefix, p in self.group.mounts
                         if prefix == "/" or bare == prefix or bare.startswith(prefix + "/")),
                        next(iter(self.group.ports().values())))
        return f"http://127.0.0.1:{port}{path}"

    def addresses(self, service: str) -> tuple[str, list[tuple[str, int]]]:
        return service, [("127.0.0.1", self.group.ports()[service])]


class TopologyHarness(_SocketHarness):
    def __init__(self, group: TopologyGroup):
        super().__init__(group.app, group.secret)
        self.group = group
        self.mode = group.name

    def url(self, path: str) -> str:
        return self.group.url() + path

    def addresses(self, service: str) -> tuple[str, list[tuple[str, int]]]:
        proc = self.group.topo.process_of(service)
        assert proc is not None
        return proc.name, proc.rpc_addresses()


def app_fixture(app: App, *, modes: tuple[str, ...] = MODES, env: dict[str, str] | None = None,
                settings: dict[str, Any] | None = None, topology: str | Path | None = None,
                topologies: dict[str, str | Path] | None = None,
                setup: Callable[[str, Any], dict[str, str]] | None = None) -> Any:
    """A pytest fixture yielding a :class:`Harness` for each mode in ``modes``,
    then one per entry of ``topologies``.

    ``topology``: a one-process topology file the in-process modes run (its
    settings and resources) instead of a generated monolith.
    ``topologies``: name -> topology file, each started with ``amoeba run``
    on free ports once per test module.
    ``setup(mode, request)``: extra environment for a mode (a database of its
    own, say), called when that mode's app is created; it may skip the test.
    """
    import pytest
    import pytest_asyncio

    env = dict(env or {})
    files = {k: Path(v) for k, v in (topologies or {}).items()}
    one = Path(topology) if topology is not None else None
    if one is not None and settings is not None:
        raise ValueError("app_fixture: give settings= or topology=, not both (the file has settings)")
    groups: dict[tuple[str, str], ProcessGroup | TopologyGroup] = {}

    @pytest_asyncio.fixture(params=[*modes, *files])
    async def fixture(request: Any, tmp_path: Path) -> AsyncIterator[Harness]:
        mode = request.param
        harness: Harness
        key = (request.module.__name__, mode)
        if mode in files or mode == "processes":
            group = groups.get(key)
            if group is None:
                extra = {**env, **(setup(mode, request) if setup else {})}
                group = (TopologyGroup(app, mode, files[mode], extra) if mode in files
                         else ProcessGroup(app, extra, settings))
                groups[key] = group
                # Stopped with the module: a later module's apps do not share
                # the machine (or a database server's connection limit) with it.
                owner = request.node.getparent(pytest.Module) or request.session
                owner.addfinalizer(lambda g=group, k=key: (g.stop(), groups.pop(k, None)))
                group.start()
            harness = (TopologyHarness(group) if isinstance(group, TopologyGroup)
                       else ProcessHarness(group))
        else:
            extra = {**env, **(setup(mode, request) if setup else {})}
            harness = InProcessHarness(app, tmp_path / "data", strict=mode == "strict",
                                       env=extra, settings=settings, topology=one)
            await harness.start()
        try:
            yield harness
        finally:
            await harness.aclose()

    _ = pytest  # imported for the error message when pytest is missing
    return fixture
