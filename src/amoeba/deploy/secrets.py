"""``amoeba deploy secrets TOPOLOGY -o DIR``: the secret values a deployment
needs, generated once, in the formats the runtime and the engines read.

- ``auth-keys.json`` (when a service issues or verifies tokens): the key set
  of :mod:`amoeba.auth.keys`, one Ed25519 signing key; the Kubernetes Secret
  ``<app>-auth-keys`` holds it as ``keys.json``, systemd/compose point
  ``AMOEBA_AUTH_KEYS`` at it;
- ``<deploy.secret>.env``: ``KEY=value`` lines (systemd ``EnvironmentFile``,
  compose ``.env``, ``kubectl create secret generic --from-env-file``):
  ``AMOEBA_SECRET`` (the internal credential's key, 32 random bytes, hex), then
  every other secret variable of the plan: a resource URL with the file's
  default to edit, and the rest empty, to fill in.

Unlike the renderers this writes random values: never deterministic, never
golden-tested, and never overwriting (a running deployment's keys would be
replaced).  Files are mode 0600 in a directory of mode 0700.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from amoeba.auth.keys import generate_key_file
from amoeba.deploy.plan import SECRET_VAR, Plan

__all__ = ["env_file", "write_secrets"]


def env_file(plan: Plan) -> str:
    """The ``<secret>.env`` text with a fresh ``AMOEBA_SECRET``."""
    by_var = {r.var: r for r in plan.resources if r.var}
    lines = [f"# Secrets of {plan.app} (topology {plan.topology}), from amoeba deploy secrets.",
             "# Mode 0600; never commit it.  Edit the values marked below before use.",
             f"{SECRET_VAR}={secrets.token_hex(32)}"]
    for var in plan.secrets:
        if var == SECRET_VAR:
            continue
        r = by_var.get(var)
        if r is not None:
            lines.append(f"# edit: the {r.kind} URL, with its password (the file's default below)")
            lines.append(f"{var}={r.default}")
        else:
            lines.append(f"# edit: {var} has no default in the topology")
            lines.append(f"{var}=")
    return "\n".join(lines) + "\n"


def write_secrets(plan: Plan, out: Path) -> list[Path]:
    """Write the files into ``out``; ``FileExistsError`` naming the first one
    already there (nothing is written then)."""
    env = out / f"{plan.secret}.env"
    keys = out / "auth-keys.json"
    wanted = [env, *([keys] if plan.auth_secret is not None else [])]
    for path in wanted:
        if path.exists():
            raise FileExistsError(path)
    out.mkdir(parents=True, exist_ok=True)
    os.chmod(out, 0o700)
    fd = os.open(env, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(env_file(plan))
    if plan.auth_secret is not None:
        generate_key_file(keys)
    return wanted
