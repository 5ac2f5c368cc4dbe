"""The container image compose and Kubernetes share: ``Dockerfile``, its
``Dockerfile.dockerignore`` (BuildKit reads the one next to the Dockerfile)
and ``topology.yaml``, the topology as containers run it.

The container topology keeps every process and service of the original but
sees the world from inside an orchestrator: each process listens on
``0.0.0.0`` at its base port, is reached at its service name (``address:``),
runs one replica per container (the orchestrator scales), and takes resource
URLs and secrets from variables, never from values written here.
"""

from __future__ import annotations

from amoeba.deploy.plan import APP_DIR, DATA_DIR, TOPOLOGY_IN_IMAGE, Plan

__all__ = ["UID", "files"]

UID = 10001
# Never baked into an image: secrets (.env files), local data (.amoeba, with
# its generated keys), virtual environments; at any depth, since an outside
# project is copied whole.
_IGNORE = """.git
**/.env*
**/.amoeba
**/.venv
**/venv
**/__pycache__
**/*.pyc
.pytest_cache
.mypy_cache
.ruff_cache
node_modules
# Secrets and deployment files never go into the image: the generated
# topology.yaml is the one file of the output directory the Dockerfile copies.
.env
.env.*
**/.env
**/*.env
secrets
auth-keys.json
**/*.pem
**/*.key
deploy
"""


def _copy(path: str) -> str:
    """``path`` relative to the context, at the same place under APP_DIR."""
    return f"COPY {path} {APP_DIR}/{path.removeprefix('./')}\n"


def _ignore(plan: Plan) -> str:
    out = plan.out_in_context.rstrip("/")
    own = "" if out == "deploy" or out.startswith("deploy/") else f"{out}\n"
    return f"{_IGNORE}{own}!{out}/topology.yaml\n"


def files(plan: Plan, target: str) -> dict[str, str]:
    out = plan.out_in_context
    steps = "".join(_copy(f) for f in plan.install.copy)
    code = "".join(_copy(f"{p}/" if p != "." else "./") for p in plan.pythonpath
                   if not plan.install.covers(p))
    ports = " ".join(str(n) for n in sorted({p.number for u in plan.units for p in u.ports}))
    head = plan.header(target)
    dockerfile = f"""{head}# Build from the project root (the build context); the name is deploy.image:
#   docker build -f {out}/Dockerfile -t {plan.image} .
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \\
    PYTHONUNBUFFERED=1 \\
    PIP_DISABLE_PIP_VERSION_CHECK=1 \\
    AMOEBA_DATA_DIR={DATA_DIR}
RUN useradd --system --uid {UID} --user-group --home-dir {DATA_DIR} --create-home amoeba
WORKDIR {APP_DIR}
{steps}RUN pip install --no-cache-dir {plan.install.pip}
{code}COPY {out}/topology.yaml {TOPOLOGY_IN_IMAGE}
USER {UID}:{UID}
EXPOSE {ports}
# SIGTERM drains: /readyz turns 503, in-flight requests finish (settings.grace).
STOPSIGNAL SIGTERM
ENTRYPOINT ["amoeba"]
CMD ["run", "{TOPOLOGY_IN_IMAGE}"]
"""
    return {
        "Dockerfile": dockerfile,
        "Dockerfile.dockerignore": plan.header(target) + _ignore(plan),
        "topology.yaml": plan.header(target)
        + "# The topology containers run: every process on 0.0.0.0 at its base port, reached\n"
          "# by its service name; resource URLs and secrets come from the environment.\n"
        + plan.container_topology,
    }
