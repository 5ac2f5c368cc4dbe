"""Deployment files for engines operators already run, written from a topology.

Layout (a pure core; only ``cli`` reads or writes files):

- ``plan``:     :class:`Plan`, the one model of processes, ports, replicas,
                callers, resources and secrets every renderer reads
- ``nginx``, ``haproxy``: an edge in front of the public listeners on one host
- ``systemd``:  a template unit per process and a target grouping them
- ``compose``:  ``compose.yaml`` with PostgreSQL / Redis / NATS as needed
- ``k8s``:      Namespace, Deployments, Services, ConfigMap, HPA, Ingress, NetworkPolicies
- ``image``:    the ``Dockerfile`` and container topology compose and k8s share
- ``install``:  what that image copies and ``pip install``s: the project as it
                declares itself, the framework as the project declares it
- ``cli``:      ``amoeba deploy TARGET TOPOLOGY -o DIR [--check]``

Every renderer is ``render(plan) -> {relative path: text}``: deterministic
(no time, no absolute path of this machine, no secret value), each file
opening with a header that says it was generated and from what.
"""

from amoeba.deploy.plan import Plan, build_plan

__all__ = ["Plan", "build_plan"]
