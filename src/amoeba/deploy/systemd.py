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
    files[target] = f"""{plan.header("systemd")}[Unit]
Description=amoeba {plan.app}: every process of topology {plan.topology}
Wants={" ".join(wants)}

[Install]
WantedBy=multi-user.target
"""
    return files
