"""The topology as frozen records.  No I/O here."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from amoeba.topology.deploy import DeploySpec

__all__ = ["Listener", "Problem", "Process", "Settings", "Topology", "TopologyError"]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a topology, said where it is and how to fix it."""

    file: str
    line: int | None
    key: str
    message: str
    fix: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.key}: {self.message}\n    fix: {self.fix}"


class TopologyError(Exception):
    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@dataclass(frozen=True)
class Settings:
    deadline: float = 10.0  # seconds a call may take unless the caller's deadline is shorter
    max_body: int = 1 << 20  # bytes
    grace: float = 10.0  # seconds to finish in-flight requests on SIGTERM
    # SIGTERM: seconds to keep serving with /readyz at 503 before the listeners close: long
    # enough for a balancer's health checks to notice (generated HAProxy: 2 checks 2 s apart).
    drain_delay: float = 5.0
    connections: int = 2  # pooled RPC connections per callee replica
    connect_timeout: float = 1.0
    eject_for: float = 1.0  # first ejection of a failing replica; doubles up to 30 s
    # What a listener allows one client (gateway/connections.py says why each default).
    max_header_line: int = 8 << 10  # bytes of the request line or one header line: else 414/431
    max_header_size: int = 64 << 10  # bytes of the whole request head: else 431
    max_headers: int = 100  # header lines in one request: else 431
    header_timeout: float = 10.0  # a request head (or the RPC hello) must arrive within this: else 408
    body_timeout: float = 15.0  # longest stall of an upload, or of a client reading answers
    keepalive_timeout: float = 5.0  # an idle keep-alive connection is closed after this
    max_connections: int = 0  # per listener; 0: auto, from the open-files limit
    extra: dict[str, Any] = field(default_factory=dict)  # app-specific settings


@dataclass(frozen=True)
class Listener:
    port: int
    host: str
    public: bool
    # Services whose HTTP routes this listener serves; None: the process's own.
    routes: tuple[str, ...] | None
    key: str  # where it was declared, for messages: "processes.vacancy.listeners[0]"
    line: int | None = None

    def port_for(self, replica: int) -> int:
        # Replicas on one host listen on consecutive ports; on separate hosts
        # (Kubernetes pods) every replica keeps the base port.
        return self.port + replica if self.port else 0

    def __repr__(self) -> str:
        vis = "public" if self.public else "private"
        return f"<Listener {self.host}:{self.port} {vis}>"


@dataclass(frozen=True)
class Process:
    name: str
    services: tuple[str, ...]  # "*" already expanded once bound to an app
    replicas: int
    listeners: tuple[Listener, ...]
    private: bool
    address: str | None  # host other processes use to reach it; default from the listener
    env: dict[str, str]
    line: int | None = None

    def rpc_listener(self) -> Listener | None:
        """The listener other processes call: the first private one, else the first."""
        for lst in self.listeners:
            if not lst.public:
                return lst
        return self.listeners[0] if self.listeners else None

    def rpc_addresses(self) -> list[tuple[str, int]]:
        lst = self.rpc_listener()
        if lst is None:
            return []
        host = self.address or ("127.0.0.1" if lst.host in ("0.0.0.0", "::", "") else lst.host)
        return [(host, lst.port_for(i)) for i in range(self.replicas)]

    def __repr__(self) -> str:
        return f"<Process {self.name} services={list(self.services)} replicas={self.replicas}>"


@dataclass(frozen=True)
class Topology:
    name: str
    file: str
    app: str | None  # "module:attribute"
    pythonpath: tuple[Path, ...]
    processes: dict[str, Process]
    resources: dict[str, str]
    settings: Settings
    deploy: DeploySpec = field(default_factory=DeploySpec)  # only ``amoeba deploy`` reads it
    lines: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    def process_of(self, service: str) -> Process | None:
        for proc in self.processes.values():
            if service in proc.services:
                return proc
        return None

    def with_processes(self, processes: dict[str, Process]) -> Topology:
        return replace(self, processes=processes)

    def __repr__(self) -> str:
        return f"<Topology {self.name!r} from {self.file} processes={list(self.processes)}>"
