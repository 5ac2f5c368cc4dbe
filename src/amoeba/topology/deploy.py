"""The optional ``deploy:`` section: knobs only ``amoeba deploy`` reads.

Nothing here changes how ``amoeba run`` behaves; every key has a default,
so a topology without the section renders for every target::

    deploy:
      image: registry.example.com/shop:1.4   # default: amoeba-<app>:latest
      namespace: shop                        # Kubernetes namespace; default: the app's name
      secret: shop-secrets                   # Secret (k8s) / env file (systemd); default: <app>-secrets
      secrets: [STRIPE_KEY]                  # more env vars that hold secrets (AMOEBA_SECRET and
                                             #   the variables behind resource URLs always do)
      edge:
        port: ${EDGE_PORT:-8880}             # nginx / HAProxy front port (default 8880: no
                                             #   root needed; 80 needs CAP_NET_BIND_SERVICE)
        host: shop.example.com               # Ingress host, nginx server_name; default: any
        ingress_class: nginx                 # Ingress spec.ingressClassName; default: none
        ingress_namespace: ingress-nginx     # where the ingress controller runs (NetworkPolicy)
      metrics_namespace: monitoring          # where Prometheus runs: NetworkPolicies let it scrape
                                             #   /metrics; pods carry prometheus.io/* annotations
      metrics_port: 9464                     # containers: the private listener added to a process
                                             #   that has none, so /metrics never needs a public port
      systemd:
        dir: /opt/shop                       # WorkingDirectory; holds the venv and the topology
        user: amoeba                        # User= of every unit
      processes:
        gateway:
          requests: {cpu: 100m, memory: 128Mi}
          limits: {cpu: "1", memory: 512Mi}
          autoscale: {min: 2, max: 10, cpu: 70}   # an HPA on average CPU utilisation (%)
          storage: 1Gi                       # the persistent volume of a process with SQLite data
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from amoeba.topology.loader import _Reader

__all__ = ["Autoscale", "DeploySpec", "ProcessDeploy", "read_deploy"]

_KEYS = {"image", "namespace", "secret", "secrets", "edge", "metrics_namespace", "metrics_port",
         "systemd", "processes"}
_EDGE_KEYS = {"port", "host", "ingress_class", "ingress_namespace"}
_SYSTEMD_KEYS = {"dir", "user"}
_PROC_KEYS = {"requests", "limits", "autoscale", "storage"}
_QUANTITY_KEYS = {"cpu", "memory"}
_AUTOSCALE_KEYS = {"min", "max", "cpu"}
_CPU = re.compile(r"[0-9]+(\.[0-9]+)?m?")
_MEMORY = re.compile(r"[0-9]+(Ki|Mi|Gi|Ti|K|M|G|T)?")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HOST = re.compile(r"[a-z0-9*]([-a-z0-9.]*[a-z0-9])?")

DEFAULT_REQUESTS = {"cpu": "100m", "memory": "128Mi"}
DEFAULT_LIMITS = {"cpu": "1", "memory": "512Mi"}
DEFAULT_STORAGE = "1Gi"
# An edge run by any user cannot bind a port below 1024 (see docs/deploy.md).
DEFAULT_EDGE_PORT = 8880
DEFAULT_METRICS_PORT = 9464


@dataclass(frozen=True)
class Autoscale:
    min: int
    max: int
    cpu: int  # target average CPU utilisation, percent of the request

    def __repr__(self) -> str:
        return f"<Autoscale {self.min}..{self.max} at {self.cpu}% cpu>"


@dataclass(frozen=True)
class ProcessDeploy:
    requests: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_REQUESTS))
    limits: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_LIMITS))
    autoscale: Autoscale | None = None
    storage: str = DEFAULT_STORAGE

    def __repr__(self) -> str:
        return (f"<ProcessDeploy requests={self.requests} limits={self.limits} {self.autoscale!r} "
                f"storage={self.storage}>")


@dataclass(frozen=True)
class DeploySpec:
    image: str | None = None
    namespace: str | None = None
    secret: str | None = None
    secrets: tuple[str, ...] = ()
    edge_port: int = DEFAULT_EDGE_PORT
    edge_host: str | None = None
    ingress_class: str | None = None
    ingress_namespace: str = "ingress-nginx"
    metrics_namespace: str = "monitoring"
    metrics_port: int = DEFAULT_METRICS_PORT
    systemd_dir: str | None = None
    systemd_user: str = "amoeba"
    processes: dict[str, ProcessDeploy] = field(default_factory=dict)

    def process(self, name: str) -> ProcessDeploy:
        return self.processes.get(name) or ProcessDeploy()

    def __repr__(self) -> str:
        return f"<DeploySpec image={self.image!r} namespace={self.namespace!r} edge:{self.edge_port}>"


def _mapping(r: _Reader, raw: Any, key: str, allowed: set[str], example: str,
             unknown: str = "unknown key") -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        r.problem(key, "must be a mapping", example)
        return {}
    for k in raw:
        if k not in allowed:
            r.problem(f"{key}.{k}", unknown, f"use one of: {', '.join(sorted(allowed))}")
    return raw


def _text(r: _Reader, raw: dict[str, Any], key: str, name: str, pattern: re.Pattern[str] | None,
          fix: str) -> str | None:
    v = raw.get(name)
    if v is None:
        return None
    if not isinstance(v, str) or not v or (pattern is not None and not pattern.fullmatch(v)):
        r.problem(f"{key}.{name}", f"{v!r} is not valid here", fix)
        return None
    return v


def _int(r: _Reader, raw: dict[str, Any], key: str, low: int, high: int, default: int,
         fix: str) -> int:
    v = raw.get(key.rsplit(".", 1)[-1], default)
    if isinstance(v, str) and v.strip().isdigit():
        v = int(v)
    if not isinstance(v, int) or isinstance(v, bool) or not low <= v <= high:
        r.problem(key, f"{v!r} is not a whole number from {low} to {high}", fix)
        return default
    return v


def _quantities(r: _Reader, raw: Any, key: str, default: dict[str, str]) -> dict[str, str]:
    data = _mapping(r, raw, key, _QUANTITY_KEYS, f"{key.rsplit('.', 1)[-1]}: {{cpu: 100m, memory: 128Mi}}")
    out = dict(default)
    for name, pattern, fix in (("cpu", _CPU, 'cpu: 250m (or "1" for a whole core)'),
                               ("memory", _MEMORY, "memory: 256Mi")):
        v = data.get(name)
        if v is None:
            continue
        text = str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v
        if not isinstance(text, str) or not pattern.fullmatch(text):
            r.problem(f"{key}.{name}", f"{v!r} is not a Kubernetes quantity", fix)
            continue
        out[name] = text
    return out


def _process(r: _Reader, raw: Any, key: str) -> ProcessDeploy:
    data = _mapping(r, raw, key, _PROC_KEYS, "gateway: {requests: {cpu: 100m}, autoscale: {max: 4}}")
    auto_raw = data.get("autoscale")
    autoscale = None
    if auto_raw is not None:
        akey = f"{key}.autoscale"
        auto = _mapping(r, auto_raw, akey, _AUTOSCALE_KEYS, "autoscale: {min: 2, max: 10, cpu: 70}")
        low = _int(r, auto, f"{akey}.min", 1, 1000, 1, "min: 2")
        high = _int(r, auto, f"{akey}.max", 1, 1000, max(low, 2), "max: 10")
        cpu = _int(r, auto, f"{akey}.cpu", 1, 100, 70, "cpu: 70 (percent of the cpu request)")
        if high < low:
            r.problem(f"{akey}.max", f"max {high} is below min {low}", f"max: {low} or more")
        autoscale = Autoscale(low, max(low, high), cpu)
    storage = DEFAULT_STORAGE
    raw_storage = data.get("storage")
    if raw_storage is not None:
        if isinstance(raw_storage, str) and _MEMORY.fullmatch(raw_storage):
            storage = raw_storage
        else:
            r.problem(f"{key}.storage", f"{raw_storage!r} is not a Kubernetes quantity",
                      "storage: 1Gi")
    return ProcessDeploy(
        requests=_quantities(r, data.get("requests"), f"{key}.requests", DEFAULT_REQUESTS),
        limits=_quantities(r, data.get("limits"), f"{key}.limits", DEFAULT_LIMITS),
        autoscale=autoscale, storage=storage)


def read_deploy(r: _Reader, raw: Any, processes: set[str]) -> DeploySpec:
    """The ``deploy:`` section, every problem reported through ``r`` with its line."""
    data = _mapping(r, raw, "deploy", _KEYS, "deploy: {image: myapp:1.0, edge: {port: 80}}")
    edge = _mapping(r, data.get("edge"), "deploy.edge", _EDGE_KEYS, "edge: {port: 80}")
    systemd = _mapping(r, data.get("systemd"), "deploy.systemd", _SYSTEMD_KEYS,
                       "systemd: {dir: /opt/myapp, user: amoeba}")
    secrets_raw = data.get("secrets") or []
    secrets: list[str] = []
    if not isinstance(secrets_raw, list):
        r.problem("deploy.secrets", "must be a list of environment variable names",
                  "secrets: [STRIPE_KEY]")
    else:
        for i, s in enumerate(secrets_raw):
            if isinstance(s, str) and _ENV_NAME.fullmatch(s):
                secrets.append(s)
            else:
                r.problem(f"deploy.secrets[{i}]", f"{s!r} is not an environment variable name",
                          "secrets: [STRIPE_KEY]")
    procs: dict[str, ProcessDeploy] = {}
    procs_raw = _mapping(r, data.get("processes"), "deploy.processes", processes,
                         "processes: {NAME: {requests: {cpu: 100m}}} with NAME a process above",
                         "no process of the topology has this name")
    for name, praw in procs_raw.items():
        if name in processes:
            procs[name] = _process(r, praw, f"deploy.processes.{name}")
    systemd_dir = _text(r, systemd, "deploy.systemd", "dir", re.compile(r"/[^\s]*"),
                        "dir: /opt/myapp (an absolute path on the target machine)")
    return DeploySpec(
        image=_text(r, data, "deploy", "image", re.compile(r"[^\s]+"), "image: registry/myapp:1.0"),
        namespace=_text(r, data, "deploy", "namespace", _DNS_LABEL,
                        "namespace: shop (lower-case letters, digits and '-')"),
        secret=_text(r, data, "deploy", "secret", _DNS_LABEL, "secret: shop-secrets"),
        secrets=tuple(secrets),
        edge_port=_int(r, edge, "deploy.edge.port", 1, 65535, DEFAULT_EDGE_PORT,
                       f"port: {DEFAULT_EDGE_PORT}"),
        edge_host=_text(r, edge, "deploy.edge", "host", _HOST, "host: shop.example.com"),
        ingress_class=_text(r, edge, "deploy.edge", "ingress_class", _DNS_LABEL,
                            "ingress_class: nginx"),
        ingress_namespace=_text(r, edge, "deploy.edge", "ingress_namespace", _DNS_LABEL,
                                "ingress_namespace: ingress-nginx") or "ingress-nginx",
        metrics_namespace=_text(r, data, "deploy", "metrics_namespace", _DNS_LABEL,
                                "metrics_namespace: monitoring") or "monitoring",
        metrics_port=_int(r, data, "deploy.metrics_port", 1, 65535, DEFAULT_METRICS_PORT,
                          f"metrics_port: {DEFAULT_METRICS_PORT}"),
        systemd_dir=(systemd_dir.rstrip("/") or "/") if systemd_dir else None,
        systemd_user=_text(r, systemd, "deploy.systemd", "user", re.compile(r"[a-z_][a-z0-9_-]*"),
                           "user: amoeba") or "amoeba",
        processes=procs,
    )
