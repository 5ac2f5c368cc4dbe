"""``compose.yaml``: every process of the topology as a compose service built
from the generated ``Dockerfile``, plus PostgreSQL, Redis, NATS and Kafka
(the official ``apache/kafka`` image, one KRaft node: broker and controller)
when the topology's resource URLs name them.

Start order: servers first, then callees before callers, each waiting for
the previous to be *healthy* (``/readyz`` answers 200; ``pg_isready``,
``redis-cli ping``, NATS ``/healthz``, Kafka answering ``ApiVersions``).  Secrets never appear: compose reads
``AMOEBA_SECRET``, ``POSTGRES_PASSWORD`` and any other secret variable from
the environment or the ``.env`` file next to ``compose.yaml``, and refuses
to start without them (``${VAR:?...}``).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from amoeba.deploy import image
from amoeba.deploy.document import dump_yaml
from amoeba.deploy.plan import DATA_DIR, TOPOLOGY_IN_IMAGE, Plan, Resource

__all__ = ["render"]

_SERVERS: dict[str, dict[str, Any]] = {
    "postgres": {
        "image": "postgres:16-alpine",
        "healthcheck": {"test": ["CMD-SHELL", "pg_isready -U postgres"],
                        "interval": "2s", "timeout": "3s", "retries": 30},
        "volumes": ["postgres-data:/var/lib/postgresql/data"],
    },
    "redis": {
        "image": "redis:7-alpine",
        "command": ["redis-server", "--appendonly", "yes"],
        "healthcheck": {"test": ["CMD", "redis-cli", "ping"],
                        "interval": "2s", "timeout": "3s", "retries": 30},
        "volumes": ["redis-data:/data"],
    },
    "nats": {
        "image": "nats:2.10-alpine",
        "command": ["--jetstream", "--store_dir", "/data", "--http_port", "8222"],
        "healthcheck": {"test": ["CMD", "wget", "-q", "-O", "-", "http://127.0.0.1:8222/healthz"],
                        "interval": "2s", "timeout": "3s", "retries": 30},
        "volumes": ["nats-data:/data"],
    },
    "kafka": {
        "image": "apache/kafka:4.0.0",
        # One KRaft node for a compose run; a production cluster: docs/kafka.md.
        "environment": {
            "KAFKA_NODE_ID": "1",
            "KAFKA_PROCESS_ROLES": "broker,controller",
            "KAFKA_LISTENERS": "PLAINTEXT://:9092,CONTROLLER://:9093",
            "KAFKA_ADVERTISED_LISTENERS": "PLAINTEXT://kafka:9092",
            "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
            "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@localhost:9093",
            "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
            "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
            "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
            "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
            "KAFKA_LOG_DIRS": "/var/lib/kafka/data",
        },
        "healthcheck": {"test": ["CMD-SHELL", "/opt/kafka/bin/kafka-broker-api-versions.sh "
                                 "--bootstrap-server localhost:9092 > /dev/null"],
                        "interval": "5s", "timeout": "10s", "retries": 30, "start_period": "10s"},
        "volumes": ["kafka-data:/var/lib/kafka/data"],
    },
}


def _required(var: str) -> str:
    return f"${{{var}:?set {var} in the environment or in .env next to compose.yaml}}"


def _url(r: Resource) -> str:
    """The URL of the server compose starts, keeping the file's path and query."""
    parts = urlsplit(r.default)
    tail = parts.path + (f"?{parts.query}" if parts.query else "")
    if r.infra == "postgres":
        return f"postgresql://postgres:${{POSTGRES_PASSWORD}}@postgres:5432{tail}"
    if r.infra == "redis":
        return f"redis://redis:6379{tail}"
    if r.infra == "kafka":
        return f"kafka://kafka:9092{tail}"
    return f"nats://nats:4222{tail}"


def _database_name(plan: Plan) -> str | None:
    for r in plan.resources:
        if r.infra == "postgres":
            name = urlsplit(r.default).path.lstrip("/")
            return name if name and "{" not in name else None
    return None


def _probe(port: int) -> list[str]:
    # The image has Python and no curl: urlopen raises (exit 1) on a 503.
    return ["CMD", "python", "-c",
            f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{port}/readyz', timeout=2)"]


def render(plan: Plan) -> dict[str, str]:
    services: dict[str, Any] = {}
    infra = plan.infra
    svc: dict[str, Any]
    for kind in infra:
        svc = dict(_SERVERS[kind])
        if kind == "postgres":
            pg_env = {"POSTGRES_PASSWORD": _required("POSTGRES_PASSWORD")}
            db = _database_name(plan)
            if db:
                pg_env["POSTGRES_DB"] = db
            svc = {"image": svc["image"], "environment": pg_env,
                   **{k: v for k, v in svc.items() if k != "image"}}
        services[kind] = svc
    env: dict[str, str] = {k: v.replace("$", "$$") for k, v in plan.config.items()}
    by_var = {r.var: r for r in plan.resources if r.var}
    for var in plan.secrets:
        r = by_var.get(var)
        env[var] = _url(r) if r is not None and r.infra else _required(var)
    if plan.auth_secret is not None:
        env["AMOEBA_AUTH_KEYS"] = f"{DATA_DIR}/.auth-keys.json"  # shared volume: one key set
    build = {"context": plan.context, "dockerfile": f"{plan.out_in_context}/Dockerfile"}
    for unit in plan.units:
        depends: dict[str, Any] = {k: {"condition": "service_healthy"} for k in infra}
        if plan.acyclic:
            for callee in unit.callees:
                depends[plan.unit(callee).name] = {"condition": "service_healthy"}
        svc = {
            "build": build, "image": plan.image,
            "command": ["run", TOPOLOGY_IN_IMAGE, "--process", unit.process],
            "environment": dict(env),
        }
        public = [p for p in unit.ports if p.public]
        if public:
            n = unit.replicas
            # Replica N on the host's port + N, as under amoeba run.
            svc["ports"] = [f"{p.number}:{p.number}" if n == 1
                            else f"{p.number}-{p.number + n - 1}:{p.number}" for p in public]
        if unit.replicas > 1:
            svc["deploy"] = {"replicas": unit.replicas}
        svc["healthcheck"] = {"test": _probe(unit.ports[0].number), "interval": "2s", "timeout": "3s",
                              "retries": 30, "start_period": "5s"}
        if depends:
            svc["depends_on"] = depends
        svc["volumes"] = [f"data:{DATA_DIR}"]
        svc["stop_grace_period"] = f"{plan.stop_seconds + 5}s"
        svc["restart"] = "unless-stopped"
        services[unit.name] = svc
    volumes: dict[str, Any] = {"data": {}, **{f"{k}-data": {} for k in infra}}
    doc = {"services": services, "volumes": volumes}
    text = dump_yaml(doc)
    head = (f"{plan.header('compose')}# Run from the project root:\n"
            f"#   docker compose -f {plan.out_in_context}/compose.yaml up --build\n"
            f"# Secrets ({', '.join(v for v in plan.secrets if v not in by_var or not by_var[v].infra)}"
            f"{', POSTGRES_PASSWORD' if 'postgres' in infra else ''}) come from the environment\n"
            f"# or a .env file next to this one.\n")
    return {**image.files(plan, "compose"), "compose.yaml": head + text}
