"""systemd units for running a topology on one host without the supervisor.

``amoeba-<app>-<process>@.service`` per process, the instance being the
replica index (``@0``, ``@1``: replica N listens on the listener's port + N,
as under ``amoeba run``), and ``amoeba-<app>.target`` wanting every
replica, so ``systemctl start amoeba-shop.target`` starts the topology.

A unit runs ``amoeba run TOPOLOGY --process P --replica %i`` from
``deploy.systemd.dir`` (the checkout with its venv), reads secrets from
``/etc/amoeba/<secret>.env`` (AMOEBA_SECRET, resource URLs), keeps its data
in ``/var/lib/amoeba-<app>`` (StateDirectory, shared by the replicas), is
restarted on failure and stopped with SIGTERM, given drain + grace + 5 s.

``INSTALL``: the commands that put them in place, for this topology: the
service user, the checkout and its venv with the extras the resource URLs
need, the secrets file (``amoeba deploy secrets``), the units.
"""

from __future__ import annotations

from amoeba.deploy.plan import Plan

__all__ = ["render"]


def render(plan: Plan) -> dict[str, str]:
    base = f"amoeba-{plan.base}"
    root = plan.deploy.systemd_dir or f"/opt/{base}"
    target = f"{base}.target"
    files: dict[str, str] = {}
    wants: list[str] = []
    for unit in plan.units:
        name = f"{base}-{unit.process.replace('_', '-')}"
        wants += [f"{name}@{i}.service" for i in range(unit.replicas)]
        after = " ".join(f"{base}-{c.replace('_', '-')}@0.service" for c in unit.callees)
        files[f"{name}@.service"] = f"""{plan.header("systemd")}[Unit]
Description=amoeba {plan.app}: process {unit.process}, replica %i (topology {plan.topology})
PartOf={target}
Wants=network-online.target
After=network-online.target{f" {after}" if after and plan.acyclic else ""}

[Service]
Type=exec
User={plan.deploy.systemd_user}
Group={plan.deploy.systemd_user}
WorkingDirectory={root}
EnvironmentFile=/etc/amoeba/{plan.secret}.env
Environment=AMOEBA_DATA_DIR=%S/{base}
StateDirectory={base}
ExecStart={root}/.venv/bin/amoeba run {plan.source} --process {unit.process} --replica %i
Restart=on-failure
RestartSec=2s
# SIGTERM drains: /readyz turns 503, in-flight requests finish, then exit.
KillSignal=SIGTERM
KillMode=mixed
TimeoutStopSec={plan.stop_seconds + 5}s
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes

[Install]
WantedBy={target}
"""
    files["INSTALL"] = _install(plan, base, root, target)
    files[target] = f"""{plan.header("systemd")}[Unit]
Description=amoeba {plan.app}: every process of topology {plan.topology}
Wants={" ".join(wants)}

[Install]
WantedBy=multi-user.target
"""
    return files


def _install(plan: Plan, base: str, root: str, target: str) -> str:
    user = plan.deploy.systemd_user
    out = plan.out_in_context
    extras = f" (extras {', '.join(plan.extras)}: the drivers its resource URLs name)" \
        if plan.extras else ""
    head = plan.header("systemd")
    return f"""{head}# On the target host, as root, from the project root (a checkout of it).
set -eu

# 1. The user every unit runs as: no login, no home of its own (data lives in the
#    units' StateDirectory, /var/lib/{base}).
id -u {user} >/dev/null 2>&1 || useradd --system --user-group --no-create-home \\
    --home-dir /nonexistent --shell /usr/sbin/nologin {user}

# 2. The code and its venv in {root}{extras}; never a local venv, .env or secret.
install -d -m 755 {root}
tar --exclude=./.git --exclude=./.venv --exclude=./.env --exclude=./secrets -cf - . \\
    | tar -xf - -C {root}
python3 -m venv {root}/.venv
(cd {root} && .venv/bin/pip install {plan.install.pip})

# 3. Secrets: AMOEBA_SECRET and the resource URLs, readable by root only (systemd
#    reads EnvironmentFile= as root); generated outside the code directory, edited
#    (the URLs and their passwords), then installed.  The JWT keys are generated at
#    first start in the state directory, shared by every replica (or set
#    settings.auth.keys).
(cd {root} && .venv/bin/amoeba deploy secrets {plan.source} -o /root/{base}-secrets)
${{EDITOR:-vi}} /root/{base}-secrets/{plan.secret}.env
install -D -m 600 -o root -g root /root/{base}-secrets/{plan.secret}.env \\
    /etc/amoeba/{plan.secret}.env

# 4. The units, then every replica.
install -m 644 {out}/*.service {out}/{target} /etc/systemd/system/
systemctl daemon-reload
systemctl enable --now {target}
"""
